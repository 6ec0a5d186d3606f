"""Mixing a second set into a task set at a fixed fraction, deterministically by seed.

The same operation builds the harmful-mix attack sets (harmful rows into SST-2 / AG News)
and the safety mixes that defend against them (refusal rows into the task set).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


def _draw(rows: Sequence[T], count: int, rng: np.random.Generator) -> list[T]:
    """`count` rows without repeats while they last, then whole fresh permutations again."""
    if count == 0:
        return []
    if not rows:
        raise ValueError(f"need {count} rows from an empty set")
    rounds = -(-count // len(rows))
    order = np.concatenate([rng.permutation(len(rows)) for _ in range(rounds)])[:count]
    return [rows[i] for i in order]


def mix(base: Sequence[T], extra: Sequence[T], ratio: float, *, seed: int = 0,
        size: int | None = None) -> list[T]:
    """A shuffled set in which a fraction `ratio` of the rows (to the nearest row) is `extra`.

    Without `size`, every `base` row is kept once and `extra` rows are added to reach the
    ratio; with `size`, the total is `size` (the PACT sets: size=5000, ratio=0.1 is 4500
    task rows + 500 harmful ones). Rows are drawn without repeats while a set lasts, so a
    100-row refusal set is cycled evenly when more rows are needed.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    if size is None:
        n_extra = round(ratio * len(base) / (1.0 - ratio))
        n_base = len(base)
    else:
        n_extra = round(ratio * size)
        n_base = size - n_extra
    rng = np.random.default_rng(seed)
    rows = _draw(base, n_base, rng) + _draw(extra, n_extra, rng)
    return [rows[i] for i in rng.permutation(len(rows))]


def safety_mix(task: Sequence[T], refusals: Sequence[T], ratio: float, *, seed: int = 0,
               size: int | None = None) -> list[T]:
    """`mix` under the name the safety-data recipes use: refusal rows at `ratio` of the set."""
    return mix(task, refusals, ratio, seed=seed, size=size)
