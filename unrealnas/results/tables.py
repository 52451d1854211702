"""Tables laid out like the paper's Tables 2-5, from collected results; markdown, LaTeX and CSV.

One group per (method, search_data, search_label, num_classes, target, metric): the repeats are
the retrains of the searches with different seeds. Each group shows ``best (mean+-std)`` with the
sample standard deviation (ddof=1) and n. A group with fewer completed runs than expected, or
with a failed run, is flagged (CSV ``flags`` column, markdown/LaTeX footnotes that name the log
of each failure) and never silently averaged as if it were complete.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from unrealnas.config.methods import SEARCH_METHODS
from unrealnas.results.collect import (
    PRETRAINED_SUFFIX,
    Collection,
    Failure,
    RunResult,
    Setting,
    architecture_name,
)
from unrealnas.results.stats import (
    COMPARISON_COLUMNS,
    LEGEND,
    Comparison,
    compare_groups,
    comparison_csv,
    comparison_rows,
    csv_number,
    render_comparisons,
)

CSV_COLUMNS = ("method", "search_data", "search_label", "num_classes", "target", "metric", "n", "best", "mean",
               "std", "flags", *COMPARISON_COLUMNS)
FORMATS = ("markdown", "latex", "csv", "cost")  # cost: the measured search cost table (cost.md)
SEARCH_TARGET = "search"  # pseudo-target of rows built from searches alone (a folder without retrains)

# Metrics shown as columns in the paper layout (the CSV has every metric a run recorded).
PAPER_METRICS = {"cifar10": ("top1_err",), "cifar100": ("top1_err",), "imagenet": ("top1_err", "top5_err"),
                 "chexpert": ("auroc",), SEARCH_TARGET: ("val_acc",)}
METRIC_ORDER = ("top1_err", "top5_err", "auroc", "val_acc")
DATA_ORDER = ("rlrd", "rlgd", "rlrn", "cifar10", "cifar100")
TARGET_NAMES = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet", "chexpert": "CheXpert",
                "search": "search"}
METRIC_NAMES = {"top1_err": "top-1 err (%)", "top5_err": "top-5 err (%)", "auroc": "AUROC (%, per study, last epoch)",
                "val_acc": "val acc (%)"}


def lower_is_better(metric: str) -> bool:
    """Errors and losses are minimised; accuracies and AUROC maximised."""
    return metric.endswith("_err") or metric.endswith("loss")


@dataclass
class TableRow:
    """One group and metric: the CSV row."""

    method: str
    search_data: str
    search_label: str
    num_classes: int | None
    target: str
    metric: str
    n: int
    best: float | None
    mean: float | None
    std: float | None  # sample std (ddof=1); None when n < 2
    expected: int | None = None
    params_m: float | None = None
    flags: list[str] = field(default_factory=list)
    notes: list[int] = field(default_factory=list)  # footnote numbers of this row's failures

    @property
    def setting(self) -> Setting:
        """The search setting of the row."""
        return (self.method, self.search_data, self.search_label, self.num_classes)


@dataclass
class Table:
    """Rows plus what the table's footnotes need."""

    rows: list[TableRow]
    cost: dict[Setting, tuple[float, str]]  # cell -> (mean search cost, "GPU-days" | "CPU-hours")
    failures: list[Failure]  # numbered footnotes: failure i is note i+1
    problems: list[str]  # malformed result files that were skipped
    notes: list[str] = field(default_factory=list)
    title: str = ""
    # (cell, target, metric) -> differences to the true-label control and the random row (results.stats)
    comparisons: dict[tuple[Setting, str, str], Comparison] = field(default_factory=dict)
    cost_runs: dict[Setting, int] = field(default_factory=dict)  # searches behind each cost
    # The paper's layout has a search-cost column; it is measured time, so a table that must be the same
    # bytes on every run of the same command (experiment.cost_column: false) leaves it to cost.md.
    cost_column: bool = True


def summarize(values: Sequence[float], metric: str) -> tuple[float | None, float | None, float | None]:
    """(best, mean, sample std with ddof=1) of ``values``; std is None below two values."""
    n = len(values)
    if n == 0:
        return None, None, None
    best = min(values) if lower_is_better(metric) else max(values)
    mean = math.fsum(values) / n
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return best, mean, std


