"""FFCV files: 1-channel export, no temp file after a failed or killed export, sha256 check on open."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import smoke_overrides
from tests.unit.data.test_loaders import FFCV_SCRIPT
from unrealnas.config import compose_config
from unrealnas.data.generators import generate_dataset

pytestmark = pytest.mark.ffcv

GRAY = ("data=rlgd", "data.channels=1", "data.num_images=64", "data.fractal.num_categories=2",
        "data.fractal.render_resolution=64")

FAILING_EXPORT = r"""
import sys
from unrealnas.data import ffcv_store
original = ffcv_store._ShardRows.__getitem__
def broken(self, i):
    if i == 40:
        raise RuntimeError("simulated worker crash")
    return original(self, i)
ffcv_store._ShardRows.__getitem__ = broken
try:
    ffcv_store.export_ffcv(sys.argv[1], num_workers=1)
except Exception as e:
    print("REFUSED:", e)
"""


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    # FFCV's writer forks: run it in a fresh process (see notes/ffcv-on-cpu.md)
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})


def test_one_channel_export_round_trip(tmp_path):
    pytest.importorskip("ffcv")
    folder = generate_dataset(compose_config(smoke_overrides(tmp_path, *GRAY)))
    out = _run(FFCV_SCRIPT, str(folder))
    assert "FFCV-OK" in out.stdout, out.stderr[-2000:]
    assert not list(folder.glob(".*.tmp"))


def test_failed_export_leaves_no_temp_file_and_a_stale_one_is_removed(tmp_path):
    pytest.importorskip("ffcv")
    folder = generate_dataset(compose_config(smoke_overrides(tmp_path, *GRAY)))
    out = _run(FAILING_EXPORT, str(folder))
    assert "REFUSED:" in out.stdout and "writer worker failed" in out.stdout, out.stderr[-2000:]
    assert not (folder / "train.beton").exists() and not list(folder.glob(".*.tmp"))
    (folder / ".train.beton.abc123.tmp").write_bytes(b"x" * 100)  # what a SIGKILLed export leaves
    assert "FFCV-OK" in _run(FFCV_SCRIPT, str(folder)).stdout
    assert not list(folder.glob(".*.tmp"))


def test_beton_sha256_is_checked_once_and_a_mismatch_refused(tmp_path):
    pytest.importorskip("ffcv")
    from unrealnas.data.ffcv_store import beton_path, check_beton
    from unrealnas.errors import DataError

    folder = generate_dataset(compose_config(smoke_overrides(tmp_path, *GRAY)))
    assert "FFCV-OK" in _run(FFCV_SCRIPT, str(folder)).stdout
    path = beton_path(folder)
    sha = json.loads(path.with_suffix(".beton.json").read_text())["sha256"]
    cache = path.with_suffix(".beton.verified.json")
    assert json.loads(cache.read_text())["sha256"] == sha  # the loader verified it on open
    check_beton(path, sha)  # cached: no hashing (same mtime and size)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))  # same size, new mtime: hashed again
    with pytest.raises(DataError, match="fails its sha256 check") as e:
        check_beton(path, sha)
    assert "\n" not in str(e.value)
