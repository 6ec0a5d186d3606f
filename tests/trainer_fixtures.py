"""Tiny training configs on the toy assets, for trainer and PACT tests."""

from __future__ import annotations

import copy
from pathlib import Path

import stjax.toy  # noqa: F401  registers toy://
from stjax.configlib import from_dict
from stjax.locations import resolve, resolve_paths
from stjax.training.config import TrainConfig, validate

BASE = {
    "model": {"path": "toy://random-model", "dtype": "float32"},
    "data": {"train": [{"path": "toy://data/sentiment_train.jsonl", "limit": 48}],
             "harmful": {"path": "toy://data/harmful_comply_train.jsonl"}, "harmful_ratio": 0.25,
             "max_len": 64},
    "mesh": {"data": 2, "fsdp": 2, "tensor": 2},
    "lora": {"enabled": True, "rank": 4, "alpha": 16.0, "dropout": 0.1},
    "optimizer": {"lr": 1e-2},
    "train": {"batch_size": 8, "epochs": 1, "max_steps": 6},
    "checkpoint": {"every_steps": 3, "async_save": False},
    "logging": {"progress": False, "tensorboard": False},
}


def make_safety_tokens(out_dir: Path) -> Path:
    """Safety tokens of the toy random model against a differently seeded copy (its "base")."""
    from transformers import AutoTokenizer

    from stjax.models import from_pretrained, init_model
    from stjax.pact.safety_tokens import compute_safety_tokens, save_safety_tokens, teacher_forced_pairs
    from stjax.toy import corpus

    path = resolve("toy://random-model")
    tokenizer = AutoTokenizer.from_pretrained(path)
    aligned = from_pretrained(path)
    base = init_model(aligned.config, seed=5)
    rows = [{"input": p, "output": r} for p, r in zip(corpus.harmful_prompts(6, 0), corpus.REFUSALS * 2)]
    result = compute_safety_tokens(aligned, base, teacher_forced_pairs(tokenizer, rows, 16), top_k=16,
                                   progress=False)
    return save_safety_tokens(result, out_dir, tokenizer, {})


def make_config(run_dir, **sections) -> TrainConfig:
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    data["train"]["run_dir"] = str(run_dir)
    return resolve_paths(validate(from_dict(TrainConfig, data)))
