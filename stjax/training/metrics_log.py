"""Metrics on disk: `metrics.jsonl` (one object per logged step), TensorBoard events (the
scalars, the resolved config as text and the hyperparameters with the final metrics), and
optionally Weights & Biases (`logging.wandb`, the `wandb` extra).

Only process 0 writes. Values arrive as host floats: the trainer fetches a step's metrics
after dispatching the next step, so logging never stalls the device. Every write happens in
the caller's thread and is flushed at once: a full or read-only disk raises one
`MetricsWriteError` naming the file (a background writer would die silently, then block).
"""

from __future__ import annotations

import dataclasses
import hashlib
import contextlib
import json
import os
import socket
import struct
import time
from pathlib import Path
from typing import Literal

import jax
import yaml

from stjax.errors import MissingExtra, UserError


class MetricsWriteError(UserError):
    """metrics.jsonl or the TensorBoard events could not be written (a full or read-only disk)."""


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


class EventFile:
    """One TensorBoard event file (TFRecord framing), written in the caller's thread: each
    `add` reaches the operating system at once (flushed, not synced; closing syncs)."""

    def __init__(self, directory: Path):
        from tensorboardX.proto.event_pb2 import Event

        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
        self._file = (directory / name).open("ab")
        self._write(Event(wall_time=time.time(), file_version="brain.Event:2"))

    def _write(self, event) -> None:
        from tensorboardX.record_writer import masked_crc32c

        data = event.SerializeToString()
        header = struct.pack("<Q", len(data))
        self._file.write(header + struct.pack("<I", masked_crc32c(header)) + data + struct.pack("<I", masked_crc32c(data)))

    def add(self, summaries: list, step: int | None = None) -> None:
        from tensorboardX.proto.event_pb2 import Event

        for summary in summaries:
            event = Event(wall_time=time.time(), summary=summary)
            if step is not None:
                event.step = step
            self._write(event)
        self._file.flush()

    def close(self) -> None:
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        finally:
            self._file.close()


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, tensorboard: bool = True, wandb: WandbSection | None = None,
                 config: dict | None = None):
        self.enabled = jax.process_index() == 0
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tensorboard_dir = Path(run_dir) / "tensorboard"
        self.config, self.last, self.failed = config, None, False
        self._file = self._tb = self._wandb = None
        if not self.enabled:
            return
        with self._writing(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            _drop_partial_line(self.path)
            self._file = self.path.open("a")
        try:
            if tensorboard:
                from tensorboardX.summary import text

                with self._writing(self.tensorboard_dir):
                    self._tb = EventFile(self.tensorboard_dir)
                    if config is not None:
                        self._tb.add([text("config", "```yaml\n" + yaml.safe_dump(config, sort_keys=False) + "```")])
            if wandb is not None:
                self._wandb = _wandb_run(wandb, Path(run_dir), config)
        except BaseException:
            self.failed = True
            self.close()
            raise

    @contextlib.contextmanager
    def _writing(self, path: Path):
        """An OSError (out of space, read-only, permissions) becomes one MetricsWriteError
        naming `path`; the log stops writing (closing it then only releases the files)."""
        try:
            yield
        except OSError as e:
            self.failed = True
            why = f"{e.strerror or e} (errno {e.errno})" if e.errno is not None else str(e)
            raise MetricsWriteError(f"{path}: could not be written: {why}") from None

    def write(self, record: dict) -> None:
        if not self.enabled or self.failed:
            return
        self.last = record
        with self._writing(self.path):
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()
        if self._tb is not None:
            from tensorboardX.summary import scalar

            with self._writing(self.tensorboard_dir):
                self._tb.add([scalar(_tag(key), value) for key, value in record.items()
                              if key != "step" and isinstance(value, (int, float))], record["step"])
        if self._wandb is not None:
            self._wandb.log({_tag(k): v for k, v in record.items() if k != "step"}, step=record["step"])

    def close(self, *, final: bool = True) -> None:
        """Writes the hyperparameters with the final metrics (when the run ended well: `final`)
        and closes every file; raises MetricsWriteError when that fails, unless a failure was
        reported already."""
        try:
            if final and self._tb is not None and not self.failed and self.config is not None and self.last is not None:
                self._hparams()
        finally:
            first = None  # every file is closed; the first failure is raised after
            for handle, path in ((self._file, self.path), (self._tb, self.tensorboard_dir)):
                if handle is not None:
                    try:
                        with contextlib.suppress(OSError) if self.failed else self._writing(path):
                            handle.close()
                    except MetricsWriteError as e:
                        first = first or e
            self._file = self._tb = None
            if self._wandb is not None:
                self._wandb.finish()
                self._wandb = None
            if first is not None:
                raise first

    def _hparams(self) -> None:
        """TensorBoard's hparams view: the flat config and the final loss terms, in `hparams/`."""
        from tensorboardX.summary import hparams, scalar

        final = {f"final/{k}": v for k, v in self.last.items() if k in ("loss", "ce", "kl", "step")}
        with self._writing(self.tensorboard_dir / "hparams"):
            events = EventFile(self.tensorboard_dir / "hparams")
            try:
                events.add(list(hparams(flat_hparams(self.config), final)))
                events.add([scalar(k, v) for k, v in final.items()])
            finally:
                events.close()


def _drop_partial_line(path: Path) -> None:
    """Cuts metrics.jsonl back to its last complete line (a full disk can stop a write midway),
    so the lines a resumed run appends stay one JSON object each."""
    if not path.is_file() or path.stat().st_size == 0:
        return
    with path.open("rb+") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
            return
        f.seek(0)
        f.truncate(f.read().rfind(b"\n") + 1)


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
