"""Launch layer: tasks -> one SLURM job array per stage (submitit) or a local in-process run.

The only package that imports submitit (and only inside the functions that submit). Typical use::

    from unrealnas.launch import Task, submit_array

    search = [Task("search", [f"seed={s}", "data=rlrn"], run_dir=...) for s in range(5)]
    jobs = submit_array(search, cfg.launcher, "search")
    train = [Task("retrain", [...], run_dir=...) for ...]
    submit_array(train, cfg.launcher, "retrain", dependency=jobs)  # afterok on the search array

``status(runs_dir)`` reports per stage and group what is done, running, pending or failed.
"""

from unrealnas.launch.status import StatusReport, TaskStatus, format_status, status
from unrealnas.launch.submit import (
    Dependency,
    LocalJob,
    LocalTaskError,
    check_slurm,
    dependency_of,
    pending_tasks,
    slurm_parameters,
    submit_array,
    wait_all,
)
from unrealnas.launch.task import (
    Task,
    planned_run_dir,
    run_task,
    write_task_file,
)

__all__ = [
    "Dependency",
    "LocalJob",
    "LocalTaskError",
    "StatusReport",
    "Task",
    "TaskStatus",
    "check_slurm",
    "dependency_of",
    "format_status",
    "pending_tasks",
    "planned_run_dir",
    "run_task",
    "slurm_parameters",
    "status",
    "submit_array",
    "wait_all",
    "write_task_file",
]
