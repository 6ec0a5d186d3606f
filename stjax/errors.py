"""The one base class of every error that means bad input, not a bug in stjax.

Commands print `str(e)` of a `UserError` as one line and exit with code 2; anything else
is a bug and keeps its traceback. Each layer subclasses it for its own kind of input
(config keys, model files, data records, safety-token sets, meshes).
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: str(e) is the one line shown to the user (file, key or tensor, and what was expected)."""


class MissingExtra(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra that brings it."""
