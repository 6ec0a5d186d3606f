"""Training checkpoints with orbax: train state + data-iterator position, atomically.

orbax writes each step into a temporary directory and renames it when complete, so a
crash or SIGTERM mid-save never corrupts the last good checkpoint; paths may be local or
`gs://`. Saves are asynchronous: training continues while the previous state is written.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from pathlib import Path

import jax
from etils import epath
import orbax.checkpoint as ocp
import yaml

from stjax.errors import UserError
from stjax.logs import get_logger
from stjax.training.step import TrainState

log = get_logger(__name__)

# the config parts that shape a checkpoint's state or give its numbers their meaning: a
# resumed run must share them (train.max_steps, epochs, logging, eval and export may change)
STATE_PARTS = {"model": ("path", "revision", "dtype", "scan_layers"), "lora": None, "optimizer": None,
               "train": ("batch_size", "grad_accum", "seed"),
               "data": ("train", "harmful", "harmful_ratio", "safety", "safety_ratio", "mix_seed", "max_len", "buckets",
                        "system_prompt", "train_on", "packing")}
# state-shaping keys added after checkpoints began recording them: the value in effect before
ADDED_LATER = {("data", "packing"): False, ("model", "scan_layers"): False}
# tensorstore's words for a checkpoint file that is missing, cut short or unreadable
DAMAGE = ("NOT_FOUND", "DATA_LOSS", "OUT_OF_RANGE", "Error reading", "No such file", "not valid for value of size",
          "Unexpected end", "corrupt")


class CheckpointMismatch(UserError):
    """Resuming with a config whose state-shaping parts differ from the run's."""


class CheckpointWriteError(UserError):
    """A checkpoint could not be written (no space left, no permission, a read-only disk)."""


def state_config(config: dict) -> dict:
    """The state-shaping parts of a config (STATE_PARTS) as JSON values: the fingerprint each
    checkpoint records."""
    parts = {section: {key: value for key, value in (config.get(section) or {}).items() if keys is None or key in keys}
             for section, keys in STATE_PARTS.items()}
    return json.loads(json.dumps(parts, default=str))


def write_failure(error: BaseException) -> str | None:
    """Why a write failed, in one line, when it is the disk's fault (out of space,
    permissions, read-only): an OSError, or a tensorstore error carrying an OS error code or
    a storage status; None for anything else (a bug keeps its traceback)."""
    if isinstance(error, OSError) and error.errno is not None:
        return f"{error.strerror or error} (errno {error.errno})"
    text = " ".join(str(error).split())
    if code := re.search(r"\[os_error_code='(\d+)'\]", text):
        return f"{os.strerror(int(code.group(1)))} (errno {code.group(1)})"
    status = re.match(r"(RESOURCE_EXHAUSTED|PERMISSION_DENIED|UNAUTHENTICATED): (.{0,160})", text)
    if status and any(mark in text for mark in ("gs://", "local file", "Error writing", "Error opening")):
        return f"{status.group(1)}: {status.group(2)}"  # a storage refusal, not (say) device memory
    return None


def config_changes(old: dict, new: dict) -> list[str]:
    """`section.key: old -> new` for each state-shaping setting that differs (a key the old
    record lacks, added to stjax after it was written, had the value of ADDED_LATER)."""
    changes = []
    for section, keys in STATE_PARTS.items():
        before, after = dict(old.get(section) or {}), new.get(section) or {}
        for key in keys or ():
            if (section, key) in ADDED_LATER and key not in before and section in old:
                before[key] = ADDED_LATER[section, key]
        for key in keys or sorted(set(before) | set(after)):
            if before.get(key) != after.get(key):
                changes.append(f"{section}.{key}: {before.get(key)!r} -> {after.get(key)!r}")
    return changes


