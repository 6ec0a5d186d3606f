"""Disk faults while training: a full disk or a storage refusal while a checkpoint is written
ends in one line naming the checkpoint directory, the reason and the last complete
checkpoint (exit 2), and a rerun resumes from that checkpoint."""

from __future__ import annotations

import errno
import os
import re
import subprocess
from pathlib import Path

import pytest

import stjax.toy  # noqa: F401  registers toy://
from stjax.cli import train as train_cli
from stjax.cli.common import run_cli
from stjax.training.checkpointing import write_failure
from stjax.training.metrics_log import read_metrics

TINY = Path(__file__).parents[1] / "configs" / "tiny_sft.yaml"
# what tensorstore raises (through orbax) when a checkpoint file cannot be written
ENOSPC_TEXT = ('RESOURCE_EXHAUSTED: Error writing "opt_state.1.0.count/0" in OCDBT database at local file '
               '"{d}/{step}.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: '
               '"{d}/{step}.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/ocdbt.process_0/d/7eac16e5": Failed to '
               "write 103149 bytes to file 9: No space left on device [os_error_code='28']")


def test_write_failure_reads_os_errors_and_storage_statuses_and_nothing_else():
    assert write_failure(ValueError(ENOSPC_TEXT)) == "No space left on device (errno 28)"
    assert write_failure(OSError(errno.EROFS, "Read-only file system", "/x")) == "Read-only file system (errno 30)"
    assert write_failure(ValueError("PERMISSION_DENIED: gs://bucket/run: caller lacks storage.objects.create")) \
        == "PERMISSION_DENIED: gs://bucket/run: caller lacks storage.objects.create"
    assert write_failure(ValueError("shapes (4, 8) and (8, 8) do not match")) is None
    assert write_failure(ValueError("RESOURCE_EXHAUSTED: Out of memory while trying to allocate 2.1GiB")) is None
    assert write_failure(KeyError("state")) is None


def train(run_dir, *overrides) -> int:
    return run_cli("stjax train", train_cli.main, ["--config", str(TINY), f"train.run_dir={run_dir}",
                                                   "logging.progress=false", "checkpoint.every_steps=2",
                                                   "checkpoint.async_save=false", *overrides])


def test_a_full_disk_at_a_checkpoint_is_one_line_and_a_rerun_resumes(tmp_path, capsys, monkeypatch):
    import orbax.checkpoint as ocp

    run_dir, real_save = tmp_path / "run", ocp.CheckpointManager.save

    def full_at_4(self, step, *args, **kwargs):
        if step == 4:
            raise ValueError(ENOSPC_TEXT.format(d=self.directory, step=step))
        return real_save(self, step, *args, **kwargs)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_4)
    assert train(run_dir, "train.max_steps=6") == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"stjax train: error: {run_dir / 'checkpoints'}: checkpoint 4 could not be written: No space left on device "
        "(errno 28); the last complete checkpoint is step 2 (a rerun resumes there)"]
    assert "Traceback" not in captured.out
    monkeypatch.setattr(ocp.CheckpointManager, "save", real_save)  # space freed
    assert train(run_dir, "train.max_steps=6") == 0
    assert f"resuming from checkpoint 2 in {run_dir / 'checkpoints'}" in capsys.readouterr().out
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4", "6"]
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 3, 4, 5, 6]  # 3, 4 again after the resume


