"""Every OSError a user can cause is one line and exit 2; names that become paths are checked (item 5)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.checkpoint import load_checkpoint, save_checkpoint
from unrealnas.cli import main as cli
from unrealnas.fserrors import DiskFullError, explain

REPO = Path(__file__).resolve().parents[2]
TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=1"]


def _error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs (a real full disk); skipped where mounting is not allowed."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def test_full_disk_is_one_line_with_the_size_and_keeps_what_was_written(small_disk, capsys):
    # 256 float16 noise images of 32x32x3 = 1.5 MB in two shards: the second one does not fit beside a filler.
    (small_disk / "filler").write_bytes(b"\0" * 1_000_000)
    args = ["generate", "preset=smoke", f"paths.data={small_disk / 'data'}", "data.num_classes=10"]
    assert cli.main(args) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: disk full: {small_disk / 'data'}") and "needs about" in line and "MB more" in line
    assert not list((small_disk / "data").rglob("*.tmp"))  # no half-written temp file eats the space
    # A checkpoint that no longer fits leaves the previous one loadable.
    ckpt = small_disk / "run" / "checkpoint.pt"
    save_checkpoint(ckpt, {"model": {"w": torch.zeros(10)}})
    with pytest.raises(DiskFullError, match=rf"disk full: {ckpt} needs about \d+ MB more"):
        save_checkpoint(ckpt, {"model": {"w": torch.zeros(1_000_000)}})
    assert load_checkpoint(ckpt)["model"]["w"].shape == (10,)


def test_a_file_where_a_folder_should_be(tmp_path, capsys):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    assert cli.main(["search", *smoke_overrides(tmp_path, *TINY), f"paths.runs={blocker}"]) == 2
    assert _error_line(capsys) == f"error: {blocker} is a file where a folder should be; move it away or point paths.* elsewhere"
    assert blocker.read_text() == "not a folder"


@pytest.mark.parametrize(("key", "value", "why"), [
    ("data.id", "../../x", "plain folder name"), ("data.id", "a/b", "plain folder name"),
    ("train.run_id", "..", "plain folder name"), ("train.run_id", "r" * 300, "at most 200 bytes")])
def test_names_that_become_paths_are_checked(tmp_path, capsys, key, value, why):
    verb = "generate" if key == "data.id" else "retrain"
    extra = [] if verb == "generate" else ["genotype=DARTS_V2", "train=digits"]
    assert cli.main([verb, *smoke_overrides(tmp_path, *extra), f"{key}={value}"]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: config: {key}=") and why in line
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_permission_denied_as_an_ordinary_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to an unprivileged user (root ignores file modes)")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    os.chmod(tmp_path, 0o755)
    code = ("import os, sys; os.setgid(65534); os.setuid(65534); from unrealnas.cli import main as cli; "
            "sys.exit(cli.main(sys.argv[1:]))")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HOME": str(locked)}
    proc = subprocess.run([sys.executable, "-c", code, "generate", "preset=smoke", "data.num_classes=10",
                           f"paths.data={locked / 'data'}"], capture_output=True, text=True, env=env, cwd=str(locked))
    if "ModuleNotFoundError" in proc.stderr or "PermissionError: [Errno 13] Permission denied: '/" in proc.stderr:
        pytest.skip("the unprivileged user cannot read the interpreter or the repository here")
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert f"{locked / 'data'}" in lines[0] and ("Permission denied" in lines[0] or "permission denied" in lines[0])


def test_every_errno_a_user_causes_has_its_own_line(tmp_path):
    p = str(tmp_path / "f")
    assert explain(OSError(errno.EACCES, "Permission denied", p)).startswith(f"permission denied: {p}; choose")
    assert explain(OSError(errno.EDQUOT, "Disk quota exceeded", p)).startswith(f"disk quota exceeded: {p}")
    assert explain(OSError(errno.ENOSPC, "No space left on device", p)).startswith(f"disk full: {p}")
    long = str(tmp_path / ("n" * 300))
    assert "a part has 300 bytes, the limit is usually 255" in explain(OSError(errno.ENAMETOOLONG, "x", long))
    assert explain(OSError(errno.EROFS, "Read-only file system", p)).startswith(f"read-only file system: {p}")
