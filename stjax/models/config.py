"""Model hyperparameters, read from a Hugging Face `config.json`.

One dataclass covers the Llama family as published on the Hub (Llama 2/3/3.1/3.2,
Mistral, Qwen2/2.5, Qwen3, SmolLM2): they differ only in a handful of switches
(biases, q/k norms, rope scaling, sliding windows, tied embeddings).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from stjax.errors import UserError

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


class ConfigError(UserError):
    """A checkpoint config that stjax cannot represent; the message names the key."""


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    # rope scaling parameters as sorted (key, value) pairs, hashable so the config can be
    # static in jitted code; None for plain RoPE.
    rope_scaling: tuple[tuple[str, Any], ...] | None = None
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    qk_norm: bool = False
    # Per-layer sliding window in tokens (None = full attention), one entry per layer.
    sliding_windows: tuple[int | None, ...] | None = None
    model_type: str = "llama"
    # Runtime choices, not part of the checkpoint.
    param_dtype: str = "float32"
    compute_dtype: str = "float32"
    remat: str = "none"
    attention: str = "auto"  # auto: cuDNN flash attention on GPUs, XLA elsewhere (stjax.models.attention)
    scan_layers: bool = False  # the layers stacked and run under lax.scan (stjax.models.layer_stack)
    # The checkpoint's config.json as read, so a save writes back every key it had.
    hf_config: dict = dataclasses.field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads={self.num_heads} is not a multiple of "
                f"num_key_value_heads={self.num_kv_heads}"
            )
        if self.remat not in REMAT_POLICIES:
            raise ConfigError(f"remat={self.remat!r}: expected one of {REMAT_POLICIES}")
        if self.sliding_windows is not None and len(self.sliding_windows) != self.num_layers:
            raise ConfigError("sliding_windows must have one entry per layer")
        if self.scan_layers and self.sliding_windows and len(set(self.sliding_windows)) > 1:
            raise ConfigError(f"model.scan_layers: the layers have different sliding windows "
                              f"({sorted(set(self.sliding_windows), key=str)}), a scan needs identical layers; "
                              "set model.scan_layers: false")

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def rope_type(self) -> str:
        return self.rope_parameters.get("rope_type", "default")

    @property
    def rope_parameters(self) -> dict[str, Any]:
        return dict(self.rope_scaling or ())

    # ---------------------------------------------------------------- HF conversion
    @classmethod
    def from_hf_dict(cls, hf: dict[str, Any], source: str = "config.json", **runtime) -> "ModelConfig":
        """Builds a config from a Hub `config.json` dict (transformers 4 or 5 layout)."""

        def need(key):
            if key not in hf:
                raise ConfigError(f"{source}: missing required key '{key}'")
            return hf[key]

        model_type = hf.get("model_type", "llama")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ConfigError(
                f"{source}: model_type '{model_type}' is not supported "
                f"(expected one of {', '.join(SUPPORTED_MODEL_TYPES)})"
            )
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{source}: hidden_act '{hf['hidden_act']}' is not supported (expected 'silu')")
        num_heads = need("num_attention_heads")
        hidden = need("hidden_size")
        num_layers = need("num_hidden_layers")
        head_dim = hf.get("head_dim") or hidden // num_heads

        # transformers 5 keeps rope_theta inside rope_parameters; 4.x at the top level.
        rope = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
        rope_theta = float(rope.pop("rope_theta", hf.get("rope_theta", 10000.0)))
        if "type" in rope and "rope_type" not in rope:
            rope["rope_type"] = rope.pop("type")
        rope_type = rope.get("rope_type", "default")
        if rope_type not in SUPPORTED_ROPE_TYPES:
            raise ConfigError(
                f"{source}: rope type '{rope_type}' is not supported "
                f"(expected one of {', '.join(SUPPORTED_ROPE_TYPES)})"
            )
        if hf.get("partial_rotary_factor", 1.0) != 1.0:
            raise ConfigError(f"{source}: partial_rotary_factor != 1 is not supported")

        attention_bias = bool(hf.get("attention_bias", False))
        qkv_bias = model_type == "qwen2" or attention_bias
        o_bias = attention_bias and model_type != "qwen2"

        return cls(
            vocab_size=need("vocab_size"),
            hidden_size=hidden,
            intermediate_size=need("intermediate_size"),
            num_layers=num_layers,
            num_heads=num_heads,
            num_kv_heads=hf.get("num_key_value_heads") or num_heads,
            head_dim=head_dim,
            rms_norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
            rope_theta=rope_theta,
            rope_scaling=tuple(sorted(rope.items())) if rope_type != "default" else None,
            max_position_embeddings=int(hf.get("max_position_embeddings", 2048)),
            tie_word_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            o_bias=o_bias,
            mlp_bias=bool(hf.get("mlp_bias", False)),
            qk_norm=model_type == "qwen3",
            sliding_windows=_sliding_windows(hf, model_type, num_layers),
            model_type=model_type,
            hf_config=dict(hf),
            **runtime,
        )

    @classmethod
    def from_pretrained(cls, path: str | Path, **runtime) -> "ModelConfig":
        file = Path(path) / "config.json"
        if not file.is_file():
            raise ConfigError(f"{file}: not found (expected a Hugging Face model directory)")
        try:
            hf = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file}: line {e.lineno}: invalid JSON ({e.msg})") from None
        return cls.from_hf_dict(hf, source=str(file), **runtime)

    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` transformers reads back into the same architecture."""
        arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM",
                "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM"}[self.model_type]
        hf = dict(self.hf_config)
        rope = {"rope_theta": self.rope_theta, "rope_type": self.rope_type, **self.rope_parameters}
        hf.pop("rope_scaling", None)
        hf.pop("rope_theta", None)
        hf.update(
            architectures=[arch],
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_kv_heads,
            head_dim=self.head_dim,
            rms_norm_eps=self.rms_norm_eps,
            rope_parameters=rope,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            hidden_act="silu",
            dtype=self.param_dtype,
        )
        if self.model_type in ("llama", "qwen3"):
            hf["attention_bias"] = self.o_bias
        if self.model_type == "llama":
            hf["mlp_bias"] = self.mlp_bias
        return hf


def _sliding_windows(hf: dict, model_type: str, num_layers: int) -> tuple[int | None, ...] | None:
    window = hf.get("sliding_window")
    if not window:
        return None
    if model_type in ("qwen2", "qwen3"):
        if not hf.get("use_sliding_window", False):
            return None
        layer_types = hf.get("layer_types")
        if layer_types is None:
            first = hf.get("max_window_layers", num_layers)
            layer_types = ["full_attention" if i < first else "sliding_attention" for i in range(num_layers)]
        return tuple(window if t == "sliding_attention" else None for t in layer_types)
    layer_types = hf.get("layer_types") or ["sliding_attention"] * num_layers
    return tuple(window if t == "sliding_attention" else None for t in layer_types)
