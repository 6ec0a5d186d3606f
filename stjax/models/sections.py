"""The model and mesh sections of every application config (train, safety tokens, eval),
and loading what a model section names: the model onto a mesh, and its tokenizer."""

from __future__ import annotations

import dataclasses
from typing import Literal

from stjax.models.partitioning import DEFAULT_RULES, MESH_AXES, Rules, ShardingError


@dataclasses.dataclass
class ModelSection:
    path: str  # Hub-format directory (config.json + safetensors)
    tokenizer: str | None = None  # defaults to the model directory
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # parameter storage
    compute_dtype: Literal["float32", "bfloat16"] | None = None  # defaults to dtype
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention: str = "xla"


@dataclasses.dataclass
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # logical axis -> mesh axis (or list of them, or null: replicated), over the defaults of
    # stjax.models.partitioning.DEFAULT_RULES; e.g. {embed: null} keeps embeddings replicated
    rules: dict[str, str | list[str] | None] = dataclasses.field(default_factory=dict)


def load_tokenizer(path: str):
    """The tokenizer of a Hub-format directory; a missing pad token falls back to EOS (masks
    are explicit arrays), and a tokenizer without a chat template is refused."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if not tokenizer.chat_template:
        raise FileNotFoundError(f"{path}: the tokenizer has no chat_template (an instruct model's tokenizer is needed)")
    return tokenizer


def load_model(section: ModelSection, mesh, *, rules: Rules = DEFAULT_RULES, path: str | None = None):
    """The model a section names (or `path`), in its dtypes, remat and attention, on the mesh."""
    import jax.numpy as jnp

    from stjax.models.checkpoint_io import from_pretrained

    return from_pretrained(path or section.path, dtype=jnp.dtype(section.dtype),
                           compute_dtype=jnp.dtype(section.compute_dtype or section.dtype), mesh=mesh,
                           rules=rules, remat=section.remat, attention=section.attention)


def mesh_rules(section: MeshSection) -> Rules:
    """The sharding rules: stjax's defaults with the section's `rules` over them."""
    rules = dict(DEFAULT_RULES)
    for name, axes in section.rules.items():
        if name not in DEFAULT_RULES:
            raise ShardingError(f"mesh.rules: unknown logical axis '{name}' (known: {', '.join(DEFAULT_RULES)})")
        named = [axes] if isinstance(axes, str) else list(axes or [])
        unknown = [a for a in named if a not in MESH_AXES]
        if unknown or len(set(named)) != len(named):
            raise ShardingError(f"mesh.rules.{name}: expected null, a mesh axis or a list of distinct mesh axes "
                                f"({', '.join(MESH_AXES)}), got {axes!r}")
        rules[name] = None if not named else named[0] if isinstance(axes, str) else tuple(named)
    return rules
