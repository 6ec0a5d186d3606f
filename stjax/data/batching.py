"""Fixed-shape, per-host, resumable batches of tokenized examples.

Shapes: every batch is [global_batch_size / process_count, L] with L one of a few bucket
widths, so jit compiles one program per bucket, not per length. Rows are padded on the
right; padded positions have attention_mask False, loss_mask 0 and response_pos -1.

Order: epoch e is fixed by (seed, e) alone: examples are permuted, grouped by bucket
(the leftovers of a bucket ride up into the next, wider one, so only one batch per epoch
is partial), and the batches permuted. Every host computes the same global plan, so all
hosts agree on each step's width, and materialises only its own rows of each batch. The
last partial batch is padded with rows that have example_index -1 and zero masks
(`drop_last=True` drops it instead), so the global batch shape never changes.

Position: (epoch, index of the next batch) is the whole iterator state, so a run resumed
with `set_state(get_state())` sees exactly the batches the original run would have.

Also here: `bucket`, the power-of-two width of a compiled program (generation uses it
too), and `pack_teacher_forced`, prompt + response rows for teacher-forced scoring (PACT
stage 1, the eval's safety-token mass).
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

import numpy as np

from stjax.data.tokenize import TokenizedExample


def bucket(n: int, minimum: int = 16) -> int:
    """Next power of two >= n (and >= minimum): the shapes programs are compiled for."""
    return max(minimum, 1 << max(n - 1, 0).bit_length())


def bucket_lengths(max_len: int, buckets: Sequence[int] | None = None, min_len: int = 16) -> tuple[int, ...]:
    """Batch widths: `buckets` or powers of two from `min_len`, always ending at max_len."""
    if buckets is None:
        buckets = [1 << k for k in range(max(min_len, 1).bit_length() - 1, max_len.bit_length())]
    if any(b <= 0 or b > max_len for b in buckets):
        raise ValueError(f"bucket widths must be in 1..max_len={max_len}, got {list(buckets)}")
    return tuple(sorted({*buckets, max_len}))


def pack_teacher_forced(prompts: list[list[int]], responses: list[list[int]], rows: int, resp_len: int, pad_id: int):
    """Right-padded prompt+response tokens, and the index of the position predicting each response token."""
    width = bucket(max(len(p) + len(r) for p, r in zip(prompts, responses)))
    tokens = np.full((rows, width), pad_id, np.int32)
    mask = np.zeros((rows, width), bool)
    gather = np.zeros((rows, resp_len), np.int32)
    resp_mask = np.zeros((rows, resp_len), bool)
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        sequence = prompt + response
        tokens[i, : len(sequence)] = sequence
        mask[i, : len(sequence)] = True
        gather[i, : len(response)] = len(prompt) - 1 + np.arange(len(response))
        resp_mask[i, : len(response)] = True
    return tokens, mask, gather, resp_mask


def loss_widths(buckets: Sequence[int], bucket_of: np.ndarray, loss_counts: np.ndarray) -> dict[int, int]:
    """width -> R, the loss positions a batch of that width holds per row: the most loss tokens
    of an example that can ride in it (its own bucket or a narrower one), rounded up to a
    multiple of 8, at most the width."""
    out, most = {}, 0
    for b, width in enumerate(buckets):
        members = loss_counts[bucket_of == b]
        most = max(most, int(members.max()) if members.size else 0)
        out[width] = min(width, max(8, -(-most // 8) * 8))
    return out


def loss_index(loss_mask: np.ndarray, width: int) -> np.ndarray:
    """int32 [B, width]: each row's loss positions (loss_mask > 0) in order, then -1."""
    out = np.full((loss_mask.shape[0], width), -1, np.int32)
    for row, mask in enumerate(loss_mask):
        positions = np.flatnonzero(mask)
        if len(positions) > width:
            raise ValueError(f"row {row} has {len(positions)} loss positions, more than the index width {width}")
        out[row, : len(positions)] = positions
    return out


