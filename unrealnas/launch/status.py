"""``unrealnas status <runs dir>``: per stage and group, what is done, running, pending or failed.

Sources, most reliable first: a run directory's ``result.json`` (completed / failed), the
launcher's submission records (``tasks.json``, see :mod:`unrealnas.launch.records`), the SLURM
queue (``squeue``), the JSON outcome file each job writes when it ends, and accounting
(``sacct``) for jobs that left the queue without one (cancelled, killed, out of time). Every
failure comes with its log path.

Nothing here unpickles: runs folders are shared by groups, and a pickle planted in one would run
its code in whoever types ``status`` or ``table``. submitit's own result pickles are read only by
the process that submitted the jobs (``unrealnas.launch.submit.wait_all``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from unrealnas.finite import nonfinite_note
from unrealnas.launch.records import read_outcome, read_records
from unrealnas.lock import holder
from unrealnas.results.collect import Failure, parse_group
from unrealnas.rundir import SEARCH, TRAIN, is_complete, read_result

STATES = ("done", "running", "pending", "failed")
STAGE_DIRS = (SEARCH, TRAIN)  # run directories under <runs>/<stage>/<run-id>
# SLURM job states (squeue/sacct) -> our states.
_QUEUE_STATES = {
    "PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
    "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "running",
    "STAGE_OUT": "running", "RESIZING": "running", "SIGNALING": "running", "STOPPED": "running",
}
_FAILED_STATES = ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
                  "DEADLINE", "REVOKED", "SPECIAL_EXIT")


@dataclass
class TaskStatus:
    """The state of one task / run directory."""

    stage: str
    group: str
    name: str  # run directory name, or the verb when the task names no run directory
    state: str  # done | running | pending | failed
    run_dir: str | None = None
    job_id: str | None = None
    log: str | None = None  # for failures: the log to read first
    note: str = ""


@dataclass
class StatusReport:
    """All tasks found under a runs folder, plus warnings about files that could not be read."""

    tasks: list[TaskStatus] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """``{(stage, group): {state: n}}`` with every state present."""
        out: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: dict.fromkeys(STATES, 0))
        for t in self.tasks:
            out[(t.stage, t.group)][t.state] += 1
        return dict(sorted(out.items()))

    def failures(self) -> list[TaskStatus]:
        """The failed tasks, each with its log path."""
        return [t for t in self.tasks if t.state == "failed"]

    def to_json(self) -> dict[str, Any]:
        """A JSON-serialisable view (``unrealnas status format=json``)."""
        return {
            "groups": [{"stage": s, "group": g, **c} for (s, g), c in self.counts().items()],
            "tasks": [asdict(t) for t in self.tasks],
            "warnings": list(self.warnings),
        }


def _group_of(result: dict[str, Any] | None, stage: str) -> str:
    """The sweep cell of a run from its result.json (the columns the tables group by)."""
    if not result:
        return "-"
    label = result.get("search_label")
    classes = result.get("num_classes")
    parts = [result.get("method"), result.get("search_data"), label,
             f"c{classes}" if classes is not None and label != "true" else None]
    if stage == "train":
        parts.insert(0, result.get("target"))
    parts = [str(p) for p in parts if p not in (None, "")]
    return "/".join(parts) if parts else "-"


def _run(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return proc.stdout if proc.returncode == 0 else None


def _queue() -> dict[str, tuple[str, str]] | None:
    """``{job id: (state, reason)}`` of this user's queued jobs, one per array task; None without SLURM."""
    out = _run(["squeue", "--noheader", "--array", "--me", "--format=%i|%T|%r"])
    if out is None:
        return None
    jobs = {}
    for line in out.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def _accounting(array_ids: set[str]) -> dict[str, str]:
    """``{job id: SLURM state}`` from sacct for the given arrays; empty without accounting."""
    if not array_ids:
        return {}
    out = _run(["sacct", "--noheader", "--parsable2", "--allocations", "--format=JobID,State",
                "--jobs", ",".join(sorted(array_ids))])
    states: dict[str, str] = {}
    for line in (out or "").splitlines():
        job_id, _, state = line.partition("|")
        if job_id and state:
            states[job_id.strip()] = state.split()[0]  # "CANCELLED by 0" -> CANCELLED
    return states


def _elsewhere(entry: dict[str, Any], error: str) -> tuple[str, str]:
    """(state, note) of a task that found its run directory locked by another process."""
    who = holder(entry["run_dir"]) if entry.get("run_dir") else None
    if who is not None:
        return "running", f"skipped here: running elsewhere ({who})"
    return "failed", f"skipped: was running elsewhere, and that process stopped without a result ({error}); resubmit"


