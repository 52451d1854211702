"""One writer per run directory and dataset folder (issue 13, item 2)."""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import smoke_overrides
from unrealnas.cli import main as cli
from unrealnas.config import compose_config
from unrealnas.data.generators import dataset_dir, generate_dataset
from unrealnas.launch import Task, submit_array
from unrealnas.lock import EXIT_RUNNING_ELSEWHERE, AlreadyRunning, folder_lock, holder
from unrealnas.search.state import search_run_dir

REPO = Path(__file__).resolve().parents[2]
TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "data.num_images=64", "data.num_classes=10", "search.warmup_epochs=1", "search.epochs=1"]
status_mod = importlib.import_module("unrealnas.launch.status")


@pytest.fixture
def hold():
    """hold(folder): a separate process that takes ``folder``'s lock and keeps it until killed."""
    procs: list[subprocess.Popen] = []

    def start(folder: Path) -> subprocess.Popen:
        code = ("import sys, time\nfrom unrealnas.lock import folder_lock\n"
                "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(600)\n")
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, env=env)
        procs.append(proc)
        assert proc.stdout.readline().strip() == b"held"
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


def test_second_holder_is_told_host_and_pid_and_death_releases(tmp_path, hold):
    proc = hold(tmp_path / "run")
    assert holder(tmp_path / "run") == f"host {socket.gethostname()}, pid {proc.pid}"
    with pytest.raises(AlreadyRunning, match=rf"already running \(host .+, pid {proc.pid}\)") as info:
        with folder_lock(tmp_path / "run"):
            pass
    assert info.value.exit_code == EXIT_RUNNING_ELSEWHERE
    proc.send_signal(signal.SIGKILL)  # no clean-up code runs: the kernel drops the lock
    proc.wait()
    assert holder(tmp_path / "run") is None
    with folder_lock(tmp_path / "run"), folder_lock(tmp_path / "run"):  # re-entrant in one process
        assert holder(tmp_path / "run") is not None
    assert holder(tmp_path / "run") is None


def test_double_search_exits_75_and_writes_nothing(tmp_path, hold, capsys):
    cfg = compose_config(smoke_overrides(tmp_path, *TINY))
    run_dir = search_run_dir(cfg)
    proc = hold(run_dir)
    assert cli.main(["search", *smoke_overrides(tmp_path, *TINY)]) == EXIT_RUNNING_ELSEWHERE
    err = capsys.readouterr().err
    assert f"skipped: running elsewhere: {run_dir}: already running (host {socket.gethostname()}, pid {proc.pid})" in err
    assert sorted(p.name for p in run_dir.iterdir()) == [".lock"]  # no metrics.jsonl, no checkpoint


def test_double_generate_and_retrain_exit_75(tmp_path, hold, capsys):
    cfg = compose_config(smoke_overrides(tmp_path, "data.num_images=32", "data.num_classes=10"))
    hold(dataset_dir(cfg))
    assert cli.main(["generate", *smoke_overrides(tmp_path, "data.num_images=32", "data.num_classes=10")]) == 75
    train = smoke_overrides(tmp_path, "train=digits", "genotype=DARTS_V2", "train.run_id=r1", "device=cpu")
    hold(tmp_path / "runs" / "train" / "r1")
    assert cli.main(["retrain", *train]) == 75
    err = capsys.readouterr().err
    assert err.count("skipped: running elsewhere") == 2 and "Traceback" not in err
    assert not (tmp_path / "runs" / "train" / "r1" / "checkpoint.pt").exists()


def test_search_waits_for_the_process_generating_its_dataset(tmp_path):
    cfg = compose_config(smoke_overrides(tmp_path, "data.num_images=32", "data.num_classes=10"))
    folder = dataset_dir(cfg)
    code = ("import sys, time\nfrom unrealnas.lock import folder_lock\n"
            "with folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(1.5)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == b"held"
    said: list[str] = []
    with pytest.raises(AlreadyRunning):
        generate_dataset(cfg, said.append)
    assert generate_dataset(cfg, said.append, wait=True) == folder and (folder / "manifest.json").is_file()
    assert any("waiting for the process that holds it" in m for m in said)
    proc.wait()


def test_launcher_reports_skipped_running_elsewhere_not_failed(tmp_path, hold):
    run_dir = tmp_path / "runs" / "search" / "s0"
    proc = hold(run_dir)
    launcher = {"name": "local", "folder": str(tmp_path / "runs" / "slurm")}
    task = Task(f"{__name__}:locked_stage", [f"run_dir={run_dir}"], run_dir=run_dir, stage="search",
                group="darts/rlrn/random/c10")
    [job] = submit_array([task], launcher, "search")
    assert job.state == "SKIPPED" and "already running" in job.error
    record = json.loads(next((tmp_path / "runs" / "slurm" / "search").glob("*/tasks.json")).read_text())
    assert record["tasks"][0]["state"] == "SKIPPED"
    [t] = status_mod.status(tmp_path / "runs").tasks
    assert (t.state, t.note) == ("running", f"skipped here: running elsewhere (host {socket.gethostname()}, "
                                            f"pid {proc.pid})")
    proc.kill()
    proc.wait()
    [t] = status_mod.status(tmp_path / "runs").tasks
    assert t.state == "failed" and t.note.startswith("skipped: was running elsewhere")


def locked_stage(overrides: list[str]) -> Path:
    """A stage that takes its run directory's lock, as search and retrain do."""
    run_dir = Path(dict(o.split("=", 1) for o in overrides)["run_dir"])
    with folder_lock(run_dir):
        (run_dir / "result.json").write_text("{}")
    return run_dir


def test_a_completing_job_that_found_its_run_taken_is_reported_from_its_outcome(tmp_path, hold, monkeypatch):
    from unrealnas.launch.records import write_outcome

    run_dir, array = tmp_path / "runs" / "search" / "twice", tmp_path / "runs" / "slurm" / "search" / "9"
    hold(run_dir)
    array.mkdir(parents=True)
    write_outcome(array / "9_0_outcome.json", "running_elsewhere", "already running")
    entry = {"index": 0, "job_id": "9_0", "verb": "search", "overrides": [], "stage": "search", "group": "g",
             "run_dir": str(run_dir), "stdout": None, "stderr": None, "outcome": str(array / "9_0_outcome.json")}
    (array / "tasks.json").write_text(json.dumps({"version": 1, "launcher": "slurm", "name": "search", "job_id": "9",
                                                  "submitted_at": 1.0, "tasks": [entry]}))
    # The job has exited 75 and SLURM still lists it as COMPLETING with the reason NonZeroExitCode.
    monkeypatch.setattr(status_mod, "_queue", lambda: {"9_0": ("COMPLETING", "NonZeroExitCode")})
    monkeypatch.setattr(status_mod, "_accounting", lambda ids: {})
    [task] = status_mod.status(tmp_path / "runs").tasks
    assert task.state == "running" and task.note.startswith("skipped here: running elsewhere (host "), task
    monkeypatch.setattr(status_mod, "_queue", lambda: {"9_0": ("RUNNING", "None")})  # still running: the queue
    assert status_mod.status(tmp_path / "runs").tasks[0].note == ""