def _setting_sort_key(setting: Setting) -> tuple:
    method, data, label, classes = setting
    methods = SEARCH_METHODS
    return (methods.index(method) if method in methods else len(methods), method,
            label != "random", DATA_ORDER.index(data) if data in DATA_ORDER else len(DATA_ORDER), data,
            -1 if classes is None else classes)


def _metric_key(metric: str) -> tuple:
    return (METRIC_ORDER.index(metric) if metric in METRIC_ORDER else len(METRIC_ORDER), metric)


def _target_key(target: str) -> tuple:
    base = target.removesuffix(PRETRAINED_SUFFIX)
    names = tuple(TARGET_NAMES)
    return (target == SEARCH_TARGET, names.index(base) if base in names else len(names), target)


def _base_target(target: str) -> str:
    return target.removesuffix(PRETRAINED_SUFFIX)


def _merge_failures(collection: Collection, failures: Iterable[Failure]) -> list[Failure]:
    """Failed result.json files plus launcher failures, one per run directory (the launcher's log wins)."""
    merged: dict[str, Failure] = {}
    for r in collection.failed():
        key = os.path.realpath(r.run_dir)
        merged[key] = Failure(r.kind, str(r.run_dir), str(r.run_dir / "result.json"), r.error or "status failed",
                              r.setting, r.target)
    extra: list[Failure] = []
    for f in failures:
        if f.run_dir is None:
            extra.append(f)
            continue
        key = os.path.realpath(f.run_dir)
        old = merged.get(key)
        if old is not None:
            # The result.json knows the run's provenance and error; the launcher knows the log.
            merged[key] = Failure(old.stage, old.run_dir, f.log or old.log, old.note, old.setting or f.setting,
                                  old.target or f.target)
        else:
            merged[key] = f
    out = list(merged.values()) + extra
    out.sort(key=lambda f: (f.stage != "search", f.run_dir or ""))
    return out


def build_table(collection: Collection, repeats: int | None = None, failures: Iterable[Failure] = (),
                expected: Iterable[tuple[Setting, str]] = (), notes: Sequence[str] = (), title: str = "",
                cost_column: bool = True) -> Table:
    """Group the completed retrains (or searches, where a cell has no retrain) and flag what is missing.

    ``repeats``: runs expected per group (default: the largest number attempted in any group).
    ``expected``: (cell, target) groups that must appear even when none of their runs completed.
    ``cost_column``: the markdown and LaTeX tables carry the measured search cost (else only cost.md does).
    """
    train: dict[tuple[Setting, str], list[RunResult]] = defaultdict(list)
    for r in collection.completed("train"):
        train[(r.setting, str(r.target))].append(r)
    searches: dict[Setting, list[RunResult]] = defaultdict(list)
    for r in collection.completed("search"):
        searches[r.setting].append(r)
    groups: dict[tuple[Setting, str], list[RunResult]] = dict(train)
    for cell_target in expected:
        groups.setdefault(cell_target, [])
    settings_with_rows = {setting for setting, _ in groups}
    for setting, runs in searches.items():
        if setting not in settings_with_rows:
            groups[(setting, SEARCH_TARGET)] = runs

    all_failures = _merge_failures(collection, failures)
    failed_in: dict[tuple[Setting, str], list[int]] = defaultdict(list)
    for i, f in enumerate(all_failures):
        if f.setting is None:
            continue
        if f.stage == "search":
            # A failed search removes a repeat from every retrain of its cell.
            hit = [key for key in groups if key[0] == f.setting] or [(f.setting, SEARCH_TARGET)]
        else:
            hit = [(f.setting, f.target or SEARCH_TARGET)]
        for key in hit:
            groups.setdefault(key, [])
            failed_in[key].append(i)

    if repeats is None:
        attempted = [len(runs) + len({i for i in failed_in.get(key, ()) if all_failures[i].stage != "search"})
                     for key, runs in groups.items()]
        repeats = max(attempted, default=0)

    rows: list[TableRow] = []
    for (setting, target), runs in groups.items():
        if runs:
            metrics = sorted({m for r in runs for m in r.metrics}, key=_metric_key)
        else:
            metrics = list(PAPER_METRICS.get(_base_target(target), ("top1_err",)))
        params = [r.params_m for r in runs if r.params_m is not None]
        params_m = math.fsum(params) / len(params) if params else None
        note_ids = [i + 1 for i in failed_in.get((setting, target), [])]
        for metric in metrics:
            values = [r.metrics[metric] for r in runs if metric in r.metrics]
            best, mean, std = summarize(values, metric)
            flags = []
            if len(values) < repeats:
                flags.append(f"incomplete: n={len(values)} of {repeats}")
            for i in note_ids:
                f = all_failures[i - 1]
                flags.append(f"failed {f.stage} [{i}]: {f.log or f.run_dir}")
            rows.append(TableRow(setting[0], setting[1], setting[2], setting[3], target, metric, len(values), best, mean, std,
                                 repeats, params_m, flags, note_ids))
    rows.sort(key=lambda r: (_setting_sort_key(r.setting), _target_key(r.target), _metric_key(r.metric)))
    row_metrics: dict[tuple[Setting, str], list[str]] = defaultdict(list)
    for r in rows:
        row_metrics[(r.setting, r.target)].append(r.metric)
    comparisons = compare_groups(groups, row_metrics)

    cost: dict[Setting, tuple[float, str]] = {}
    cost_runs: dict[Setting, int] = {}
    for setting, runs in searches.items():
        gpu = [r.gpu_hours for r in runs if r.gpu_hours is not None]
        cpu = [r.cpu_hours for r in runs if r.cpu_hours is not None]
        if gpu:
            cost[setting], cost_runs[setting] = (math.fsum(gpu) / len(gpu) / 24.0, "GPU-days"), len(gpu)
        elif cpu:
            cost[setting], cost_runs[setting] = (math.fsum(cpu) / len(cpu), "CPU-hours"), len(cpu)
    return Table(rows, cost, all_failures, list(collection.problems), list(notes), title, comparisons, cost_runs,
                 cost_column)


