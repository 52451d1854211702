"""Write gpu_check.json and gpu_check.md from the stage records of tools/gpu_check.sh (standard library only).

usage: python3 tools/gpu_report.py STAGES_TSV OUT_DIR DRY_RUN BUDGET_S TOTAL_S [EXTRA_DIR]

STAGES_TSV: one line per stage, ``name<TAB>status<TAB>budget_s<TAB>seconds<TAB>detail``. Reads, when
present, ``OUT_DIR/correctness.xml`` (pytest junit, one row per test with its recorded properties)
and the benchmark JSONs (``{"benchmark", "meta", "rows"}``) in OUT_DIR or EXTRA_DIR (files kept out
of OUT_DIR because the device tool returns only 8: their rows live on in gpu_check.json). The card comes from ``nvidia-smi``,
else ``torch.cuda.get_device_name``; the commit from ``git rev-parse HEAD``, else ``.whl/COMMIT``
(written by tools/gpu_wheels.sh: the device tool copies the working tree without .git).
Exit status 0 when no stage failed.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
BENCH_FILES = ("bench_search.json", "bench_retrain.json", "bench_data.json", "bench_search_compile.json")
MAX_BENCH_ROWS = 24


def _run(*cmd: str) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=REPO)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def commit() -> dict[str, Any]:
    """The source commit: git where there is a .git, else the one gpu_wheels.sh recorded."""
    sha = _run("git", "rev-parse", "HEAD")
    if sha:
        dirty = bool(_run("git", "status", "--porcelain", "--untracked-files=no"))
        return {"commit": sha, "dirty": dirty, "commit_from": "git"}
    recorded = REPO / ".whl" / "COMMIT"
    if recorded.is_file():
        words = recorded.read_text().split()
        return {"commit": words[0] if words else None, "dirty": "dirty" in words,
                "commit_from": ".whl/COMMIT (written by tools/gpu_wheels.sh; git unavailable here)"}
    return {"commit": None, "dirty": None, "commit_from": "unknown (no git, no .whl/COMMIT)"}


def torch_facts() -> dict[str, Any]:
    """torch version, CUDA and the card; None where torch does not import."""
    facts: dict[str, Any] = {"python": platform.python_version(), "torch": None, "cuda": None, "card": None}
    smi = _run("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader")
    if smi:
        facts["card"], facts["nvidia_smi"] = smi.splitlines()[0].split(",")[0].strip(), smi
    try:
        import torch
    except Exception as e:  # a broken image is reported, not raised
        facts["torch_error"] = f"{type(e).__name__}: {e}"
        return facts
    facts["torch"], facts["cuda"] = torch.__version__, torch.version.cuda
    facts["cuda_available"] = torch.cuda.is_available()
    if torch.cuda.is_available() and not facts["card"]:
        facts["card"] = torch.cuda.get_device_name()
    return facts


def read_stages(path: Path) -> list[dict[str, Any]]:
    """The stage records the shell script wrote."""
    stages = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        name, status, budget, seconds, detail = (line.split("\t") + [""] * 5)[:5]
        stages.append({"stage": name, "status": status, "budget_s": int(budget or 0), "seconds": int(seconds or 0),
                       "detail": detail})
    return stages


def read_junit(path: Path) -> dict[str, Any] | None:
    """Per-test outcome, time and recorded properties of a pytest junit XML."""
    if not path.is_file():
        return None
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        return {"error": f"unreadable junit XML: {e}"}
    tests = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = (el.get("message") or "").splitlines()[0][:300] if el.get("message") else ""
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"test": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time") or 0), 1),
                      "properties": props, "message": message})
    counts: dict[str, int] = {}
    for t in tests:
        counts[t["outcome"]] = counts.get(t["outcome"], 0) + 1
    return {"counts": counts, "tests": tests}


def read_bench(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        return {"error": f"unreadable: {e}"}
    rows = data.get("rows") if isinstance(data, dict) else data
    return {"rows": rows if isinstance(rows, list) else [], "meta": data.get("meta") if isinstance(data, dict) else None}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        v = f"{v:.4g}"
    return str(v).replace("|", "/").replace("\n", " ")


def _table(rows: list[dict[str, Any]], max_cols: int = 12) -> list[str]:
    cols: list[str] = []
    for r in rows:
        for k, v in r.items():
            if k not in cols and not isinstance(v, (dict, list)) and len(cols) < max_cols:
                cols.append(k)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(r.get(c, "")) for c in cols) + " |" for r in rows[:MAX_BENCH_ROWS]]
    if len(rows) > MAX_BENCH_ROWS:
        lines.append(f"\n({len(rows) - MAX_BENCH_ROWS} more rows in the JSON)")
    return lines


def markdown(report: dict[str, Any]) -> str:
    """The human-readable report."""
    env = report["environment"]
    src = report["source"]
    lines = [f"# GPU check: {report['status']}", "",
             f"- when: {report['finished_at']}, {'CPU dry run (no GPU)' if report['dry_run'] else 'on the GPU'}",
             f"- card: {env.get('card') or 'none'}" + (f" ({env['nvidia_smi']})" if env.get("nvidia_smi") else ""),
             f"- python {env.get('python')}, torch {env.get('torch')}, CUDA {env.get('cuda')}",
             f"- commit: {src.get('commit')}{' (dirty)' if src.get('dirty') else ''}, from {src.get('commit_from')}",
             f"- time: {report['total_s']} s of a {report['budget_s']} s budget", "",
             "## Stages", "", "| stage | status | budget s | seconds | detail |", "|---|---|---|---|---|"]
    lines += [f"| {s['stage']} | {s['status']} | {s['budget_s']} | {s['seconds']} | {_cell(s['detail'])} |"
              for s in report["stages"]]
    junit = report.get("correctness")
    if junit:
        lines += ["", "## Correctness (pytest -m gpu)", ""]
        if "error" in junit:
            lines.append(junit["error"])
        else:
            lines.append(", ".join(f"{n} {k}" for k, n in sorted(junit["counts"].items())))
            lines += ["", "| test | outcome | s | measured |", "|---|---|---|---|"]
            for t in junit["tests"]:
                measured = ", ".join(f"{k}={v}" for k, v in t["properties"].items()) or t["message"]
                lines.append(f"| {t['test']} | {t['outcome']} | {t['seconds']} | {_cell(measured)} |")
    for name, bench in report["benchmarks"].items():
        lines += ["", f"## {name}", ""]
        if bench.get("error"):
            lines.append(bench["error"])
        elif bench["rows"]:
            lines += _table(bench["rows"])
        else:
            lines.append("(no rows)")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    stages_tsv, out, dry, budget, total = Path(argv[0]), Path(argv[1]), argv[2] == "1", int(argv[3]), int(argv[4])
    stages = read_stages(stages_tsv)
    failed = [s["stage"] for s in stages if s["status"] == "FAIL"]  # TIMEOUT: an optional stage only
    dirs = [out] + [Path(d) for d in argv[5:6]]
    benchmarks = {name: b for name in BENCH_FILES for d in dirs if (b := read_bench(d / name)) is not None}
    report = {"status": "FAIL" if failed else "PASS", "failed_stages": failed, "dry_run": dry, "budget_s": budget,
              "total_s": total, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "environment": torch_facts(),
              "source": commit(), "stages": stages, "correctness": read_junit(out / "correctness.xml"),
              "benchmarks": benchmarks}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "gpu_check.md").write_text(markdown(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
