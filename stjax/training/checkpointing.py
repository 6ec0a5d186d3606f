"""Training checkpoints with orbax: train state + data-iterator position, atomically.

orbax writes each step into a temporary directory and renames it when complete, so a
crash or SIGTERM mid-save never corrupts the last good checkpoint; paths may be local or
`gs://`. Saves are asynchronous: training continues while the previous state is written.
"""

from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from stjax.training.step import TrainState


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

    def set_aside(self, from_step: int) -> list[int]:
        """Takes the checkpoints at `from_step` and later out of resumption (their weights
        diverged): renamed to `diverged-<step>` (`.1`, `.2` for repeats; kept for inspection) on local disks, deleted
        elsewhere. Returns their steps."""
        self.manager.wait_until_finished()
        steps = [s for s in self.manager.all_steps() if s >= from_step]
        for step in steps:
            if "://" in self.directory:
                self.manager.delete(step)
            else:
                target, n = os.path.join(self.directory, f"diverged-{step}"), 1
                while os.path.exists(target):  # diverged there before: keep both
                    target, n = os.path.join(self.directory, f"diverged-{step}.{n}"), n + 1
                os.replace(os.path.join(self.directory, str(step)), target)
        if steps:
            self.manager.reload()
        return sorted(steps)

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