# ---- rendering ------------------------------------------------------------------------------------------


def _num(v: float | None, digits: int = 2) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _column_name(target: str, metric: str) -> str:
    base = _base_target(target)
    name = TARGET_NAMES.get(base, base)
    if target.endswith(PRETRAINED_SUFFIX):
        name += " (pre-trained)"
    return f"{name} {METRIC_NAMES.get(metric, metric)}"


def _paper_columns(table: Table) -> list[tuple[str, str]]:
    present = {(r.target, r.metric) for r in table.rows}
    columns = set()
    for target, metric in present:
        shown = PAPER_METRICS.get(_base_target(target))
        if shown is None or metric in shown:
            columns.add((target, metric))
    return sorted(columns, key=lambda c: (_target_key(c[0]), _metric_key(c[1])))


def _value_text(row: TableRow, pm: str) -> str:
    if row.n == 0:
        text = "-"
    elif row.std is None:
        text = f"{_num(row.best)}"
    else:
        text = f"{_num(row.best)} ({_num(row.mean)}{pm}{_num(row.std)})"
    return f"{text} n={row.n}"


@dataclass
class _PaperRow:
    setting: Setting
    values: dict[tuple[str, str], TableRow]
    notes: list[int]
    flags: list[str]


def _paper_rows(table: Table) -> list[_PaperRow]:
    by_setting: dict[Setting, _PaperRow] = {}
    for r in table.rows:
        pr = by_setting.setdefault(r.setting, _PaperRow(r.setting, {}, [], []))
        pr.values[(r.target, r.metric)] = r
        for i in r.notes:
            if i not in pr.notes:
                pr.notes.append(i)
        if r.n < (r.expected or 0):
            flag = f"{_column_name(r.target, r.metric).split(' ')[0]} n={r.n}/{r.expected}"
            if flag not in pr.flags:
                pr.flags.append(flag)
    return list(by_setting.values())


def _params(pr: _PaperRow, columns: list[tuple[str, str]]) -> float | None:
    # Params of the first target column (the paper reports the CIFAR-10 network's size).
    for c in columns:
        row = pr.values.get(c)
        if row is not None and row.params_m is not None:
            return row.params_m
    return None


def cost_unit(table: Table) -> str:
    """The one unit of the search-cost column: GPU-days, CPU-hours, or hours when devices are mixed."""
    # A zero cost (a random cell: nothing was searched) is the same in every unit and decides none.
    units = {unit for value, unit in table.cost.values() if value != 0}
    return units.pop() if len(units) == 1 else ("hours" if units else "GPU-days")


