"""The callable submitit pickles into each job: it runs one :class:`Task` and survives requeue."""

from __future__ import annotations

from pathlib import Path

import submitit

from unrealnas.launch.task import Task


def _outcome_file() -> Path | None:
    """This job's outcome file (rank 0 only), None outside a submitit job."""
    from unrealnas.launch.records import outcome_path

    try:
        env = submitit.JobEnvironment()
        if env.global_rank != 0:
            return None
        return outcome_path(env.paths.folder, env.job_id)
    except Exception:  # not inside a submitit job (a direct call in a test)
        return None


class TaskRunner(submitit.helpers.Checkpointable):
    """Run one task inside a SLURM job; on preemption or timeout requeue a fresh copy of itself.

    Only the task description is pickled. The stage code (and torch) is imported inside
    ``__call__``, so the submitting process never loads it. The run's progress lives on disk (its
    checkpoint), so the requeued copy simply runs the same verb again and the stage resumes.
    """

    def __init__(self, task: Task) -> None:
        self.task = task

    def __call__(self) -> str | None:
        """Run the task in this job (every rank of a multi-task job runs it); return the run dir."""
        from unrealnas.launch.records import write_outcome
        from unrealnas.launch.task import run_task
        from unrealnas.lock import AlreadyRunning

        path = _outcome_file()
        try:
            out = run_task(self.task)
        except AlreadyRunning as e:
            # Raised on, so that afterok dependents wait for the other writer's chain instead.
            if path is not None:
                write_outcome(path, "running_elsewhere", str(e))
            raise
        except Exception as e:
            if path is not None:
                lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
                write_outcome(path, "failed", f"{type(e).__name__}: {lines[-1] if lines else ''}")
            raise
        if path is not None:
            write_outcome(path, "completed")
        return None if out is None else str(out)

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (preemption / time limit): requeue a fresh runner of the same task."""
        # A fresh object, not `self`: no in-memory state from the interrupted attempt is carried over.
        return submitit.helpers.DelayedSubmission(TaskRunner(self.task))

    def __repr__(self) -> str:
        return f"TaskRunner({self.task.describe()})"