def _log_of(entry: dict[str, Any]) -> str | None:
    # Tracebacks go to stderr; prefer it when it exists and is not empty.
    for key in ("stderr", "stdout"):
        path = entry.get(key)
        if path and Path(path).is_file() and Path(path).stat().st_size > 0:
            return path
    # A job that never started has no log yet; say so rather than name a missing file.
    return next((entry[k] for k in ("stderr", "stdout") if entry.get(k) and Path(entry[k]).is_file()), None)


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


def _entry_state(entry: dict[str, Any], record: dict[str, Any], queue: dict[str, tuple[str, str]] | None,
                 acct: dict[str, str], result: dict[str, Any] | None) -> tuple[str, str]:
    """(state, note) of one recorded task whose run directory is not known to be done."""
    if result is not None and result.get("status") == "failed":
        return "failed", str(result.get("error") or "result.json says failed")
    job_id = str(entry.get("job_id"))
    if record.get("launcher") == "local":
        state = str(entry.get("state", "PENDING"))
        same_host = record.get("host") == os.uname().nodename
        if state == "COMPLETED":
            if entry.get("run_dir"):
                return "failed", "task returned without a result.json"
            return "done", ""
        if state == "SKIPPED":
            return _elsewhere(entry, str(entry.get("error") or ""))
        if state in ("FAILED", "CANCELLED"):
            return "failed", str(entry.get("error") or state.lower())
        if same_host and _pid_alive(record.get("pid")):
            return ("running" if state == "RUNNING" else "pending"), f"local launcher pid {record.get('pid')}"
        return "failed", "the local launcher stopped before this task finished"
    outcome = read_outcome(entry.get("outcome"))
    # A COMPLETING job has run its task: its outcome file says more than the queue's reason
    # (e.g. "NonZeroExitCode" for a task that found its run directory taken, exit 75).
    completing = queue is not None and queue.get(job_id, ("", ""))[0] == "COMPLETING"
    if queue is not None and job_id in queue and not (completing and outcome is not None):
        slurm_state, reason = queue[job_id]
        if "DependencyNeverSatisfied" in reason:
            return "failed", "never runs: a job it depends on failed (scancel it)"
        return _QUEUE_STATES.get(slurm_state, "running"), "" if reason in ("None", "") else reason
    if outcome is not None:
        if outcome[0] == "running_elsewhere":
            return _elsewhere(entry, outcome[1])
        if outcome[0] == "failed":
            return "failed", outcome[1] or "the task raised an error"
        if entry.get("run_dir"):
            return "failed", "job ended without a completed result.json"
        return "done", ""
    slurm_state = acct.get(job_id)
    if slurm_state == "CANCELLED":
        return "failed", "job cancelled (scancel, or a job it depends on failed)"
    if slurm_state in _FAILED_STATES:
        return "failed", f"job {slurm_state.lower()}"
    if slurm_state in _QUEUE_STATES:
        return _QUEUE_STATES[slurm_state], "per sacct"
    if queue is None:
        return "pending", "SLURM not reachable from here; state unknown"
    return "failed", "job left the queue without a result (cancelled or killed?)"


