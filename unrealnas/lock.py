"""One writer per folder: an exclusive ``fcntl.flock`` on ``<folder>/.lock``, released when the holder dies.

The lock file holds the holder's host and pid (JSON) so that a second writer can say who has the
folder. The kernel drops a flock when the process exits for any reason (SIGKILL included), so no
stale lock ever needs cleaning up. On NFS, Linux maps flock onto the server's POSIX locks, so the
lock also holds between hosts. Locks are re-entrant within one process (``run_search`` may generate
the dataset it needs while it holds its run directory).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from unrealnas.errors import UserError

LOCK_FILE = ".lock"
# sysexits.h EX_TEMPFAIL: "try again later"; the launch layer reports it as skipped, not failed.
EXIT_RUNNING_ELSEWHERE = 75

_held: dict[str, tuple[int, int]] = {}  # real folder path -> (fd, depth) of the locks this process holds


class AlreadyRunning(UserError):
    """Another live process holds the folder's lock."""

    exit_code = EXIT_RUNNING_ELSEWHERE

    def __init__(self, folder: str | os.PathLike, holder: str) -> None:
        super().__init__(f"{folder}: already running ({holder}); wait for it, or stop that process first")
        self.folder, self.holder = Path(folder), holder

    def __reduce__(self):  # noqa: ANN204 - crosses process pools (the parallel local launcher)
        return (AlreadyRunning, (str(self.folder), self.holder))


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"host {info['host']}, pid {info['pid']}"
    except (ValueError, KeyError, TypeError):
        return "host ?, pid ?"  # the holder is between truncating and writing the file


def holder(folder: str | os.PathLike) -> str | None:
    """``"host H, pid P"`` of the live process that holds ``folder``'s lock, None when nobody does.

    Opens the lock file read-only and never creates it, so that ``status`` works on folders it may
    not write; a lock held by this process counts as held.
    """
    folder = Path(folder)
    key = os.path.realpath(folder)
    path = folder / LOCK_FILE
    if key in _held:
        return _describe(path.read_text())
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, wait: bool = False,
                progress: Callable[[str], None] | None = None) -> Iterator[Path]:
    """Hold ``folder``'s exclusive lock (creating the folder); ``wait=False`` raises AlreadyRunning when taken."""
    folder = Path(folder)
    key = os.path.realpath(folder)
    if key in _held:  # re-entrant: this process already holds it
        fd, depth = _held[key]
        _held[key] = (fd, depth + 1)
        try:
            yield folder
        finally:
            fd, depth = _held[key]
            _held[key] = (fd, depth - 1)
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            who = _describe(os.pread(fd, 4096, 0).decode(errors="replace"))
            if not wait:
                raise AlreadyRunning(folder, who) from None
            (progress or _say)(f"{folder}: waiting for the process that holds it ({who})")
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP):  # a file system without locks
                raise UserError(f"{folder}: this file system does not support file locks ({e.strerror}); "
                                "put paths.runs and paths.data on a local or NFS file system") from e
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                                  "since": time.time()}).encode(), 0)
        _held[key] = (fd, 1)
        try:
            yield folder
        finally:
            del _held[key]
            # Leave the holder text in place: a file emptied before unlock would read as "pid ?".
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
