"""The callable submitit pickles into each job: it runs one :class:`Task` and survives requeue."""

from __future__ import annotations

import submitit

from unrealnas.launch.task import Task


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
        from unrealnas.launch.task import run_task

        out = run_task(self.task)
        return None if out is None else str(out)

    def checkpoint(self, *args: object, **kwargs: object) -> submitit.helpers.DelayedSubmission:
        """Called by submitit on USR2 (preemption / time limit): requeue a fresh runner of the same task."""
        # A fresh object, not `self`: no in-memory state from the interrupted attempt is carried over.
        return submitit.helpers.DelayedSubmission(TaskRunner(self.task))

    def __repr__(self) -> str:
        return f"TaskRunner({self.task.describe()})"
