"""Tiny training configs on the toy assets, for trainer and PACT tests."""

from __future__ import annotations

import copy

from stjax.configlib import from_dict
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


def make_config(run_dir, **sections) -> TrainConfig:
    data = copy.deepcopy(BASE)
    for section, values in sections.items():
        data.setdefault(section, {}).update(values)
    data["train"]["run_dir"] = str(run_dir)
    return validate(from_dict(TrainConfig, data))
