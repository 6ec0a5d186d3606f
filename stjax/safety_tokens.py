"""`python -m stjax.safety_tokens --config configs/X.yaml [key=value ...]`

PACT stage 1: compare an aligned model with its base on refusal responses and write the
safety-token set (safetensors + JSON metadata + a token table) for training to use.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Literal

from stjax.cli import add_distributed_flags, run_cli, start_distributed
from stjax.training.config import MeshSection


@dataclasses.dataclass
class SafetyTokensConfig:
    aligned_model: str  # Hub-format directory of the aligned (instruct) model
    base_model: str  # its base / less aligned model; must share the vocabulary
    refusals: str  # JSON/JSONL of {input, output} refusal rows
    out_dir: str
    tokenizer: str | None = None  # default: the aligned model's
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

    from stjax.data.pipeline import load_tokenizer
    from stjax.data.sources import read_conversations
    from stjax.models import from_pretrained, make_mesh
    from stjax.pact.safety_tokens import compute_safety_tokens, drop_tokens, save_safety_tokens, teacher_forced_pairs
    from stjax.toy.build import resolve

    mesh = make_mesh(cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor)
    aligned_path, base_path = resolve(cfg.aligned_model), resolve(cfg.base_model)
    tokenizer = load_tokenizer(cfg.tokenizer or aligned_path)
    rows = [{"input": c.messages[-2].content, "output": c.messages[-1].content}
            for c in read_conversations(resolve(cfg.refusals))[: cfg.num_samples]]
    pairs = teacher_forced_pairs(tokenizer, rows, cfg.max_resp_len)
    dtype = jnp.dtype(cfg.dtype)
    aligned = from_pretrained(aligned_path, dtype=dtype, mesh=mesh)
    base = from_pretrained(base_path, dtype=dtype, mesh=mesh)
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


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stjax.safety_tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML with the SafetyTokensConfig keys")
    parser.add_argument("overrides", nargs="*", help="overrides, e.g. top_k=20")
    add_distributed_flags(parser)
    args = parser.parse_args(argv)

    import jax

    from stjax.configlib import apply_overrides, from_dict, read_yaml
    from stjax.distributed import check_same_config
    from stjax.pact.safety_tokens import suppressed_stop_tokens, token_table

    cfg = from_dict(SafetyTokensConfig, apply_overrides(read_yaml(args.config), args.overrides))
    start_distributed(args)
    check_same_config(cfg)  # every process computes the same tokens; process 0 writes them
    result, tokenizer, out = run(cfg, progress=jax.process_index() == 0)
    if jax.process_index() != 0:
        return 0
    print(f"{'token':>20}  {'weight':>8}  {'p_aligned':>10}  {'p_base':>10}")
    for row in token_table(result, tokenizer):
        print(f"{row['token']!r:>20}  {row['weight']:8.4f}  {row['p_aligned']:10.4g}  {row['p_base']:10.4g}")
    print(f"stjax.safety_tokens: {len(result.ids)} safety tokens from {result.metadata['num_samples']} samples "
          f"-> {out}")
    for warning in suppressed_stop_tokens(result, tokenizer):
        print(f"stjax.safety_tokens: warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("stjax.safety_tokens", main))
