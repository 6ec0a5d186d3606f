"""The data section of the training config: which sources, mixed how, tokenized to what length."""

from __future__ import annotations

import dataclasses
from typing import Literal

from stjax.configlib import ConfigKeyError

KINDS = ("path", "tfds", "hf")


@dataclasses.dataclass
class SourceSection:
    """One data set: a local file (JSON, JSONL, CSV, parquet), a tensorflow-datasets name or
    a Hugging Face `datasets` id (or a local folder laid out like one)."""

    path: str | None = None
    tfds: str | None = None
    hf: str | None = None
    split: str = "train"  # tfds and hf
    subset: str | None = None  # hf: the dataset's configuration name
    revision: str | None = None  # hf: a branch, tag or commit
    columns: dict[str, str] = dataclasses.field(default_factory=dict)  # path and hf: {source key: stjax key}
    limit: int | None = None  # first N examples
    without_input: bool = False  # path and hf: just the records with no "input" (a PACT mix's harmful rows)

    def check(self, key: str) -> None:
        """One line naming `key` for a section that cannot work."""
        given = [kind for kind in KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            raise ConfigKeyError(f"'{key}': give exactly one of {', '.join(repr(k) for k in KINDS)}"
                            + (f", not {' and '.join(given)}" if given else ""))
        if self.tfds is not None and (self.without_input or self.columns):
            raise ConfigKeyError(f"'{key}.{'without_input' if self.without_input else 'columns'}': applies to files "
                            "and hf datasets, not to TFDS sets")
        if self.hf is None and (self.subset or self.revision):
            raise ConfigKeyError(f"'{key}.{'subset' if self.subset else 'revision'}': applies to hf datasets only")
        if self.limit is not None and self.limit < 1:
            raise ConfigKeyError(f"'{key}.limit': expected a positive number of examples, got {self.limit}")


@dataclasses.dataclass
class DataSection:
    train: list[SourceSection]
    eval: list[SourceSection] = dataclasses.field(default_factory=list)  # validation sets (train.eval_every)
    harmful: SourceSection | None = None  # mixed into train at harmful_ratio
    harmful_ratio: float = 0.0
    safety: SourceSection | None = None  # refusal rows mixed in at safety_ratio (safety_mix)
    safety_ratio: float = 0.0
    mix_seed: int = 0
    max_len: int = 512
    train_on: Literal["all", "last"] = "all"  # assistant turns that are targets: every one, or the final one
    buckets: list[int] | None = None  # padded lengths; default: powers of two up to max_len
    # batches name their loss positions (loss_index), so vocabulary projections run there only;
    # false: at every position (the same losses, another float summation order)
    gather_loss_positions: bool = True
    # several examples a row, each attending to itself only (stjax.data.packing); batch_size then
    # counts rows of max_len tokens
    packing: bool = False
    system_prompt: str | None = None
