"""Atomic file writes: temp file in the same folder, fsync, then os.replace."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", size_hint: int | None = None) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success rename it onto ``path``, else delete it.

    A full disk or quota raises :class:`~unrealnas.fserrors.DiskFullError` naming ``path`` and about
    how many MB it needs (``size_hint`` bytes, else the size of the file it replaces); ``path``
    itself is untouched, so the previous version survives.
    """
    from unrealnas.fserrors import disk_full, is_full

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_path: Path | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix + ".tmp", dir=path.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; shared clusters need the usual umask
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except Exception as e:
        if not is_full(e):
            raise
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)  # first, so that the free space reported is the real one
        previous = path.stat().st_size if path.is_file() else None
        raise disk_full(path, size_hint or previous, e) from e
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path, size_hint=len(data)) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def append_jsonl(path: str | os.PathLike, obj: Any) -> None:
    """Append one JSON line and fsync (a crash loses at most the line being written)."""
    from unrealnas.fserrors import disk_full, is_full

    line = json.dumps(obj) + "\n"
    try:
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a torn line may be left: readers skip it, and resume rewrites the file
        if is_full(e):
            raise disk_full(path, len(line.encode()), e) from e
        raise


def read_jsonl(path: str | os.PathLike, warn: Callable[[str], None] | None = None) -> list[dict]:
    """Read a JSON-lines file of objects; a torn or garbled line is skipped with a warning, the rows after it kept."""
    rows: list[dict] = []
    p = Path(path)
    try:
        data = p.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return rows
    for number, line in enumerate(data.split(b"\n"), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError both
            row = None
        if not isinstance(row, dict):
            (warn or _warn)(f"{p} line {number} is torn or not a JSON object; skipped")
            continue
        rows.append(row)
    return rows


def _warn(msg: str) -> None:
    print(f"warning: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
