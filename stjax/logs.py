"""stjax's messages go through Python `logging` (logger "stjax" and its children), shown on
stdout by default at INFO; `set_verbosity` (the commands' --quiet / --verbose) changes the
level, and an application that configures logging itself can replace the handler.
"""

from __future__ import annotations

import logging
import sys

LEVELS = {"quiet": logging.WARNING, "normal": logging.INFO, "verbose": logging.DEBUG}


class _CurrentStdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (redirections and captures included)."""

    def __init__(self):
        super().__init__(sys.stdout)

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value):
        pass


_root = logging.getLogger("stjax")
if not _root.handlers:
    _handler = _CurrentStdout()
    _handler.setFormatter(logging.Formatter("%(message)s"))
    _root.addHandler(_handler)
    _root.setLevel(logging.INFO)
    _root.propagate = False


def get_logger(name: str) -> logging.Logger:
    """The logger of a stjax module (pass __name__)."""
    return logging.getLogger(name)


def set_verbosity(level: str) -> None:
    """quiet (warnings and errors only), normal (progress messages) or verbose (debug too)."""
    _root.setLevel(LEVELS[level])
