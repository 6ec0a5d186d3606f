"""`python -m stjax.train --config configs/X.yaml [section.key=value ...]`"""

from __future__ import annotations

import argparse
import sys

from stjax.cli import run_cli


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m stjax.train", description=__doc__)
    parser.add_argument("--config", help="YAML training config (see configs/); without it, the embedded "
                        "default run: PACT end to end on a toy world, offline, on CPU")
    parser.add_argument("--run-dir", default="runs/default", help="output directory of the default run")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. train.max_steps=10")
    multi = parser.add_argument_group(
        "multi-process runs", "TPU VM pods are detected; elsewhere give all three (or STJAX_COORDINATOR, "
        "STJAX_NUM_PROCESSES, STJAX_PROCESS_ID) and run the same command on every host")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0")
    multi.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    multi.add_argument("--process-id", type=int, help="this process's index, 0..N-1")
    args = parser.parse_args(argv)
    if args.config is None:
        from stjax.toy.default_run import main as default_run

        default_run(args.run_dir)
        return 0

    from stjax import distributed
    from stjax.training.config import load_train_config

    config = load_train_config(args.config, args.overrides)
    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
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
