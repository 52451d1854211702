"""Dependencies as a library has them: ranges in pyproject, exact pins in constraints.txt, ffcv optional."""

from __future__ import annotations

import os
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from unrealnas.errors import DataError

REPO = Path(__file__).resolve().parents[2]
tomllib = pytest.importorskip("tomllib")  # Python 3.11+


def _requirements() -> dict[str, Requirement]:
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return {r.name: r for r in map(Requirement, deps)}


@pytest.mark.parametrize("name", ["torch", "torchvision"])
def test_torch_is_a_range_and_constraints_pin_this_machine(name):
    spec = _requirements()[name].specifier
    assert not any(s.operator == "==" for s in spec), spec  # no exact pin in the library's metadata
    installed = version(name).split("+")[0]
    assert spec.contains(installed)
    major = int(installed.split(".")[0])
    assert not spec.contains(f"{major + 1}.0")  # below the next major
    pins = dict(line.split("==") for line in (REPO / "constraints.txt").read_text().split()
                if "==" in line and not line.startswith("#"))
    assert pins[name] == installed


def test_setup_without_apt_skips_the_ffcv_extra_and_uses_the_constraints(tmp_path):
    """Run tools/setup.sh against a stand-in venv whose python records its arguments."""
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    log = tmp_path / "calls.txt"
    fake = venv / "bin" / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    fake.chmod(0o755)
    env = {**os.environ, "UNREALNAS_SKIP_APT": "1", "VENV": str(venv)}
    proc = subprocess.run(["bash", str(REPO / "tools" / "setup.sh")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text()
    install = next(line for line in calls.splitlines() if "pip install" in line)
    assert "-c constraints.txt" in install and "-e .[dev]" in install and "ffcv" not in install
    assert "ffcv" not in calls


def test_ffcv_features_without_the_extra_name_it(tmp_path, monkeypatch):
    from unrealnas.data import ffcv_store

    monkeypatch.setitem(sys.modules, "ffcv", None)  # import ffcv now raises ImportError
    with pytest.raises(DataError, match=r"unrealnas\[ffcv\]"):
        ffcv_store.export_ffcv(tmp_path)
