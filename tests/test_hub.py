"""Hub ids resolved through a Hugging Face cache the test lays out itself (offline)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

import stjax.toy  # noqa: F401  registers toy://
from stjax import hub
from stjax.locations import resolve

REPO = "stjax-test/tiny-chat"
COMMITS = {"main": "a" * 40, "v1": "b" * 40}


@pytest.fixture()
def hf_cache(tmp_path, monkeypatch):
    """A Hugging Face hub cache holding REPO at two revisions (main, and tag v1 whose weights
    differ), laid out as huggingface_hub writes it: refs/<name> -> commit, snapshots/<commit>/."""
    import huggingface_hub

    from stjax.models import from_pretrained, init_model, save_pretrained

    source = Path(resolve("toy://random-model"))
    repo = tmp_path / "hub" / f"models--{REPO.replace('/', '--')}"
    for ref, commit in COMMITS.items():
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
        snapshot = repo / "snapshots" / commit
        shutil.copytree(source, snapshot)
        if ref == "v1":  # other weights at the tag
            save_pretrained(init_model(from_pretrained(source).config, seed=7), snapshot)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    hub._snapshot.cache_clear()
    yield repo
    hub._snapshot.cache_clear()


def test_hub_ids_and_local_paths():
    assert hub.is_hub_id("meta-llama/Llama-3.1-8B-Instruct")
    for local in ("/abs/path", "./rel/path", "runs", "a/b/c", "gs://bucket/model", "../up/x"):
        assert not hub.is_hub_id(local), local
        assert hub.local_dir(local) == local


def test_hub_id_resolves_to_the_cached_snapshot_at_its_revision(hf_cache):
    from stjax.models.sections import ModelSection

    assert hub.local_dir(REPO) == str(hf_cache / "snapshots" / COMMITS["main"])
    assert ModelSection(path=REPO, revision="v1").local_path() == str(hf_cache / "snapshots" / COMMITS["v1"])
    assert ModelSection(path=REPO, revision=COMMITS["v1"]).local_path().endswith(COMMITS["v1"])


def test_models_and_tokenizers_load_from_a_hub_id(hf_cache):
    from stjax.models import from_pretrained
    from stjax.models.sections import ModelSection, load_model, load_tokenizer

    local = from_pretrained(resolve("toy://random-model"))
    tokens = np.arange(1, 9, dtype=np.int32)[None]
    by_id = from_pretrained(REPO)
    np.testing.assert_array_equal(np.asarray(by_id(tokens)), np.asarray(local(tokens)))
    at_tag = load_model(ModelSection(path=REPO, revision="v1", dtype="float32"), None)
    assert not np.allclose(np.asarray(at_tag(tokens)), np.asarray(local(tokens)))
    assert load_tokenizer(REPO).encode("hello world") == load_tokenizer(resolve("toy://random-model")).encode(
        "hello world")


def test_training_from_a_hub_id_records_the_id_in_the_adapter(hf_cache, tmp_path):
    from trainer_fixtures import make_config

    from stjax.training.build import build_trainer

    config = make_config(tmp_path / "run", model={"path": REPO}, train={"max_steps": 2, "export": ["adapter"]},
                         mesh={"data": 8, "fsdp": 1, "tensor": 1})
    result = build_trainer(config).run()
    assert result.final_step == 2
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == REPO


def test_an_uncached_id_offline_is_one_line_within_seconds(hf_cache, tmp_path, capsys):
    from stjax.cli.common import run_cli
    from stjax.cli.train import main

    start = time.perf_counter()
    with pytest.raises(hub.HubError) as e:
        hub.local_dir("meta-llama/Llama-3.1-8B-Instruct")
    message = str(e.value)
    assert "meta-llama/Llama-3.1-8B-Instruct" in message and "HF_HUB_OFFLINE" in message
    assert "hf download meta-llama/Llama-3.1-8B-Instruct" in message and "\n" not in message
    with pytest.raises(hub.HubError, match="--revision v9"):
        hub.local_dir(REPO, "v9")
    config = tmp_path / "train.yaml"
    config.write_text("model: {path: meta-llama/Llama-3.1-8B-Instruct}\n"
                      "data: {train: [{path: toy://data/sentiment_train.jsonl}]}\n"
                      f"train: {{run_dir: {tmp_path / 'run'}}}\n")
    assert run_cli("stjax train", main, ["--config", str(config)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "meta-llama/Llama-3.1-8B-Instruct" in err[0] and "Traceback" not in err[0]
    assert time.perf_counter() - start < 30
    assert not (tmp_path / "run").exists()


def test_hub_failures_online_name_the_id_and_the_fix(hf_cache, monkeypatch):
    import huggingface_hub
    from huggingface_hub import errors

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    calls = []

    def fake_download(repo_id, *, local_files_only=False, etag_timeout=None, **kwargs):
        calls.append((local_files_only, etag_timeout))
        if local_files_only:
            raise errors.LocalEntryNotFoundError("not cached")
        raise failure

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_download)
    client = next(m for m in ("httpx2", "httpx") if importlib.util.find_spec(m))  # huggingface_hub's HTTP client
    httpx = importlib.import_module(client)

    def response(status):
        return httpx.Response(status, request=httpx.Request("GET", "https://huggingface.co/api/models/org/m"))
    for failure, expected in [
        (errors.LocalEntryNotFoundError("Got: ConnectError: [Errno -2] Name or service not known"),
         "cannot be reached"),
        (errors.RepositoryNotFoundError("404 Client Error", response=response(404)), "no such model on the Hub"),
        (errors.GatedRepoError("403 Client Error", response=response(403)), "gated"),
    ]:
        hub._snapshot.cache_clear()
        with pytest.raises(hub.HubError, match=expected) as e:
            hub.local_dir("org/missing-model")
        assert str(e.value).startswith("org/missing-model") and "\n" not in str(e.value)
    assert calls[0] == (True, None) and calls[1] == (False, hub.ETAG_TIMEOUT_S)  # the cache before the network
