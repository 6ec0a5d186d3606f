"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from stjax.configlib import ConfigKeyError
from stjax.models import CheckpointError, ConfigError, ShardingError


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (config, data, checkpoint), not a bug in stjax."""
    from stjax.data.records import DataError
    from stjax.pact.safety_tokens import SafetyTokenError

    return (ConfigKeyError, ConfigError, CheckpointError, ShardingError, DataError, SafetyTokenError,
            FileNotFoundError)


def run_cli(program: str, main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    try:
        return main(sys.argv[1:] if argv is None else argv)
    except user_errors() as e:
        print(f"{program}: error: {e}", file=sys.stderr)
        return 2


def add_distributed_flags(parser: argparse.ArgumentParser) -> None:
    """--coordinator/--num-processes/--process-id, for multi-host runs outside TPU VMs."""
    multi = parser.add_argument_group(
        "multi-process runs", "TPU VM pods are detected; elsewhere give all three (or STJAX_COORDINATOR, "
        "STJAX_NUM_PROCESSES, STJAX_PROCESS_ID) and run the same command on every host")
    multi.add_argument("--coordinator", help="HOST:PORT of process 0")
    multi.add_argument("--num-processes", type=int, help="number of processes (hosts)")
    multi.add_argument("--process-id", type=int, help="this process's index, 0..N-1")


def start_distributed(args: argparse.Namespace) -> None:
    """Joins the multi-process run the flags, environment or TPU VM describe (a no-op on one host)."""
    from stjax import distributed

    distributed.initialize(args.coordinator, args.num_processes, args.process_id)
