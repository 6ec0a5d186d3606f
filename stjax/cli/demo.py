"""`stjax demo [--run-dir DIR]`: PACT end to end on the embedded toy world, offline, on CPU.

Builds the world on first use (a base and an aligned chat model, data, tokenizer), computes
the safety tokens, fine-tunes the aligned model with SFT and with PACT on a task with 10%
harmful rows, and evaluates all three (report.json, a table and a plot in the run directory).
"""

from __future__ import annotations

import argparse


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax demo", description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", default="runs/default", help="output directory (default runs/default)")
    args = parser.parse_args(argv)

    from stjax.toy.default_run import main as default_run

    default_run(args.run_dir)
    return 0
