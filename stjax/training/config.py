"""The training config: the sections its modules own, composed, plus the run's own sections.

model and mesh: `stjax.models.sections`; data: `stjax.data.sections`; lora: `stjax.lora`;
loss: `stjax.training.objectives`; optimizer: `stjax.training.optimizer`; train,
checkpoint and logging are the training loop's and live here.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from stjax.configlib import ConfigKeyError, apply_overrides, from_dict, read_yaml
from stjax.data.sections import DataSection
from stjax.lora import LoraSection
from stjax.models.sections import MeshSection, ModelSection, mesh_rules
from stjax.training.metrics_log import WandbSection
from stjax.training.objectives import LossSection
from stjax.training.optimizer import OptimizerSection
from stjax.training.presets import apply_preset


Export = Literal["adapter", "merged", "model"]


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
    # what the finished run writes: adapter (LoRA: a PEFT adapter in adapter/), merged (LoRA: the
    # base with the adapters merged, a Hub checkpoint in merged/), model (full fine-tuning: a Hub
    # checkpoint in model/), a list of them, or none. null: adapter with LoRA, model without.
    export: Export | list[Export] | Literal["none"] | None = None
    eval_every: int | None = None  # validation loss on data.eval every N steps (null: at the end only)

    def exports(self, lora: bool) -> list[str]:
        if self.export is None:
            return ["adapter" if lora else "model"]
        if self.export == "none":
            return []
        return [self.export] if isinstance(self.export, str) else list(self.export)


@dataclasses.dataclass
class CheckpointSection:
    dir: str | None = None  # default: <run_dir>/checkpoints
    every_steps: int = 500
    keep: int = 2
    async_save: bool = True


@dataclasses.dataclass
class LoggingSection:
    progress: bool = True
    tensorboard: bool = True  # scalars, plus the resolved config and hyperparameters
    wandb: WandbSection | None = None  # Weights & Biases (pip install 'stjax[wandb]')


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
        if self.checkpoint.dir:
            return self.checkpoint.dir
        run_dir = self.train.run_dir
        return f"{run_dir.rstrip('/')}/checkpoints" if "://" in run_dir else str(Path(run_dir) / "checkpoints")


POSITIVE = {"train.batch_size": lambda c: c.train.batch_size, "train.epochs": lambda c: c.train.epochs,
            "train.grad_accum": lambda c: c.train.grad_accum, "train.log_every": lambda c: c.train.log_every,
            "train.max_steps": lambda c: c.train.max_steps, "checkpoint.every_steps": lambda c: c.checkpoint.every_steps,
            "checkpoint.keep": lambda c: c.checkpoint.keep, "data.max_len": lambda c: c.data.max_len,
            "loss.chunk_tokens": lambda c: c.loss.chunk_tokens}


def validate(config: TrainConfig) -> TrainConfig:
    """Cross-field checks the types cannot express."""
    for key, value in POSITIVE.items():
        if value(config) is not None and value(config) < 1:
            raise ConfigKeyError(f"'{key}': expected a positive number, got {value(config)}")
    if not 0.0 <= config.data.safety_ratio < 1.0:
        raise ConfigKeyError(f"'data.safety_ratio': expected a value in [0, 1), got {config.data.safety_ratio}")
    if config.optimizer.lr < 0:
        raise ConfigKeyError(f"'optimizer.lr': expected a non-negative learning rate, got {config.optimizer.lr}")
    sources = {f"data.train[{i}]": source for i, source in enumerate(config.data.train)}
    sources.update({f"data.{k}": getattr(config.data, k) for k in ("harmful", "safety") if getattr(config.data, k)})
    sources.update({f"data.eval[{i}]": source for i, source in enumerate(config.data.eval)})
    if config.train.eval_every is not None and (config.train.eval_every < 1 or not config.data.eval):
        raise ConfigKeyError(f"'train.eval_every': expected a positive number of steps with data.eval sources, got "
                             f"{config.train.eval_every}{'' if config.data.eval else ' and no data.eval'}")
    for key, source in sources.items():
        source.check(key)
    if config.lora.enabled:
        config.lora.check()
    mesh_rules(config.mesh)  # unknown logical axes or mesh axes fail here, before anything loads
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
    for export in config.train.exports(config.lora.enabled):
        if (export == "model") == config.lora.enabled:
            need = "full fine-tuning (lora.enabled: false)" if export == "model" else "LoRA (lora.enabled: true)"
            raise ConfigKeyError(f"'train.export': {export!r} needs {need}; with "
                                 f"{'LoRA' if config.lora.enabled else 'full fine-tuning'} choose "
                                 f"{'adapter and/or merged' if config.lora.enabled else 'model'}")
    if config.loss.kind != "pact" and (config.loss.kl_first_positions is not None or not config.loss.kl_at_end):
        raise ConfigKeyError(f"'loss.kl_first_positions' / 'loss.kl_at_end': apply to loss.kind pact, "
                             f"not {config.loss.kind}")
    if config.loss.kl_first_positions is not None and config.loss.kl_first_positions < 1:
        raise ConfigKeyError(f"'loss.kl_first_positions': expected a positive number of positions, got "
                             f"{config.loss.kl_first_positions}")
    if config.data.packing and config.loss.kind == "pact_bucket":
        raise ConfigKeyError("'data.packing': not for loss.kind pact_bucket (its vocabulary-wide reference pass "
                             "runs per row): set data.packing: false")
    if config.loss.kind in ("pact", "pact_bucket") and not config.loss.safety_tokens:
        raise ConfigKeyError(f"'loss.safety_tokens': required when loss.kind is {config.loss.kind} "
                             "(run stjax safety-tokens first)")
    return config


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    """The file (with its `base:` files), then the overrides, then its `preset:` under both."""
    data = apply_preset(apply_overrides(read_yaml(path), list(overrides)))
    return validate(from_dict(TrainConfig, data))