@pytest.fixture
def small_disk(tmp_path):
    """A real 4 MiB file system (tmpfs), where the privileges allow mounting one."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4M", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs privileges this machine does not give")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_really_full_disk_with_asynchronous_saves(small_disk, capsys):
    run_dir = small_disk / "run"  # full fine-tuning: ~1.7 MiB a checkpoint, the third does not fit
    code = run_cli("stjax train", train_cli.main, ["--config", str(TINY), f"train.run_dir={run_dir}",
                                                   "logging.progress=false", "checkpoint.every_steps=2",
                                                   "lora.enabled=false", "train.max_steps=12"])
    captured = capsys.readouterr()
    assert code == 2 and "Traceback" not in captured.err + captured.out, captured.err[-2000:]
    lines = captured.err.strip().splitlines()  # whichever write found the disk full first: a checkpoint or the metrics
    assert len(lines) == 1 and re.fullmatch(
        rf"stjax train: error: {re.escape(str(run_dir))}/(checkpoints: checkpoint \d+ |metrics\.jsonl: "
        r"|tensorboard: )could not be written: No space left on device \(errno 28\); "
        r"the last complete checkpoint is step \d+ \(a rerun resumes there\)", lines[0]), lines
    subprocess.run(["mount", "-o", "remount,size=32M", str(small_disk)], check=True)  # space freed
    code = run_cli("stjax train", train_cli.main, ["--config", str(TINY), f"train.run_dir={run_dir}",
                                                   "logging.progress=false", "checkpoint.every_steps=2",
                                                   "lora.enabled=false", "train.max_steps=12"])
    assert code == 0
    assert not [p for p in (run_dir / "checkpoints").iterdir() if "tmp" in p.name]  # the half-written step is gone


def test_a_full_disk_under_the_metrics_is_one_line_and_a_rerun_resumes(tmp_path, capsys):
    """metrics.jsonl on a device that is always full (/dev/full): the first write after the
    resume fails; the line names the file and the last complete checkpoint, and nothing after it
    was saved."""
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    run_dir = tmp_path / "run"
    assert train(run_dir, "train.max_steps=4", "logging.tensorboard=true") == 0
    kept = (run_dir / "metrics.jsonl").read_text()
    (run_dir / "metrics.jsonl").rename(run_dir / "kept.jsonl")
    (run_dir / "metrics.jsonl").symlink_to("/dev/full")
    capsys.readouterr()
    assert train(run_dir, "train.max_steps=8", "logging.tensorboard=true") == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"stjax train: error: {run_dir / 'metrics.jsonl'}: could not be written: No space left on device (errno 28); "
        "the last complete checkpoint is step 4 (a rerun resumes there)"], captured.err
    assert "Traceback" not in captured.out + captured.err
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["2", "4"]
    (run_dir / "metrics.jsonl").unlink()
    (run_dir / "kept.jsonl").rename(run_dir / "metrics.jsonl")
    assert train(run_dir, "train.max_steps=8") == 0
    assert (run_dir / "metrics.jsonl").read_text().startswith(kept)
    assert [m["step"] for m in read_metrics(run_dir)] == [1, 2, 3, 4, 5, 6, 7, 8]


def test_a_read_only_run_directory_is_one_line_and_leaves_the_run_intact(small_disk, capsys):
    run_dir = small_disk / "run"
    assert train(run_dir, "train.max_steps=2") == 0
    before = sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*"))
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    capsys.readouterr()
    assert train(run_dir, "train.max_steps=4") == 2
    captured = capsys.readouterr()
    assert captured.err.strip().splitlines() == [
        f"stjax train: error: {run_dir / '.lock'}: Read-only file system (errno 30)"], captured.err
    assert sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")) == before


def test_a_gs_run_directory_keeps_its_checkpoints_on_gs():
    from trainer_fixtures import make_config

    config = make_config("runs/x")
    config.train.run_dir = "gs://bucket/runs/x"
    assert config.checkpoint_dir == "gs://bucket/runs/x/checkpoints"


def test_an_error_in_flight_is_reported_even_when_a_save_failed_too(tmp_path, capsys):
    """The asynchronous save of step 2 fails (found when closing), while step 3 raises: the
    step's error propagates, the failed save is logged, not raised over it."""
    from stjax.errors import UserError
    from stjax.training.build import build_trainer
    from trainer_fixtures import make_config

    trainer = build_trainer(make_config(tmp_path, train={"max_steps": 4}, checkpoint={"every_steps": 2}))
    manager, put, calls = trainer.checkpointer.manager, trainer.program.device_batch, []

    def device_batch(batch):
        calls.append(1)
        if len(calls) == 3:
            raise UserError("step 3: the evaluation set is gone")
        return put(batch)

    def wait_until_finished():
        if trainer.checkpointer._writing == 2:
            raise ValueError(ENOSPC_TEXT.format(d=trainer.checkpointer.directory, step=2))

    manager.save = lambda step, *args, **kwargs: None  # the write "starts" and fails in the background
    manager.wait_until_finished = wait_until_finished
    trainer.program.device_batch = device_batch  # an instance attribute over the method
    with pytest.raises(UserError, match="the evaluation set is gone"):
        trainer.run()
    assert "checkpoint 2 could not be written: No space left on device (errno 28)" in capsys.readouterr().out


def test_the_tracebacks_of_a_failed_save_are_hidden_and_other_errors_kept():
    """A failed asynchronous save is reported once, in the one line: asyncio's and absl's
    tracebacks of the same failure (raised in orbax's code) are dropped; an error from
    elsewhere keeps its traceback; --debug (hide=False) shows everything again."""
    import logging
    import sys

    from stjax.logs import hide_library_tracebacks

    def raised_in(filename: str):
        try:
            exec(compile("raise ValueError('RESOURCE_EXHAUSTED: Error writing')", filename, "exec"))
        except ValueError:
            return sys.exc_info()

    seen = []

    class Collect(logging.Handler):
        def emit(self, record):
            seen.append((record.getMessage().splitlines()[0], record.exc_info is not None))

    asyncio_log, handler = logging.getLogger("asyncio"), Collect()
    asyncio_log.addHandler(handler)
    try:
        hide_library_tracebacks(True)
        orbax_file = "/site-packages/orbax/checkpoint/_src/serialization/serialization.py"
        asyncio_log.error("Task exception was never retrieved\nfuture: <Task>", exc_info=raised_in(orbax_file))
        asyncio_log.error("Task exception was never retrieved\nfuture: <Task>", exc_info=raised_in("/app/mine.py"))
        hide_library_tracebacks(False)
        asyncio_log.error("Task exception was never retrieved\nfuture: <Task>", exc_info=raised_in(orbax_file))
    finally:
        asyncio_log.removeHandler(handler)
        hide_library_tracebacks(False)
    assert seen == [("Task exception was never retrieved", True)] * 2
