"""Shared command-line plumbing: user errors become one line on stderr and exit code 2."""

from __future__ import annotations

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