def check_resumable(run_dir: str | Path, config: dict, step: int, recorded: dict | None = None) -> None:
    """Before anything in the run directory is rewritten: the config checkpoint `step`
    recorded (else the run's own config.yaml, for checkpoints older than the record) must
    agree with `config` on the state-shaping parts."""
    saved = Path(run_dir) / "config.yaml"
    if recorded is None and saved.is_file():
        try:
            recorded = yaml.safe_load(saved.read_text())
        except yaml.YAMLError:
            pass  # unreadable: the restore itself checks shapes
    if not isinstance(recorded, dict):
        return
    changes = config_changes(state_config(recorded), state_config(config))
    if changes:
        raise CheckpointMismatch(f"{run_dir}: its checkpoints (step {step}) were trained with another config: "
                                 f"{'; '.join(changes)}; restore those settings, or use another train.run_dir")


def is_damage(error: Exception) -> bool:
    """True for a restore error that says a checkpoint file is missing, truncated or corrupt."""
    return isinstance(error, (FileNotFoundError, EOFError)) or any(word in str(error) for word in DAMAGE)


class Checkpointer:
    """Saves (train state, data position, the state-shaping config) per step. `config`: the
    run's config as a dict, recorded in each checkpoint; `owner`: this run holds the run
    directory (its lock), so half-written steps of an earlier crash are cleaned up."""

    def __init__(self, directory: str, *, keep: int = 2, async_save: bool = True, config: dict | None = None,
                 owner: bool = False):
        # orbax wants absolute paths; URLs (gs://...) pass through
        self.directory = directory if "://" in directory else os.path.abspath(directory)
        self.config = state_config(config) if config is not None else None
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, enable_async_checkpointing=async_save, create=True,
                cleanup_tmp_directories=owner),
        )
        self._writing: int | None = None  # the step whose (asynchronous) save may still fail
        self._failed = False  # a write failure was reported

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def recorded_config(self, step: int) -> dict | None:
        """The state-shaping config checkpoint `step` recorded (None before records were kept)."""
        if not (epath.Path(self.directory) / str(step) / "config").exists():
            return None
        try:
            return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore())).config
        except Exception as e:  # a damaged checkpoint: resuming sets it aside and tries the one before
            log.warning(f"checkpoint {step} in {self.directory}: its recorded config cannot be read "
                        f"({' '.join(str(e).split())[:160]}); comparing against the run's config.yaml instead")
            return None

    def save(self, step: int, state: TrainState, data_state: dict) -> None:
        items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state)}
        if self.config is not None:
            items["config"] = ocp.args.JsonSave(self.config)
        with self._writes(step):  # waits for the previous save first: its failure surfaces here
            self.manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._writing = step

    @contextlib.contextmanager
    def _writes(self, step: int, *, again: bool = True):
        """Turns a disk failure while writing checkpoint `step` (or the asynchronous save
        still in flight) into one CheckpointWriteError naming the directory, the reason and
        the last complete checkpoint. again=False (waiting, closing): a failure already
        reported is not reported a second time."""
        try:
            yield
        except Exception as e:
            reason = write_failure(e)
            if reason is None:
                raise
            named = re.search(r"/(\d+)\.orbax-checkpoint-tmp", str(e))  # the step directory it wrote into
            failed = int(named.group(1)) if named else self._writing if self._writing is not None else step
            self._writing = None
            if self._failed and not again:
                return
            self._failed = True
            raise CheckpointWriteError(f"{self.directory}: checkpoint {failed} could not be written: {reason}; "
                                       f"{self.resumes_from(before=failed)}") from None

    def resumes_from(self, *, before: int | None = None) -> str:
        """Where a rerun resumes, in words: the last complete checkpoint (before step `before`)."""
        self.manager.reload()
        done = [s for s in self.manager.all_steps() if before is None or s < before]
        return (f"the last complete checkpoint is step {max(done)} (a rerun resumes there)" if done
                else "no earlier checkpoint exists" if before is not None
                else "no checkpoint was written (a rerun starts from the initial weights)")

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
        with self._writes(self._writing or from_step, again=False):
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
        with self._writes(self._writing or 0, again=False):
            self.manager.wait_until_finished()
        self._writing = None

    def close(self) -> None:
        self.wait()
        self.manager.close()
