"""`ref: cached`: reference quantities computed once per training example, fed with batches.

The objective's own `reference_fn` runs over the whole training set before training
(the same function the online step calls, so both modes agree by construction). Only
the assistant positions are kept per example ([R, ...] arrays, R = response length);
`CachedBatches` scatters them back into each batch's [B, L, ...] layout.

The cache is saved in the run directory (`reference_cache/`, next to the checkpoints) with
the key it was computed for: the loss kind, the model files, dtypes, safety tokens, the
tokenized training data, max_len and buckets. A relaunch (after a preemption) with the
same key reads it back instead of running the reference over the data again; a different
key recomputes it and says which part changed.
"""

from __future__ import annotations

import functools
import hashlib
import json
from pathlib import Path
from typing import Sequence

import jax
import numpy as np

from stjax.data.batching import BatchIterator
from stjax.data.tokenize import TokenizedExample
from stjax.fileio import atomic_directory
from stjax.models.partitioning import host_array
from stjax.objective import ReferenceFn
from stjax.training.step import Frozen, make_reference
from stjax.logs import get_logger

log = get_logger(__name__)


def precompute_reference(
    reference_fn: ReferenceFn, graphdef, params, frozen: Frozen, examples: Sequence[TokenizedExample], *,
    batch_size: int, max_len: int, buckets, put_batch, progress: bool = True, loss_index: bool = True,
) -> dict[int, dict[str, np.ndarray]]:
    """example index -> {key: array at its assistant positions [R, ...]}.

    `params` are the starting trainable weights, which are the reference before training.
    `put_batch` turns a host batch into sharded device arrays (the trainer's).
    """
    from tqdm.auto import tqdm

    reference_frozen = Frozen(frozen.rest, params)
    compute = reference_program(reference_fn, graphdef)
    batches = BatchIterator(examples, batch_size, max_len, buckets=buckets, shuffle=False, loss_index=loss_index)
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


@functools.lru_cache(maxsize=8)
def reference_program(reference_fn: ReferenceFn, graphdef):
    """The jitted reference pass of one objective and model graph, built once: the training
    set's cache and the eval set's reuse its programs (one per batch width). Weights are
    arguments, not closed over: a closed-over array sharded across hosts becomes a constant
    that no single process can materialize."""

    @jax.jit
    def compute(params, reference_frozen, batch):
        return reference_fn(make_reference(graphdef, params, reference_frozen), batch)

    return compute


def _global(arrays: dict) -> dict[str, np.ndarray]:
    """All rows of batch-sharded arrays on this host (a gather across hosts when needed)."""
    return {k: host_array(v) for k, v in arrays.items()}


class CachedBatches:
    """A BatchIterator (or PackedBatchIterator) whose batches also carry the cached reference
    arrays, scattered to each example's loss positions (in its segment, for packed rows)."""

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
        places = []  # (row, loss positions, example index) of every example in the batch
        for r in range(rows):
            if "segment_ids" in batch:  # packed rows: each segment is an example
                for s, index in enumerate(batch["example_index"][r]):
                    if index >= 0:
                        places.append((r, np.flatnonzero((batch["loss_mask"][r] > 0)
                                                         & (batch["segment_ids"][r] == s + 1)), int(index)))
            elif batch["example_index"][r] >= 0:
                places.append((r, np.flatnonzero(batch["loss_mask"][r]), int(batch["example_index"][r])))
        for key, (tail, dtype) in self.keys.items():
            out = np.zeros((rows, width, *tail), dtype)
            for r, positions, index in places:
                out[r, positions] = self.cache[index][key]
            batch[key] = out
        return batch


# ------------------------------------------------------------------ saved in the run directory
CACHE_DIR, KEY_FILE, ARRAYS_FILE = "reference_cache", "key.json", "arrays.npz"


