"""No reading verb runs code from a runs folder: planted pickles stay unread (issue 13, item 1)."""

from __future__ import annotations

import builtins
import importlib
import json
import pickle
from pathlib import Path

import pytest

from unrealnas.cli import main as cli
from unrealnas.launch.records import outcome_path, read_outcome, write_outcome

status_mod = importlib.import_module("unrealnas.launch.status")  # the package re-exports a function `status`


class _Planted:
    """Unpickling this opens (creates) the marker file: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (str(self.marker), "w"))


def _plant(path: Path, marker: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(_Planted(marker)))


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A runs folder whose records, checkpoints and genotypes are pickles that would create ``marker``."""
    marker = tmp_path / "pwned"
    runs = tmp_path / "runs"
    array = runs / "slurm" / "search" / "123"
    evil = array / "123_0_0_result.pkl"
    _plant(evil, marker)
    _plant(array / "123_1_0_result.pkl", marker)
    (array / "123_1_outcome.json").write_bytes(evil.read_bytes())  # a pickle where JSON belongs
    open_run = runs / "search" / "darts-open"
    _plant(open_run / "checkpoint.pt", marker)
    _plant(open_run / "genotype.json", marker)
    done = runs / "train" / "cifar10-x-s0"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({
        "kind": "train", "status": "completed", "method": "darts", "search_data": "rlrn", "search_label": "random",
        "num_classes": 10, "target": "cifar10", "metrics": {"top1_err": 10.0}}))
    _plant(done / "checkpoint.pt", marker)
    _plant(done / "metrics.jsonl", marker)
    entries = [{"index": i, "job_id": f"123_{i}", "verb": "search", "overrides": [], "stage": "search",
                "group": "darts/rlrn/random/c10", "run_dir": str(open_run) if i == 0 else None,
                "stdout": None, "stderr": None, "result_pickle": str(array / f"123_{i}_0_result.pkl"),
                "outcome": str(array / f"123_{i}_outcome.json")} for i in range(2)]
    (array / "tasks.json").write_text(json.dumps({"version": 1, "launcher": "slurm", "name": "search",
                                                  "job_id": "123", "submitted_at": 1.0, "tasks": entries}))
    # SLURM "reachable" with an empty queue and no accounting: the path that used to read the pickles.
    monkeypatch.setattr(status_mod, "_queue", lambda: {})
    monkeypatch.setattr(status_mod, "_accounting", lambda ids: {})
    # The plant is live: loading it does create a marker.
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Planted(probe)))
    assert probe.exists()
    return runs, marker, open_run


def test_every_reading_verb_leaves_planted_pickles_unread(planted, tmp_path, capsys):
    runs, marker, open_run = planted
    verbs = [["status", str(runs)], ["status", str(runs), "format=json"], ["table", str(runs)],
             ["table", str(runs), "--format", "csv"], ["plot", str(runs), f"out={tmp_path / 'fig'}", "formats=png"],
             ["evaluate", str(runs / "train" / "cifar10-x-s0")], ["verify", str(open_run)],
             ["inspect", str(open_run)],
             ["describe", f"genotype={open_run / 'genotype.json'}", "train=cifar10"]]
    for argv in verbs:
        rc = cli.main(argv)
        assert not marker.exists(), f"unrealnas {' '.join(argv)} ran code from the runs folder"
        assert rc in (0, 1, 2), argv
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    report = status_mod.status(runs)
    states = {t.name: (t.state, t.note) for t in report.tasks}
    assert states["darts-open"][0] == "failed" and "without a result" in states["darts-open"][1]
    assert not marker.exists()


def test_status_reads_the_json_outcome_a_job_writes(tmp_path, monkeypatch):
    path = outcome_path(tmp_path, "7_3")
    assert path.name == "7_3_outcome.json" and read_outcome(path) is None
    write_outcome(path, "failed", "RuntimeError: boom")
    assert read_outcome(path) == ("failed", "RuntimeError: boom")
    path.write_text(json.dumps({"state": "exec"}))
    assert read_outcome(path) is None
