"""Progress and logs: timestamped log lines, tqdm bars on a terminal only, TensorBoard events per run."""

from __future__ import annotations

import io
import re
import sys

import pytest

from tests.conftest import smoke_overrides
from tests.unit.search.test_search_run import TINY
from tests.unit.train.test_train_cifar import TINY as TRAIN_TINY
from unrealnas.cli.main import main
from unrealnas.observe import bar, counter, get_logger

STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"


def _events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bars_only_on_a_terminal(monkeypatch):
    items = list(range(5))
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert bar(items, 5, desc="search epoch 1/2") is items  # a SLURM log gets no carriage returns
    counter(3).update()
    term = _Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(bar(items, 5, desc="search epoch 1/2", unit="step")) == items
    drawn = term.getvalue()
    assert "search epoch 1/2" in drawn and "/5 [00:00<" in drawn and "step/s" in drawn  # count, ETA, rate


def test_search_logs_timestamped_epochs_and_writes_tensorboard(tmp_path, capsys):
    assert main(["search", *smoke_overrides(tmp_path, *TINY)]) == 0
    out, err = capsys.readouterr()
    run_dir = tmp_path / "runs" / "search" / out.strip().split("/")[-1]
    lines = err.strip().splitlines()
    assert lines and all(re.match(rf"{STAMP} (INFO|WARNING) ", line) for line in lines), lines
    assert sum(bool(re.match(rf"{STAMP} INFO epoch \d/3 ", line)) for line in lines) == 3  # one line per epoch
    acc = _events(run_dir)
    tags = acc.Tags()
    for tag in ("search/train_loss", "search/train_acc", "search/val_acc", "search/lr", "search/skip_normal",
                "search/skip_reduce"):
        assert tag in tags["scalars"], tag
        assert [e.step for e in acc.Scalars(tag)] == [1, 2, 3]  # warm-up + 2 search epochs
    assert [e.step for e in acc.Images("alphas_softmax")] == [1, 2, 3]


def test_log_level_hides_progress_lines(tmp_path, capsys):
    assert main(["generate", *smoke_overrides(tmp_path, *TINY), "log_level=warning"]) == 0
    assert capsys.readouterr().err == ""
    assert main(["generate", *smoke_overrides(tmp_path, *TINY, "seed=1")]) == 0
    assert "INFO train-00000.h5" in capsys.readouterr().err
    get_logger().setLevel("INFO")
    assert main(["config", "log_level=LOUD"]) == 2
    assert "log_level" in capsys.readouterr().err


def test_retrain_writes_tensorboard_events(tmp_path, cifar_root, capsys):
    assert main(["retrain", *smoke_overrides(tmp_path, f"data.root={cifar_root}", "genotype=DARTS_V2",
                                             *TRAIN_TINY)]) == 0
    run_dir = tmp_path / "runs" / "train" / capsys.readouterr().out.strip().split("/")[-1]
    acc = _events(run_dir)
    assert [e.step for e in acc.Scalars("train/train_loss")] == [1, 2]
    assert "train/lr" in acc.Tags()["scalars"]


@pytest.fixture(autouse=True)
def _info_level():
    yield
    get_logger().setLevel("INFO")
