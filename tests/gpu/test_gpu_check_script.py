"""The GPU check's plumbing: tools/gpu_check.sh budgets and skips, tools/gpu_report.py's report, the dry run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPT = REPO / "tools" / "gpu_check.sh"
DEVICE_FILES = 8  # the device tool returns at most 8 files from $OUT


def _budgets() -> dict[str, int]:
    text = SCRIPT.read_text()
    total = int(re.search(r"BUDGET_S=\$\{GPU_CHECK_BUDGET_S:-(\d+)\}", text).group(1))
    stages = {m.group(1): int(m.group(2)) for m in re.finditer(r"^B_([A-Z]+)=(\d+)$", text, re.M)}
    return {"TOTAL": total, **stages}


def test_budgets_fit_one_device_call():
    b = _budgets()
    assert b["TOTAL"] <= 480  # 8 minutes: one device call is at most 10, and a rerun must fit the 15
    mandatory = sum(v for k, v in b.items() if k not in ("TOTAL", "COMPILE"))  # compile runs on what is left
    assert mandatory <= b["TOTAL"], b


def _run(out: Path, *args: str, budget: int | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    env.pop("OUT", None)
    if budget is not None:
        env["GPU_CHECK_BUDGET_S"] = str(budget)
    return subprocess.run(["bash", str(SCRIPT), "--cpu-dry-run", *args, str(out)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd="/")


def test_stages_without_budget_are_skipped_and_reported(tmp_path):
    """With a 1 s budget the env stage runs and every other stage is SKIPPED with a line; the report is written."""
    proc = _run(tmp_path, budget=1, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "budget 30 s" in proc.stdout  # env prints its budget at its start
    for stage in ("correctness", "bench_search", "bench_retrain", "bench_data"):
        assert re.search(rf"SKIP {stage}: skipped: -?\d+ s of the 1 s budget left", proc.stdout), stage
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["status"] == "PASS" and report["dry_run"] and report["budget_s"] == 1
    assert [s["stage"] for s in report["stages"]] == ["env", "correctness", "bench_search", "bench_retrain",
                                                      "bench_data", "bench_compile"]
    assert report["stages"][0]["status"] == "PASS" and report["environment"]["torch"]
    md = (tmp_path / "gpu_check.md").read_text()
    assert md.startswith("# GPU check: PASS") and "| correctness | SKIP |" in md
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu_check.json", "gpu_check.log", "gpu_check.md"]


def test_report_reads_junit_and_benchmarks(tmp_path):
    stages = tmp_path / "stages.tsv"
    stages.write_text("env\tPASS\t30\t2\tok\ncorrectness\tFAIL\t200\t50\texit status 1\n"
                      "bench_compile\tTIMEOUT\t120\t120\toptional stage\n")
    out = tmp_path / "out"
    out.mkdir()
    (out / "correctness.xml").write_text(
        '<?xml version="1.0"?><testsuites><testsuite name="pytest">'
        '<testcase classname="tests.gpu.test_gpu" name="test_a[cuda]" time="1.5">'
        '<properties><property name="max_alpha_diff" value="3e-05"/></properties></testcase>'
        '<testcase classname="tests.gpu.test_gpu" name="test_b[cuda]" time="2"><failure message="assert 0.1 &lt; 1e-4">'
        "tb</failure></testcase>"
        '<testcase classname="tests.gpu.test_gpu" name="test_c[cpu]" time="0"><skipped message="no CUDA"/></testcase>'
        "</testsuite></testsuites>")
    (out / "bench_search.json").write_text(json.dumps({"benchmark": "search", "meta": {},
                                                       "rows": [{"method": "darts", "s_per_iter": 0.01234}]}))
    proc = subprocess.run([sys.executable, str(REPO / "tools" / "gpu_report.py"), str(stages), str(out), "0", "480",
                           "300"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr  # a FAILED stage; the optional TIMEOUT is not one
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["failed_stages"] == ["correctness"] and report["status"] == "FAIL"
    assert report["correctness"]["counts"] == {"passed": 1, "failed": 1, "skipped": 1}
    assert report["correctness"]["tests"][0]["properties"] == {"max_alpha_diff": "3e-05"}
    assert report["source"]["commit"]  # git here; .whl/COMMIT on the device machine
    md = (out / "gpu_check.md").read_text()
    assert "| test_a[cuda] | passed | 1.5 | max_alpha_diff=3e-05 |" in md
    assert "| test_b[cuda] | failed | 2.0 | assert 0.1 < 1e-4 |" in md
    assert "| darts | 0.01234 |" in md


@pytest.mark.slow
def test_cpu_dry_run_passes(tmp_path):
    """The whole dry run (about 2-4 minutes on 2 cores): every stage but the compile one passes."""
    proc = _run(tmp_path, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    status = {s["stage"]: s["status"] for s in report["stages"]}
    assert status == {"env": "PASS", "correctness": "PASS", "bench_search": "PASS", "bench_retrain": "PASS",
                      "bench_data": "PASS", "bench_compile": "SKIP"}, status
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= DEVICE_FILES and "correctness.xml" in files and "gpu_check.md" in files, files
    assert report["correctness"]["counts"].get("failed", 0) == 0 and report["correctness"]["counts"]["passed"] >= 4
