"""Decoder-only LLMs of the Llama family in Flax NNX, with Hub checkpoints in and out."""

from stjax.models.checkpoint_io import CheckpointError, from_pretrained, save_pretrained
from stjax.models.config import ConfigError, ModelConfig
from stjax.models.gguf_import import GGUFError, convert_gguf, gguf_tokenizer, load_gguf
from stjax.models.partitioning import DEFAULT_RULES, ShardingError, make_mesh, shard_like_rules
from stjax.models.transformer import CausalLM, KVCache, count_params, init_model

__all__ = [
    "CausalLM", "CheckpointError", "ConfigError", "DEFAULT_RULES", "GGUFError", "KVCache", "ModelConfig",
    "ShardingError", "convert_gguf", "count_params", "from_pretrained", "gguf_tokenizer", "init_model",
    "load_gguf", "make_mesh",
    "save_pretrained", "shard_like_rules",
]
