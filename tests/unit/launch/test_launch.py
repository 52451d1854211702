"""Launch layer without SLURM: the local launcher, skipping, dependencies, status, errors, pickling."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import DictConfig, OmegaConf

from unrealnas.cli import main as cli
from unrealnas.cli.status import cmd_status
from unrealnas.errors import ConfigError, UserError
from unrealnas.launch import (
    Dependency,
    LocalJob,
    Task,
    check_slurm,
    dependency_of,
    format_status,
    slurm_parameters,
    status,
    submit_array,
    write_task_file,
)
from unrealnas.launch.runner import TaskRunner

REPO = Path(__file__).resolve().parents[3]
VERB = f"{__name__}:fake_stage"  # this module is importable as `test_launch` under pytest


def fake_stage(overrides: list[str]) -> Path:
    """A stand-in for search/retrain: counts its runs, fails on fail=1, writes result.json."""
    kv = dict(o.split("=", 1) for o in overrides)
    run_dir = Path(kv["run_dir"])
    run_dir.mkdir(parents=True, exist_ok=True)
    runs = run_dir / "runs.txt"
    runs.write_text(str(int(runs.read_text()) + 1 if runs.exists() else 1))
    print(f"fake stage seed={kv.get('seed')} pid={os.getpid()}")
    if kv.get("fail") == "1":
        raise RuntimeError(f"boom in seed {kv.get('seed')}")
    result = {"kind": "search", "status": "completed", "method": "darts", "search_data": "rlrn",
              "search_label": "random", "num_classes": 10, "seed": int(kv.get("seed", 0))}
    (run_dir / "result.json").write_text(json.dumps(result))
    return run_dir


def fake_cli_verb(args: list[str]) -> int:
    """A CLI-style verb (registered in cli.VERBS by a test): rc from rc=N."""
    print(f"fake verb {args}")
    return int(dict(a.split("=", 1) for a in args).get("rc", 0))


def _launcher(tmp_path: Path, name: str = "local", **extra) -> DictConfig:
    return OmegaConf.create({"name": name, "folder": str(tmp_path / "runs" / "slurm"), "time_min": 5,
                             "nodes": 1, "gpus_per_node": 0, "tasks_per_node": 1, "cpus_per_task": 1,
                             "mem_gb": None, "array_parallelism": 4, "partition": None, "account": None,
                             "qos": None, "extra": {}, **extra})


def _tasks(tmp_path: Path, seeds=(0, 1, 2), fail=()) -> list[Task]:
    runs = tmp_path / "runs" / "search"
    return [Task(VERB, [f"run_dir={runs / f's{s}'}", f"seed={s}", f"fail={int(s in fail)}"],
                 run_dir=runs / f"s{s}", stage="search", group="darts/rlrn/random/c10") for s in seeds]


def _runs(task: Task) -> int:
    path = task.run_dir / "runs.txt"
    return int(path.read_text()) if path.exists() else 0


def test_local_runs_every_task_and_records_it(tmp_path):
    tasks = _tasks(tmp_path)
    jobs = submit_array(tasks, _launcher(tmp_path), "search")
    assert [j.state for j in jobs] == ["COMPLETED"] * 3
    assert [Path(j.result()) for j in jobs] == [t.run_dir for t in tasks]
    assert all(t.is_complete() and _runs(t) == 1 for t in tasks)
    assert "fake stage seed=1" in jobs[1].log_path.read_text()
    record = json.loads((jobs[0].log_path.parent / "tasks.json").read_text())
    assert record["launcher"] == "local" and [e["state"] for e in record["tasks"]] == ["COMPLETED"] * 3
    report = status(tmp_path / "runs")
    assert report.counts() == {("search", "darts/rlrn/random/c10"): {"done": 3, "running": 0, "pending": 0,
                                                                       "failed": 0}}


def test_finished_tasks_are_skipped(tmp_path, capsys):
    tasks = _tasks(tmp_path)
    submit_array(tasks[:2], _launcher(tmp_path), "search")
    jobs = submit_array(tasks, _launcher(tmp_path), "search")
    assert [j.task for j in jobs] == [tasks[2]]
    assert [_runs(t) for t in tasks] == [1, 1, 1]
    assert submit_array(tasks, _launcher(tmp_path), "search") == []
    assert "nothing to submit" in capsys.readouterr().err


def test_failure_is_reported_with_its_log_and_blocks_dependents(tmp_path):
    tasks = _tasks(tmp_path, fail=(1,))
    jobs = submit_array(tasks, _launcher(tmp_path), "search")
    assert [j.state for j in jobs] == ["COMPLETED", "FAILED", "COMPLETED"]
    with pytest.raises(Exception, match="boom in seed 1"):
        jobs[1].result()
    t0 = tmp_path / "runs" / "train" / "t0"
    train = [Task(VERB, [f"run_dir={t0}"], run_dir=t0, stage="train", group="cifar10")]
    downstream = submit_array(train, _launcher(tmp_path), "retrain", dependency=jobs)
    assert downstream[0].state == "CANCELLED" and _runs(train[0]) == 0
    report = status(tmp_path / "runs")
    failed = {t.name: t for t in report.failures()}
    assert set(failed) == {"s1", "t0"}
    assert "boom in seed 1" in failed["s1"].note
    assert "RuntimeError: boom in seed 1" in Path(failed["s1"].log).read_text()  # the traceback is in the log
    assert "dependency failed" in failed["t0"].note
    text = format_status(report)
    assert "failed (2):" in text and failed["s1"].log in text
    # afterany runs even after a failure; resubmitting reruns only the failed task.
    anyway = submit_array(train, _launcher(tmp_path), "retrain", dependency=dependency_of(jobs, "afterany"))
    assert anyway[0].state == "COMPLETED"
    again = submit_array(_tasks(tmp_path), _launcher(tmp_path), "search")
    assert [j.task.run_dir.name for j in again] == ["s1"] and again[0].state == "COMPLETED"
    assert status(tmp_path / "runs").failures() == []


def test_cli_style_functions_fail_on_a_nonzero_status(tmp_path):
    spec = f"{__name__}:fake_cli_verb"
    jobs = submit_array([Task(spec, ["rc=0"], stage="fake"), Task(spec, ["rc=3"], stage="fake")],
                        _launcher(tmp_path), "fake")
    assert [j.state for j in jobs] == ["COMPLETED", "FAILED"]
    assert "exited with status 3" in jobs[1].error
    assert "fake verb ['rc=0']" in jobs[0].log_path.read_text()


def test_config_verb_runs_locally(tmp_path):
    task = Task(f"{cli.VERBS['config'][0]}:{cli.VERBS['config'][1]}", ["seed=7", "preset=smoke"], stage="config")
    (job,) = submit_array([task], _launcher(tmp_path), "config")
    assert job.state == "COMPLETED"
    assert "seed: 7" in job.log_path.read_text()


def test_launch_layer_does_not_know_the_command_line(tmp_path):
    """The caller hands the launch layer what to run; a bare CLI verb name is refused."""
    for path in (REPO / "unrealnas" / "launch").glob("*.py"):
        assert "unrealnas.cli" not in path.read_text(), path
    (job,) = submit_array([Task("config", ["seed=7"])], _launcher(tmp_path), "config")
    assert job.state == "FAILED" and "neither a stage" in job.error


def test_slurm_launcher_without_slurm_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(UserError, match="sbatch is not installed.*launcher=local"):
        submit_array(_tasks(tmp_path), _launcher(tmp_path, "slurm"), "search")
    # sbatch present but the controller unreachable: squeue fails.
    for cmd in ("sbatch", "srun"):
        (empty / cmd).write_text("#!/bin/sh\nexit 0\n")
    message = "slurm_load_jobs error: Unable to contact slurm controller"
    (empty / "squeue").write_text(f"#!/bin/sh\necho '{message}' >&2\nexit 1\n")
    for f in empty.iterdir():
        f.chmod(0o755)
    with pytest.raises(UserError, match="Unable to contact slurm controller.*launcher=local"):
        check_slurm()
    assert all(_runs(t) == 0 for t in _tasks(tmp_path))


def test_cli_reports_no_slurm_on_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setitem(cli.VERBS, "submit-test", (__name__, "_submit_from_cli", "test-only verb"))
    assert cli.main(["submit-test", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: launcher=slurm") and "launcher=local" in err[0]


def _submit_from_cli(args: list[str]) -> int:
    submit_array(_tasks(Path(args[0])), _launcher(Path(args[0]), "slurm"), "search")
    return 0


def test_slurm_parameters_come_from_the_launcher_config():
    from unrealnas.config import compose_config

    cfg = compose_config(["launcher=slurm", "launcher.partition=gpu", "launcher.account=proj",
                          "launcher.qos=high", "launcher.time_min=90", "launcher.nodes=2",
                          "launcher.gpus_per_node=8",
                          "launcher.tasks_per_node=8", "launcher.cpus_per_task=10", "launcher.mem_gb=64",
                          "launcher.array_parallelism=5", "+launcher.extra.constraint=a100"])
    params = slurm_parameters(cfg.launcher, "retrain", dependency="afterok:12")
    assert params["name"] == "retrain" and params["timeout_min"] == 90
    shape = [params[k] for k in ("nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task")]
    assert shape == [2, 8, 8, 10]
    assert [params[f"slurm_{k}"] for k in ("partition", "account", "qos")] == ["gpu", "proj", "high"]
    assert params["mem_gb"] == 64 and params["slurm_array_parallelism"] == 5
    assert params["slurm_additional_parameters"] == {"constraint": "a100", "dependency": "afterok:12"}
    assert any("PYTHONPATH" in line for line in params["slurm_setup"])
    cpu_only = slurm_parameters(OmegaConf.create({"gpus_per_node": 0, "extra": {}}), "search")
    assert "gpus_per_node" not in cpu_only and "slurm_additional_parameters" not in cpu_only


def test_dependencies_name_each_array_once():
    class Job:
        def __init__(self, job_id: str) -> None:
            self.job_id = job_id

    jobs = [Job("12_0"), Job("12_1"), Job("13")]
    assert dependency_of(jobs).sbatch() == "afterok:12:13"
    assert dependency_of(jobs, "afterany").sbatch() == "afterany:12:13"
    assert dependency_of([]).sbatch() is None
    with pytest.raises(ConfigError):
        Dependency((), "after-lunch")
    with pytest.raises(ConfigError):
        dependency_of([LocalJob("x", Task("config"), Path("log"))]).sbatch()


def test_task_runner_pickles_without_the_library_and_checkpoints_a_fresh_copy(tmp_path):
    task = _tasks(tmp_path)[0]
    runner = TaskRunner(task)
    delayed = runner.checkpoint()
    assert delayed.function is not runner and delayed.function.task == task and delayed.args == ()
    # Unpickling in a fresh interpreter must not import torch: the job loads stage code in __call__.
    code = ("import pickle, sys; r = pickle.loads(sys.stdin.buffer.read()); "
            "assert 'torch' not in sys.modules, 'torch imported'; print(r.task.verb)")
    env = {**os.environ, "PYTHONPATH": f"{Path(__file__).parent}:{REPO}"}
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(runner), capture_output=True,
                         env=env, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().strip() == VERB
    assert Path(runner()) == task.run_dir and task.is_complete()


def test_task_runner_runs_under_submitit(tmp_path):
    import submitit

    task = _tasks(tmp_path, seeds=(4,))[0]
    job = submitit.DebugExecutor(folder=tmp_path / "debug").submit(TaskRunner(task))
    assert Path(job.result()) == task.run_dir and task.is_complete()


def test_status_reads_runs_made_outside_the_launcher(tmp_path, capsys):
    runs = tmp_path / "runs"
    ok = {"kind": "train", "status": "completed", "target": "cifar10", "method": "darts",
          "search_data": "rlrn", "search_label": "random", "num_classes": 10}
    bad = {**ok, "status": "failed", "error": "ValueError: x"}
    for name, text in [("a", json.dumps(ok)), ("b", "{not json"), ("c", json.dumps(bad))]:
        (runs / "train" / name).mkdir(parents=True)
        (runs / "train" / name / "result.json").write_text(text)
    (runs / "search" / "d").mkdir(parents=True)
    report = status(runs)
    states = {t.name: t.state for t in report.tasks}
    assert states == {"a": "done", "b": "failed", "c": "failed", "d": "pending"}
    assert any("b" in w and "malformed" in w for w in report.warnings)
    assert {t.group for t in report.tasks if t.name == "a"} == {"cifar10/darts/rlrn/random/c10"}
    assert cmd_status([str(runs)]) == 1
    out = capsys.readouterr().out
    assert "ValueError: x" in out and "warning: skipped" in out
    assert cmd_status([str(runs), "format=json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["tasks"]) == 4
    with pytest.raises(UserError, match="does not exist"):
        cmd_status([str(tmp_path / "nope")])


def test_bad_task_lists_are_rejected(tmp_path):
    t = _tasks(tmp_path)[0]
    with pytest.raises(UserError, match="same run directory"):
        submit_array([t, Task(VERB, ["x=1"], run_dir=t.run_dir)], _launcher(tmp_path), "dup")
    with pytest.raises(ConfigError, match="launcher.name"):
        submit_array([t], _launcher(tmp_path, "pbs"), "x")
    with pytest.raises(ConfigError, match="cannot honour"):
        submit_array([t], _launcher(tmp_path), "x", dependency="afterok:1")


def test_task_file_lists_unfinished_cli_tasks(tmp_path):
    done = tmp_path / "runs" / "search" / "done"
    done.mkdir(parents=True)
    (done / "result.json").write_text(json.dumps({"status": "completed"}))
    tasks = [Task("search", ["seed=0"], run_dir=done), Task("search", ["seed=1", "data=rlrn"]),
             Task("config", [])]
    path = tmp_path / "tasks.txt"
    assert write_task_file(tasks, path) == 2
    lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["search seed=1 data=rlrn", "config"]
    with pytest.raises(UserError, match="whitespace"):
        write_task_file([Task("search", ["train.root=/my data"])], path)
    with pytest.raises(UserError, match="CLI verbs only"):
        write_task_file(_tasks(tmp_path), path)


def test_local_workers_run_tasks_in_parallel_processes_and_isolate_failures(tmp_path):
    tasks = _tasks(tmp_path, seeds=(0, 1, 2, 3), fail=(2,))
    jobs = submit_array(tasks, _launcher(tmp_path, local_workers=2), "search")
    assert [j.state for j in jobs] == ["COMPLETED", "COMPLETED", "FAILED", "COMPLETED"]
    assert [_runs(t) for t in tasks] == [1, 1, 1, 1]
    assert "boom in seed 2" in jobs[2].error
    assert "RuntimeError: boom in seed 2" in jobs[2].log_path.read_text()  # the worker's traceback is in its log
    assert "fake stage seed=3" in jobs[3].log_path.read_text()
    record = json.loads((jobs[0].log_path.parent / "tasks.json").read_text())
    assert [e["state"] for e in record["tasks"]] == ["COMPLETED", "COMPLETED", "FAILED", "COMPLETED"]
    # Each task ran in a process of its own (spawned, one task per process), not in this one.
    pids = {int(j.log_path.read_text().split("pid=")[1].split()[0]) for j in jobs}
    assert len(pids) == 4 and os.getpid() not in pids
    again = submit_array(tasks, _launcher(tmp_path, local_workers=2), "search")
    assert [j.task.run_dir.name for j in again] == ["s2"]


def test_submitit_settings_as_dinov2_uses_them(tmp_path):
    """max_num_timeout, signal delay, constraint, exclude, comment and mail reach the sbatch script."""
    from submitit.slurm.slurm import _make_sbatch_string

    from unrealnas.config import compose_config
    from unrealnas.launch.submit import make_executor

    cfg = compose_config(["launcher=slurm", "launcher.constraint=volta32gb", "launcher.exclude='node[01-02]'",
                          "launcher.comment=unrealnas", "launcher.mail_type='END,FAIL'", "launcher.mail_user=me@x.org",
                          f"paths.runs={tmp_path}"])
    assert cfg.launcher.max_num_timeout == 30 and cfg.launcher.signal_delay_s == 120
    executor = make_executor(cfg.launcher, tmp_path / "%A", "search")
    assert executor._executor.max_num_timeout == 30  # submitit's default would be 3
    script = _make_sbatch_string(command="true", folder=tmp_path, **executor._executor.parameters)
    lines = {ln.replace("'", "") for ln in script.splitlines()}  # submitit shell-quotes values; sbatch unquotes
    for line in ("#SBATCH --constraint=volta32gb", "#SBATCH --exclude=node[01-02]", "#SBATCH --comment=unrealnas",
                 "#SBATCH --mail-type=END,FAIL", "#SBATCH --mail-user=me@x.org", "#SBATCH --signal=USR2@120"):
        assert line in lines, line
    fewer = make_executor(OmegaConf.merge(cfg.launcher, {"max_num_timeout": 2}), tmp_path / "%A", "search")
    assert fewer._executor.max_num_timeout == 2


def test_preemption_requeues_without_counting_a_timeout(tmp_path):
    """submitit's countdown drops only for a timed-out job; TaskRunner.checkpoint requeues a fresh copy."""
    import submitit
    from submitit.core import job_environment

    task = _tasks(tmp_path)[0]
    delayed = submitit.helpers.DelayedSubmission(TaskRunner(task))
    delayed.set_timeout(60, 30)
    path = tmp_path / "submitted.pkl"
    assert job_environment._checkpoint(delayed, path, delayed._timeout_countdown) == ""  # "" = requeued
    again = submitit.helpers.DelayedSubmission.load(path)
    assert again._timeout_countdown == 30 and again.function.task == task and again.function is not delayed.function


