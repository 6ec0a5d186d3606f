"""The bad-input battery: each case runs the real `stjax train` front end and must end with
exit code 2, one line naming the key, file or tensor, no traceback, and nothing written
into the run directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import pytest

import stjax.toy  # noqa: F401  registers toy://
from stjax.cli import train as train_cli
from stjax.cli.common import run_cli
from stjax.locations import resolve

TINY = Path(__file__).parents[1] / "configs" / "tiny_sft.yaml"


@pytest.fixture(scope="module")
def broken(tmp_path_factory):
    """Broken files, built once: data files, model folders, safety-token sets."""
    root = tmp_path_factory.mktemp("broken")
    (root / "empty.jsonl").write_text("")
    (root / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "response": "ok"}\n')
    (root / "a_directory.jsonl").mkdir()
    model = Path(resolve("toy://random-model"))
    small_vocab = root / "small_vocab_model"
    shutil.copytree(model, small_vocab)
    config = json.loads((small_vocab / "config.json").read_text())
    (small_vocab / "config.json").write_text(json.dumps({**config, "vocab_size": 100}))
    truncated = root / "truncated_model"
    shutil.copytree(model, truncated)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    remote = root / "remote_code_model"  # a tokenizer whose class lives in the checkpoint's own code
    shutil.copytree(model, remote)
    tok_config = json.loads((remote / "tokenizer_config.json").read_text())
    tok_config.update(tokenizer_class="MyTokenizer", auto_map={"AutoTokenizer": ["my_tokenizer.MyTokenizer", None]})
    (remote / "tokenizer_config.json").write_text(json.dumps(tok_config))
    (remote / "my_tokenizer.py").write_text("raise SystemExit('remote code ran')\n")
    bad_json = root / "bad_json_model"
    shutil.copytree(model, bad_json)
    (bad_json / "config.json").write_text('{"vocab_size": 1024,')
    from trainer_fixtures import make_safety_tokens

    good = make_safety_tokens(root / "safety")
    for name, damage in [("safety_truncated", "tensors"), ("safety_bad_json", "json"), ("safety_out_of_vocab", "ids")]:
        shutil.copytree(good, root / name)
        if damage == "tensors":
            data = (root / name / "safety_tokens.safetensors").read_bytes()
            (root / name / "safety_tokens.safetensors").write_bytes(data[:40])
        elif damage == "json":
            (root / name / "safety_tokens.json").write_text("{not json")
        else:
            from safetensors.numpy import load_file, save_file

            tensors = load_file(str(root / name / "safety_tokens.safetensors"))
            tensors["ids"] = tensors["ids"] + 5000
            save_file(tensors, str(root / name / "safety_tokens.safetensors"))
    return root


CASES = [  # (overrides, expected text of the one line); {b} is the broken-files folder
    (["train.batch_size=0"], "'train.batch_size': expected a positive number, got 0"),
    (["checkpoint.every_steps=0"], "'checkpoint.every_steps': expected a positive number, got 0"),
    (["data.max_len=0"], "'data.max_len': expected a positive number, got 0"),
    (["data.safety_ratio=1.5"], "'data.safety_ratio': expected a value in [0, 1), got 1.5"),
    (["data.train=[{path: {b}/empty.jsonl}]", "data.harmful_ratio=0"], "data.train: the sources hold no conversation"),
    (["data.train=[{path: {b}/latin1.jsonl}]"], "latin1.jsonl:1: not UTF-8 text (byte 15"),
    (["data.train=[{path: {b}/a_directory.jsonl}]"], "a_directory.jsonl: a directory, not a data file"),
    (["data.train=[{path: {b}/missing.jsonl}]"], "missing.jsonl"),
    (["data.max_len=8"], "no example left after tokenization: all 444 of 444 have no target token within "
                         "data.max_len=8"),
    (["model.path={b}/does/not/exist"], "does/not/exist: no such folder"),
    (["model.path={b}/small_vocab_model"], "has vocab_size 100: the tokenizer does not belong to this model"),
    (["model.path={b}/truncated_model"], "model.safetensors: not a readable safetensors file"),
    (["model.path={b}/remote_code_model"], "remote_code_model: the tokenizer needs the checkpoint's own Python code "
                                           "(trust_remote_code), which stjax does not run"),
    (["model.path={b}/bad_json_model"], "bad_json_model: the tokenizer cannot be loaded (It looks like the config "
                                        "file at"),
    (["loss.kind=pact", "loss.safety_tokens={b}/safety_truncated"], "safety_tokens.safetensors: not a readable "
                                                                    "safetensors file"),
    (["loss.kind=pact", "loss.safety_tokens={b}/safety_bad_json"], "safety_tokens.json: not valid JSON"),
    (["loss.kind=pact", "loss.safety_tokens={b}/safety_out_of_vocab"], "tensor 'ids' must hold token ids in 0..1023"),
    (["lora.targets=[all-linears]"], "'lora.targets': unknown module(s) ['all-linears']"),
    (["model.attention=cudnn"], "model.attention: cudnn runs on NVIDIA GPUs of compute capability 8 or later, and "
                                "this process sees no NVIDIA GPU" if jax.default_backend() != "gpu" else
                                "model.attention: cudnn needs compute dtype bfloat16 or float16"),  # the config: float32
    (["model.attention=flash"], "model.attention: unknown kernel 'flash' (known: auto, cudnn, xla"),
]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[c[0][-1].split("=")[0] + "=" + c[0][-1].split("=")[-1][-24:]
                                                          for c in CASES])
def test_bad_input_is_one_line_with_exit_2_and_nothing_written(broken, tmp_path, capsys, overrides, expected):
    run_dir = tmp_path / "run"
    args = ["--config", str(TINY), f"train.run_dir={run_dir}", "logging.progress=false",
            *[o.replace("{b}", str(broken)) for o in overrides]]
    assert run_cli("stjax train", train_cli.main, args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stjax train: error: ") and expected in err[0], captured.err
    assert "Traceback" not in captured.err + captured.out and "Do you wish" not in captured.out
    assert not run_dir.exists()  # nothing written: no lock, config, metrics or checkpoints


def test_yaml_floats_in_exponent_form(tmp_path):
    from stjax.training.config import load_train_config

    file = tmp_path / "c.yaml"
    file.write_text(TINY.read_text().replace("lr: 3.0e-3", "lr: 3e-3"))
    assert load_train_config(file, ["loss.lam=1e-1"]).optimizer.lr == 3e-3


def test_report_on_a_corrupt_or_foreign_report_is_one_line(tmp_path, capsys):
    from stjax.cli import report as report_cli

    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "report.json").write_text('{"run": {')
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "report.json").write_text('{"accuracy": 0.9}')
    for name, expected in [("corrupt", "report.json: not valid JSON"),
                           ("foreign", "not a report of stjax eval (no 'run', 'headline', 'benchmarks' object)")]:
        assert run_cli("stjax report", report_cli.main, [str(tmp_path / name), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and expected in err[0], err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage,expected", [("json", "adapter_config.json: not valid JSON"),
                                             ("weights", "adapter_model.safetensors: not a readable safetensors file"),
                                             ("keys", "adapter_config.json: no 'r'")])
def test_eval_with_a_corrupt_adapter_is_one_line(tmp_path, capsys, damage, expected):
    from stjax.cli import eval as eval_cli

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    config = {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    if damage == "keys":
        del config["r"]
    (adapter / "adapter_config.json").write_text("{broken" if damage == "json" else json.dumps(config))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    args = ["--config", str(Path(__file__).parents[1] / "configs" / "eval_tiny.yaml"), f"adapter={adapter}",
            f"output_dir={tmp_path / 'out'}", "safety_mass.tokens=null"]
    assert run_cli("stjax eval", eval_cli.main, args) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and expected in err[0], captured.err
    assert "Traceback" not in captured.err


def test_a_full_disk_while_writing_metrics_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    import errno

    real_open = Path.open

    def full(self, *args, **kwargs):
        if self.name == "metrics.jsonl":
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    args = ["--config", str(TINY), f"train.run_dir={tmp_path / 'run'}", "logging.progress=false", "train.max_steps=2"]
    assert run_cli("stjax train", train_cli.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"stjax train: error: {tmp_path / 'run' / 'metrics.jsonl'}: could not be written: No space left on "
                   "device (errno 28); no checkpoint was written (a rerun starts from the initial weights)"]
