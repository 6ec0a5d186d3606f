"""The data section of the training config: which sources, mixed how, tokenized to what length."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class SourceSection:
    """One data set: a local JSON/JSONL file or a tensorflow-datasets name."""

    path: str | None = None
    tfds: str | None = None
    split: str = "train"
    limit: int | None = None  # first N examples
    without_input: bool = False  # files only: just the records with no "input" (a PACT mix's harmful rows)


@dataclasses.dataclass
class DataSection:
    train: list[SourceSection]
    harmful: SourceSection | None = None  # mixed into train at harmful_ratio
    harmful_ratio: float = 0.0
    safety: SourceSection | None = None  # refusal rows mixed in at safety_ratio (safety_mix)
    safety_ratio: float = 0.0
    mix_seed: int = 0
    max_len: int = 512
    buckets: list[int] | None = None  # padded lengths; default: powers of two up to max_len
    system_prompt: str | None = None
