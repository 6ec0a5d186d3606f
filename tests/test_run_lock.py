"""One trainer per run directory: a second one stops with one line; a crashed one's lock is stale."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from stjax.cli import train as train_cli
from stjax.cli.common import run_cli
from stjax.training.build import build_trainer
from stjax.training.run_lock import LOCK_FILE, RunDirectoryBusy, RunLock
from trainer_fixtures import make_config

HOLD = "import sys, time; from stjax.training.run_lock import RunLock; lock = RunLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(60)"


def test_a_second_trainer_on_a_held_run_directory_stops_with_one_line(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "run")], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "JAX_PLATFORMS": "cpu"})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirectoryBusy, match=rf"pid {holder.pid} on .*wait for it to finish, or set another train.run_dir"):
            build_trainer(make_config(tmp_path / "run", train={"max_steps": 1}))
        assert not (tmp_path / "run" / "metrics.jsonl").exists() and not (tmp_path / "run" / "config.yaml").exists()
        config = tmp_path / "c.yaml"
        config.write_text(f"model: {{path: toy://random-model, dtype: float32}}\n"
                          f"data: {{train: [{{path: toy://data/sentiment_train.jsonl}}]}}\n"
                          f"train: {{run_dir: {tmp_path / 'run'}}}\n")
        assert run_cli("stjax train", train_cli.main, ["--config", str(config)]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "another trainer is running in this run directory" in err
    finally:
        holder.kill()
        holder.wait()
    # the holder was killed: its lock went with it; the file it left is recognised as stale
    assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == holder.pid
    result = build_trainer(make_config(tmp_path / "run", train={"max_steps": 2})).run()
    assert result.final_step == 2
    assert "previous trainer (pid" in capsys.readouterr().out
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released cleanly at the end


def test_the_lock_is_released_however_the_run_ends(tmp_path):
    build_trainer(make_config(tmp_path, train={"max_steps": 1})).run()
    build_trainer(make_config(tmp_path, train={"max_steps": 2})).run()  # resumes: the first one released it
    with pytest.raises(Exception):  # a build that fails after taking the lock releases it
        build_trainer(make_config(tmp_path, data={"train": [{"path": str(tmp_path / "missing.jsonl")}]}))
    lock = RunLock(tmp_path).acquire()
    lock.release()
