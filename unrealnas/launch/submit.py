"""Submit a list of tasks as ONE job array (SLURM, through submitit) or run them here (local).

Both launchers have the same interface and the same behaviour where it matters: tasks whose run
directory is already complete are skipped (a finished sweep submits nothing), stages are
chained with ``afterok`` dependencies (locally: a stage does not run after a failed one), and
every batch leaves a ``tasks.json`` record and one log per task for ``unrealnas status``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
import traceback
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from unrealnas.errors import ConfigError, UserError
from unrealnas.launch.records import outcome_path, task_entry, write_record
from unrealnas.launch.task import Task, run_task
from unrealnas.lock import AlreadyRunning
from unrealnas.observe import bar, counter
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger

DEPENDENCY_KINDS = ("afterok", "afterany", "afternotok")



# ---- jobs and dependencies -------------------------------------------------------------------


class LocalTaskError(RuntimeError):
    """A task run by the local launcher failed (or was not run because its dependency failed)."""


@dataclass
class LocalJob:
    """A task run by the local launcher; offers the parts of submitit's ``Job`` the suite uses."""

    job_id: str
    task: Task
    log_path: Path
    # PENDING | RUNNING | COMPLETED | FAILED | CANCELLED (SLURM's names) | SKIPPED (running elsewhere)
    state: str = "PENDING"
    value: Any = None
    error: str | None = None  # one line; the traceback is in log_path
    _exc: BaseException | None = field(default=None, repr=False)

    def done(self) -> bool:
        """Whether the task has finished (in any state)."""
        return self.state in ("COMPLETED", "FAILED", "CANCELLED", "SKIPPED")

    def result(self) -> Any:
        """The task's return value (its run directory); raises LocalTaskError when it failed."""
        if self.state == "COMPLETED":
            return self.value
        raise LocalTaskError(
            f"{self.task.describe()}: {self.state.lower()}: {self.error} (log: {self.log_path})")

    def results(self) -> list[Any]:
        """``[result()]``, like submitit's per-task results."""
        return [self.result()]

    def exception(self) -> BaseException | None:
        """The exception the task raised, None when it completed."""
        if self.state == "COMPLETED":
            return None
        return self._exc or LocalTaskError(self.error or self.state)


@dataclass(frozen=True)
class Dependency:
    """Start a stage after ``jobs``: ``afterok`` (all succeeded), ``afterany`` (all ended), ``afternotok``."""

    jobs: tuple[Any, ...]
    kind: str = "afterok"

    def __post_init__(self) -> None:
        if self.kind not in DEPENDENCY_KINDS:
            choices = ", ".join(DEPENDENCY_KINDS)
            raise ConfigError(f"dependency kind {self.kind!r} is invalid: choose one of {choices}")

    def sbatch(self) -> str | None:
        """The ``--dependency`` value, one entry per array (``afterok:123:124``), None without jobs."""
        ids: list[str] = []
        for job in self.jobs:
            if isinstance(job, LocalJob):
                raise ConfigError("a SLURM stage cannot depend on tasks of the local launcher")
            base = str(job.job_id).split("_", 1)[0]  # the array id covers every task of the array
            if base not in ids:
                ids.append(base)
        return f"{self.kind}:{':'.join(ids)}" if ids else None


def dependency_of(jobs: Sequence[Any], kind: str = "afterok") -> Dependency:
    """A dependency on every job of an earlier stage (what ``submit_array`` returned)."""
    return Dependency(tuple(jobs), kind)


# ---- SLURM ------------------------------------------------------------------------------------


