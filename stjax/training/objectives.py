"""`loss.kind` -> the loss function the train step differentiates."""

from __future__ import annotations

from stjax.losses import cross_entropy
from stjax.training.config import TrainConfig
from stjax.training.step import LossFn, ModelOutputs


def sft_objective(chunk_tokens: int) -> LossFn:
    """Cross-entropy on assistant tokens, projected chunk by chunk."""

    def loss(outputs: ModelOutputs, batch: dict):
        total, count = cross_entropy(outputs.hidden, outputs.output_weights, batch["targets"], batch["loss_mask"],
                                     chunk_tokens=chunk_tokens)
        return total, count, {"ce": total}

    return loss


def build_objective(config: TrainConfig) -> LossFn:
    kind = config.loss.kind
    if kind == "sft":
        return sft_objective(config.loss.chunk_tokens)
    raise ValueError(f"loss.kind: unknown objective '{kind}'")
