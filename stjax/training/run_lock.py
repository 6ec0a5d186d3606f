"""One trainer per run directory: an exclusive lock on RUN_DIR/.lock, held by process 0.

Two trainers on one run directory would interleave their metrics and race in orbax. The
lock is an OS file lock (`flock`), so it ends with its process however that ends: a lock
file left by a crashed run holds no lock, is recognised as stale and taken over. The file
says who holds it (pid, host, start time) for the message the second trainer prints.
Run directories on object stores (gs://) are not locked.
"""

from __future__ import annotations

import datetime
import json
import os
import socket
from pathlib import Path

import jax

from stjax.errors import UserError
from stjax.logs import get_logger

LOCK_FILE = ".lock"
log = get_logger(__name__)


class RunDirectoryBusy(UserError):
    """Another live trainer holds the run directory."""


class RunLock:
    def __init__(self, run_dir: str | Path):
        self.run_dir = str(run_dir)
        self._fd: int | None = None

    @property
    def path(self) -> Path:
        return Path(self.run_dir) / LOCK_FILE

    def acquire(self) -> RunLock:
        if jax.process_index() != 0 or "://" in self.run_dir:
            return self
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            who = (f"pid {holder.get('pid')} on {holder.get('host')}, since {holder.get('started')}" if holder
                   else "another process")
            raise RunDirectoryBusy(f"{self.run_dir}: another trainer is running in this run directory ({who}); "
                                   "wait for it to finish, or set another train.run_dir") from None
        previous = _holder(fd)
        if previous:
            log.info(f"run directory lock: the previous trainer (pid {previous.get('pid')} on {previous.get('host')}) "
                     "ended without releasing it (a crash or a kill); taking it over")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                      "started": datetime.datetime.now().isoformat(timespec="seconds")}).encode(), 0)
        except OSError as e:  # a full disk: name the file it was writing
            os.close(fd)
            raise OSError(e.errno, f"{e.strerror} (writing the run lock)", str(self.path)) from None
        self._fd = fd
        return self

    @property
    def held(self) -> bool:
        """This process holds the lock (process 0 of a local run directory)."""
        return self._fd is not None

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        os.ftruncate(self._fd, 0)  # an empty file: released cleanly
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None


    def __del__(self):  # a trainer built and dropped without running frees its directory
        try:
            self.release()
        except Exception:  # interpreter shutdown: the OS releases the lock anyway
            pass


def _holder(fd: int) -> dict:
    try:
        text = os.pread(fd, 4096, 0).decode()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}
