"""Plumbing every command shares: user errors become one line and exit code 2; toy://
locations are resolved here, at the application boundary; multi-process flags."""

from __future__ import annotations

import argparse
import sys
from typing import Any, Callable

from stjax.errors import UserError


GLOBAL_FLAGS = {"--quiet": "quiet", "-q": "quiet", "--verbose": "verbose", "-v": "verbose"}
DEBUG_FLAG, DEBUG_ENV = "--debug", "STJAX_DEBUG"


def run_cli(program: str, main: Callable[[list[str]], int], argv: list[str] | None = None) -> int:
    """main(argv) -> exit code; a UserError (bad config, data, checkpoint, mesh) or a missing
    file, or an I/O failure (permissions, a full disk) is printed as `program: error: ...` and
    exits 2, without a traceback (--debug or STJAX_DEBUG=1 keeps it). --quiet / --verbose, anywhere in argv, set stjax's log level."""
    import os

    from stjax.logs import hide_library_tracebacks, set_verbosity

    argv = list(sys.argv[1:] if argv is None else argv)
    debug = DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    levels = [GLOBAL_FLAGS[a] for a in argv if a in GLOBAL_FLAGS]
    set_verbosity(levels[-1] if levels else "normal")
    hide_library_tracebacks(not debug)
    argv = [a for a in argv if a not in GLOBAL_FLAGS and a != DEBUG_FLAG]
    try:
        return main(argv)
    except (UserError, FileNotFoundError) as e:
        if debug:
            raise
        print(f"{program}: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # permissions, a full disk, a directory where a file belongs: the path and why
        if debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        code = f" (errno {e.errno})" if e.errno is not None else ""
        print(f"{program}: error: {where}{e.strerror or e}{code}", file=sys.stderr)
        return 2


def resolve_locations(config: Any) -> Any:
    """The config with every toy:// location (the toy world's assets, built on demand)
    replaced by a local path; other paths are untouched."""
    import stjax.toy  # noqa: F401  registers the toy:// scheme
    from stjax.locations import resolve_paths

    return resolve_paths(config)


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
