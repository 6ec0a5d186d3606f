"""Resuming: a damaged newest checkpoint falls back to the intact one before it; a changed
config stops with a one-line diff before the run directory is touched."""

from __future__ import annotations

import glob
import os

import numpy as np
import pytest
import yaml

from stjax.errors import UserError
from stjax.training.build import build_trainer
from stjax.training.checkpointing import CheckpointMismatch
from stjax.training.metrics_log import read_metrics
from trainer_fixtures import make_config

CKPT = {"every_steps": 2, "keep": 3}


def damage(step_dir):
    """Cuts every data file of a checkpoint's state in half, as a full disk or a killed copy would."""
    files = [f for f in glob.glob(f"{step_dir}/state/**/d/*", recursive=True) if os.path.isfile(f)]
    assert files
    for file in files:
        with open(file, "r+b") as f:
            f.truncate(os.path.getsize(file) // 2)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, capsys):
    build_trainer(make_config(tmp_path / "run", train={"max_steps": 4}, checkpoint=CKPT)).run()
    damage(tmp_path / "run" / "checkpoints" / "4")
    trainer = build_trainer(make_config(tmp_path / "run", train={"max_steps": 6}, checkpoint=CKPT))
    assert trainer.maybe_resume() == 2
    assert "checkpoint 4 in" in capsys.readouterr().out + capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoints" / "broken-4").is_dir()
    trainer.run()
    build_trainer(make_config(tmp_path / "straight", train={"max_steps": 6}, checkpoint=CKPT)).run()
    resumed = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "run")}  # steps 3, 4 logged twice: last wins
    straight = {m["step"]: m["loss"] for m in read_metrics(tmp_path / "straight")}
    np.testing.assert_allclose([resumed[s] for s in range(3, 7)], [straight[s] for s in range(3, 7)], rtol=1e-6)


def test_no_intact_checkpoint_is_an_error_not_a_silent_restart(tmp_path):
    build_trainer(make_config(tmp_path, train={"max_steps": 2}, checkpoint=CKPT)).run()
    damage(tmp_path / "checkpoints" / "2")
    with pytest.raises(UserError, match=r"no intact checkpoint left \(set aside as broken: broken-2\)"):
        build_trainer(make_config(tmp_path, train={"max_steps": 4}, checkpoint=CKPT)).run()


def test_resuming_with_another_lora_rank_stops_before_touching_the_run(tmp_path):
    build_trainer(make_config(tmp_path, train={"max_steps": 2}, checkpoint=CKPT)).run()
    before = (tmp_path / "config.yaml").read_text()
    with pytest.raises(CheckpointMismatch) as e:
        build_trainer(make_config(tmp_path, train={"max_steps": 4}, lora={"rank": 8}, optimizer={"lr": 1e-3}))
    assert "its checkpoints (step 2) were trained with another config: lora.rank: 4 -> 8; optimizer.lr: 0.01 -> 0.001" \
        in str(e.value) and "\n" not in str(e.value)
    assert (tmp_path / "config.yaml").read_text() == before and yaml.safe_load(before)["lora"]["rank"] == 4
    build_trainer(make_config(tmp_path, train={"max_steps": 4}, checkpoint=CKPT)).run()  # what may change: max_steps
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4]


def test_each_checkpoint_records_its_config_and_a_changed_one_is_refused_without_config_yaml(tmp_path):
    from stjax.training.checkpointing import Checkpointer

    build_trainer(make_config(tmp_path, train={"max_steps": 2}, checkpoint=CKPT)).run()
    recorded = Checkpointer(str(tmp_path / "checkpoints")).recorded_config(2)
    assert recorded["lora"]["rank"] == 4 and recorded["train"] == {"seed": 0, "batch_size": 8, "grad_accum": 1}
    assert set(recorded) == {"model", "lora", "optimizer", "train", "data"}  # the state-shaping parts only
    (tmp_path / "config.yaml").unlink()  # the checkpoint alone says what trained it
    with pytest.raises(CheckpointMismatch, match="lora.rank: 4 -> 8"):
        build_trainer(make_config(tmp_path, train={"max_steps": 4}, lora={"rank": 8}))
    assert not (tmp_path / "config.yaml").exists()
