"""Directories that appear whole or not at all; JSON objects read with one-line errors."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(out_dir: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yields a staging directory next to out_dir, renamed onto it when the block succeeds.

    A crash or an exception inside the block leaves out_dir as it was (or absent). With
    replace=False an existing out_dir is kept (someone else built it first).
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", dir=out_dir.parent))
    try:
        yield staging
        _make_shareable(staging)
        if out_dir.exists():
            if not replace:
                return
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _make_shareable(directory: Path) -> None:
    """mkdtemp (and safetensors) create private modes; outputs are meant to be shared."""
    directory.chmod(0o755)
    for path in directory.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)


def read_json_object(path: str | Path, error: type[Exception] = ValueError, hint: str = "") -> dict:
    """The JSON object in `path`; anything else (invalid JSON, not UTF-8, not an object) is
    `error` with one line naming the file, and `hint` (what to do) after it."""
    path = Path(path)
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e}){hint}") from None
    if not isinstance(value, dict):
        raise error(f"{path}: expected a JSON object, got {type(value).__name__}{hint}")
    return value