def _digest(*parts: bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return h.hexdigest()[:16]


def _files_digest(directory: str, patterns: tuple[str, ...]) -> str:
    """Names, sizes and modification times of a directory's files (weights are not re-read)."""
    root = Path(directory)
    files = sorted(f for pattern in patterns for f in root.glob(pattern) if f.is_file())
    return _digest(*(f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns};".encode() for f in files))


def cache_key(config, examples: Sequence[TokenizedExample]) -> dict[str, str]:
    """What the cached reference depends on, one entry per part (compared part by part)."""
    from stjax.pact.safety_tokens import TENSORS_FILE

    key = {
        "loss.kind": config.loss.kind,
        "model": f"{config.model.path} ({_files_digest(config.model.local_path(), ('*.safetensors', 'config.json'))})",
        "dtype": f"{config.model.dtype}/{config.model.compute_dtype or config.model.dtype}",
        "data": _digest(*(np.asarray([e.index, e.prompt_len, *e.tokens, *(i for s in e.turns for i in s)], np.int64).tobytes() + b";"
                          for e in examples)),
        "max_len": str(config.data.max_len),
        "buckets": str(config.data.buckets),
    }
    if config.loss.safety_tokens:
        tensors = Path(config.loss.safety_tokens) / TENSORS_FILE
        key["safety_tokens"] = _digest(tensors.read_bytes()) if tensors.is_file() else "absent"
    return key


def save_cache(directory: Path, key: dict, cache: dict[int, dict[str, np.ndarray]]) -> None:
    """One array per reference key, the examples' rows concatenated, with their offsets."""
    indices = sorted(cache)
    lengths = np.asarray([len(next(iter(cache[i].values()))) for i in indices], np.int64)
    arrays = {"index": np.asarray(indices, np.int64), "length": lengths}
    for name in next(iter(cache.values())):
        arrays[f"ref.{name}"] = np.concatenate([cache[i][name] for i in indices])
    with atomic_directory(directory) as staging:
        np.savez(staging / ARRAYS_FILE, **arrays)
        (staging / KEY_FILE).write_text(json.dumps(key, indent=1))


def load_cache(directory: Path) -> dict[int, dict[str, np.ndarray]]:
    with np.load(directory / ARRAYS_FILE) as f:
        arrays = {k: f[k] for k in f.files}
    bounds = np.concatenate([[0], np.cumsum(arrays["length"])])
    names = [k[len("ref."):] for k in arrays if k.startswith("ref.")]
    return {int(index): {n: arrays[f"ref.{n}"][bounds[r]:bounds[r + 1]] for n in names}
            for r, index in enumerate(arrays["index"])}


def saved_key_mismatch(directory: Path, key: dict) -> str | None:
    """None when a saved cache matches key; else why it cannot be used."""
    if not (directory / KEY_FILE).is_file() or not (directory / ARRAYS_FILE).is_file():
        return "none saved"
    saved = json.loads((directory / KEY_FILE).read_text())
    changed = [part for part in sorted(key.keys() | saved.keys()) if key.get(part) != saved.get(part)]
    if changed:
        return "; ".join(f"{part} changed ({saved.get(part)!r} -> {key.get(part)!r})" for part in changed)
    return None


def _everyone(flag: bool) -> bool:
    """True when every process says True (so all load, or all compute: computing is collective)."""
    if jax.process_count() == 1:
        return flag
    from jax.experimental import multihost_utils

    return bool(np.asarray(multihost_utils.process_allgather(np.array([flag], np.int32))).min())


def cached_reference(config, objective, program, params, examples: Sequence[TokenizedExample]):
    """The reference cache of a run: read from the run directory when its key matches,
    else computed with the objective's reference_fn and saved there (process 0 writes)."""
    run_dir = config.train.run_dir
    local = "://" not in run_dir
    directory = Path(run_dir) / CACHE_DIR
    key = cache_key(config, examples)
    why = saved_key_mismatch(directory, key) if local else "run_dir is not a local path: not saved"
    if _everyone(why is None):
        log.info(f"reference cache: read from {directory}")
        return load_cache(directory)
    log.info(f"reference cache: computing over {len(examples)} examples ({why})")

    cache = precompute_reference(objective.reference_fn, program.graphdef, params, program.frozen, examples,
                                 batch_size=config.train.batch_size, max_len=config.data.max_len,
                                 buckets=config.data.buckets, put_batch=program.device_batch, progress=config.logging.progress,
                                 loss_index=config.data.gather_loss_positions)
    if local and jax.process_index() == 0 and cache:
        save_cache(directory, key, cache)
    return cache
