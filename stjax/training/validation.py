"""Validation during training: the objective on the data.eval sets, dropout off, no update.

`make_evaluator` returns state -> {"eval_loss", "eval_<metric>" ..., "eval_tokens"}: the
same per-token loss the step minimizes (CE, and PACT's KL term where the objective has one)
summed over every eval batch and divided by its token count. The eval program is jitted
once per batch shape (the buckets), so evaluating never recompiles between evaluations.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from stjax.data.pipeline import TrainingData
from stjax.training.program import TrainProgram
from stjax.training.reference_cache import CachedBatches
from stjax.training.step import TrainState


def make_evaluator(program: TrainProgram, data: TrainingData, cache: dict | None = None
                   ) -> Callable[[TrainState], dict[str, float]]:
    """`cache`: the eval examples' cached reference (objectives with ref: cached)."""
    batches = data.batches if cache is None else CachedBatches(data.batches, cache)
    per_pass = data.batches.batches_per_epoch  # the iterator is unshuffled: every pass sees the same batches

    def evaluate(state: TrainState) -> dict[str, float]:
        total = None  # summed on the device: one transfer per evaluation, not one per batch
        for _ in range(per_pass):
            sums = program.eval_step(state.params, program.frozen, program.device_batch(next(batches)))
            total = sums if total is None else jax.tree.map(jnp.add, total, sums)
        totals = {k: float(v) for k, v in jax.device_get(total).items()}
        tokens = max(totals.pop("tokens"), 1.0)
        return {**{f"eval_{k}": v / tokens for k, v in totals.items()}, "eval_tokens": tokens}

    return evaluate