def cost_header(table: Table) -> str:
    """``Search cost (<unit>)``: the unit lives in the header, the cells hold plain numbers."""
    return f"Search cost ({cost_unit(table)})"


def _cost_text(table: Table, setting: Setting) -> str:
    if setting not in table.cost:
        return "-"
    value, unit = table.cost[setting]
    if value == 0:
        return "0"
    if cost_unit(table) != "hours":
        return f"{value:.3g}"
    # Mixed devices: every cell in hours, each naming the device it was measured on.
    hours = value * 24.0 if unit == "GPU-days" else value
    return f"{hours:.3g} ({'GPU' if unit == 'GPU-days' else 'CPU'})"


def one_line(text: str, limit: int = 200) -> str:
    """The first non-empty line of ``text``, cut at ``limit`` characters (tracebacks stay in the logs)."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _footnotes(table: Table) -> list[str]:
    lines = []
    for i, f in enumerate(table.failures, 1):
        where = f.log or f.run_dir or "-"
        lines.append(f"[{i}] failed {f.stage} run {f.run_dir or '-'}: {one_line(f.note)} (log: {where})")
    return lines


def _paper_head(table: Table, columns: list[tuple[str, str]]) -> list[str]:
    """The paper layout's column names (the markdown adds Flags)."""
    return ["Architecture", *(_column_name(t, m) for t, m in columns), "Params (M)",
            *([cost_header(table)] if table.cost_column else []), "Search data", "Search label"]


def _paper_tail(table: Table, pr: _PaperRow, columns: list[tuple[str, str]]) -> list[str]:
    """A row's cells after its result columns: params, the search cost when shown, search data and label."""
    return [_num(_params(pr, columns)), *([_cost_text(table, pr.setting)] if table.cost_column else []),
            pr.setting[1], pr.setting[2]]


def _names(paper_rows: list[_PaperRow]) -> list[tuple[Setting, str]]:
    return [(pr.setting, architecture_name(pr.setting)) for pr in paper_rows]


def render_markdown(table: Table) -> str:
    """The paper layout as a markdown table, with footnotes for flags and failures."""
    columns = _paper_columns(table)
    paper_rows = _paper_rows(table)
    head = [*_paper_head(table, columns), "Flags"]
    lines = [f"### {table.title}", ""] if table.title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + [":-:"] * (len(head) - 1)) + "|"]
    for pr in paper_rows:
        cells = [architecture_name(pr.setting)]
        for c in columns:
            row = pr.values.get(c)
            cells.append(_value_text(row, "±") if row is not None else "")
        flags = list(pr.flags) + [f"failed [{i}]" for i in pr.notes]
        cells += [*_paper_tail(table, pr, columns), "; ".join(flags)]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    lines.append("")
    lines.append("best (mean±std) over the repeats, sample std (ddof=1), n = completed runs."
                 + ("" if table.cost_column else " The measured search cost is in cost.md."))
    lines += render_comparisons(table.comparisons, _names(paper_rows), [(c, _column_name(*c)) for c in columns])
    lines += _footnotes(table)
    lines += [f"note: {n}" for n in table.notes]
    lines += [f"skipped malformed result: {p}" for p in table.problems]
    return "\n".join(lines) + "\n"


_LATEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                  "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Escape LaTeX's special characters in plain text."""
    return "".join(_LATEX_ESCAPES.get(ch, ch) for ch in text)


def render_latex(table: Table) -> str:
    """The paper layout as a booktabs LaTeX table; failures and flags as footnotes below it."""
    columns = _paper_columns(table)
    paper_rows = _paper_rows(table)
    head = _paper_head(table, columns)
    lines = [r"\begin{table}[t]", r"\centering"]
    if table.title:
        lines.append(rf"\caption{{{latex_escape(table.title)}}}")
    lines += [r"\begin{tabular}{l" + "c" * (len(head) - 1) + "}", r"\toprule",
              " & ".join(latex_escape(h) for h in head) + r" \\", r"\midrule"]
    for pr in paper_rows:
        cells = [latex_escape(architecture_name(pr.setting))]
        for c in columns:
            row = pr.values.get(c)
            if row is None:
                cells.append("")
                continue
            text = latex_escape(_value_text(row, "±")).replace("±", r"$\pm$")
            marks = [str(i) for i in row.notes] + (["*"] if row.n < (row.expected or 0) else [])
            cells.append(text + (rf"$^{{{','.join(marks)}}}$" if marks else ""))
        cells += [latex_escape(text) for text in _paper_tail(table, pr, columns)]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}"]
    lines += _latex_comparisons(table, paper_rows, columns)
    lines += [r"\par\smallskip\footnotesize",
              r"best (mean$\pm$std) over the repeats, sample std, n = completed runs; "
              r"$^{*}$ incomplete group (fewer runs than repeats)."]
    for line in _footnotes(table):
        lines.append(r"\par " + latex_escape(line))
    for n in table.notes:
        lines.append(r"\par " + latex_escape(f"note: {n}"))
    lines.append(r"\end{table}")
    return "\n".join(lines) + "\n"


