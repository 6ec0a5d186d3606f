"""Config files compose: `base:` deep-merges other files; the reference configs are one base
per model plus a task file and a few lines of method."""

from __future__ import annotations

from pathlib import Path

import pytest

from stjax.configlib import ConfigKeyError, deep_merge, parse_override, read_yaml
from stjax.training.config import load_train_config
from stjax.training.objectives import LossSection

ROOT = Path(__file__).resolve().parents[1]


def test_deep_merge_merges_mappings_and_replaces_everything_else():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 1}
    assert deep_merge(base, {"a": {"y": [3]}, "c": 2}) == {"a": {"x": 1, "y": [3]}, "b": 1, "c": 2}
    assert base == {"a": {"x": 1, "y": [1, 2]}, "b": 1}  # inputs untouched


def test_bases_merge_in_order_under_the_file(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "one.yaml").write_text("model: {path: m, dtype: float32}\ntrain: {epochs: 1}\n")
    (tmp_path / "two.yaml").write_text("base: sub/one.yaml\ntrain: {epochs: 2, seed: 3}\n")
    (tmp_path / "top.yaml").write_text("base: [two.yaml]\ntrain: {seed: 4}\n")
    assert read_yaml(tmp_path / "top.yaml") == {"model": {"path": "m", "dtype": "float32"},
                                                "train": {"epochs": 2, "seed": 4}}


@pytest.mark.parametrize("text,message", [
    ("base: missing.yaml\n", "'base': missing.yaml not found"),
    ("base: self.yaml\n", "'base': self.yaml includes itself"),
    ("base: {a: 1}\n", "'base': expected a file name or a list of file names"),
])
def test_bad_bases_are_one_line(tmp_path, text, message):
    (tmp_path / "self.yaml").write_text(text)
    with pytest.raises(ConfigKeyError, match=message):
        read_yaml(tmp_path / "self.yaml")


def test_floats_in_exponent_form_are_numbers_as_people_write_them(tmp_path):
    (tmp_path / "run.yaml").write_text("model: {path: m}\ndata: {train: [{path: d.jsonl}]}\n"
                                       "optimizer: {lr: 3e-4, weight_decay: 1E-2, clip_norm: 1e0}\n"
                                       "train: {run_dir: '1e5'}\n")
    config = load_train_config(tmp_path / "run.yaml")
    assert (config.optimizer.lr, config.optimizer.weight_decay, config.optimizer.clip_norm) == (3e-4, 1e-2, 1.0)
    assert config.train.run_dir == "1e5"  # quoted: still a string
    assert parse_override("optimizer.lr=2.5e-5") == (["optimizer", "lr"], 2.5e-5)
    assert parse_override("train.run_dir=1e") == (["train", "run_dir"], "1e")


def test_a_preset_fills_what_the_file_leaves_out(tmp_path):
    common = "model: {path: m}\ndata: {train: [{path: d.jsonl}], safety: {path: r.jsonl}}\n"
    (tmp_path / "mix.yaml").write_text("preset: refusal_mix\n" + common)
    config = load_train_config(tmp_path / "mix.yaml")
    assert (config.loss.kind, config.data.safety_ratio, config.data.safety.path) == ("sft", 0.2, "r.jsonl")
    # the file's and the command line's keys win over the preset's
    (tmp_path / "mix20.yaml").write_text("preset: refusal_mix\n" + common + "loss: {chunk_tokens: 64}\n")
    config = load_train_config(tmp_path / "mix20.yaml", ["data.safety_ratio=0.3"])
    assert (config.data.safety_ratio, config.loss.chunk_tokens, config.loss.kind) == (0.3, 64, "sft")
    (tmp_path / "pact.yaml").write_text("preset: pact\n" + common + "loss: {safety_tokens: st}\n")
    loss = load_train_config(tmp_path / "pact.yaml").loss
    assert (loss.kind, loss.lam, loss.temperature, loss.kl_at_end, loss.gate.prefix_n) == ("pact", 1.0, 2.0, True, 8)


