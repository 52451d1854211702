"""Progress and logs: timestamped logging for every verb, tqdm bars on a terminal, TensorBoard per run.

* :func:`say` logs one line (``2026-12-01 09:30:00 INFO ...``) on the ``unrealnas`` logger, whose
  handler writes through ``tqdm.write`` to the *current* ``sys.stderr``: lines never tear a
  progress bar, and the local launcher's per-task log (a redirected stderr) receives them too.
* :func:`bar` is a tqdm bar (rate, ETA) when stderr is a terminal and nothing otherwise, so
  SLURM logs hold the one timestamped line per epoch and no carriage-return noise.
* :class:`RunBoard` writes TensorBoard event files into ``<run dir>/tb`` (``tensorboard
  --logdir runs`` finds every search and retrain); without the tensorboard package it is a no-op.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

LOGGER = "unrealnas"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_FORMAT = "%(asctime)s %(levelname)s %(message)s"


class _TqdmStderr(logging.Handler):
    """Write records to the current ``sys.stderr`` through ``tqdm.write`` (bars are redrawn below)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # logging must never take the run down
            self.handleError(record)


def get_logger() -> logging.Logger:
    """The ``unrealnas`` logger, with its timestamped stderr handler installed once."""
    log = logging.getLogger(LOGGER)
    if not any(isinstance(h, _TqdmStderr) for h in log.handlers):
        handler = _TqdmStderr()
        handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%Y-%m-%d %H:%M:%S"))
        log.addHandler(handler)
        log.propagate = False
        if log.level == logging.NOTSET:
            log.setLevel(logging.INFO)
    return log


def set_log_level(level: str) -> None:
    """Set the level of the ``unrealnas`` logger (``log_level=DEBUG|INFO|WARNING|ERROR``)."""
    from unrealnas.errors import ConfigError

    name = str(level).upper()
    if name not in LEVELS:
        raise ConfigError(f"config: log_level={level!r} is invalid: choose one of {', '.join(LEVELS)}")
    get_logger().setLevel(name)


def log_level_of(overrides: Sequence[str]) -> str | None:
    """The ``log_level=`` value among command-line overrides (the last one wins), None without one."""
    values = [o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("log_level=")]
    return values[-1].strip("'\"") if values else None


def say(msg: str) -> None:
    """Log one progress line; lines that start with ``warning:`` are warnings."""
    log = get_logger()
    if msg.startswith("warning:"):
        log.warning(msg)  # the text keeps its "warning:" (scripts grep for it)
    else:
        log.info(msg)


def _tty() -> bool:
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


class _NoBar:
    def update(self, n: int = 1) -> None:
        """Nothing to draw off a terminal."""

    def close(self) -> None:
        """Nothing to close."""


def counter(total: int, desc: str = "", unit: str = "it") -> Any:
    """A tqdm bar advanced by hand (``.update()``, ``.close()``) on a terminal; a no-op otherwise."""
    if not _tty():
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False, dynamic_ncols=True)


def bar(iterable: Iterable[Any], total: int | None = None, desc: str = "", unit: str = "it", initial: int = 0) -> Any:
    """``iterable`` under a tqdm bar (rate, ETA) when stderr is a terminal; the plain iterable otherwise."""
    if not _tty():
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, initial=initial, file=sys.stderr, leave=False,
                dynamic_ncols=True)


class RunBoard:
    """TensorBoard event files of one run (``<run_dir>/tb``), step = epoch; resumed runs drop later steps."""

    def __init__(self, run_dir: str | Path, first_step: int = 1) -> None:
        self.writer: Any = None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:  # optional at run time: the metrics are in metrics.jsonl anyway
            get_logger().debug(f"no TensorBoard events ({e})")
            return
        # purge_step: a run resumed at step k replaces whatever a killed attempt wrote from k on.
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"), purge_step=first_step if first_step > 1 else None)

    def scalars(self, step: int, values: Mapping[str, Any], prefix: str = "") -> None:
        """One scalar per finite number in ``values`` (booleans, None and text are skipped)."""
        if self.writer is None:
            return
        for key, value in values.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(f"{prefix}{key}", value, step)
        self.writer.flush()

    def alphas(self, step: int, softmax: Mapping[str, Sequence[Sequence[float]]], ops: Sequence[str]) -> None:
        """The alpha softmax of each cell type as one heat-map image (edges x operations)."""
        if self.writer is None:
            return
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        kinds = list(softmax)
        fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 4.2), squeeze=False)
        for ax, kind in zip(axes[0], kinds, strict=True):
            p = np.asarray(softmax[kind], dtype=float)
            im = ax.imshow(p, vmin=0.0, vmax=max(float(p.max()), 1e-9), cmap="viridis", aspect="auto")
            ax.set_title(f"{kind} cell, epoch {step}")
            ax.set_xticks(range(len(ops)), ops, rotation=60, ha="right", fontsize=7)
            ax.set_ylabel("edge")
            fig.colorbar(im, ax=ax, label="softmax(alpha)")
        fig.tight_layout()
        self.writer.add_figure("alphas_softmax", fig, step)  # closes the figure
        self.writer.flush()

    def close(self) -> None:
        """Flush and close the event file."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
