"""Tiny random transformers (PyTorch) checkpoints of every supported family."""

from __future__ import annotations

import numpy as np

TINY = dict(vocab_size=160, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)

LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16, "rope_theta": 500000.0}

FAMILIES = {
    "llama2": ("LlamaConfig", "LlamaForCausalLM", {}),
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {"rope_parameters": LLAMA3_ROPE, "head_dim": 32}),
    "smollm2": ("LlamaConfig", "LlamaForCausalLM", {"tie_word_embeddings": True, "num_key_value_heads": 4}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 6}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {"tie_word_embeddings": True}),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 24}),
}
# 8 query and 8 kv heads: every parameter splits 8 ways, for tensor=8 meshes
WIDE_HEADS = ("LlamaConfig", "LlamaForCausalLM", {"num_attention_heads": 8, "num_key_value_heads": 8})


def make_hf_model(family: str, seed: int = 0):
    """A float32 transformers model of the family with non-trivial random weights."""
    import torch
    import transformers

    config_cls, model_cls, extra = WIDE_HEADS if family == "wide_heads" else FAMILIES[family]
    config = getattr(transformers, config_cls)(**{**TINY, **extra})
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config).eval()
    with torch.no_grad():  # default init leaves norms at 1 and biases at 0: perturb them
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or name.endswith(".bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def hf_logits(model, tokens: np.ndarray, attention_mask: np.ndarray | None = None) -> np.ndarray:
    import torch

    ids = torch.tensor(np.asarray(tokens), dtype=torch.long)
    kwargs = {}
    if attention_mask is not None:
        mask = torch.tensor(np.asarray(attention_mask), dtype=torch.long)
        kwargs = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0))
    with torch.no_grad():
        return model(ids, **kwargs).logits.float().numpy()


def left_padded_batch(rng: np.random.Generator, lengths: list[int], vocab: int):
    """Token ids [B, max(lengths)] left-padded with id 0, and their attention mask."""
    width = max(lengths)
    tokens = np.zeros((len(lengths), width), np.int32)
    mask = np.zeros((len(lengths), width), bool)
    for row, n in enumerate(lengths):
        tokens[row, width - n:] = rng.integers(1, vocab, n)
        mask[row, width - n:] = True
    return tokens, mask
