"""The report stage of the analyses: numbers, tables and Fig. 1 from the trainings' run directories.

Reads ``plan.json`` and each training's ``metrics.jsonl`` / ``result.json`` (a failed or missing
training is listed, never fatal), and writes ``report.md``, ``report.csv``, ``result.json`` and
``figures/`` in the analysis folder, each atomically.
"""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

from unrealnas.analysis.metrics import (
    accuracy_curve,
    convergence_epoch,
    dataset_silhouette,
    rank_correlation,
    target_score,
)
from unrealnas.atomic import write_bytes_atomic, write_json_atomic
from unrealnas.launch.stages import read_plan_arg
from unrealnas.rundir import RESULT_FILE, read_result


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _markdown(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(":-:" for _ in header) + "|"]
    lines += ["| " + " | ".join(_fmt(v) if not isinstance(v, str) else v for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([["" if v is None else v for v in row] for row in rows])
    return buf.getvalue()


def _fit_state(run_dir: str) -> tuple[list[float], str]:
    """(accuracy curve, status) of one training: completed | failed | running | missing."""
    result = read_result(run_dir)
    curve = accuracy_curve(run_dir) if Path(run_dir).is_dir() else []
    if result is not None and result.get("status") in ("completed", "failed"):
        return curve, str(result["status"])
    return curve, "running" if curve else "missing"


def _fits_of(plan: dict[str, Any]) -> dict[tuple[int, str], str]:
    return {(int(k), str(d)): run_dir for run_dir, (k, d) in plan["fits"].items()}


def _convergence_text(row: dict[str, Any]) -> str:
    if row["convergence_epoch"] is not None:
        return str(row["convergence_epoch"]) + (" (still rising)" if row["still_rising"] else "")
    return "not converged" if row["best_acc"] else "-"


def difficulty_report(plan: dict[str, Any], out: Path) -> dict[str, Any]:
    """Epochs to convergence, accuracies and silhouette per dataset; Fig. 1a."""
    from unrealnas.analysis.figures import plot_difficulty
    from unrealnas.data.store import read_split

    fits = _fits_of(plan)
    frac = float(plan["convergence_fraction"])
    rows: list[dict[str, Any]] = []
    for d in plan["datasets"]:
        curve, state = _fit_state(fits[(0, d["name"])])
        clean = [a for a in curve if not math.isnan(a)]
        try:
            arrays = read_split(d["folder"], "train", verify=True)
            sil, sil_note = dataset_silhouette(arrays["images"], arrays["labels"], plan["silhouette_samples"],
                                               plan["silhouette_dims"], plan["seed"])
        except Exception as e:  # a missing dataset costs its silhouette, not the report
            sil, sil_note = None, f"unavailable: {type(e).__name__}: {e}"
        conv = convergence_epoch(curve, frac)
        rows.append({"dataset": d["name"], "label": d["label"], "num_classes": d["num_classes"], "status": state,
                     "epochs_trained": len(curve), "convergence_epoch": conv,
                     "still_rising": conv is not None and conv == len(clean) and len(clean) > 1,
                     "best_acc": max(clean) if clean else None, "final_acc": clean[-1] if clean else None,
                     "silhouette": sil, "silhouette_note": sil_note, "curve": curve})
    for r in rows:
        r["convergence"] = _convergence_text(r)
    header = ["Dataset", "Labels", "Classes", "Epochs to convergence", "Best train acc (%)", "Final train acc (%)",
              "Silhouette", "Epochs trained", "Status"]
    table = [[r["dataset"], r["label"], r["num_classes"] if r["label"] == "random" else "-",
              r["convergence"], r["best_acc"],
              r["final_acc"], _fmt(r["silhouette"], 3), r["epochs_trained"], r["status"]] for r in rows]
    notes = [f"Probe net: {plan['archs'][0]} (seed {plan.get('arch_seed', '')}), fitted for {plan['epochs']} epochs "
             "on each dataset's training images (train=dataset; accuracy measured on those images, unaugmented).",
             f"Epochs to convergence: the first epoch from which training accuracy stays >= {frac:g} x its best over "
             "the run (still rising: reached only at the last epoch; not converged: the last epoch is below that line; "
             "for both, give more epochs).",
             "Silhouette (scikit-learn, Euclidean) of the dataset labels on standardised pixels projected on their "
             f"first {plan['silhouette_dims']} principal components, {plan['silhouette_samples']} sampled images; "
             "near 0 or below: the labels do not follow any structure of the images."]
    files = plot_difficulty(rows, out / "figures" / "fig1a_difficulty")
    md = "### Difficulty of the datasets (paper Fig. 1a)\n\n" + _markdown(header, table) + "\n" + \
        "\n".join(f"- {n}" for n in notes) + "\n"
    return {"markdown": md, "csv": _csv(header, table), "rows": rows, "files": files}


def distinguishability_report(plan: dict[str, Any], out: Path) -> dict[str, Any]:
    """Kendall tau between the real-task ranking and each dataset's probe-epoch ranking; Fig. 1b-d."""
    from unrealnas.analysis.figures import plot_best_vs_worst, plot_rank_scatter

    probe, target = int(plan["probe_epoch"]), plan["target"]
    num_archs = len(plan["archs"])
    scores: dict[int, float | None] = {k: None for k in range(num_archs)}
    for run_dir, k in plan["targets"].items():
        result = read_result(run_dir)
        if result is not None and result.get("status") == "completed":
            scores[int(k)] = target_score(result)
    fits = _fits_of(plan)
    ranked = sorted((k for k in scores if scores[k] is not None), key=lambda k: scores[k])  # worst first
    per_dataset: list[dict[str, Any]] = []
    probes: dict[str, dict[int, float | None]] = {}
    for d in plan["datasets"]:
        curves = {k: _fit_state(fits[(k, d["name"])])[0] for k in range(num_archs)}
        at = {k: (c[probe - 1] if len(c) >= probe and not math.isnan(c[probe - 1]) else None)
              for k, c in curves.items()}
        probes[d["name"]] = at
        pairs = [(scores[k], at[k]) for k in range(num_archs) if scores[k] is not None and at[k] is not None]
        tau, p = rank_correlation([x for x, _ in pairs], [y for _, y in pairs]) if pairs else (math.nan, math.nan)
        best, worst = (ranked[-1], ranked[0]) if len(ranked) >= 2 else (None, None)
        per_dataset.append({
            "dataset": d["name"], "label": d["label"], "num_classes": d["num_classes"], "n": len(pairs),
            "tau": tau, "p_value": p, "pairs": pairs,
            "best_arch": None if best is None else f"arch-{best:02d}",
            "worst_arch": None if worst is None else f"arch-{worst:02d}",
            "best_probe_acc": None if best is None else at[best], "worst_probe_acc": None if worst is None else at[worst],
            "best_curve": [] if best is None else curves[best], "worst_curve": [] if worst is None else curves[worst]})
    header = ["Dataset", "Labels", "Classes", "Kendall tau", "p-value", "Architectures",
              f"Best arch acc @{probe} (%)", f"Worst arch acc @{probe} (%)"]
    table = [[r["dataset"], r["label"], r["num_classes"] if r["label"] == "random" else "-", r["tau"],
              _fmt(r["p_value"], 3), r["n"], r["best_probe_acc"], r["worst_probe_acc"]] for r in per_dataset]
    arch_header = ["Architecture", f"{target} score", *[f"{d['name']} acc @{probe} (%)" for d in plan["datasets"]]]
    arch_rows = [[f"arch-{k:02d}", scores[k], *[probes[d["name"]][k] for d in plan["datasets"]]]
                 for k in range(num_archs)]
    first = int(plan.get("arch_seed", 0))
    notes = [f"{num_archs} architectures sampled uniformly from the DARTS space (seeds {first}..{first + num_archs - 1}"
             "), the same ones on every dataset.",
             f"{target} score: top-1 accuracy (%) on its test split (mean AUROC for CheXpert) after the full training.",
             f"Each dataset: training accuracy at epoch {probe} of {plan['epochs']} (train=dataset, measured on the "
             "training images, unaugmented).",
             "Kendall tau-b and its two-sided p-value (scipy.stats.kendalltau) over the architectures with both numbers;"
             " best / worst: the architectures with the highest / lowest score on the real task."]
    files = plot_best_vs_worst(per_dataset, probe, out / "figures" / "fig1bd_best_vs_worst")
    files += plot_rank_scatter(per_dataset, target, probe, out / "figures" / "fig1_rank_scatter")
    md = ("### Architecture distinguishability of the datasets (paper Fig. 1b-d)\n\n" + _markdown(header, table)
          + "\n" + "\n".join(f"- {n}" for n in notes) + "\n\n#### Per architecture\n\n"
          + _markdown(arch_header, arch_rows))
    return {"markdown": md, "csv": _csv(header, table), "rows": per_dataset, "files": files,
            "architectures": [{"arch": f"arch-{k:02d}", "genotype": plan["archs"][k], "target_score": scores[k],
                               **{f"{d['name']}_probe_acc": probes[d["name"]][k] for d in plan["datasets"]}}
                              for k in range(num_archs)]}


def _json_safe(obj: Any) -> Any:
    """``obj`` with NaN floats as None (JSON has no NaN) and paths as strings."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and math.isnan(obj):
        return None
    return str(obj) if isinstance(obj, Path) else obj


def write_report(plan: dict[str, Any]) -> Path:
    """Build the report of one planned analysis from its run directories; return its folder."""
    out = Path(plan["dir"])
    build = difficulty_report if plan["kind"] == "difficulty" else distinguishability_report
    report = build(plan, out)
    write_bytes_atomic(out / "report.md", report["markdown"].encode())
    write_bytes_atomic(out / "report.csv", report["csv"].encode())
    rows = [{k: v for k, v in r.items() if k not in ("curve", "best_curve", "worst_curve", "pairs")}
            for r in report["rows"]]
    summary = {"kind": "analysis", "analysis": plan["kind"], "status": "completed", "name": plan["name"],
               "rows": rows, "architectures": report.get("architectures"),
               "files": [str(out / "report.md"), str(out / "report.csv"), *map(str, report["files"])],
               "finished_at": time.time()}
    write_json_atomic(out / RESULT_FILE, _json_safe(summary))
    print(report["markdown"], end="", flush=True)
    return out


def report_stage(args: list[str]) -> Path:
    """The report task's callable (``unrealnas.analysis.report:report_stage plan=<plan.json>``)."""
    return write_report(read_plan_arg(args, "unrealnas.analysis.report:report_stage"))