def process_rows(global_batch_size: int, process_index: int | None, process_count: int | None) -> slice:
    """This process's rows of every global batch (its share, in process order)."""
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size {global_batch_size} is not divisible by "
                         f"process_count {process_count}")
    return slice(process_index * global_batch_size // process_count,
                 (process_index + 1) * global_batch_size // process_count)


def place(batch: dict[str, np.ndarray], row: int, start: int, example: TokenizedExample) -> int:
    """Writes an example's inputs, targets, masks and response positions into `row` from
    `start`; returns its length."""
    n = len(example.tokens) - 1
    span = slice(start, start + n)
    batch["inputs"][row, span] = example.tokens[:-1]
    batch["targets"][row, span] = example.tokens[1:]
    batch["loss_mask"][row, span] = example.loss_mask
    batch["attention_mask"][row, span] = True
    batch["response_pos"][row, span] = example.response_pos
    return n


def empty_batch(rows: int, width: int) -> dict[str, np.ndarray]:
    shape = (rows, width)
    return {"inputs": np.zeros(shape, np.int32), "targets": np.zeros(shape, np.int32),
            "loss_mask": np.zeros(shape, np.float32), "attention_mask": np.zeros(shape, bool),
            "response_pos": np.full(shape, -1, np.int32)}


class EpochBatches(abc.ABC):
    """What bucketed and packed batches share: a plan of batches per epoch, a function of
    (seed, epoch) alone (`_epoch_plan`, by the subclass), each turned into this process's rows
    (`_collate`); (epoch, next batch) is the whole state."""

    def _start(self) -> None:
        self._epoch, self._index = 0, 0
        self._plan_epoch, self._plan = -1, []

    @abc.abstractmethod
    def _epoch_plan(self, epoch: int) -> list:
        """The batches of `epoch`, in order (cached for the current epoch)."""

    @abc.abstractmethod
    def _collate(self, entry) -> dict[str, np.ndarray]:
        """One plan entry -> this process's host batch."""

    @property
    def batches_per_epoch(self) -> int:
        return len(self._epoch_plan(self._epoch))

    def get_state(self) -> dict[str, int]:
        """The position of the next batch, as a JSON-able dict."""
        return {"epoch": self._epoch, "index": self._index}

    def set_state(self, state: dict[str, int]) -> None:
        epoch, index = int(state["epoch"]), int(state["index"])
        if epoch < 0 or not 0 <= index <= len(self._epoch_plan(epoch)):
            raise ValueError(f"iterator state {state} is out of range ({self.batches_per_epoch} batches an epoch)")
        self._epoch, self._index = epoch, index

    def __iter__(self):
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        if self._index >= len(self._epoch_plan(self._epoch)):
            self._epoch, self._index = self._epoch + 1, 0
        entry = self._epoch_plan(self._epoch)[self._index]
        self._index += 1
        return self._collate(entry)


class BatchIterator(EpochBatches):
    """Endless iterator of host batches (dicts of numpy arrays), epoch after epoch.

    Keys: inputs, targets (int32 [B, L]), loss_mask (float32 [B, L]), attention_mask
    (bool [B, L]), response_pos (int32 [B, L]), example_index (int32 [B]: the
    `TokenizedExample.index` of each row, -1 for padding rows) and loss_index (int32 [B, R]:
    each row's loss positions, then -1), so that losses project onto the vocabulary at those
    R positions only. R is fixed per width (`loss_widths`: the most loss tokens of any example
    a batch of that width can hold, rounded up to a multiple of 8), so it adds no program.
    """

    def __init__(self, examples: Sequence[TokenizedExample], global_batch_size: int, max_len: int, *,
                 buckets: Sequence[int] | None = None, seed: int = 0, shuffle: bool = True,
                 drop_last: bool = False, process_index: int | None = None, process_count: int | None = None,
                 loss_index: bool = True):
        self._rows = process_rows(global_batch_size, process_index, process_count)
        lengths = np.array([len(e.tokens) - 1 for e in examples], dtype=np.int64)
        if lengths.size and lengths.max() > max_len:
            raise ValueError(f"an example has {lengths.max() + 1} tokens, more than max_len={max_len}")
        self.examples = list(examples)
        self.buckets = bucket_lengths(max_len, buckets)
        self.global_batch_size = global_batch_size
        self.seed, self.shuffle, self.drop_last, self.with_loss_index = seed, shuffle, drop_last, loss_index
        self._bucket_of = np.searchsorted(self.buckets, lengths)
        self.loss_widths = loss_widths(self.buckets, self._bucket_of,
                                       np.array([np.count_nonzero(e.loss_mask) for e in examples], np.int64))
        self._start()
        if not self.batches_per_epoch:
            raise ValueError(f"{len(self.examples)} examples make no batch of {global_batch_size}"
                             + (" with drop_last" if drop_last else ""))

    def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """(width, example positions [global_batch_size], -1 for padding) for each batch."""
        if epoch == self._plan_epoch:
            return self._plan
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples)) if self.shuffle else np.arange(len(self.examples))
        size, plan = self.global_batch_size, []
        carry = np.zeros(0, np.int64)
        for bucket, width in enumerate(self.buckets):
            members = np.concatenate([carry, order[self._bucket_of[order] == bucket]])
            full = len(members) - len(members) % size
            plan += [(width, members[i:i + size]) for i in range(0, full, size)]
            carry = members[full:]
        if len(carry) and not self.drop_last:
            width = self.buckets[self._bucket_of[carry].max()]
            plan.append((width, np.pad(carry, (0, size - len(carry)), constant_values=-1)))
        if self.shuffle:
            plan = [plan[i] for i in rng.permutation(len(plan))]
        self._plan_epoch, self._plan = epoch, plan
        return plan

    def _collate(self, entry: tuple[int, np.ndarray]) -> dict[str, np.ndarray]:
        width, rows = entry[0], entry[1][self._rows]
        batch = empty_batch(len(rows), width)
        batch["example_index"] = np.full(len(rows), -1, np.int32)
        for row, position in enumerate(rows):
            if position >= 0:
                place(batch, row, 0, self.examples[position])
                batch["example_index"][row] = self.examples[position].index
        if self.with_loss_index:
            batch["loss_index"] = loss_index(batch["loss_mask"], self.loss_widths[width])
        return batch
