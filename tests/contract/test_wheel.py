"""The built wheel is a working tool: it ships conf/ and slurm/, and composes its config from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from tests.unit.search.test_search_run import TINY

REPO = Path(__file__).resolve().parents[2]
SKIP = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", "datasets", ".*cache")


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout}\n{proc.stderr}"
    return proc


def test_wheel_installs_and_runs_from_another_folder(tmp_path):
    # Build from a copy so that the build/ and egg-info folders never land in the checkout.
    src = tmp_path / "src"
    shutil.copytree(REPO, src, symlinks=True, ignore=SKIP)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)])
    (wheel,) = (tmp_path / "dist").glob("unrealnas-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "unrealnas/conf/config.yaml" in names and "unrealnas/conf/preset/smoke.yaml" in names
    assert "unrealnas/slurm/sweep_array.sbatch" in names
    target = tmp_path / "site"
    _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)])

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("UNREALNAS_CONF", "PYTHONPATH")}
    env["PYTHONPATH"] = str(target)
    cli = [sys.executable, "-m", "unrealnas"]
    where = _run([sys.executable, "-c", "import unrealnas; print(unrealnas.__file__)"], cwd=elsewhere, env=env)
    assert where.stdout.strip().startswith(str(target))  # the wheel's copy, not the checkout
    out = _run([*cli, "config", "preset=smoke"], cwd=elsewhere, env=env).stdout
    assert "preset: smoke" in out and "search:" in out
    search = _run([*cli, "search", "preset=smoke", *TINY, "search.epochs=1"], cwd=elsewhere, env=env)
    run_dir = elsewhere / search.stdout.strip().splitlines()[-1]  # relative paths.runs: from the cwd
    assert json.loads((run_dir / "result.json").read_text())["status"] == "completed"
    # UNREALNAS_CONF stays an override of the shipped folder.
    bad = subprocess.run([*cli, "config"], cwd=elsewhere, env={**env, "UNREALNAS_CONF": str(elsewhere)},
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "UNREALNAS_CONF" in bad.stderr