def check_slurm() -> None:
    """Raise a UserError unless ``sbatch`` is installed and ``squeue`` reaches a controller."""
    hint = "run on a machine with SLURM (a login node), or use launcher=local to run the tasks here"
    for cmd in ("sbatch", "squeue", "srun"):
        if shutil.which(cmd) is None:
            raise UserError(f"launcher=slurm but SLURM is not available here: {cmd} is not installed; {hint}")
    try:
        proc = subprocess.run(["squeue", "--noheader", "--format=%i", "--me"], capture_output=True, text=True,
                              timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise UserError(f"launcher=slurm but SLURM is not reachable: squeue failed ({e}); {hint}") from e
    if proc.returncode != 0:
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        why = msg[0] if msg else f"exit status {proc.returncode}"
        raise UserError(f"launcher=slurm but SLURM is not reachable: squeue: {why}; {hint}")


def _get(cfg: Any, key: str, default: Any = None) -> Any:
    value = cfg.get(key, default) if isinstance(cfg, Mapping) else getattr(cfg, key, default)
    return default if value is None else value


def _plain(value: Any) -> Any:
    """A DictConfig/ListConfig as plain containers (submitit writes values with str())."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _setup_lines() -> list[str]:
    """Shell lines run in the sbatch script before srun."""
    package_root = Path(__file__).resolve().parents[2]
    return [
        # The job must import this package (and any test/plugin module) even when it is not installed.
        f'export PYTHONPATH="{package_root}${{PYTHONPATH:+:$PYTHONPATH}}"',
        # One BLAS/OpenMP thread per allocated CPU instead of one per core of the node.
        'export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"',
    ]


def slurm_parameters(launcher_cfg: Any, name: str, dependency: str | None = None) -> dict[str, Any]:
    """submitit AutoExecutor parameters from a ``LauncherConfig`` (``cfg.launcher``)."""
    extra = dict(_plain(_get(launcher_cfg, "extra", {})) or {})
    if dependency:
        # Keep a dependency the user put in launcher.extra as well.
        extra["dependency"] = f"{extra['dependency']},{dependency}" if extra.get("dependency") else dependency
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": int(_get(launcher_cfg, "time_min", 60)),
        "nodes": int(_get(launcher_cfg, "nodes", 1)),
        "tasks_per_node": int(_get(launcher_cfg, "tasks_per_node", 1)),
        "cpus_per_task": int(_get(launcher_cfg, "cpus_per_task", 1)),
        "slurm_array_parallelism": int(_get(launcher_cfg, "array_parallelism", 64)),
        "slurm_setup": _setup_lines(),
    }
    gpus = int(_get(launcher_cfg, "gpus_per_node", 0))
    if gpus > 0:  # --gpus-per-node=0 is rejected on clusters without GPU GRES
        params["gpus_per_node"] = gpus
    mem_gb = _get(launcher_cfg, "mem_gb")
    if mem_gb:
        params["mem_gb"] = mem_gb
    params["slurm_signal_delay_s"] = int(_get(launcher_cfg, "signal_delay_s", 120))
    for key in ("partition", "account", "qos", "constraint", "exclude", "comment", "mail_type", "mail_user"):
        value = _get(launcher_cfg, key)
        if value:
            params[f"slurm_{key}"] = str(value)
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def make_executor(launcher_cfg: Any, folder: Path, name: str, dependency: str | None = None) -> Any:
    """A submitit AutoExecutor for SLURM with the launcher's parameters (nothing is submitted)."""
    import submitit

    # Time-limit requeues are capped by max_num_timeout; submitit requeues a preempted job (signal
    # before the limit) without counting it, and TaskRunner.checkpoint resumes from disk either way.
    executor = submitit.AutoExecutor(folder=folder, cluster="slurm",
                                     slurm_max_num_timeout=int(_get(launcher_cfg, "max_num_timeout", 30)))
    try:
        executor.update_parameters(**slurm_parameters(launcher_cfg, name, dependency))
    except ValueError as e:
        raise ConfigError(f"launcher: {str(e).splitlines()[0]}") from e
    return executor


def _scontrol_config() -> dict[str, str]:
    """``scontrol show config`` as {key: value}; empty when scontrol is missing or fails."""
    try:
        proc = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    out: dict[str, str] = {}
    for line in proc.stdout.splitlines() if proc.returncode == 0 else []:
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def _max_submit_jobs() -> int | None:
    """This user's MaxSubmitJobs (association limit, sacctmgr); None when unlimited or unknown (no accounting)."""
    if shutil.which("sacctmgr") is None:
        return None
    import getpass

    try:
        proc = subprocess.run(["sacctmgr", "--noheader", "--parsable2", "show", "assoc",
                               f"where user={getpass.getuser()}", "format=MaxSubmitJobs"],
                              capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    limits = [int(v) for v in proc.stdout.split() if v.strip().isdigit()] if proc.returncode == 0 else []
    return min(limits) if limits else None


def _queued_jobs() -> int:
    """This user's jobs in the queue, one per array task (what MaxSubmitJobs counts)."""
    proc = subprocess.run(["squeue", "--noheader", "--array", "--me", "--format=%i"], capture_output=True,
                          text=True, timeout=60)
    return len(proc.stdout.split()) if proc.returncode == 0 else 0


def array_size_limit(launcher_cfg: Any) -> int:
    """Tasks per array at most: ``launcher.max_array_size``, capped by the cluster's MaxArraySize.

    SLURM refuses array indices >= MaxArraySize (default 1001), and submitit numbers an array's
    tasks from 0, so an array holds at most MaxArraySize tasks.
    """
    override = _get(launcher_cfg, "max_array_size")
    if override is not None and int(override) < 1:
        raise ConfigError(f"config: launcher.max_array_size={override} is invalid: use 1 or more, "
                          "or null for the cluster's MaxArraySize")
    value = _scontrol_config().get("MaxArraySize", "")
    cluster = int(value) if value.isdigit() and int(value) > 0 else 1001
    return min(cluster, int(override)) if override is not None else cluster


def split_for_arrays(tasks: Sequence[Task], limit: int) -> list[list[Task]]:
    """``tasks`` in consecutive parts of at most ``limit`` tasks, one job array each."""
    tasks = list(tasks)
    return [tasks[i:i + limit] for i in range(0, len(tasks), limit)]


def _submit_one_array(tasks: list[Task], launcher_cfg: Any, base: Path, name: str, dependency: str | None,
                      part: tuple[int, int]) -> list[Any]:
    import submitit

    from unrealnas.launch.runner import TaskRunner

    # One folder per array: <folder>/<name>/<array id>/ holds its logs, pickles and tasks.json.
    executor = make_executor(launcher_cfg, base / "%A", name, dependency)
    try:
        with executor.batch():
            jobs = [executor.submit(TaskRunner(task)) for task in tasks]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as e:
        lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
        raise UserError(f"sbatch rejected the {name!r} array: {lines[-1] if lines else e}") from e
    array_id = str(jobs[0].job_id).split("_", 1)[0]
    entries = []
    for i, (task, job) in enumerate(zip(tasks, jobs, strict=True)):
        paths = job.paths
        entries.append(task_entry(i, task, str(job.job_id), paths.stdout, paths.stderr,
                                  outcome_path(paths.folder, str(job.job_id))))
    write_record(jobs[0].paths.folder, {
        "launcher": "slurm", "name": name, "job_id": array_id, "submitted_at": time.time(),
        "dependency": dependency, "part": part[0], "parts": part[1], "tasks": entries,
    })
    after = f", {dependency}" if dependency else ""
    of = f" (part {part[0] + 1} of {part[1]})" if part[1] > 1 else ""
    _say(f"{name}: submitted array {array_id}{of} ({len(jobs)} task(s)){after}; logs in {jobs[0].paths.folder}")
    return jobs


def _submit_slurm(tasks: list[Task], launcher_cfg: Any, name: str, dependency: str | None) -> list[Any]:
    check_slurm()
    limit = array_size_limit(launcher_cfg)
    max_jobs = _max_submit_jobs()
    if max_jobs is not None:
        queued = _queued_jobs()
        if queued + len(tasks) > max_jobs:
            raise UserError(f"the {name!r} stage has {len(tasks)} task(s) and {queued} job(s) are queued, but "
                            f"MaxSubmitJobs is {max_jobs}: split the sweep or wait for queued jobs to finish")
    base = Path(str(_get(launcher_cfg, "folder", "runs/slurm"))).expanduser().absolute() / name
    base.mkdir(parents=True, exist_ok=True)
    parts = split_for_arrays(tasks, limit)
    if len(parts) > 1:
        _say(f"{name}: {len(tasks)} task(s) > {limit} per array (MaxArraySize / launcher.max_array_size): "
             f"{len(parts)} arrays, each with the same dependency")
    jobs: list[Any] = []
    for k, part in enumerate(parts):
        # Every part gets the same dependency; the next stage's Dependency names every part's array id.
        try:
            jobs.extend(_submit_one_array(part, launcher_cfg, base, name, dependency, (k, len(parts))))
        except UserError as e:
            if not jobs:
                raise
            # A stage is all of its parts: do not leave the earlier parts running without the rest.
            ids = sorted({str(j.job_id).split("_", 1)[0] for j in jobs})
            subprocess.run(["scancel", *ids], capture_output=True, timeout=60)
            raise UserError(f"{e}; cancelled the {len(ids)} array(s) of this stage already queued "
                            f"({', '.join(ids)})") from e
    return jobs


# ---- local --------------------------------------------------------------------------------------


class _Tee:
    """A text stream that writes to the terminal and a log file."""

    def __init__(self, *streams: TextIO) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def _tee_output(log_path: Path) -> Iterator[TextIO]:
    with open(log_path, "a", buffering=1) as log:
        out, err = _Tee(sys.stdout, log), _Tee(sys.stderr, log)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):  # type: ignore[type-var]
            yield log


# Why not submitit's LocalExecutor / DebugExecutor (submitit 1.5): LocalExecutor starts one
# subprocess per job the moment it is submitted, with no cap, so `launcher.local_workers` (N at a
# time: 2 one-thread processes beat one two-thread process on small CPU models) would need our own
# throttling around it; its results come back as pickles that job.result() loads, where ours come
# back in memory and the run directory's JSON is the record; and a task's log is one file per job
# in submitit's naming, not `<i>_log.out` beside the array's `tasks.json`. DebugExecutor runs in
# the submitting process, one task at a time: a task that segfaults or is OOM-killed takes the
# whole array with it. The local launcher keeps a process pool instead (one task per worker
# process, `local_workers` at a time, a crashed worker fails its task only).
def _submit_local(tasks: list[Task], launcher_cfg: Any, name: str,
                  dependency: Dependency | None) -> list[LocalJob]:
    batch = f"local-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    folder = Path(str(_get(launcher_cfg, "folder", "runs/slurm"))).expanduser().absolute() / name / batch
    folder.mkdir(parents=True, exist_ok=True)
    jobs = [LocalJob(f"{batch}_{i}", task, folder / f"{i}_log.out") for i, task in enumerate(tasks)]
    if int(_get(launcher_cfg, "nodes", 1)) * int(_get(launcher_cfg, "tasks_per_node", 1)) > 1:
        _say(f"{name}: launcher=local runs each task as one process (nodes and tasks_per_node are ignored)")
    blocked = None
    if dependency is not None and dependency.kind in ("afterok", "afternotok"):
        failed = [j for j in dependency.jobs if isinstance(j, LocalJob) and j.state != "COMPLETED"]
        if dependency.kind == "afterok" and failed:
            blocked = f"dependency failed: {failed[0].task.describe()} ({failed[0].state.lower()})"
        elif dependency.kind == "afternotok" and not failed:
            blocked = "dependency succeeded (afternotok)"

    started = time.time()

    def record() -> None:
        entries = []
        for i, job in enumerate(jobs):
            entry = task_entry(i, job.task, job.job_id, job.log_path, job.log_path)
            entry.update(state=job.state, error=job.error)
            entries.append(entry)
        write_record(folder, {"launcher": "local", "name": name, "job_id": batch, "submitted_at": started,
                              "pid": os.getpid(), "host": os.uname().nodename, "tasks": entries})

    if blocked:
        for job in jobs:
            job.state, job.error = "CANCELLED", blocked
            job.log_path.write_text(f"not run: {blocked}\n")
        record()
        _say(f"{name}: {len(jobs)} task(s) not run ({blocked})")
        return jobs
    record()
    workers = min(int(_get(launcher_cfg, "local_workers", 1) or 1), len(jobs))
    if workers > 1:
        _run_local_parallel(jobs, name, folder, workers, record)
        return jobs
    _say(f"{name}: running {len(jobs)} task(s) here, one after another; logs in {folder}")
    for i, job in enumerate(bar(jobs, len(jobs), desc=name, unit="task")):
        job.state = "RUNNING"
        record()
        with _tee_output(job.log_path):
            _say(f"[{name} {i + 1}/{len(jobs)}] {job.task.describe()}")
            try:
                job.value = run_task(job.task)
                job.state = "COMPLETED"
            except KeyboardInterrupt:
                job.state, job.error = "CANCELLED", "interrupted"
                record()
                raise
            except AlreadyRunning as e:  # another process writes that run directory: not a failure
                job.state, job.error, job._exc = "SKIPPED", str(e), e
                _say(f"skipped: running elsewhere: {e}")
            except Exception as e:  # one failed task must not stop the others, as in an array
                job.state, job.error, job._exc = "FAILED", f"{type(e).__name__}: {e}", e
                traceback.print_exc()
        record()
    return jobs


def _run_in_worker(task: Task, log_path: Path, threads: int) -> Any:
    """One task in a worker process of the parallel local launcher; its output goes to its log only."""
    import torch

    torch.set_num_threads(threads)
    with open(log_path, "a", buffering=1) as log, contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        print(f"running with {threads} torch thread(s): {task.describe()}", file=log)
        try:
            return run_task(task)
        except BaseException:
            traceback.print_exc(file=log)
            raise


def _run_local_parallel(jobs: list[LocalJob], name: str, folder: Path, workers: int, record: Callable[[], None]) -> None:
    """Run ``jobs`` in ``workers`` fresh processes at a time, the CPU cores split evenly between them.

    Small CPU models spend most of a step in per-op overhead that more threads do not shorten, so
    two one-thread processes do nearly twice the work of one two-thread process. Each process runs
    one task and exits (spawned, so no torch state is shared), exactly as an array task would.
    """
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    threads = max(1, (os.cpu_count() or 1) // workers)
    _say(f"{name}: running {len(jobs)} task(s) here, {workers} at a time ({threads} torch thread(s) each); "
         f"logs in {folder}")

    def new_pool() -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                   max_tasks_per_child=1)

    pool = new_pool()
    tasks_bar = counter(len(jobs), desc=name, unit="task")
    running: dict[Any, LocalJob] = {}
    queue = list(jobs)
    done_count = 0
    try:
        while queue or running:
            while queue and len(running) < workers:
                job = queue.pop(0)
                job.state = "RUNNING"
                running[pool.submit(_run_in_worker, job.task, job.log_path, threads)] = job
                _say(f"[{name} started] {job.task.describe()}")
            record()
            finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in finished:
                job = running.pop(fut)
                done_count += 1
                exc = fut.exception()
                if exc is None:
                    job.value, job.state = fut.result(), "COMPLETED"
                elif isinstance(exc, AlreadyRunning):  # another process writes that run directory
                    job.state, job.error, job._exc = "SKIPPED", str(exc), exc
                else:  # one failed task must not stop the others, as in an array
                    job.state, job.error, job._exc = "FAILED", f"{type(exc).__name__}: {exc}", exc
                    if isinstance(exc, BrokenProcessPool):  # a worker was killed: the pool cannot take more
                        pool.shutdown(wait=False)
                        pool = new_pool()
                tasks_bar.update()
                _say(f"[{name} {done_count}/{len(jobs)} {job.state.lower()}] {job.task.describe()}"
                     + (f": {job.error} (log: {job.log_path})" if job.error else ""))
    except KeyboardInterrupt:
        for job in [*running.values(), *queue]:
            job.state, job.error = "CANCELLED", "interrupted"
        record()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    tasks_bar.close()
    record()


# ---- the one entry point ----------------------------------------------------------------------------


def pending_tasks(tasks: Sequence[Task]) -> list[Task]:
    """The tasks whose run directory is not complete yet (what ``submit_array`` would run)."""
    return [t for t in tasks if not t.is_complete()]


def _check_tasks(tasks: Sequence[Task]) -> None:
    seen: dict[Path, Task] = {}
    for t in tasks:
        if not isinstance(t, Task):
            raise TypeError(f"expected Task, got {type(t).__name__}")
        if t.run_dir is not None:
            if t.run_dir in seen:
                raise UserError(f"two tasks would write the same run directory {t.run_dir}: "
                                f"{seen[t.run_dir].describe()} and {t.describe()}")
            seen[t.run_dir] = t


def _validate_config(tasks: Sequence[Task]) -> None:
    """Compose the first stage task's config, so that a typo fails here and not in every queued job."""
    from unrealnas.launch.task import STAGE_RUNNERS

    first = next((t for t in tasks if t.verb in STAGE_RUNNERS), None)
    if first is not None:
        from unrealnas.config import compose_config

        compose_config(list(first.overrides))


def submit_array(tasks: Sequence[Task], launcher_cfg: Any, name: str,
                 dependency: Dependency | Sequence[Any] | str | None = None) -> list[Any]:
    """Submit the unfinished ``tasks`` as ONE job array (``launcher.name=slurm``) or run them here (local).

    ``launcher_cfg`` is ``cfg.launcher``. ``dependency``: the jobs of an earlier stage (``afterok``),
    a :class:`Dependency`, or a raw sbatch ``--dependency`` string (SLURM only). Returns one job
    per submitted task: submitit ``Job`` objects, or :class:`LocalJob` s that have already run.
    Finished tasks are skipped, so resubmitting a finished sweep submits nothing and returns [].
    """
    if not name or "/" in name or name.startswith("."):
        # The name is also a folder under launcher.folder, where `status` looks for records.
        raise ConfigError(f"stage name {name!r} is invalid: use a plain folder name such as 'search'")
    tasks = list(tasks)
    _check_tasks(tasks)
    todo = pending_tasks(tasks)
    if len(todo) < len(tasks):
        _say(f"{name}: skipping {len(tasks) - len(todo)} task(s) whose run directory is complete")
    if not todo:
        _say(f"{name}: nothing to submit")
        return []
    if dependency is not None and not isinstance(dependency, (Dependency, str)):
        dependency = dependency_of(list(dependency))
    kind = str(_get(launcher_cfg, "name", "local"))
    if kind == "local":
        if isinstance(dependency, str):
            raise ConfigError(f"launcher=local cannot honour the sbatch dependency {dependency!r}; "
                              "pass the earlier stage's jobs instead")
        return _submit_local(todo, launcher_cfg, name, dependency)
    if kind == "slurm":
        from unrealnas.launch.gres import check_gpu_requests

        check_gpu_requests([(name, launcher_cfg)])
        _validate_config(todo)
        dep = dependency.sbatch() if isinstance(dependency, Dependency) else dependency
        return _submit_slurm(todo, launcher_cfg, name, dep)
    raise ConfigError(f"config: launcher.name={kind!r} is invalid: choose local or slurm")


def wait_all(jobs: Sequence[Any], timeout_s: float | None = None, poll_s: float = 2.0) -> list[str]:
    """Wait until every job is done (or ``timeout_s`` passes); return their states, never raising."""
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    pending = list(jobs)
    while pending:
        pending = [j for j in pending if not j.done()]
        if not pending or (deadline is not None and time.monotonic() >= deadline):
            break
        time.sleep(poll_s)
    return [_final_state(j) for j in jobs]


def _final_state(job: Any) -> str:
    """COMPLETED / FAILED for a finished job (submitit's own state lags behind accounting), else its state."""
    if isinstance(job, LocalJob) or not job.done():
        return str(job.state)
    try:
        return "COMPLETED" if job.exception() is None else "FAILED"
    except Exception:  # no result pickle: the job was killed or cancelled
        return "FAILED"
