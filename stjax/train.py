"""`python -m stjax.train --config configs/X.yaml [section.key=value ...]`"""

from __future__ import annotations

import argparse
import sys

from stjax.cli import add_distributed_flags, run_cli, start_distributed


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stjax.train", description=__doc__)
    parser.add_argument("--config", help="YAML training config (see configs/); without it, the embedded "
                        "default run: PACT end to end on a toy world, offline, on CPU")
    parser.add_argument("--run-dir", default="runs/default", help="output directory of the default run")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_steps=10")
    add_distributed_flags(parser)
    args = parser.parse_args(argv)
    if args.config is None:
        from stjax.toy.default_run import main as default_run

        default_run(args.run_dir)
        return 0

    from stjax import distributed
    from stjax.training.config import load_train_config

    config = load_train_config(args.config, args.overrides)
    start_distributed(args)
    distributed.check_run(config)  # every process runs the same config on a mesh that fits them

    from stjax.training.trainer import Trainer, TrainingDiverged

    try:
        result = Trainer(config).run()
    except TrainingDiverged as e:
        print(f"stjax.train: {e}", file=sys.stderr)
        return 3
    if result.stopped_by:
        print(f"stjax.train: {result.stopped_by} received: checkpoint saved at step {result.final_step}; "
              f"rerun the same command to resume")
    else:
        print(f"stjax.train: finished {result.final_step} steps; outputs in {config.train.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli("stjax.train", main))
