"""`stjax safety-tokens --config configs/X.yaml [key=value ...]`

PACT stage 1: compare an aligned model with its base on refusal responses and write the
safety-token set (safetensors + JSON metadata + a token table) for training to use.
"""

from __future__ import annotations

import argparse
import sys

from stjax.cli.common import add_distributed_flags, resolve_locations, start_distributed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax safety-tokens", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML with the SafetyTokensConfig keys")
    parser.add_argument("overrides", nargs="*", help="overrides, e.g. top_k=20")
    add_distributed_flags(parser)
    args = parser.parse_args(argv)

    import jax

    from stjax.configlib import apply_overrides, from_dict, read_yaml
    from stjax.pact.safety_tokens import suppressed_stop_tokens, token_table
    from stjax.pact.stage1 import SafetyTokensConfig, run
    from stjax.training.agreement import check_same_config

    cfg = from_dict(SafetyTokensConfig, apply_overrides(read_yaml(args.config), args.overrides))
    start_distributed(args)  # before any JAX work, which building a toy:// asset may be
    cfg = resolve_locations(cfg)
    check_same_config(cfg)  # every process computes the same tokens; process 0 writes them
    result, tokenizer, out = run(cfg, progress=jax.process_index() == 0)
    if jax.process_index() != 0:
        return 0
    print(f"{'token':>20}  {'weight':>8}  {'p_aligned':>10}  {'p_base':>10}")
    for row in token_table(result, tokenizer):
        print(f"{row['token']!r:>20}  {row['weight']:8.4f}  {row['p_aligned']:10.4g}  {row['p_base']:10.4g}")
    print(f"stjax safety-tokens: {len(result.ids)} safety tokens from {result.metadata['num_samples']} samples "
          f"-> {out}")
    for warning in suppressed_stop_tokens(result, tokenizer):
        print(f"stjax safety-tokens: warning: {warning}", file=sys.stderr)
    return 0