@pytest.mark.parametrize("text,message", [
    ("preset: pcat\nmodel: {path: m}\ndata: {train: [{path: d.jsonl}]}\n", "unknown preset 'pcat' \\(known: pact, refusal_mix\\)"),
    ("preset: refusal_mix\nmodel: {path: m}\ndata: {train: [{path: d.jsonl}]}\n", "'data.safety': preset refusal_mix"),
])
def test_bad_presets_are_one_line(tmp_path, text, message):
    (tmp_path / "run.yaml").write_text(text)
    with pytest.raises(ConfigKeyError, match=message):
        load_train_config(tmp_path / "run.yaml")


def test_a_cycle_through_two_files_is_caught(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigKeyError, match="includes itself"):
        read_yaml(tmp_path / "a.yaml")


@pytest.mark.parametrize("model", ["llama31_8b", "qwen25_7b"])
@pytest.mark.parametrize("task", ["sst2", "agnews", "gsm8k"])
def test_reference_configs_compose_from_a_model_base_and_a_task(model, task):
    sft, pact = (load_train_config(ROOT / "configs" / f"{model}_{task}_{k}.yaml") for k in ("sft", "pact"))
    assert sft.model == pact.model and sft.data == pact.data and sft.optimizer == pact.optimizer
    assert (sft.loss.kind, pact.loss.kind) == ("sft", "pact") and pact.loss.safety_tokens == f"runs/{model}_safety_tokens"
    assert sft.train.run_dir == f"runs/{model}_{task}_sft" and sft.train.exports(True) == ["adapter"]
    assert (sft.lora.rank, sft.lora.alpha, sft.optimizer.lr, sft.train.epochs, sft.data.max_len) == (8, 32.0, 3e-5, 3, 512)
    text = (ROOT / "configs" / f"{model}_{task}_pact.yaml").read_text()
    assert len([line for line in text.splitlines() if line and not line.startswith("#")]) <= 4
    assert pact.loss == LossSection(kind="pact", safety_tokens=f"runs/{model}_safety_tokens", ref="cached")


@pytest.mark.parametrize("model", ["llama31_8b", "qwen25_7b"])
def test_refusal_mix_configs_are_sft_plus_the_stage_1_refusals(model):
    sft, mix = (load_train_config(ROOT / "configs" / f"{model}_sst2_{k}.yaml") for k in ("sft", "refusal_mix"))
    tokens = read_yaml(ROOT / "configs" / f"{model}_safety_tokens.yaml")
    assert mix.data.safety.path == tokens["refusals"] and mix.data.safety_ratio == 0.2
    assert mix.data.train == sft.data.train and mix.loss == sft.loss and mix.lora == sft.lora
    assert mix.optimizer == sft.optimizer and mix.train.run_dir == f"runs/{model}_sst2_refusal_mix"


@pytest.mark.parametrize("export,lora,expected", [
    (None, True, ["adapter"]), (None, False, ["model"]), ("none", True, []), (["adapter", "merged"], True,
                                                                              ["adapter", "merged"]),
])
def test_export_choices(tmp_path, export, lora, expected):
    from trainer_fixtures import make_config

    config = make_config(tmp_path, lora={"enabled": lora}, train={"export": export})
    assert config.train.exports(config.lora.enabled) == expected


@pytest.mark.parametrize("export,lora,message", [
    ("model", True, "'train.export': 'model' needs full fine-tuning"),
    ("merged", False, "'train.export': 'merged' needs LoRA"),
])
def test_export_that_does_not_fit_the_run_is_refused(tmp_path, export, lora, message):
    from trainer_fixtures import make_config

    with pytest.raises(ConfigKeyError, match=message):
        make_config(tmp_path, lora={"enabled": lora}, train={"export": export})
