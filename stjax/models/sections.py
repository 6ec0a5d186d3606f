"""The model and mesh sections of every application config (train, safety tokens, eval),
and loading what a model section names: the model onto a mesh, and its tokenizer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Literal

from stjax.errors import UserError
from stjax.hub import local_dir
from stjax.models.partitioning import DEFAULT_RULES, MESH_AXES, Rules, ShardingError


@dataclasses.dataclass
class ModelSection:
    path: str  # a Hub id (org/name, resolved through the Hugging Face cache) or a Hub-format folder
    tokenizer: str | None = None  # a Hub id or folder; defaults to the model's
    revision: str | None = None  # a branch, tag or commit of a Hub id (default: main)
    chat_template: str | None = None  # a Jinja template, or a file holding one, over the tokenizer's
    dtype: Literal["float32", "bfloat16"] = "bfloat16"  # parameter storage
    compute_dtype: Literal["float32", "bfloat16"] | None = None  # defaults to dtype
    remat: Literal["none", "full", "dots", "dots_no_batch"] = "none"
    attention: str = "auto"  # auto: cuDNN flash attention on GPUs, XLA elsewhere (stjax.models.attention)
    # the decoder layers stacked and run under lax.scan: one layer to compile instead of
    # num_layers (minutes less at 32 layers); checkpoints stay in the Hub's per-layer layout
    scan_layers: bool = False

    def local_path(self) -> str:
        """The model folder: `path` itself, or the Hub id's snapshot in the Hugging Face cache."""
        return local_dir(self.path, self.revision)

    def tokenizer_path(self) -> str:
        return local_dir(self.tokenizer, None) if self.tokenizer else self.local_path()


@dataclasses.dataclass
class MeshSection:
    data: int = -1
    fsdp: int = 1
    tensor: int = 1
    # logical axis -> mesh axis (or list of them, or null: replicated), over the defaults of
    # stjax.models.partitioning.DEFAULT_RULES; e.g. {embed: null} keeps embeddings replicated
    rules: dict[str, str | list[str] | None] = dataclasses.field(default_factory=dict)


def chat_template_text(value: str) -> str:
    """A `chat_template` setting: the template itself, or the path of a file that holds it
    (a .jinja file, or a tokenizer_config.json / chat_template.json with a chat_template key)."""
    if "{{" in value or "{%" in value:
        return value
    file = Path(value)
    if not file.is_file():
        raise FileNotFoundError(f"chat_template {value!r}: neither a Jinja template nor an existing file")
    try:
        text = file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{file}: chat_template file is not UTF-8 text") from None
    if file.suffix == ".json":
        try:
            text = json.loads(text).get("chat_template")
        except (json.JSONDecodeError, AttributeError):
            text = None
        if not isinstance(text, str):
            raise UserError(f"{file}: expected a JSON object with a 'chat_template' string")
    return text


def load_tokenizer(path: str, chat_template: str | None = None):
    """The tokenizer of a Hub-format folder or Hub id; a missing pad token falls back to EOS
    (masks are explicit arrays); `chat_template` (a template or a file) replaces the
    tokenizer's, and a tokenizer left without one is refused."""
    from transformers import AutoTokenizer

    path = local_dir(path)
    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such folder (expected a model or tokenizer folder, or a Hub id org/name)")
    try:  # never the checkpoint's own code (and never a prompt asking whether to run it)
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=False)
    except (OSError, ValueError) as e:  # unreadable files, a tokenizer that needs remote code
        if "custom code" in str(e) or "trust_remote_code" in str(e):
            raise UserError(f"{path}: the tokenizer needs the checkpoint's own Python code (trust_remote_code), "
                            "which stjax does not run; use a tokenizer transformers ships") from None
        reason = " ".join(str(e).split())[:200]
        raise UserError(f"{path}: the tokenizer cannot be loaded ({reason})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    if chat_template:
        tokenizer.chat_template = chat_template_text(chat_template)
    if not tokenizer.chat_template:
        raise UserError(f"{path}: the tokenizer has no chat_template: use an instruct model's tokenizer or set "
                        "model.chat_template (a Jinja template or a file holding one)")
    return tokenizer


def load_model(section: ModelSection, mesh, *, rules: Rules = DEFAULT_RULES, path: str | None = None):
    """The model a section names (or `path`), in its dtypes, remat, attention and layer
    layout, on the mesh."""
    import jax.numpy as jnp

    from stjax.models.checkpoint_io import from_pretrained

    return from_pretrained(local_dir(path) if path else section.local_path(), dtype=jnp.dtype(section.dtype),
                           compute_dtype=jnp.dtype(section.compute_dtype or section.dtype), mesh=mesh,
                           rules=rules, remat=section.remat, attention=section.attention,
                           scan_layers=section.scan_layers)


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
        if name == "layers" and named:
            raise ShardingError("mesh.rules.layers: the stacked layer axis of model.scan_layers stays unsharded "
                                f"(null): the scan reads one layer at a time; got {axes!r}")
        rules[name] = None if not named else named[0] if isinstance(axes, str) else tuple(named)
    return rules
