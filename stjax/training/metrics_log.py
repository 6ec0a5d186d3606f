"""Metrics on disk: `metrics.jsonl` (one object per logged step), TensorBoard events (the
scalars, the resolved config as text and the hyperparameters with the final metrics), and
optionally Weights & Biases (`logging.wandb`, the `wandb` extra).

Only process 0 writes. Values arrive as host floats: the trainer fetches a step's metrics
after dispatching the next step, so logging never stalls the device.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Literal

import jax
import yaml

from stjax.errors import MissingExtra


@dataclasses.dataclass
class WandbSection:
    project: str
    entity: str | None = None
    name: str | None = None  # default: the run directory's name
    tags: list[str] = dataclasses.field(default_factory=list)
    mode: Literal["online", "offline", "disabled"] = "online"  # wandb's own modes


def flat_hparams(config: dict, prefix: str = "") -> dict[str, float | int | str | bool]:
    """A nested config as `section.key` -> scalar (lists and nulls as text), for hparams views."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flat_hparams(value, f"{name}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb: WandbSection | None = None,
                 config: dict | None = None):
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.config, self.last = config, None
        self._file = self._tb = self._wandb = None
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self.path.open("a")
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(Path(run_dir) / "tensorboard"))
            if config is not None:
                self._tb.add_text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```")
        if wandb is not None:
            self._wandb = _wandb_run(wandb, Path(run_dir), config)

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        self.last = record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            for key, value in record.items():
                if key != "step" and isinstance(value, (int, float)):
                    self._tb.add_scalar(_tag(key), value, record["step"])
        if self._wandb is not None:
            self._wandb.log({_tag(k): v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            if self.config is not None and self.last is not None:
                final = {f"final/{k}": v for k, v in self.last.items() if k in ("loss", "ce", "kl", "step")}
                self._tb.add_hparams(flat_hparams(self.config), final, name="hparams")
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def _tag(key: str) -> str:
    """train/loss, eval/loss (for eval_loss), ..."""
    return f"eval/{key[len('eval_'):]}" if key.startswith("eval_") else f"train/{key}"


def _wandb_run(section: WandbSection, run_dir: Path, config: dict | None):
    try:
        import wandb
    except ImportError as e:
        raise MissingExtra(f"logging.wandb needs Weights & Biases: pip install 'stjax[wandb]' ({e})") from e
    # one W&B run per run directory: a resumed run continues it
    run_id = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:16]
    return wandb.init(project=section.project, entity=section.entity, name=section.name or run_dir.name,
                      tags=section.tags or None, mode=section.mode, config=config, dir=str(run_dir), id=run_id,
                      resume="allow")


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
