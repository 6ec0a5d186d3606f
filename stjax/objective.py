"""What a training objective is: two pure functions over the model's outputs.

`reference_fn(reference, batch) -> refs` computes what the objective needs from the frozen
reference model (safety-token logits, target log-probs); `loss(outputs, batch, refs)`
returns the sum of per-token losses over assistant tokens, the token count and per-token
metric sums, so gradient accumulation and logging weigh tokens equally. With `ref: online`
the train step calls reference_fn every step; with `ref: cached` it runs once over the
training set before training and refs arrive with the batch.

Objectives are built by factories with explicit hyperparameters (`stjax.pact.objective`,
`stjax.training.objectives`); none of them reads a config.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from stjax.losses import cross_entropy, target_logprobs


class ModelOutputs(NamedTuple):
    """What a loss sees: final hidden states [B, L, D] and the output matrix [D, V]."""

    hidden: jax.Array
    output_weights: jax.Array


class Reference(NamedTuple):
    """The frozen reference model, evaluated on demand (no gradient)."""

    # (tokens, attention_mask, segment_ids=None, positions=None) -> [B, L, D]; segment ids and
    # positions for packed rows (several sequences a row, each attending to itself)
    hidden: Callable[..., jax.Array]
    output_weights: Callable[[jax.Array | None], jax.Array]  # columns -> [D, K]


def reference_hidden(reference: Reference, batch: dict) -> jax.Array:
    """The reference's hidden states of a batch's rows, packed (segment ids and positions
    passed on) or not."""
    if "segment_ids" in batch:
        return reference.hidden(batch["inputs"], batch["attention_mask"], batch["segment_ids"], batch["positions"])
    return reference.hidden(batch["inputs"], batch["attention_mask"])


# loss(outputs, batch, refs) -> (sum of per-token losses, token count, {metric: per-token sum})
LossFn = Callable[[ModelOutputs, dict, dict], tuple[jax.Array, jax.Array, dict[str, jax.Array]]]
# reference_fn(reference, batch) -> refs
ReferenceFn = Callable[[Reference, dict], dict]


@dataclasses.dataclass(frozen=True)
class Objective:
    loss: LossFn
    reference_fn: ReferenceFn | None  # None: the objective needs no reference
    cacheable: bool = True  # refs are small enough to precompute per example

    @property
    def needs_reference(self) -> bool:
        return self.reference_fn is not None


def masked_sum(x: jax.Array, batch: dict) -> jax.Array:
    """Sum of a per-position quantity [B, L] over the assistant tokens."""
    return (x * batch["loss_mask"]).sum()


# ---------------------------------------------------------------- loss positions
# A batch may carry `loss_index` [B, R]: each row's assistant (loss) positions, padded with -1
# (stjax.data.batching). Vocabulary-wide projections then run on those R positions only, not
# on every prompt and padding position; without it they run on all L positions.

def gather_positions(x: jax.Array, batch: dict) -> jax.Array:
    """x [B, L, ...] at the loss positions, [B, R, ...] (x itself when the batch has no index)."""
    if "loss_index" not in batch:
        return x
    index = jnp.maximum(batch["loss_index"], 0).reshape(*batch["loss_index"].shape, *[1] * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def scatter_positions(values: jax.Array, batch: dict, fill: jax.Array | None = None) -> jax.Array:
    """The inverse of gather_positions for [B, R] values: [B, L], `fill` [B, L] (zeros by
    default) off the loss positions."""
    if "loss_index" not in batch:
        return values
    index = batch["loss_index"]
    outside = batch["loss_mask"].shape[1]  # where the index's padding goes: dropped
    rows, columns = jnp.arange(index.shape[0])[:, None], jnp.where(index >= 0, index, outside)
    out = jnp.zeros(batch["loss_mask"].shape, values.dtype) if fill is None else fill.astype(values.dtype)
    return out.at[rows, columns].set(values, mode="drop")


def loss_position_mask(batch: dict) -> jax.Array:
    """loss_mask at the loss positions, [B, R] (0 at the index's padding)."""
    mask = gather_positions(batch["loss_mask"], batch)
    return mask if "loss_index" not in batch else jnp.where(batch["loss_index"] >= 0, mask, 0.0)


def batch_cross_entropy(outputs: ModelOutputs, batch: dict, chunk_tokens: int) -> tuple[jax.Array, jax.Array]:
    """(sum of assistant-token NLLs, their count), the vocabulary projected chunk by chunk at
    the loss positions only."""
    return cross_entropy(gather_positions(outputs.hidden, batch), outputs.output_weights,
                         gather_positions(batch["targets"], batch), loss_position_mask(batch),
                         chunk_tokens=chunk_tokens)


def loss_target_logprobs(hidden: jax.Array, output_weights: jax.Array, batch: dict, *,
                         chunk_tokens: int = 512) -> jax.Array:
    """log p(targets) [B, L] at the loss positions (zero elsewhere when the batch has an index)."""
    logp = target_logprobs(gather_positions(hidden, batch), output_weights, gather_positions(batch["targets"], batch),
                           chunk_tokens=chunk_tokens)
    return scatter_positions(logp, batch)


def ce_plus(outputs: ModelOutputs, batch: dict, term: jax.Array, *, lam: float, chunk_tokens: int,
            **metrics: jax.Array):
    """CE + lam * term summed over assistant tokens: the loss of every regularized objective,
    with ce, the term (as "kl") and any per-position `metrics` summed for logging."""
    ce, count = batch_cross_entropy(outputs, batch, chunk_tokens)
    term_sum = masked_sum(term, batch)
    logged = {"ce": ce, "kl": term_sum, **{k: masked_sum(v, batch) for k, v in metrics.items()}}
    return ce + lam * term_sum, count, logged


def safety_columns(outputs: ModelOutputs, ids: jax.Array) -> jax.Array:
    """Trained-model logits [B, L, K] of a few vocabulary entries only (no vocabulary-wide logits)."""
    w = jnp.take(outputs.output_weights, ids, axis=1).astype(outputs.hidden.dtype)
    return jnp.einsum("bld,dk->blk", outputs.hidden, w, preferred_element_type=jnp.float32)
