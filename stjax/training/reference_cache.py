"""`ref: cached`: reference quantities computed once per training example, fed with batches.

The objective's own `reference_fn` runs over the whole training set before training
(the same function the online step calls, so both modes agree by construction). Only
the assistant positions are kept per example ([R, ...] arrays, R = response length);
`CachedBatches` scatters them back into each batch's [B, L, ...] layout.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from stjax.data.batching import BatchIterator
from stjax.data.tokenize import TokenizedExample
from stjax.distributed import host_array
from stjax.training.step import Frozen, ReferenceFn, make_reference


def precompute_reference(
    reference_fn: ReferenceFn, graphdef, params, frozen: Frozen, examples: Sequence[TokenizedExample], *,
    batch_size: int, max_len: int, buckets, put_batch, progress: bool = True,
) -> dict[int, dict[str, np.ndarray]]:
    """example index -> {key: array at its assistant positions [R, ...]}.

    `params` are the starting trainable weights, which are the reference before training.
    `put_batch` turns a host batch into sharded device arrays (the trainer's).
    """
    from tqdm.auto import tqdm

    reference_frozen = Frozen(frozen.rest, params)

    # Weights are arguments, not closed over: a closed-over array sharded across hosts
    # becomes a constant that no single process can materialize.
    @jax.jit
    def compute(params, reference_frozen, batch):
        return reference_fn(make_reference(graphdef, params, reference_frozen), batch)

    batches = BatchIterator(examples, batch_size, max_len, buckets=buckets, shuffle=False)
    cache: dict[int, dict[str, np.ndarray]] = {}
    for _ in tqdm(range(batches.batches_per_epoch), desc="reference cache", unit="batch", disable=not progress):
        host = next(batches)
        device = put_batch(host)
        out = compute(params, reference_frozen, device)
        width = host["inputs"].shape[1]
        out = {k: v for k, v in out.items() if v.ndim >= 2 and v.shape[1] == width}
        rows = _global(out | {"example_index": device["example_index"], "loss_mask": device["loss_mask"]})
        for r, index in enumerate(rows["example_index"]):
            if index >= 0:
                positions = np.flatnonzero(rows["loss_mask"][r])
                cache[int(index)] = {k: rows[k][r, positions] for k in out}
    return cache


def _global(arrays: dict) -> dict[str, np.ndarray]:
    """All rows of batch-sharded arrays on this host (a gather across hosts when needed)."""
    return {k: host_array(v) for k, v in arrays.items()}


class CachedBatches:
    """A BatchIterator whose batches also carry the cached reference arrays."""

    def __init__(self, batches: BatchIterator, cache: dict[int, dict[str, np.ndarray]]):
        self.batches, self.cache = batches, cache
        any_entry = next(iter(cache.values()))
        self.keys = {k: (v.shape[1:], v.dtype) for k, v in any_entry.items()}

    @property
    def batches_per_epoch(self) -> int:
        return self.batches.batches_per_epoch

    def get_state(self) -> dict:
        return self.batches.get_state()

    def set_state(self, state: dict) -> None:
        self.batches.set_state(state)

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.batches)
        rows, width = batch["inputs"].shape
        for key, (tail, dtype) in self.keys.items():
            out = np.zeros((rows, width, *tail), dtype)
            for r, index in enumerate(batch["example_index"]):
                if index >= 0:
                    out[r, np.flatnonzero(batch["loss_mask"][r])] = self.cache[int(index)][key]
            batch[key] = out
        return batch
