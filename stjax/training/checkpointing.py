"""Training checkpoints with orbax: train state + data-iterator position, atomically.

orbax writes each step into a temporary directory and renames it when complete, so a
crash or SIGTERM mid-save never corrupts the last good checkpoint; paths may be local or
`gs://`. Saves are asynchronous: training continues while the previous state is written.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import orbax.checkpoint as ocp
import yaml

from stjax.errors import UserError
from stjax.training.step import TrainState

# the config parts that shape a checkpoint's state or give its numbers their meaning: a
# resumed run must share them (train.max_steps, epochs, logging, eval and export may change)
STATE_PARTS = {"model": ("path", "revision", "dtype"), "lora": None, "optimizer": None, "train": ("batch_size", "grad_accum", "seed"),
               "data": ("train", "harmful", "harmful_ratio", "safety", "safety_ratio", "mix_seed", "max_len", "buckets",
                        "system_prompt", "train_on")}
# tensorstore's words for a checkpoint file that is missing, cut short or unreadable
DAMAGE = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "Error reading", "No such file", "not valid for value of size",
          "Unexpected end", "corrupt")


class CheckpointMismatch(UserError):
    """Resuming with a config whose state-shaping parts differ from the run's."""


def config_changes(old: dict, new: dict) -> list[str]:
    """`section.key: old -> new` for each state-shaping setting that differs."""
    changes = []
    for section, keys in STATE_PARTS.items():
        before, after = old.get(section) or {}, new.get(section) or {}
        for key in keys or sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append(f"{section}.{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return changes


def check_resumable(run_dir: str | Path, config: dict, step: int) -> None:
    """Before anything in the run directory is rewritten: the run's own config.yaml (what
    trained its checkpoints) must agree with `config` on the state-shaping parts."""
    saved = Path(run_dir) / "config.yaml"
    if not saved.is_file():
        return
    try:
        old = yaml.safe_load(saved.read_text())
    except yaml.YAMLError:
        return  # unreadable: the restore itself checks shapes
    changes = config_changes(old if isinstance(old, dict) else {}, config)
    if changes:
        raise CheckpointMismatch(f"{run_dir}: its checkpoints (step {step}) were trained with another config: "
                                 f"{'; '.join(changes)}; restore those settings, or use another train.run_dir")


def is_damage(error: Exception) -> bool:
    """True for a restore error that says a checkpoint file is missing, truncated or corrupt."""
    return isinstance(error, (FileNotFoundError, EOFError)) or any(word in str(error) for word in DAMAGE)


class Checkpointer:
    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True):
        # orbax wants absolute paths; URLs (gs://...) pass through
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        self.manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

    def restore(self, step: int, target: TrainState, shardings: TrainState) -> tuple[TrainState, dict]:
        """Restores into `shardings` (abstract targets rebuilt with concrete NamedShardings)."""
        abstract = jax.tree.map(
            lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), target, shardings)
        restored = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract),
            data=ocp.args.JsonRestore(),
        ))
        return restored.state, restored.data

    def set_aside(self, from_step: int, *, to_step: int | None = None, why: str = "diverged") -> list[int]:
        """Takes the checkpoints from `from_step` (to `to_step`) out of resumption: renamed to
        `<why>-<step>` (`.1`, `.2` for repeats; kept for inspection) on local disks, deleted
        elsewhere. Returns their steps (every process calls it)."""
        self.manager.wait_until_finished()
        steps = [s for s in self.manager.all_steps() if s >= from_step and (to_step is None or s <= to_step)]
        for step in steps:
            if "://" in self.directory:
                self.manager.delete(step)
            elif jax.process_index() == 0:  # one process renames a directory they all may share
                target, n = os.path.join(self.directory, f"{why}-{step}"), 1
                while os.path.exists(target):  # set aside there before: keep both
                    target, n = os.path.join(self.directory, f"{why}-{step}.{n}"), n + 1
                os.replace(os.path.join(self.directory, str(step)), target)
        if steps:
            self.manager.reload()
        return sorted(steps)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