def test_a_moved_or_copied_runs_folder_counts_its_own_runs(tmp_path, capsys):
    import shutil

    jobs = submit_array(_tasks(tmp_path, fail=(1,)), _launcher(tmp_path), "search")
    record = json.loads((jobs[0].log_path.parent / "tasks.json").read_text())
    assert all(not os.path.isabs(e["run_dir"]) and not os.path.isabs(e["stdout"]) for e in record["tasks"])
    copy = tmp_path / "copy" / "runs"
    shutil.copytree(tmp_path / "runs", copy)
    shutil.rmtree(tmp_path / "runs" / "search" / "s0")  # the original changes; the copy must not see it
    report = status(copy)
    assert len(report.tasks) == 3  # not 6: the records point into the copy
    assert all(t.run_dir.startswith(str(copy)) for t in report.tasks)
    assert {t.name: t.state for t in report.tasks} == {"s0": "done", "s1": "failed", "s2": "done"}
    assert Path(report.failures()[0].log).is_relative_to(copy)
    moved = tmp_path / "moved"
    shutil.move(str(copy), moved)
    assert {t.name: t.state for t in status(moved).tasks} == {"s0": "done", "s1": "failed", "s2": "done"}
    capsys.readouterr()
    assert cmd_status([str(moved), "--format", "json"]) == 1
    assert len(json.loads(capsys.readouterr().out)["tasks"]) == 3
    assert cmd_status([str(moved), "--format=json"]) == 1
    assert json.loads(capsys.readouterr().out)["groups"][0]["failed"] == 1


def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    submit_array(_tasks(tmp_path), _launcher(tmp_path), "search")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "unrealnas", "status", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # the reader is gone before the first line is written, as after `| head -0`
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
