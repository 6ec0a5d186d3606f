"""The toy world's models: a base chat model that complies with harmful requests, and an
aligned one, safety-tuned from it, that refuses them.

Both are trained by stjax's own trainer from a seeded random init (full fine-tuning) and
saved in Hub format, so everything downstream (safety tokens, PACT, evaluation) runs on
them exactly as on a real checkpoint pair such as Llama-3.1-8B / Llama-3.1-8B-Instruct.
"""

from __future__ import annotations

import os
from pathlib import Path

from stjax.toy.build import TINY_MODEL, build_once, tokenizer_path, toy_dir, write_jsonl
from stjax.toy import corpus

WORLD_MODEL = dict(TINY_MODEL, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=32)


def world_data_dir() -> Path:
    def build(out: Path) -> None:
        benign = corpus.benign_rows(150, seed=10)
        write_jsonl(out / "base_train.jsonl", benign + corpus.harmful_rows(600, seed=11, comply=True))
        write_jsonl(out / "aligned_train.jsonl", benign + corpus.harmful_rows(600, seed=12, comply=False))
    return build_once(toy_dir() / "world-data", build)


def _init(out: Path) -> None:
    from transformers import AutoTokenizer

    from stjax.models import ModelConfig, init_model, save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    hf = dict(WORLD_MODEL, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    save_pretrained(init_model(ModelConfig.from_hf_dict(hf, source="toy world"), seed=0), out / "model",
                    tokenizer=tokenizer)


def _fine_tune(start: str, data_file: str, epochs: int):
    """A builder: full fine-tuning of `start` on a world data file, exported as out/model."""

    def build(out: Path) -> None:
        from stjax.configlib import from_dict
        from stjax.training.config import TrainConfig
        from stjax.training.build import build_trainer

        config = from_dict(TrainConfig, {
            "model": {"path": start, "dtype": "float32"},
            "data": {"train": [{"path": str(world_data_dir() / data_file)}], "max_len": 64,
                 # the published toy-world figures were made with projections at every position
                 "gather_loss_positions": False},
            "mesh": {"data": -1},
            "lora": {"enabled": False},
            "optimizer": {"lr": 3e-3, "schedule": "warmup_cosine", "warmup_steps": 10, "clip_norm": 1.0},
            "train": {"run_dir": str(out / "run"), "epochs": epochs, "batch_size": 32, "resume": "never"},
            "checkpoint": {"every_steps": 10**9, "keep": 1},
            "logging": {"tensorboard": False},
        })
        build_trainer(config).run()
        os.replace(out / "run" / "model", out / "model")

    return build


def init_model_path() -> Path:
    return build_once(toy_dir() / "world-init", _init) / "model"


def base_model_path() -> Path:
    return build_once(toy_dir() / "world-base", _fine_tune(str(init_model_path()), "base_train.jsonl", 20)) / "model"


def aligned_model_path() -> Path:
    return build_once(toy_dir() / "world-aligned",
                      _fine_tune(str(base_model_path()), "aligned_train.jsonl", 20)) / "model"
