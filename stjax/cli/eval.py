"""`stjax eval --config configs/eval_X.yaml [key=value ...]`

Evaluates a model (optionally with a LoRA adapter) on safety and utility benchmarks and
writes report.json and summary.md to output_dir. Generations are cached per item there:
rerunning resumes an interrupted run, and changing only the judges generates nothing.
"""

from __future__ import annotations

import argparse

from stjax.cli.common import resolve_locations


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax eval", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML with the EvalConfig keys (see configs/eval_*.yaml)")
    parser.add_argument("overrides", nargs="*", help="overrides, e.g. generation.max_new_tokens=64")
    args = parser.parse_args(argv)

    from stjax.evaluation.config import load_eval_config

    config = resolve_locations(load_eval_config(args.config, args.overrides))
    from stjax.evaluation.runner import run_eval
    from stjax.evaluation.tables import REPORT_FILE, SUMMARY_FILE, summary_markdown

    report = run_eval(config)
    print(summary_markdown(report), end="")
    print(f"stjax eval: {config.output_dir}/{REPORT_FILE}, {config.output_dir}/{SUMMARY_FILE}")
    return 0
