"""Llama-architecture GGUF files (llama.cpp's format) in, as stjax models or Hub directories.

GGUF is how many small and quantized models are shared outside the Hugging Face Hub. A
file holds the hyperparameters, the tokenizer and the (often quantized) tensors under
llama.cpp's names. Here tensors are dequantized to float32 one at a time, renamed to the
Hub's names and fed to `checkpoint_io.load_into`, so everything after reading is the
safetensors path; `convert_gguf` writes a Hub directory so downstream code only ever
needs `from_pretrained`.

    stjax convert-gguf IN.gguf OUT_DIR
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from flax import nnx
from jax.sharding import Mesh

from stjax.errors import MissingExtra
from stjax.errors import UserError
from stjax.models.checkpoint_io import load_into, runtime_options, save_pretrained
from stjax.models.config import ModelConfig
from stjax.models.partitioning import DEFAULT_RULES, Rules
from stjax.models.rope import inverse_frequencies
from stjax.models.transformer import CausalLM

SUPPORTED_ARCHITECTURES = ("llama",)

_GLOBAL_TENSORS = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}
_LAYER_TENSORS = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}
# llama.cpp stores Llama 3.1+ rope scaling as per-frequency divisors, not as parameters.
_ROPE_FREQS = "rope_freqs.weight"
# The llama3 schedule every Llama 3.1/3.2/3.3 release uses; checked against rope_freqs.
_LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


class GGUFError(UserError):
    """A GGUF file stjax cannot read; the message names the file."""


def _gguf():
    try:
        import gguf
    except ImportError:
        raise MissingExtra("reading GGUF files needs the gguf package: pip install 'stjax[gguf]'") from None
    return gguf


def open_gguf(path: str | Path):
    """A `gguf.GGUFReader` over a llama-architecture file, or a one-line `GGUFError`."""
    gguf = _gguf()
    path = Path(path)
    if not path.is_file():
        raise GGUFError(f"{path}: no such file")
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise GGUFError(f"{path}: not a GGUF file (starts with {magic!r}, expected b'GGUF')")
    try:
        reader = gguf.GGUFReader(path)
    except (ValueError, IndexError, KeyError) as e:
        raise GGUFError(f"{path}: corrupt GGUF file ({e})") from None
    arch = _field(reader, "general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise GGUFError(
            f"{path}: architecture '{arch}' is not supported (expected one of {', '.join(SUPPORTED_ARCHITECTURES)})"
        )
    return reader


def _field(reader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _float(value) -> float:
    """A float32 metadata value as its shortest decimal (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


class GGUFTensors(Mapping):
    """Hub tensor name -> float32 array in Hub layout, dequantized only when read.

    Lazy so that loading a large model never holds more than one dequantized tensor.
    """

    def __init__(self, reader, path: Path, num_heads: int, num_kv_heads: int):
        self._tensors = {_hf_tensor_name(t.name, path): t for t in reader.tensors if t.name != _ROPE_FREQS}
        self._heads = {"q_proj": num_heads, "k_proj": num_kv_heads}

    def __getitem__(self, name: str) -> np.ndarray:
        t = self._tensors[name]
        array = _gguf().quants.dequantize(t.data, t.tensor_type)
        heads = self._heads.get(name.split(".")[-2])
        return _unpermute(array, heads) if heads else array

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def _hf_tensor_name(name: str, path: Path) -> str:
    parts = name.split(".")
    if len(parts) == 2 and parts[0] in _GLOBAL_TENSORS:
        return f"{_GLOBAL_TENSORS[parts[0]]}.{parts[1]}"
    if len(parts) == 4 and parts[0] == "blk" and parts[2] in _LAYER_TENSORS:
        return f"model.layers.{parts[1]}.{_LAYER_TENSORS[parts[2]]}.{parts[3]}"
    raise GGUFError(f"{path}: tensor '{name}' has no Hugging Face Llama counterpart")


def _unpermute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undoes llama.cpp's per-head row interleave of q/k (its RoPE rotates adjacent pairs)."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_config(reader, path: Path) -> dict[str, Any]:
    """The Hub `config.json` dict the file's llama.* metadata describes."""

    def need(key):
        value = _field(reader, key)
        if value is None:
            raise GGUFError(f"{path}: missing metadata key '{key}'")
        return value

    tensors = {t.name: t for t in reader.tensors}
    hidden = need("llama.embedding_length")
    heads = need("llama.attention.head_count")
    head_dim = _field(reader, "llama.attention.key_length") or hidden // heads
    tokens = _field(reader, "tokenizer.ggml.tokens")
    hf = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": len(tokens) if tokens else need("llama.vocab_size"),
        "hidden_size": hidden,
        "intermediate_size": need("llama.feed_forward_length"),
        "num_hidden_layers": need("llama.block_count"),
        "num_attention_heads": heads,
        "num_key_value_heads": _field(reader, "llama.attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _float(need("llama.attention.layer_norm_rms_epsilon")),
        "max_position_embeddings": _field(reader, "llama.context_length", 2048),
        "rope_parameters": _rope_parameters(reader),
        "tie_word_embeddings": "output.weight" not in tensors,
        "attention_bias": "blk.0.attn_q.bias" in tensors,
        "mlp_bias": "blk.0.ffn_up.bias" in tensors,
        "hidden_act": "silu",
    }
    rotary = _field(reader, "llama.rope.dimension_count", head_dim)
    if rotary != head_dim:
        hf["partial_rotary_factor"] = rotary / head_dim
    for key in ("bos_token_id", "eos_token_id", "padding_token_id"):
        value = _field(reader, f"tokenizer.ggml.{key}")
        if value is not None:
            hf[key.replace("padding", "pad")] = value
    if _ROPE_FREQS in tensors:
        _check_rope_freqs(hf, np.asarray(tensors[_ROPE_FREQS].data, np.float64), path)
    return hf


def _rope_parameters(reader) -> dict[str, Any]:
    rope = {"rope_type": "default", "rope_theta": _float(_field(reader, "llama.rope.freq_base", 10000.0))}
    kind = _field(reader, "llama.rope.scaling.type", "none")
    if kind != "none":
        rope.update(rope_type=kind, factor=_float(_field(reader, "llama.rope.scaling.factor", 1.0)))
        original = _field(reader, "llama.rope.scaling.original_context_length")
        if original:
            rope["original_max_position_embeddings"] = original
    return rope


def _check_rope_freqs(hf: dict, divisors: np.ndarray, path: Path) -> None:
    """Turns llama.cpp's rope_freqs divisors back into llama3 parameters, checking they match."""
    hf["rope_parameters"].update(rope_type="llama3", factor=_float(divisors.max()), **_LLAMA3_ROPE)
    config = ModelConfig.from_hf_dict(hf, source=str(path))
    dim = config.head_dim
    plain = 1.0 / config.rope_theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    if not np.allclose(plain / inverse_frequencies(config), divisors, rtol=1e-4):
        raise GGUFError(f"{path}: {_ROPE_FREQS} does not follow the llama3 rope schedule; cannot represent it")


def read_gguf(path: str | Path) -> tuple[dict[str, Any], GGUFTensors, Any]:
    """(Hub config dict, Hub-named tensors in Hub [out, in] layout, the GGUFReader)."""
    path = Path(path)
    reader = open_gguf(path)
    hf = _hf_config(reader, path)
    return hf, GGUFTensors(reader, path, hf["num_attention_heads"], hf["num_key_value_heads"]), reader


def load_gguf(path: str | Path, *, mesh: Mesh | None = None, rules: Rules = DEFAULT_RULES, **runtime) -> CausalLM:
    """Loads a llama GGUF onto the mesh, dequantized to `dtype`; `runtime` is dtype,
    compute_dtype, remat and attention, as for `from_pretrained`."""
    hf, tensors, _ = read_gguf(path)
    config = ModelConfig.from_hf_dict(hf, source=str(path), **runtime_options(**runtime))
    return load_into(lambda: CausalLM(config, rngs=nnx.Rngs(0)), tensors.__getitem__,
                     mesh=mesh, rules=rules, available=set(tensors))


def gguf_tokenizer(path: str | Path):
    """The file's tokenizer as a `PreTrainedTokenizerFast`, with its chat template.

    Built from metadata read here, because transformers' own GGUF readers import torch.
    """
    from transformers import PreTrainedTokenizerFast
    from transformers.integrations.gguf.gguf_tokenizer_mapping import (
        GGUF_TOKENIZER_MAPPING,
        convert_gguf_tokenizer,
    )

    reader = open_gguf(path)
    if "tokenizer.ggml.tokens" not in reader.fields:
        raise GGUFError(f"{path}: no tokenizer in the file (tokenizer.ggml.tokens is missing)")
    groups = {
        group: {name: _field(reader, f"tokenizer.{key}") for key, name in renames.items()
                if f"tokenizer.{key}" in reader.fields}
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer_dict, kwargs = groups["tokenizer"], groups["tokenizer_config"]
    if tokenizer_dict.get("tokenizer_type") == "llama":
        kwargs.setdefault("add_bos_token", True)  # llama.cpp's default for sentencepiece vocabularies
    tokens = tokenizer_dict["tokens"]
    for name in ("bos", "eos", "unk", "pad"):
        token_id = tokenizer_dict.get(f"{name}_token_id")
        if token_id is not None:
            kwargs[f"{name}_token"] = tokens[token_id]
    context = _field(reader, "llama.context_length")
    if context:
        kwargs["model_max_length"] = context
    backend, extra = convert_gguf_tokenizer(_field(reader, "general.architecture"), tokenizer_dict)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs, **extra)


def convert_gguf(path: str | Path, out_dir: str | Path, *, dtype=None) -> Path:
    """Writes a Hub directory (config.json, safetensors, tokenizer) from a llama GGUF.

    Weights are saved dequantized in float32 unless `dtype` says otherwise; the directory
    appears atomically (see `save_pretrained`).
    """
    model = load_gguf(path)
    return save_pretrained(model, out_dir, dtype=dtype, tokenizer=gguf_tokenizer(path))
