"""The training config schema: one dataclass per YAML section."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from stjax.configlib import ConfigKeyError, apply_overrides, from_dict, read_yaml


@dataclasses.dataclass
class ModelSection:
    path: str  # Hub-format directory (config.json + safetensors)
    tokenizer: str | None = None  # defaults to the model directory
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # parameter storage
    compute_dtype: Literal["float32", "bfloat16"] | None = None  # defaults to dtype
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention: str = "xla"


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


@dataclasses.dataclass
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass
class LoraSection:
    enabled: bool = True
    rank: int = 8
    alpha: float = 32.0
    dropout: float = 0.05
    targets: list[str] = dataclasses.field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclasses.dataclass
class OptimizerSection:
    lr: float = 3e-5
    schedule: Literal["constant", "warmup_cosine", "step_decay"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine floor, as a fraction of lr
    decay_gamma: float = 0.85  # step_decay: lr *= gamma after every epoch
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float | None = 1.0


@dataclasses.dataclass
class LossSection:
    """`kind` picks the objective; the other keys parametrize the ones that use them."""

    kind: Literal["sft", "pact", "kl", "constrained_sft", "pact_bucket"] = "sft"
    chunk_tokens: int = 512  # tokens per chunk of the vocabulary projection
    lam: float = 1.0  # weight of the KL term (PACT's lambda; kl baseline too)
    ref: Literal["online", "cached"] = "cached"  # reference logits: in the step, or precomputed once
    # PACT
    safety_tokens: str | None = None  # output directory of python -m stjax.safety_tokens
    temperature: float = 2.0
    gate_top_p: float = 0.9
    gate_alpha: float = 2.0
    gate_bias: float = 0.0
    gate_temperature: float = 1.0
    gate_prefix_n: int = 8
    gate_decay_tau: float = 8.0
    gate_prefix_boost: float = 1.0
    # constrained_sft (Qi et al. 2025): beta_1, beta_2..beta_{early_until}, then beta_late
    beta_first: float = 0.5
    beta_early: float = 2.0
    beta_late: float = 0.1
    early_until: int = 5


@dataclasses.dataclass
class TrainSection:
    run_dir: str = "runs/default"
    seed: int = 0
    epochs: int = 1
    max_steps: int | None = None  # stop early (None: run all epochs)
    batch_size: int = 8  # global, in examples, per optimizer step
    grad_accum: int = 1  # micro-batches per step (batch_size must divide)
    log_every: int = 1
    resume: Literal["auto", "never"] = "auto"
    export_merged: bool = False  # LoRA: also write a merged Hub checkpoint
    export_adapter: bool = True  # LoRA: write a PEFT adapter; full FT: a Hub checkpoint


@dataclasses.dataclass
class CheckpointSection:
    dir: str | None = None  # default: <run_dir>/checkpoints
    every_steps: int = 500
    keep: int = 2
    async_save: bool = True


@dataclasses.dataclass
class LoggingSection:
    progress: bool = True
    tensorboard: bool = True


@dataclasses.dataclass
class TrainConfig:
    model: ModelSection
    data: DataSection
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)
    lora: LoraSection = dataclasses.field(default_factory=LoraSection)
    optimizer: OptimizerSection = dataclasses.field(default_factory=OptimizerSection)
    loss: LossSection = dataclasses.field(default_factory=LossSection)
    train: TrainSection = dataclasses.field(default_factory=TrainSection)
    checkpoint: CheckpointSection = dataclasses.field(default_factory=CheckpointSection)
    logging: LoggingSection = dataclasses.field(default_factory=LoggingSection)

    @property
    def checkpoint_dir(self) -> str:
        return self.checkpoint.dir or str(Path(self.train.run_dir) / "checkpoints")


def validate(config: TrainConfig) -> TrainConfig:
    """Cross-field checks the types cannot express."""
    sources = {f"data.train[{i}]": source for i, source in enumerate(config.data.train)}
    sources.update({f"data.{k}": getattr(config.data, k) for k in ("harmful", "safety") if getattr(config.data, k)})
    for key, source in sources.items():
        if (source.path is None) == (source.tfds is None):
            raise ConfigKeyError(f"'{key}': give exactly one of 'path' or 'tfds'")
        if source.without_input and source.tfds is not None:
            raise ConfigKeyError(f"'{key}.without_input': applies to JSON/JSONL files, not to TFDS sets")
    if config.train.batch_size % config.train.grad_accum:
        raise ConfigKeyError(
            f"'train.batch_size': {config.train.batch_size} is not divisible by train.grad_accum={config.train.grad_accum}"
        )
    if not 0.0 <= config.data.harmful_ratio < 1.0:
        raise ConfigKeyError(f"'data.harmful_ratio': expected a value in [0, 1), got {config.data.harmful_ratio}")
    if config.data.harmful_ratio > 0 and config.data.harmful is None:
        raise ConfigKeyError("'data.harmful': required when data.harmful_ratio > 0")
    if config.data.safety_ratio > 0 and config.data.safety is None:
        raise ConfigKeyError("'data.safety': required when data.safety_ratio > 0")
    if config.loss.kind in ("pact", "pact_bucket") and not config.loss.safety_tokens:
        raise ConfigKeyError(f"'loss.safety_tokens': required when loss.kind is {config.loss.kind} "
                             "(run python -m stjax.safety_tokens first)")
    return config


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    data = apply_overrides(read_yaml(path), list(overrides))
    return validate(from_dict(TrainConfig, data))