def _latex_comparisons(table: Table, paper_rows: list[_PaperRow], columns: list[tuple[str, str]]) -> list[str]:
    """The differences to the control and the random cell as a second tabular, with the legend."""
    body = comparison_rows(table.comparisons, _names(paper_rows), [(c, _column_name(*c)) for c in columns])
    if not body:
        return []
    head = ["Architecture", "Column", "Δ vs true-label control [95% CI]", "Δ vs random cell [95% CI]"]
    lines = [r"\par\medskip", r"\begin{tabular}{llcc}", r"\toprule", " & ".join(_latex_text(h) for h in head) + r" \\",
             r"\midrule"]
    lines += [" & ".join(_latex_text(c) for c in row) + r" \\" for row in body]
    lines += [r"\bottomrule", r"\end{tabular}", r"\par\smallskip\footnotesize " + _latex_text(LEGEND)]
    return lines


def _latex_text(text: str) -> str:
    """Plain text with the table's two non-ASCII symbols (Δ, ±) in math mode."""
    return latex_escape(text).replace("Δ", r"$\Delta$").replace("±", r"$\pm$")


def render_cost_markdown(table: Table) -> str:
    """The measured search cost per searched cell (mean over its searches), the unit in the header."""
    head = ["Architecture", cost_header(table), "Searches", "Search data", "Search label"]
    lines = [f"### {table.title}: search cost", ""] if table.title else []
    lines += ["| " + " | ".join(head) + " |", "|---|:-:|:-:|:-:|:-:|"]
    for setting in sorted(table.cost, key=_setting_sort_key):
        lines.append(f"| {architecture_name(setting)} | {_cost_text(table, setting)} | {table.cost_runs.get(setting, '-')} | "
                     f"{setting[1]} | {setting[2]} |")
    lines += ["", "Mean over the searches of their measured compute time (the sum of their epochs' times), so "
              "it differs between runs of the same command; the result tables do not carry it. A random "
              "cell costs 0."]
    return "\n".join(lines) + "\n"


def render_cost_csv(table: Table) -> str:
    """``method, search_data, search_label, num_classes, cost, unit, n``: one row per searched cell."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(("method", "search_data", "search_label", "num_classes", "cost", "unit", "n"))
    for setting in sorted(table.cost, key=_setting_sort_key):
        value, unit = table.cost[setting]
        writer.writerow([*setting[:3], "" if setting[3] is None else setting[3], csv_number(value), unit,
                         table.cost_runs.get(setting, "")])
    return buf.getvalue()


def render_csv(table: Table) -> str:
    """One row per group and metric, the columns of DESIGN.md plus ``flags``."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in table.rows:
        writer.writerow([r.method, r.search_data, r.search_label, "" if r.num_classes is None else r.num_classes,
                         r.target, r.metric, r.n, csv_number(r.best), csv_number(r.mean), csv_number(r.std),
                         "; ".join(r.flags), *comparison_csv(table.comparisons.get((r.setting, r.target, r.metric)))])
    return buf.getvalue()


RENDERERS = {"markdown": render_markdown, "latex": render_latex, "csv": render_csv, "cost": render_cost_markdown}
SUFFIXES = {"markdown": ".md", "latex": ".tex", "csv": ".csv"}  # table.<suffix>; the pipeline adds cost.md/.csv


def render(table: Table, fmt: str) -> str:
    """The table in ``fmt``: markdown | latex | csv."""
    if fmt not in RENDERERS:
        from unrealnas.errors import UserError

        raise UserError(f"unknown table format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return RENDERERS[fmt](table)
