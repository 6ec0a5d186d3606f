"""`stjax train --config configs/X.yaml [section.key=value ...]`: fine-tune from a config.

Exit codes: 0 finished, 2 bad input (one line), 3 diverged, 75 stopped by SIGTERM/SIGINT
with a checkpoint saved (rerun the same command to resume)."""

from __future__ import annotations

import argparse
import sys

from stjax.cli.common import add_distributed_flags, resolve_locations, start_distributed


EXIT_DIVERGED = 3  # the loss became NaN/inf: the message names the last good checkpoint
EXIT_PREEMPTED = 75  # SIGTERM/SIGINT: checkpoint saved, rerun to resume (EX_TEMPFAIL: "try again")


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="stjax train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="YAML training config (see configs/; `stjax demo` runs the "
                        "embedded default instead)")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_steps=10")
    add_distributed_flags(parser)
    args = parser.parse_args(argv)

    from stjax.training.agreement import check_run
    from stjax.training.config import load_train_config

    config = load_train_config(args.config, args.overrides)
    start_distributed(args)  # before any JAX work, which building a toy:// asset may be
    config = resolve_locations(config)
    check_run(config)  # every process runs the same config on a mesh that fits them

    from stjax.training.build import build_trainer
    from stjax.training.trainer import TrainingDiverged

    try:
        result = build_trainer(config).run()
    except TrainingDiverged as e:
        print(f"stjax train: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    if result.stopped_by:
        print(f"stjax train: {result.stopped_by} received: checkpoint saved at step {result.final_step}; "
              f"rerun the same command to resume")
        return EXIT_PREEMPTED
    print(f"stjax train: finished {result.final_step} steps; outputs in {config.train.run_dir}")
    return 0
