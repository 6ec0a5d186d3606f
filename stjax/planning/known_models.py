"""config.json of the reference models, so a plan needs no download."""

from __future__ import annotations

import json
from pathlib import Path

from stjax.configlib import ConfigKeyError

# config.json of the reference models, so a plan needs no download.
_LLAMA31_8B = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336,
    "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 128,
    "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-05, "rope_theta": 500000.0,
    "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192, "rope_type": "llama3"},
    "attention_bias": False, "mlp_bias": False, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 128000, "torch_dtype": "bfloat16",
}
_QWEN25_7B = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 3584, "intermediate_size": 18944,
    "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4, "vocab_size": 152064,
    "max_position_embeddings": 32768, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072,
    "use_sliding_window": False, "max_window_layers": 28, "tie_word_embeddings": False, "hidden_act": "silu",
    "bos_token_id": 151643, "torch_dtype": "bfloat16",
}
KNOWN_MODELS = {
    "meta-llama/Llama-3.1-8B-Instruct": _LLAMA31_8B,
    "meta-llama/Llama-3.1-8B": _LLAMA31_8B,
    "Qwen/Qwen2.5-7B-Instruct": _QWEN25_7B,
    "Qwen/Qwen2.5-7B": {**_QWEN25_7B, "max_position_embeddings": 131072},
}


def model_hf_config(path: str, model_config: str | None = None) -> tuple[dict, str]:
    """(config.json dict, where it came from): --model-config, the model directory, or the
    embedded config of a known model whose name ends the path."""
    if model_config:
        return json.loads(Path(model_config).read_text()), model_config
    if (Path(path) / "config.json").is_file():
        local = Path(path) / "config.json"
        return json.loads(local.read_text()), str(local)
    for repo, hf in KNOWN_MODELS.items():
        if path.rstrip("/").lower().endswith(repo.split("/")[-1].lower()):
            return dict(hf), f"embedded config of {repo}"
    raise ConfigKeyError(f"model.path {path!r}: no config.json there and not a known model "
                         f"({', '.join(KNOWN_MODELS)}); give --model-config config.json")
