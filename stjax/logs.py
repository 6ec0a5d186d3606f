"""stjax's messages go through Python `logging` (logger "stjax" and its children), shown on
stdout by default at INFO; `set_verbosity` (the commands' --quiet / --verbose) changes the
level, and an application that configures logging itself can replace the handler.
"""

from __future__ import annotations

import logging
import sys
import traceback

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


# orbax's reports of a failed asynchronous save, whose error is raised again to the caller, and
# asyncio's of the same failure in the save's other write tasks (found when they are collected)
REPORTED_AGAIN = ("raised an exception", "Handler Commit operations", "Save Finalize thread",
                  "exception was never retrieved")


class _NoThreadTracebacks(logging.Filter):
    """orbax (through absl) logs a traceback when one of its background threads fails, and
    asyncio one for each of its write tasks that failed with it: the failures of a save, which
    reach the caller and are reported there in one line, are dropped; any other orbax error
    keeps its message, without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.exc_info or record.levelno < logging.ERROR or record.exc_info[2] is None:
            return True
        if not any("orbax" in frame.filename for frame in traceback.extract_tb(record.exc_info[2])):
            return True
        if any(text in str(record.msg) for text in REPORTED_AGAIN):
            return False
        record.exc_info, record.exc_text = None, None
        return True


_thread_filter = _NoThreadTracebacks()


_previous_hook = None


def _late_callback(unraisable) -> None:
    """After a failed checkpoint write, tensorstore's pending writes finish into orbax's
    already closed event loop ("Event loop is closed", nothing lost): silent; anything else
    goes to the hook that was there before."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        (_previous_hook or sys.__unraisablehook__)(unraisable)


def hide_library_tracebacks(hide: bool = True) -> None:
    """Hides (or shows again, for --debug) library tracebacks of errors that stjax reports itself."""
    global _previous_hook
    loggers = [logging.getLogger(name) for name in ("absl", "asyncio")]
    if hide:
        for logger in loggers:
            logger.addFilter(_thread_filter)
        if sys.unraisablehook is not _late_callback:
            _previous_hook, sys.unraisablehook = sys.unraisablehook, _late_callback
    else:
        for logger in loggers:
            logger.removeFilter(_thread_filter)
        if sys.unraisablehook is _late_callback:
            sys.unraisablehook = _previous_hook or sys.__unraisablehook__
