"""File-system faults a user can cause, told in one line that names the path and the fix.

The CLI passes every ``OSError`` that reaches it through :func:`explain`; the atomic writers turn a
full disk or quota into :class:`DiskFullError` on the spot, where the size of the write is known.
"""

from __future__ import annotations

import errno
import math
import os
import shutil
from pathlib import Path

from unrealnas.errors import UserError

_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_TEXT = ("No space left on device", "Disk quota exceeded")  # h5py reports errno only in its text


class DiskFullError(UserError):
    """A write failed because the file system or the user's quota is full; the previous file is kept."""


def is_full(e: BaseException) -> bool:
    """Whether ``e`` says the disk or the quota is full."""
    return (isinstance(e, OSError) and e.errno in _FULL) or any(t in str(e) for t in _FULL_TEXT)


def _existing(path: Path) -> Path:
    for p in (path, *path.parents):
        if p.exists():
            return p
    return Path("/")


def disk_full(path: str | os.PathLike, needed_bytes: int | None, e: BaseException) -> DiskFullError:
    """The one-line error of a write of about ``needed_bytes`` to ``path`` that hit a full disk or quota."""
    path = Path(path)
    quota = (isinstance(e, OSError) and e.errno == errno.EDQUOT) or "quota" in str(e).lower()
    free = shutil.disk_usage(_existing(path.parent)).free
    needed = int(needed_bytes or 0)
    # A quota leaves the disk's free space unchanged: the whole write is what is missing.
    more = needed if quota else needed - free
    mb = max(1, math.ceil(more / 1e6)) if needed else None
    what = "disk quota exceeded" if quota else "disk full"
    size = f" needs about {mb} MB more" if mb else " cannot be written"
    return DiskFullError(f"{what}: {path}{size} ({free / 1e6:.0f} MB free there); free space or set paths.runs / "
                         "paths.data elsewhere; files already written, the previous checkpoint included, are kept")


def _file_in_the_way(path: Path) -> Path | None:
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            return p
    return None


def explain(e: OSError) -> str:
    """One line for an OSError: what failed, on which path, and what to do."""
    path = Path(e.filename) if e.filename else None
    where = f" {path}" if path else ""
    if is_full(e):
        return str(disk_full(path or Path.cwd(), None, e))
    if e.errno in (errno.EACCES, errno.EPERM):
        return f"permission denied:{where}; choose a folder you can write (paths.runs, paths.data) or fix its permissions"
    if e.errno == errno.EROFS:
        return f"read-only file system:{where}; set paths.runs / paths.data to a writable folder"
    if e.errno == errno.ENAMETOOLONG:
        longest = max(path.parts, key=len) if path else ""
        return (f"file name too long:{where} (a part has {len(longest.encode())} bytes, the limit is usually 255); "
                "use a shorter train.run_id, data.id or paths.*")
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and path is not None:
        blocker = _file_in_the_way(path)
        if blocker is not None:
            return f"{blocker} is a file where a folder should be; move it away or point paths.* elsewhere"
    if e.errno == errno.ENOENT:
        return f"no such file or folder:{where}"
    return f"{e.strerror or e}:{where}" if e.strerror else f"{type(e).__name__}: {e}"
