"""Exports: tokenizer, generation_config.json and a model card next to every adapter and model;
`stjax export RUN_DIR --step N` for any saved checkpoint."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from stjax.cli import export as export_cli
from stjax.cli.common import run_cli
from stjax.locations import resolve
from stjax.training.build import build_trainer
from trainer_fixtures import make_config

GENERATION = {"do_sample": True, "temperature": 0.6, "top_p": 0.9, "eos_token_id": [2, 3]}


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """The toy model with a generation_config.json, as Hub instruct models ship one."""
    path = tmp_path_factory.mktemp("base") / "model"
    shutil.copytree(resolve("toy://random-model"), path)
    (path / "generation_config.json").write_text(json.dumps(GENERATION))
    return path


def train(run_dir: Path, base_model: Path, steps: int):
    config = make_config(run_dir, model={"path": str(base_model)}, train={"max_steps": steps, "export": ["adapter", "merged"]},
                         checkpoint={"every_steps": 2, "keep": 3})
    build_trainer(config).run()


def test_exports_carry_tokenizer_generation_config_and_a_model_card(tmp_path, base_model):
    train(tmp_path / "run", base_model, 4)
    for kind in ("adapter", "merged"):
        out = tmp_path / "run" / kind
        assert json.loads((out / "generation_config.json").read_text()) == GENERATION
        assert (out / "tokenizer.json").is_file() and (out / "tokenizer_config.json").is_file()
        card = (out / "README.md").read_text()
        assert card.startswith(f"---\nbase_model: {base_model}\nlibrary_name: {'peft' if kind == 'adapter' else 'transformers'}")
        final = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
        assert f"| final loss | {final['loss']:.4g} |" in card and "| method | sft |" in card
        assert "LoRA r 4, alpha 16.0, dropout 0.1, on q_proj, v_proj" in card
        assert "| harmful rows mixed in | 25% from " in card


def test_export_of_a_saved_step_equals_a_run_that_stopped_there(tmp_path, base_model, capsys):
    train(tmp_path / "long", base_model, 4)
    train(tmp_path / "short", base_model, 2)
    code = run_cli("stjax export", export_cli.main, [str(tmp_path / "long"), "--step", "2", "--kind", "merged"])
    assert code == 0, capsys.readouterr().err
    exported = tmp_path / "long" / "export-step-2" / "merged"
    assert str(exported.parent) in capsys.readouterr().out
    got, want = load_file(str(exported / "model.safetensors")), load_file(str(tmp_path / "short" / "merged" / "model.safetensors"))
    final = load_file(str(tmp_path / "long" / "merged" / "model.safetensors"))
    assert set(got) == set(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-7)
    assert any(not np.allclose(got[n], final[n]) for n in final)  # step 2, not the final weights
    assert "| checkpoint step | 2 |" in (exported / "README.md").read_text()

    assert run_cli("stjax export", export_cli.main, [str(tmp_path / "long"), "--step", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no checkpoint at step 3 (saved steps: 2, 4)" in err
    assert run_cli("stjax export", export_cli.main, [str(tmp_path / "nowhere")]) == 2
    assert "no config.yaml (expected the run directory of stjax train)" in capsys.readouterr().err


def test_push_to_hub_uploads_the_export_folder(tmp_path, base_model, monkeypatch, capsys):
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id, kwargs["private"]))

        def upload_folder(self, *, folder_path, repo_id, **kwargs):
            calls.append(("upload", repo_id, sorted(p.name for p in Path(folder_path).iterdir())))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    train(tmp_path / "run", base_model, 2)
    argv = [str(tmp_path / "run"), "--kind", "adapter", "--out", str(tmp_path / "out"), "--push-to-hub", "me/my-adapter",
            "--private"]
    assert run_cli("stjax export", export_cli.main, argv) == 0
    assert "pushed to https://huggingface.co/me/my-adapter" in capsys.readouterr().out
    assert calls[0] == ("create", "me/my-adapter", True)
    assert calls[1][0] == "upload" and {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(calls[1][2])

    class Offline(FakeApi):
        def create_repo(self, repo_id, **kwargs):
            raise OSError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", Offline)
    assert run_cli("stjax export", export_cli.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "push_to_hub me/my-adapter: the upload of" in err and "hf auth login" in err
