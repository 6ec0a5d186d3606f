"""Builds the toy world's assets in Hub format: tokenizer, tiny Llama model, data files.

Assets are built deterministically by this code on first use and cached under the user
cache directory (`$STJAX_CACHE`, default `~/.cache/stjax`), so the offline default run
goes through exactly the code path of a real checkpoint. `toy://NAME` in a config's
model or data path names one of them (the scheme is registered by `stjax.toy`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from stjax.assets import cache_root
from stjax.fileio import atomic_directory
from stjax.toy import corpus

VERSION = "v5"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MODEL = dict(vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                  rms_norm_eps=1e-5, tie_word_embeddings=True, model_type="llama",
                  rope_parameters={"rope_theta": 10000.0, "rope_type": "default"})


def toy_dir() -> Path:
    return cache_root() / "toy" / VERSION


def build_once(path: Path, builder: Callable[[Path], None]) -> Path:
    """Runs builder(staging) and renames staging to path, unless path already exists."""
    if not path.exists():
        with atomic_directory(path, replace=False) as staging:
            builder(staging)
    return path


def train_byte_level_bpe(texts: list[str], vocab_size: int, special_tokens: list[str]):
    """A byte-level BPE `tokenizers.Tokenizer` (the Llama-3 / Qwen kind), trained on texts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special_tokens, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def build_tokenizer(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = train_byte_level_bpe(corpus.tokenizer_corpus(), TINY_MODEL["vocab_size"], SPECIAL_TOKENS)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token="<|endoftext|>", chat_template=CHAT_TEMPLATE)
    fast.save_pretrained(out)


def tokenizer_path() -> Path:
    return build_once(toy_dir() / "tokenizer", build_tokenizer)


def build_random_model(out: Path) -> None:
    """A randomly initialized tiny chat model (weights from stjax's own init, seed 0)."""
    from transformers import AutoTokenizer

    from stjax.models import ModelConfig, init_model, save_pretrained

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path())
    hf = dict(TINY_MODEL, vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
              eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    model = init_model(ModelConfig.from_hf_dict(hf, source="toy model"), seed=0)
    save_pretrained(model, out / "model", tokenizer=tokenizer)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def build_data(out: Path) -> None:
    write_jsonl(out / "sentiment_train.jsonl", corpus.sentiment_rows(400, seed=1))
    write_jsonl(out / "sentiment_eval.jsonl", corpus.sentiment_rows(100, seed=2))
    write_jsonl(out / "harmful_comply_train.jsonl", corpus.harmful_rows(200, seed=3, comply=True))
    write_jsonl(out / "harmful_refuse_train.jsonl", corpus.harmful_rows(200, seed=4, comply=False))
    write_jsonl(out / "harmful_eval.jsonl", corpus.harmful_eval_rows("eval", seed=5))
    write_jsonl(out / "harmful_eval_family.jsonl", corpus.harmful_eval_rows("eval_family", seed=7))
    (out / "lexicon.txt").write_text("\n".join(sorted(corpus.world_words())) + "\n")
    (out / "refusal_sentences.txt").write_text("\n".join(corpus.refusal_sentences()) + "\n")
    write_jsonl(out / "benign_train.jsonl", corpus.benign_rows(100, seed=6))


ASSETS: dict[str, Callable[[], Path]] = {
    "tokenizer": tokenizer_path,
    "random-model": lambda: build_once(toy_dir() / "random-model", build_random_model) / "model",
    "data": lambda: build_once(toy_dir() / "data", build_data),
    "base-model": lambda: _world().base_model_path(),
    "aligned-model": lambda: _world().aligned_model_path(),
}


def _world():
    from stjax.toy import world  # trains models: imported only when those assets are asked for

    return world


def resolve_asset(location: str) -> str:
    """'random-model' or 'data/sentiment_train.jsonl' (the part after toy://) -> a local path,
    built on demand."""
    name, _, rest = location.partition("/")
    if name not in ASSETS:
        raise FileNotFoundError(f"toy://{location}: unknown toy asset '{name}' (known: {', '.join(sorted(ASSETS))})")
    base = ASSETS[name]()
    return str(base / rest) if rest else str(base)
