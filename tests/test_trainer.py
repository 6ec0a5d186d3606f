"""The trainer end to end: CLI, exact resume, SIGTERM, NaN guard, exports, config errors."""

import dataclasses
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest

from stjax.cli import train as train_cli
from stjax.cli.common import run_cli
from stjax.configlib import ConfigKeyError
from stjax.training.build import build_trainer
from stjax.training.metrics_log import read_metrics
from stjax.training.trainer import TrainingDiverged
from trainer_fixtures import make_config

TINY = Path(__file__).parents[1] / "configs" / "tiny_sft.yaml"


def losses_of(run_dir):
    return {m["step"]: m["loss"] for m in read_metrics(run_dir)}


def test_two_n_steps_equal_n_steps_restart_n_steps(tmp_path):
    build_trainer(make_config(tmp_path / "straight")).run()
    build_trainer(make_config(tmp_path / "split", train={"max_steps": 3})).run()
    resumed = build_trainer(make_config(tmp_path / "split"))
    assert resumed.maybe_resume() == 3 and resumed.batches.get_state()["index"] == 3
    resumed.run()
    straight, split = losses_of(tmp_path / "straight"), losses_of(tmp_path / "split")
    assert sorted(split) == list(range(1, 7))
    np.testing.assert_allclose([split[s] for s in range(1, 7)], [straight[s] for s in range(1, 7)], rtol=1e-6)


class SignalAfter:
    """Wraps a batch iterator and sends SIGTERM to this process when batch n is drawn."""

    def __init__(self, batches, n):
        self.batches, self.n, self.drawn = batches, n, 0

    def __getattr__(self, name):
        return getattr(self.batches, name)

    def __iter__(self):
        return self

    def __next__(self):
        self.drawn += 1
        if self.drawn == self.n:
            os.kill(os.getpid(), signal.SIGTERM)
        return next(self.batches)


def test_sigterm_saves_and_the_rerun_resumes_exactly(tmp_path):
    trainer = build_trainer(make_config(tmp_path / "pre", checkpoint={"every_steps": 100}))
    result = dataclasses.replace(trainer, batches=SignalAfter(trainer.batches, 2)).run()
    assert result.stopped_by == "SIGTERM" and result.final_step == 2
    assert sorted(os.listdir(tmp_path / "pre" / "checkpoints")) == ["2"]
    build_trainer(make_config(tmp_path / "pre", checkpoint={"every_steps": 100})).run()
    build_trainer(make_config(tmp_path / "ref", checkpoint={"every_steps": 100})).run()
    pre, ref = losses_of(tmp_path / "pre"), losses_of(tmp_path / "ref")
    np.testing.assert_allclose([pre[s] for s in range(1, 7)], [ref[s] for s in range(1, 7)], rtol=1e-6)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    config = make_config(tmp_path, optimizer={"lr": 1e30, "clip_norm": None}, lora={"enabled": False},
                         checkpoint={"every_steps": 1}, train={"max_steps": 20})
    with pytest.raises(TrainingDiverged, match=r"step (\d+): loss is (nan|inf)") as info:
        build_trainer(config).run()
    message = info.value.args[0]
    bad_step = int(message.split()[1].rstrip(":"))
    # the checkpoint of step bad - 1 holds the weights whose loss was not finite: set aside
    assert f"set aside the checkpoint of step {bad_step - 1} (diverged-{bad_step - 1})" in message
    entries = os.listdir(tmp_path / "checkpoints")
    assert f"diverged-{bad_step - 1}" in entries
    saved = sorted(int(s) for s in entries if s.isdigit())
    good = int(re.search(r"Last good checkpoint: step (\d+)", message).group(1)) if saved else None
    assert good == (saved[-1] if saved else None)
    if good is not None:  # its weights gave a finite loss: the step after it was logged finite
        assert good + 1 < bad_step and np.isfinite(read_metrics(tmp_path)[good]["loss"])
    assert all(np.isfinite(m["loss"]) for m in read_metrics(tmp_path))
    with pytest.raises(TrainingDiverged) as again:  # a rerun resumes from the good one, not into the NaN
        build_trainer(config).run()
    assert f"step {bad_step}: " in again.value.args[0] or good is None


def test_cli_runs_a_config_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative run_dir, as users write them
    code = train_cli.main(["--config", str(TINY), "train.run_dir=run", "train.max_steps=4",
                           "logging.progress=false"])
    assert code == 0
    tmp_path = tmp_path / "run"
    metrics = read_metrics(tmp_path)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert set(metrics[0]) >= {"loss", "ce", "lr", "grad_norm", "tokens", "response_tokens", "tokens_per_sec",
                               "response_tokens_per_sec", "epoch", "step_s"}
    assert metrics[0]["compile_s"] > 0 and all("compile_s" not in m for m in metrics[1:])  # one batch shape
    assert metrics[0]["tokens"] > metrics[0]["response_tokens"] > 0
    np.testing.assert_allclose([m["epoch"] for m in metrics], [m["step"] / 28 for m in metrics])  # 444 rows / 16
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "tensorboard").is_dir()
    adapter = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert adapter["target_modules"] == ["q_proj", "v_proj"] and adapter["r"] == 8
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["4"]


@pytest.mark.parametrize("override,message", [
    ("optimizer.lrr=0.1", "unknown key 'optimizer.lrr' (did you mean 'optimizer.lr'?)"),
    ("train.batch_size=eight", "'train.batch_size': expected int, got 'eight'"),
    ("loss.kind=dpo", "'loss.kind': expected one of"),
    ("train.grad_accum=3", "'train.batch_size': 16 is not divisible by train.grad_accum=3"),
    ("lora.targets=[qkv]", "'lora.targets': unknown module(s) ['qkv']; expected 'all-linear' or"),
    ("lora.rank=0", "'lora.rank': expected a positive rank, got 0"),
    ("train.eval_every=5", "'train.eval_every': expected a positive number of steps with data.eval sources, got 5 "
                           "and no data.eval"),
])
def test_config_errors_are_one_line_with_the_key(override, message, capsys):
    assert run_cli("stjax train", train_cli.main, ["--config", str(TINY), override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err


@pytest.mark.parametrize("harmful,message", [
    ({"path": "a.json", "tfds": "gsm8k"}, "'data.harmful': give exactly one of 'path', 'tfds', 'hf', not path and tfds"),
    ({"split": "test"}, "'data.harmful': give exactly one of 'path', 'tfds', 'hf'"),
    ({"tfds": "gsm8k", "without_input": True}, "'data.harmful.without_input': applies to files and hf datasets"),
    ({"tfds": "gsm8k", "columns": {"q": "prompt"}}, "'data.harmful.columns': applies to files and hf datasets"),
    ({"path": "a.json", "subset": "main"}, "'data.harmful.subset': applies to hf datasets only"),
    ({"hf": "org/set", "limit": 0}, "'data.harmful.limit': expected a positive number of examples, got 0"),
])
def test_every_data_source_is_validated(tmp_path, harmful, message):
    with pytest.raises(ConfigKeyError, match=re.escape(message)):
        make_config(tmp_path, data={"harmful": harmful})


def test_missing_required_key_and_missing_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {dtype: float32}\ndata: {train: []}\n")
    assert run_cli("stjax train", train_cli.main, ["--config", str(bad)]) == 2
    assert "missing required key 'model.path'" in capsys.readouterr().err
    assert run_cli("stjax train", train_cli.main, ["--config", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
