"""Results: collect ``result.json`` files (DESIGN "Contracts"), build the paper's tables, draw the figures.

Everything here reads files only (result.json, metrics.jsonl, genotype.json, the launcher's
records); nothing imports torch.
"""

from unrealnas.results.collect import Collection, Failure, RunResult, collect_results
from unrealnas.results.tables import Table, TableRow, build_table, render

__all__ = ["Collection", "Failure", "RunResult", "Table", "TableRow", "build_table", "collect_results",
           "render"]
