"""Tracking a run: the config and hyperparameters in TensorBoard, Weights & Biases logging,
log levels and --debug tracebacks in the commands."""

from __future__ import annotations

import struct
import sys
import types
from pathlib import Path

import pytest

from stjax.cli import train as train_cli
from stjax.cli.common import run_cli
from stjax.errors import MissingExtra
from stjax.training.build import build_trainer
from stjax.training.metrics_log import read_metrics
from trainer_fixtures import make_config

TINY = Path(__file__).parents[1] / "configs" / "tiny_sft.yaml"


def events(directory: Path) -> list:
    """Every Event in the TensorBoard files under `directory` (TFRecord framing, CRCs skipped)."""
    from tensorboardX.proto.event_pb2 import Event

    out = []
    for file in sorted(directory.rglob("events.out.tfevents.*")):
        data, at = file.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event()
            event.ParseFromString(data[at + 12:at + 12 + length])
            out.append((file.parent, event))
            at += 12 + length + 4
    return out


def test_tensorboard_holds_the_config_hyperparameters_and_scalars(tmp_path):
    config = make_config(tmp_path, train={"max_steps": 2}, logging={"tensorboard": True})
    build_trainer(config).run()
    tags = {(folder.name, v.tag) for folder, e in events(tmp_path / "tensorboard") for v in e.summary.value}
    assert ("tensorboard", "train/loss") in tags and ("tensorboard", "train/tokens_per_sec") in tags
    assert any(tag.startswith("config") for _, tag in tags)
    assert any(tag == "_hparams_/session_start_info" for _, tag in tags)
    text = [v for _, e in events(tmp_path / "tensorboard") for v in e.summary.value if v.tag.startswith("config")]
    assert b"kind: sft" in text[0].tensor.string_val[0]


def test_wandb_gets_the_config_and_every_logged_step(tmp_path, monkeypatch):
    calls = {"log": [], "finish": 0}

    class FakeRun:
        def log(self, values, step):
            calls["log"].append((step, values))

        def finish(self):
            calls["finish"] += 1

    def init(**kwargs):
        calls["init"] = kwargs
        return FakeRun()

    monkeypatch.setitem(sys.modules, "wandb", types.SimpleNamespace(init=init))
    config = make_config(tmp_path / "run", train={"max_steps": 3},
                         logging={"wandb": {"project": "stjax-tests", "tags": ["ci"], "mode": "offline"}})
    build_trainer(config).run()
    init_kwargs = calls["init"]
    assert init_kwargs["project"] == "stjax-tests" and init_kwargs["name"] == "run" and init_kwargs["mode"] == "offline"
    assert init_kwargs["config"]["loss"]["kind"] == "sft" and init_kwargs["resume"] == "allow"
    logged = read_metrics(tmp_path / "run")
    assert [s for s, _ in calls["log"]] == [m["step"] for m in logged] == [1, 2, 3]
    assert calls["log"][-1][1]["train/loss"] == logged[-1]["loss"] and calls["finish"] == 1


def test_wandb_missing_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    config = make_config(tmp_path, train={"max_steps": 1}, logging={"wandb": {"project": "p"}})
    with pytest.raises(MissingExtra, match=r"pip install 'stjax\[wandb\]'"):
        build_trainer(config).run()


def test_quiet_verbose_and_debug_flags(tmp_path, capsys):
    args = ["--config", str(TINY), f"train.run_dir={tmp_path / 'run'}", "train.max_steps=1", "logging.progress=false"]
    assert run_cli("stjax train", train_cli.main, args) == 0
    assert "data: " in capsys.readouterr().out
    assert run_cli("stjax train", train_cli.main, ["--quiet", *args, f"train.run_dir={tmp_path / 'q'}"]) == 0
    assert "data: " not in capsys.readouterr().out
    assert run_cli("stjax train", train_cli.main, [*args, f"train.run_dir={tmp_path / 'v'}", "--verbose"]) == 0
    assert "train step compiled for batch" in capsys.readouterr().out
    bad = [*args, "optimizer.lrr=1"]
    assert run_cli("stjax train", train_cli.main, bad) == 2
    with pytest.raises(Exception, match="unknown key 'optimizer.lrr'"):
        run_cli("stjax train", train_cli.main, [*bad, "--debug"])
    from stjax.logs import set_verbosity

    set_verbosity("normal")  # as every later command starts


def test_validation_loss_equals_the_training_loss_on_the_same_rows(tmp_path):
    """With lr 0 and no dropout the weights never move: the eval loss over 16 rows is the
    training loss of one 16-row batch of the same rows, at every evaluation."""
    rows = {"path": "toy://data/sentiment_train.jsonl", "limit": 16}
    frozen = {"optimizer": {"lr": 0.0}, "lora": {"dropout": 0.0}}
    config = make_config(tmp_path / "a", data={"eval": [rows]}, train={"max_steps": 4, "eval_every": 2},
                         **frozen)
    trainer = build_trainer(config)
    trainer.run()
    metrics = read_metrics(tmp_path / "a")
    evaluated = [m for m in metrics if "eval_loss" in m]
    assert [m["step"] for m in evaluated] == [2, 4] and all(m["eval_s"] > 0 for m in evaluated)
    one_batch = make_config(tmp_path / "b", data={"train": [rows], "harmful_ratio": 0.0},
                            train={"max_steps": 1, "batch_size": 16}, **frozen)
    build_trainer(one_batch).run()
    want = read_metrics(tmp_path / "b")[0]
    for m in evaluated:
        assert abs(m["eval_loss"] - want["loss"]) < 1e-5 and abs(m["eval_ce"] - want["ce"]) < 1e-5
        assert m["eval_tokens"] == want["response_tokens"]
    assert trainer.program.eval_step._cache_size() == 1  # one bucket width: compiled once


def test_validation_kl_of_pact_cached_equals_online(tmp_path):
    from trainer_fixtures import make_safety_tokens

    safety = make_safety_tokens(tmp_path / "st")
    out = {}
    for ref in ("cached", "online"):
        config = make_config(tmp_path / ref, loss={"kind": "pact", "safety_tokens": str(safety), "lam": 5.0, "ref": ref},
                             data={"eval": [{"path": "toy://data/harmful_refuse_train.jsonl", "limit": 12}]},
                             train={"max_steps": 3})
        build_trainer(config).run()
        out[ref] = read_metrics(tmp_path / ref)[-1]
    assert out["cached"]["eval_kl"] > 0
    for key in ("eval_loss", "eval_kl", "eval_gate", "eval_ce"):
        assert abs(out["cached"][key] - out["online"][key]) <= 2e-5 * abs(out["online"][key]) + 1e-7, key


def test_a_line_cut_short_by_a_full_disk_is_dropped_when_the_log_reopens(tmp_path):
    from stjax.training.metrics_log import MetricsLog

    (tmp_path / "metrics.jsonl").write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "lo')
    log = MetricsLog(tmp_path, tensorboard=False)
    log.write({"step": 2, "loss": 1.5})
    log.close()
    assert read_metrics(tmp_path) == [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.5}]
    (tmp_path / "metrics.jsonl").write_text('{"step": 1, ')  # no complete line at all
    MetricsLog(tmp_path, tensorboard=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
