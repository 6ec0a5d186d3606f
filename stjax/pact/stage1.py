"""PACT stage 1 as a job: a config names an aligned model, its base and refusal rows; `run`
compares the two models on the refusals and writes the safety-token set (safetensors +
JSON metadata + a token table) that training reads (`stjax safety-tokens`)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Literal

from stjax.models.sections import MeshSection


@dataclasses.dataclass
class SafetyTokensConfig:
    aligned_model: str  # Hub id or Hub-format folder of the aligned (instruct) model
    base_model: str  # its base / less aligned model (Hub id or folder); must share the vocabulary
    refusals: str  # JSON/JSONL of {input, output} refusal rows
    out_dir: str
    tokenizer: str | None = None  # default: the aligned model's
    chat_template: str | None = None  # a Jinja template or a file holding one, over the tokenizer's
    num_samples: int = 512
    max_resp_len: int = 64
    temperature: float = 1.0
    diff_mode: Literal["p_diff", "pref_logratio"] = "p_diff"
    top_k: int = 50
    batch_size: int = 8
    drop_tokens: list[str] = dataclasses.field(default_factory=list)  # e.g. ["<|im_end|>"], removed after top_k
    positive_only: bool = False  # keep only the tokens with a positive weight
    dtype: Literal["float32", "bfloat16"] = "bfloat16"
    mesh: MeshSection = dataclasses.field(default_factory=MeshSection)


def run(cfg: SafetyTokensConfig, *, progress: bool = True):
    """Computes and saves the safety tokens; returns (SafetyTokens, tokenizer, output dir)."""
    import jax
    import jax.numpy as jnp

    from stjax.data.sources import read_conversations
    from stjax.models import from_pretrained, make_mesh
    from stjax.models.sections import load_tokenizer, mesh_rules
    from stjax.pact.safety_tokens import compute_safety_tokens, drop_tokens, save_safety_tokens, teacher_forced_pairs

    mesh, rules = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor), mesh_rules(cfg.mesh)
    aligned_path, base_path = cfg.aligned_model, cfg.base_model
    tokenizer = load_tokenizer(cfg.tokenizer or aligned_path, cfg.chat_template)
    rows = [{"input": c.messages[-2].content, "output": c.messages[-1].content}
            for c in read_conversations(cfg.refusals)[: cfg.num_samples]]
    pairs = teacher_forced_pairs(tokenizer, rows, cfg.max_resp_len)
    dtype = jnp.dtype(cfg.dtype)
    aligned = from_pretrained(aligned_path, dtype=dtype, mesh=mesh, rules=rules)
    base = from_pretrained(base_path, dtype=dtype, mesh=mesh, rules=rules)
    result = compute_safety_tokens(aligned, base, pairs, temperature=cfg.temperature, diff_mode=cfg.diff_mode,
                                   top_k=cfg.top_k, batch_size=cfg.batch_size, pad_id=tokenizer.pad_token_id or 0,
                                   progress=progress)
    if cfg.drop_tokens or cfg.positive_only:
        result = drop_tokens(result, tokenizer, cfg.drop_tokens, positive_only=cfg.positive_only)
    out = Path(cfg.out_dir)
    if jax.process_index() == 0:  # every process holds the same result; one writes it
        save_safety_tokens(result, out, tokenizer, {"aligned_model": aligned_path, "base_model": base_path,
                                                    "refusals": cfg.refusals, "max_resp_len": cfg.max_resp_len})
    return result, tokenizer, out