def status(runs_dir: str | Path, launcher_folder: str | Path | None = None) -> StatusReport:
    """The state of every task submitted under ``launcher_folder`` and of every run under ``runs_dir``."""
    runs_dir = Path(runs_dir).expanduser().absolute()
    folder = Path(launcher_folder).expanduser().absolute() if launcher_folder else runs_dir / "slurm"
    records, warnings = read_records(folder)
    report = StatusReport(warnings=warnings)

    # The latest submission of a run directory wins (a resubmission replaces a failed attempt).
    latest: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}
    for record in records:
        for entry in record["tasks"]:
            run_dir = entry.get("run_dir")
            # Real paths: the runs folder may be reached through a symlink (e.g. pytest-current).
            key = os.path.realpath(run_dir) if run_dir else f"{record['_path']}#{entry.get('index')}"
            latest[key] = (record, entry)

    results: dict[str, dict[str, Any] | None] = {}

    def result_of(run_dir: str | None) -> dict[str, Any] | None:
        if not run_dir:
            return None
        if run_dir not in results:
            try:
                results[run_dir] = read_result(run_dir)
            except (OSError, ValueError) as e:
                report.warnings.append(f"skipped {e}")
                results[run_dir] = {"status": "failed", "error": "malformed result.json"}
        return results[run_dir]

    open_entries = [(r, e) for r, e in latest.values() if not is_complete(e.get("run_dir"))]
    slurm_open = [(r, e) for r, e in open_entries if r.get("launcher") == "slurm"]
    queue = _queue() if slurm_open else {}
    in_queue = queue or {}
    lost = {str(e["job_id"]).split("_", 1)[0] for _, e in slurm_open
            if str(e.get("job_id")) not in in_queue and read_outcome(e.get("outcome")) is None}
    acct = _accounting(lost) if queue is not None else {}

    for record, entry in latest.values():
        run_dir = entry.get("run_dir")
        stage = str(entry.get("stage") or "-")
        result = result_of(run_dir)
        group = str(entry.get("group") or _group_of(result, stage))
        name = Path(run_dir).name if run_dir else str(entry.get("verb"))
        bad = nonfinite_note(result) if result else None
        if bad and result.get("status") == "completed":
            state, note, log = "failed", bad, str(Path(run_dir) / "result.json")
        elif is_complete(run_dir):
            state, note, log = "done", "", None
        else:
            state, note = _entry_state(entry, record, queue, acct, result)
            log = _log_of(entry) if state == "failed" else None
        job_id = str(entry.get("job_id"))
        report.tasks.append(TaskStatus(stage, group, name, state, run_dir, job_id, log, note))

    # Runs made outside the launcher (e.g. `unrealnas search` typed by hand).
    for stage in STAGE_DIRS:
        stage_dir = runs_dir / stage
        if not stage_dir.is_dir():
            continue
        for run in sorted(p for p in stage_dir.iterdir() if p.is_dir()):
            if os.path.realpath(run) in latest:
                continue
            result = result_of(str(run))
            if result is None:
                state, note = "pending", "no result.json yet (not submitted through the launcher)"
            elif result.get("status") == "completed" and nonfinite_note(result):
                state, note = "failed", str(nonfinite_note(result))
            elif result.get("status") == "completed":
                state, note = "done", ""
            else:
                state, note = "failed", str(result.get("error") or f"status {result.get('status')!r}")
            log = str(run / "result.json") if state == "failed" else None
            group = _group_of(result, stage)
            report.tasks.append(TaskStatus(stage, group, run.name, state, str(run), None, log, note))
    report.tasks.sort(key=lambda t: (t.stage, t.group, t.name))
    return report


def format_status(report: StatusReport) -> str:
    """A text table of counts per stage and group, then one line per failure with its log."""
    counts = report.counts()
    if not counts:
        lines = ["no runs or submissions found"]
    else:
        width = max([len(g) for _, g in counts] + [5])
        lines = [f"{'stage':<8} {'group':<{width}} " + " ".join(f"{s:>7}" for s in STATES)]
        for (stage, group), c in counts.items():
            lines.append(f"{stage:<8} {group:<{width}} " + " ".join(f"{c[s]:>7}" for s in STATES))
        totals = {s: sum(c[s] for c in counts.values()) for s in STATES}
        lines.append(f"{'total':<8} {'':<{width}} " + " ".join(f"{totals[s]:>7}" for s in STATES))
    failures = report.failures()
    if failures:
        lines += ["", f"failed ({len(failures)}):"]
        for t in failures:
            job = f" job {t.job_id}" if t.job_id else ""
            lines.append(f"  {t.stage} {t.name}{job}: {t.note}")
            lines.append(f"    log: {t.log or '-'}")
    for w in report.warnings:
        lines.append(f"warning: {w}")
    return "\n".join(lines)


def launch_failures(runs_dir: str | Path, launcher_folder: str | Path | None = None,
                    only: Iterable[str | Path] | None = None) -> tuple[list[Failure], list[str]]:
    """Failed tasks known to the launcher (``unrealnas status``), each with its log; plus warnings.

    Asks SLURM only when some recorded task has no completed result, so a finished folder of
    thousands of runs costs one pass over the submission records.
    """
    runs_dir = Path(runs_dir)
    folder = Path(launcher_folder) if launcher_folder else runs_dir / "slurm"
    records, warnings = read_records(folder)
    keep = None if only is None else {os.path.realpath(p) for p in only}
    open_dirs = [e.get("run_dir") for r in records for e in r["tasks"]
                 if e.get("run_dir") and not is_complete(e.get("run_dir"))]
    if keep is not None:
        open_dirs = [d for d in open_dirs if os.path.realpath(d) in keep]
    if not open_dirs:
        return [], warnings
    report = status(runs_dir, folder)
    failures = []
    for t in report.failures():
        # job_id None: a run made outside the launcher; its result.json (if any) is collected already.
        if t.run_dir is None or t.job_id is None or (keep is not None and os.path.realpath(t.run_dir) not in keep):
            continue
        setting, target = parse_group(t.stage, t.group)
        failures.append(Failure(t.stage, t.run_dir, t.log, t.note, setting, target))
    return failures, list(report.warnings)  # status() re-reads the records: its warnings include ours
