"""Drawing of genotypes (normal and reduction cell): graphviz as DARTS' visualize.py draws them.

graphviz's ``dot`` lays the edges out and places their operation labels without collisions; where
the ``dot`` program (Debian: ``graphviz``) or the ``graphviz`` Python package is missing, a
matplotlib drawing is written instead, so that a finished search never loses its picture.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure

from unrealnas.atomic import atomic_path
from unrealnas.nas.genotype import Genotype

_INPUT_STYLE = {"boxstyle": "round,pad=0.35", "fc": "#cfe8cf", "ec": "#2e7d32"}
_NODE_STYLE = {"boxstyle": "circle,pad=0.3", "fc": "#cfe0f5", "ec": "#1565c0"}
_OUTPUT_STYLE = {"boxstyle": "round,pad=0.35", "fc": "#f9e0b8", "ec": "#e65100"}


def _draw_cell(ax: Axes, pairs: tuple[tuple[str, int], ...], concat: tuple[int, ...], title: str) -> None:
    nodes = len(pairs) // 2
    # Zig-zag the intermediate nodes so that edges between non-neighbours do not overlap.
    pos = {0: (0.0, 2.0), 1: (0.0, -2.0)}
    for i in range(nodes):
        pos[i + 2] = (2.6 + 2.0 * i, 1.1 if i % 2 == 0 else -1.1)
    out = max(x for x, _ in pos.values()) + 2.2, 0.0
    names = {0: "c_{k-2}", 1: "c_{k-1}"}
    for k, (x, y) in pos.items():
        label, style = (names[k], _INPUT_STYLE) if k < 2 else (str(k - 2), _NODE_STYLE)
        ax.text(x, y, f"${label}$" if k < 2 else label, ha="center", va="center", fontsize=11,
                bbox=style, zorder=3)
    ax.text(*out, "$c_{k}$", ha="center", va="center", fontsize=11, bbox=_OUTPUT_STYLE, zorder=3)

    for k, (op, src) in enumerate(pairs):
        dst = k // 2 + 2
        (x1, y1), (x2, y2) = pos[src], pos[dst]
        rad = 0.18 if k % 2 == 0 else -0.18
        ax.annotate("", xy=(x2, y2), xytext=(x1, y1), zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": "#444444", "lw": 1.2, "shrinkA": 14,
                                "shrinkB": 14, "connectionstyle": f"arc3,rad={rad}"})
        # Midpoint of matplotlib's arc3 quadratic curve (exact with an equal aspect ratio).
        cx, cy = (x1 + x2) / 2 + rad * (y2 - y1), (y1 + y2) / 2 - rad * (x2 - x1)
        mx, my = 0.25 * x1 + 0.5 * cx + 0.25 * x2, 0.25 * y1 + 0.5 * cy + 0.25 * y2
        ax.text(mx, my, op, ha="center", va="center", fontsize=7, zorder=2,
                bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none", "alpha": 0.85})
    for k in concat:
        ax.annotate("", xy=out, xytext=pos[k], zorder=1,
                    arrowprops={"arrowstyle": "-|>", "color": "#9e9e9e", "lw": 1.0, "ls": "--",
                                "shrinkA": 14, "shrinkB": 16})
    xs = [x for x, _ in pos.values()] + [out[0]]
    ax.set_xlim(min(xs) - 0.8, max(xs) + 0.8)
    ax.set_ylim(-2.7, 2.7)
    ax.set_aspect("equal")
    ax.set_title(title)
    ax.axis("off")


def cell_graph(genotype: Genotype, title: str | None = None, dpi: int | None = None) -> Any:
    """A ``graphviz.Digraph`` of both cells in DARTS' style (inputs green, nodes blue, output yellow)."""
    import graphviz

    graph_attr = {"rankdir": "LR", "fontname": "times", "fontsize": "20", "labelloc": "t", "label": title or ""}
    if dpi:
        graph_attr["dpi"] = str(dpi)
    g = graphviz.Digraph(engine="dot", graph_attr=graph_attr,
                         node_attr={"style": "filled", "shape": "rect", "align": "center", "fontsize": "20",
                                    "height": "0.5", "width": "0.5", "penwidth": "2", "fontname": "times"},
                         edge_attr={"fontsize": "16", "fontname": "times"})
    # dot stacks the clusters of a left-to-right graph bottom-up: the reduction cell first puts
    # the normal cell on top, as in the papers.
    cells = (("reduce", "reduction cell", genotype.reduce, genotype.reduce_concat),
             ("normal", "normal cell", genotype.normal, genotype.normal_concat))
    for prefix, label, pairs, concat in cells:
        def node(k: int, prefix: str = prefix) -> str:  # genotype index: 0, 1 inputs, 2.. intermediate nodes
            return f"{prefix}_{k}"

        with g.subgraph(name=f"cluster_{prefix}") as c:
            c.attr(label=label, style="rounded", color="gray60", fontsize="18", margin="18")
            c.node(node(0), "c_{k-2}", fillcolor="darkseagreen2")
            c.node(node(1), "c_{k-1}", fillcolor="darkseagreen2")
            for i in range(len(pairs) // 2):
                c.node(node(i + 2), str(i), fillcolor="lightblue")
            for k, (op, src) in enumerate(pairs):
                c.edge(node(src), node(k // 2 + 2), label=op, fillcolor="gray")
            c.node(f"{prefix}_out", "c_{k}", fillcolor="palegoldenrod")
            for k in concat:
                c.edge(node(k), f"{prefix}_out", fillcolor="gray")
    return g


def _render_graphviz(genotype: Genotype, fmt: str, title: str | None, dpi: int) -> bytes | None:
    """The drawing rendered by ``dot``, None when graphviz is not installed."""
    try:
        import graphviz

        return cell_graph(genotype, title, dpi if fmt == "png" else None).pipe(format=fmt)
    except ImportError:
        return None
    except graphviz.ExecutableNotFound:
        return None


def draw_genotype(genotype: Genotype, path: str | os.PathLike, title: str | None = None, dpi: int = 150) -> Path:
    """Draw the normal and reduction cells of ``genotype`` to ``path`` (format from the suffix: png, pdf, svg)."""
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    data = _render_graphviz(genotype, fmt, title, dpi)
    if data is not None:
        with atomic_path(path) as tmp:
            Path(tmp).write_bytes(data)
        return path
    # Size from the data extent (equal aspect), so the cells fill the page.
    width = 0.75 * (2.6 + 2.0 * (genotype.nodes - 1) + 2.2 + 1.6)
    # Figure without pyplot: no global state, no GUI backend, safe in worker processes.
    fig = Figure(figsize=(width, 2 * 0.75 * 5.4 + 0.8))
    ax_n, ax_r = fig.subplots(2, 1)
    _draw_cell(ax_n, genotype.normal, genotype.normal_concat, "normal cell")
    _draw_cell(ax_r, genotype.reduce, genotype.reduce_concat, "reduction cell")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)
    return path
