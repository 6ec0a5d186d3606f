"""Packed batches (`data.packing: true`): several examples a row, each attending only to itself.

Rows are `max_len` wide; examples are placed, in the epoch's shuffled order, into the first of
the most recent open rows with room for their tokens and their loss tokens (first fit over a
window of rows, so the order stays random). A batch is `global_batch_size` rows, so with
packing `train.batch_size` counts rows, not examples (as in TRL's packing), and an epoch has
fewer, fuller steps.

Each row carries, besides the keys of `BatchIterator`'s batches:
- segment_ids (int32 [B, L]): 1, 2, ... for the row's examples, 0 for padding; the model's
  attention is causal within a segment only;
- positions (int32 [B, L]): each token's position within its example, as if it were alone;
- example_index (int32 [B, S]): the examples of each row in order, then -1 (S fixed per run).
Each example's targets, loss mask and response positions are its own, so a loss summed over a
packed batch equals the loss summed over the same examples unpacked (the reference passes run
per segment: `stjax.pact.reference.packed_response_only`, `CachedBatches`).

Fixed shapes: one width, and R (loss positions a row, `loss_index`) and S are fixed for the
run: R from the data's share of loss tokens (a row takes no example beyond it), S from the
shortest example. Order and resumption work as in `BatchIterator`: (epoch, next batch) is the
state, and an epoch's plan is a function of (seed, epoch) alone. Each epoch packs its own order,
so its step count can differ from the first epoch's by a batch or so (the trainer sizes the run
from the first).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from stjax.data.batching import EpochBatches, empty_batch, loss_index, place, process_rows
from stjax.data.tokenize import TokenizedExample

OPEN_ROWS = 32  # rows still taking examples while packing (first fit among them)


def pack_rows(order: np.ndarray, lengths: np.ndarray, losses: np.ndarray, width: int, loss_width: int,
              max_segments: int) -> list[list[int]]:
    """Rows of example positions: each row's tokens <= width, loss tokens <= loss_width and
    examples <= max_segments; examples go, in `order`, into the first open row that fits."""
    rows: list[list[int]] = []
    room: list[list[int]] = []  # per open row: [tokens left, loss tokens left, row number]
    for position in order:
        n, r = int(lengths[position]), int(losses[position])
        for slot in room:
            if slot[0] >= n and slot[1] >= r and len(rows[slot[2]]) < max_segments:
                rows[slot[2]].append(int(position))
                slot[0] -= n
                slot[1] -= r
                break
        else:
            rows.append([int(position)])
            room.append([width - n, loss_width - r, len(rows) - 1])
            if len(room) > OPEN_ROWS:
                room.pop(0)
    return rows


def packed_loss_width(lengths: np.ndarray, losses: np.ndarray, width: int) -> int:
    """R for packed rows: 1.5x the data's share of loss tokens in a full row, at least the most
    loss tokens of one example, rounded up to a multiple of 8, at most the width."""
    share = losses.sum() / max(lengths.sum(), 1)
    wanted = max(int(losses.max(initial=0)), int(np.ceil(1.5 * share * width)))
    return min(width, max(8, -(-wanted // 8) * 8))


class PackedBatchIterator(EpochBatches):
    """Endless iterator of packed host batches, epoch after epoch (the interface of
    `BatchIterator`: batches_per_epoch, get_state / set_state)."""

    def __init__(self, examples: Sequence[TokenizedExample], global_batch_size: int, max_len: int, *,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False, process_index: int | None = None,
                 process_count: int | None = None, loss_index: bool = True):
        self._rows = process_rows(global_batch_size, process_index, process_count)
        self.examples = list(examples)
        self.lengths = np.array([len(e.tokens) - 1 for e in self.examples], np.int64)
        if self.lengths.size and self.lengths.max() > max_len:
            raise ValueError(f"an example has {self.lengths.max() + 1} tokens, more than max_len={max_len}")
        self.losses = np.array([np.count_nonzero(e.loss_mask) for e in self.examples], np.int64)
        self.width, self.global_batch_size = max_len, global_batch_size
        self.loss_width = packed_loss_width(self.lengths, self.losses, max_len)
        self.max_segments = max(1, max_len // max(int(self.lengths.min()) if self.lengths.size else 1, 1))
        self.seed, self.shuffle, self.drop_last, self.with_loss_index = seed, shuffle, drop_last, loss_index
        self._start()
        if not self.batches_per_epoch:
            raise ValueError(f"{len(self.examples)} examples make no batch of {global_batch_size} packed rows"
                             + (" with drop_last" if drop_last else ""))

    def _epoch_plan(self, epoch: int) -> list[list[list[int]]]:
        """Per batch, its global_batch_size rows of example positions (empty lists: padding rows)."""
        if epoch == self._plan_epoch:
            return self._plan
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples)) if self.shuffle else np.arange(len(self.examples))
        rows = pack_rows(order, self.lengths, self.losses, self.width, self.loss_width, self.max_segments)
        size = self.global_batch_size
        full = len(rows) - len(rows) % size
        plan = [rows[i:i + size] for i in range(0, full, size)]
        if full < len(rows) and not self.drop_last:
            plan.append(rows[full:] + [[] for _ in range(size - (len(rows) - full))])
        self._plan_epoch, self._plan = epoch, plan
        return plan

    def _collate(self, entry: list[list[int]]) -> dict[str, np.ndarray]:
        rows = entry[self._rows]
        batch = empty_batch(len(rows), self.width)
        batch["segment_ids"] = np.zeros((len(rows), self.width), np.int32)
        batch["positions"] = np.zeros((len(rows), self.width), np.int32)
        batch["example_index"] = np.full((len(rows), self.max_segments), -1, np.int32)
        for row, members in enumerate(rows):
            at = 0
            for segment, position in enumerate(members):
                n = place(batch, row, at, self.examples[position])
                batch["segment_ids"][row, at:at + n] = segment + 1
                batch["positions"][row, at:at + n] = np.arange(n)
                batch["example_index"][row, segment] = self.examples[position].index
                at += n
        if self.with_loss_index:
            batch["loss_index"] = loss_index(batch["loss_mask"], self.loss_width)
        return batch
