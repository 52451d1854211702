"""Cell genotypes: the frozen dataclass, its genotype.json form, and derivation from alphas.

A genotype lists, for each intermediate node of a cell (in node order), two ``(op, input)``
pairs; input 0 and 1 are the two cell inputs c_{k-2} and c_{k-1}, input ``j >= 2`` is
intermediate node ``j - 2``. It is stored as JSON (never Python source read back with ``eval``):
``{"normal": [[op, input], ...], "normal_concat": [2, 3, 4, 5], "reduce": [...],
"reduce_concat": [...]}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from unrealnas.atomic import write_json_atomic
from unrealnas.errors import ConfigError
from unrealnas.nas.ops import NONE_INDEX, PRIMITIVES
from unrealnas.rundir import GENOTYPE_FILE

UNDECIDED = -1
"""Edge-op code of an SGAS edge still searched (mixed); ``NONE_INDEX`` (0) marks a pruned edge."""

Pair = tuple[str, int]


@dataclass(frozen=True)
class Genotype:
    """A DARTS cell pair: ``(op, input)`` pairs per node and the nodes concatenated as output."""

    normal: tuple[Pair, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Pair, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        # Normalise lists (from JSON or hand-written data) to tuples so instances hash and compare;
        # malformed data is checked by validate_genotype_json (from_json runs it before this).
        for name in ("normal", "reduce"):
            object.__setattr__(self, name, tuple((op, i) for op, i in getattr(self, name)))
        for name in ("normal_concat", "reduce_concat"):
            object.__setattr__(self, name, tuple(int(i) for i in getattr(self, name)))
        validate_genotype_json(self.to_json(), source="Genotype")

    @property
    def nodes(self) -> int:
        """Number of intermediate nodes per cell (two pairs each)."""
        return len(self.normal) // 2

    def to_json(self) -> dict[str, Any]:
        """The genotype.json object (lists of ``[op, input]`` pairs)."""
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    @classmethod
    def from_json(cls, obj: Any, source: str = "genotype") -> Genotype:
        """Build and validate a genotype from its JSON object; errors name ``source``."""
        validate_genotype_json(obj, source)
        return cls(obj["normal"], obj["normal_concat"], obj["reduce"], obj["reduce_concat"])

    def save(self, path: str | os.PathLike) -> Path:
        """Write genotype.json atomically to ``path`` (a file, or a directory to put it in)."""
        path = Path(path)
        if path.is_dir():
            path = path / GENOTYPE_FILE
        write_json_atomic(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Genotype:
        """Read a genotype.json file, or the genotype.json of a run directory."""
        path = Path(path)
        if path.is_dir():
            path = path / GENOTYPE_FILE
        if not path.is_file():
            raise ConfigError(f"{path}: no such genotype file")
        try:
            obj = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_json(obj, source=str(path))


def validate_genotype_json(obj: Any, source: str = "genotype") -> None:
    """Raise ConfigError (one line naming ``source``) unless ``obj`` is a well-formed genotype."""

    def fail(msg: str) -> None:
        raise ConfigError(f"{source}: {msg}")

    if not isinstance(obj, Mapping):
        fail(f"expected a JSON object, got {type(obj).__name__}")
    keys = ("normal", "normal_concat", "reduce", "reduce_concat")
    missing = [k for k in keys if k not in obj]
    if missing:
        fail(f"missing key(s) {', '.join(missing)}; a genotype has {', '.join(keys)}")
    extra = sorted(set(obj) - set(keys))
    if extra:
        fail(f"unknown key(s) {', '.join(map(str, extra))}")
    valid_ops = [p for p in PRIMITIVES if p != "none"]
    lengths = set()
    for cell in ("normal", "reduce"):
        pairs = obj[cell]
        if not isinstance(pairs, list | tuple) or not pairs or len(pairs) % 2:
            fail(f"{cell} must be a non-empty list of [op, input] pairs, two per node")
        lengths.add(len(pairs))
        for k, pair in enumerate(pairs):
            if not (isinstance(pair, list | tuple) and len(pair) == 2):
                fail(f"{cell}[{k}] must be an [op, input] pair, got {pair!r}")
            op, inp = pair
            if op not in valid_ops:
                fail(f"{cell}[{k}]: unknown op {op!r}; valid ops: {', '.join(valid_ops)}")
            node = k // 2
            if not isinstance(inp, int) or isinstance(inp, bool) or not 0 <= inp < node + 2:
                fail(f"{cell}[{k}]: input {inp!r} of node {node} must be an integer in 0..{node + 1}")
    if len(lengths) != 1:
        fail(f"normal and reduce must have the same number of pairs, got {len(obj['normal'])} "
             f"and {len(obj['reduce'])}")
    n_states = lengths.pop() // 2 + 2
    for cell in ("normal_concat", "reduce_concat"):
        concat = obj[cell]
        if not isinstance(concat, list | tuple) or not concat:
            fail(f"{cell} must be a non-empty list of node indices")
        for i in concat:
            if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_states:
                fail(f"{cell}: index {i!r} must be an integer in 0..{n_states - 1}")
        if len(set(concat)) != len(concat):
            fail(f"{cell}: repeated index in {concat}")


def count_skips(genotype: Genotype) -> tuple[int, int]:
    """Number of skip_connect ops in the (normal, reduction) cell."""
    return (sum(op == "skip_connect" for op, _ in genotype.normal),
            sum(op == "skip_connect" for op, _ in genotype.reduce))


def num_edges(nodes: int) -> int:
    """Edges of a search cell with ``nodes`` intermediate nodes (14 for 4)."""
    return nodes * (nodes + 3) // 2


def node_edge_ranges(nodes: int) -> list[range]:
    """For each node, the range of its incoming edge indices (node i has i + 2 inputs)."""
    out, start = [], 0
    for i in range(nodes):
        out.append(range(start, start + i + 2))
        start += i + 2
    return out


def normalised_betas(beta: torch.Tensor, nodes: int) -> torch.Tensor:
    """PC-DARTS edge normalisation: softmax of ``beta`` (..., edges) over each node's incoming edges."""
    parts = [torch.softmax(beta[..., r.start:r.stop], dim=-1) for r in node_edge_ranges(nodes)]
    return torch.cat(parts, dim=-1)


def _as_probs(alpha: torch.Tensor | np.ndarray) -> np.ndarray:
    a = alpha.detach().float().cpu().numpy() if isinstance(alpha, torch.Tensor) else np.asarray(alpha)
    a = a.astype(np.float64)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _best_op(p_edge: np.ndarray) -> int:
    # argmax excluding none; np.argmax keeps the first maximum, as the reference's strict '>' loop.
    masked = p_edge.copy()
    masked[NONE_INDEX] = -np.inf
    return int(np.argmax(masked))


def _derive_cell(probs: np.ndarray, nodes: int, edge_ops: Sequence[int] | None,
                 edge_rank: Literal["max_op", "importance"]) -> tuple[Pair, ...]:
    if probs.shape != (num_edges(nodes), len(PRIMITIVES)):
        raise ValueError(f"alphas must have shape ({num_edges(nodes)}, {len(PRIMITIVES)}), got {probs.shape}")
    non_none = np.delete(probs, NONE_INDEX, axis=1)
    strength = non_none.max(axis=1) if edge_rank == "max_op" else 1.0 - probs[:, NONE_INDEX]
    gene: list[Pair] = []
    for node, edges in enumerate(node_edge_ranges(nodes)):
        ops = [UNDECIDED] * len(edges) if edge_ops is None else [int(edge_ops[e]) for e in edges]
        decided = [e for e, o in zip(edges, ops, strict=True) if o not in (UNDECIDED, NONE_INDEX)]
        if len(decided) > 2:
            raise ValueError(f"node {node} has {len(decided)} decided edges; at most 2 allowed")
        candidates = [e for e, o in zip(edges, ops, strict=True) if o == UNDECIDED]
        # Stable sort: ties go to the lower edge index, as in the reference's sorted().
        chosen = sorted(candidates, key=lambda e: -strength[e])[: 2 - len(decided)]
        if len(decided) + len(chosen) < 2:
            raise ValueError(f"node {node} has fewer than 2 edges left (too many pruned)")
        if edge_ops is None:
            # Plain DARTS: emit in strength order, as the published genotypes are written.
            gene += [(PRIMITIVES[_best_op(probs[e])], e - edges.start) for e in chosen]
        else:
            # With SGAS decisions: emit in input order (decided ops kept as decided).
            for e in sorted(decided + chosen):
                op = int(edge_ops[e]) if e in decided else _best_op(probs[e])
                gene.append((PRIMITIVES[op], e - edges.start))
    return tuple(gene)


def derive_genotype(
    alpha_normal: torch.Tensor | np.ndarray,
    alpha_reduce: torch.Tensor | np.ndarray,
    nodes: int = 4,
    fixed: tuple[Sequence[int], Sequence[int]] | None = None,
    edge_rank: Literal["max_op", "importance"] = "max_op",
    betas: tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray] | None = None,
) -> Genotype:
    """Discretise alphas (edges x ops, raw logits): per node the 2 strongest edges, each its best op.

    Edge strength is the largest non-``none`` softmax weight (``edge_rank="max_op"``, DARTS) or
    1 - p(none) (``"importance"``, the SGAS reference's rule for not-yet-decided nodes); the op
    on a kept edge is the argmax excluding ``none``. ``fixed`` holds SGAS decisions per cell type
    (normal, reduce): one code per edge, ``UNDECIDED`` (-1), ``NONE_INDEX`` for a pruned edge, or
    the index of the decided op; decided edges are always kept with their op, pruned ones never.
    ``betas`` (PC-DARTS: raw (edges,) betas per cell type): every edge's op weights are first scaled
    by its node-normalised beta (``normalised_betas``), so an edge ranks by max op weight x beta (the
    paper's rule); the op kept on an edge is the same argmax.
    """
    if edge_rank not in ("max_op", "importance"):
        raise ValueError(f"edge_rank must be 'max_op' or 'importance', got {edge_rank!r}")
    fixed_n, fixed_r = (None, None) if fixed is None else fixed
    concat = tuple(range(2, nodes + 2))
    p_normal, p_reduce = _as_probs(alpha_normal), _as_probs(alpha_reduce)
    if betas is not None:
        scales = [normalised_betas(torch.as_tensor(b).detach().cpu().double(), nodes).numpy() for b in betas]
        if any(sc.shape != (num_edges(nodes),) for sc in scales):
            raise ValueError(f"betas must have shape ({num_edges(nodes)},), got {[sc.shape for sc in scales]}")
        p_normal, p_reduce = p_normal * scales[0][:, None], p_reduce * scales[1][:, None]
    return Genotype(
        normal=_derive_cell(p_normal, nodes, fixed_n, edge_rank),
        normal_concat=concat,
        reduce=_derive_cell(p_reduce, nodes, fixed_r, edge_rank),
        reduce_concat=concat,
    )


# The published DARTS cells (Liu et al., ICLR 2019, CIFAR-10 search): first- and second-order.
KNOWN_GENOTYPES: dict[str, Genotype] = {
    "DARTS_V1": Genotype(
        normal=(("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
                ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)),
        normal_concat=(2, 3, 4, 5),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)),
        reduce_concat=(2, 3, 4, 5),
    ),
    "DARTS_V2": Genotype(
        normal=(("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
                ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)),
        normal_concat=(2, 3, 4, 5),
        reduce=(("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
                ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)),
        reduce_concat=(2, 3, 4, 5),
    ),
}
KNOWN_GENOTYPES["DARTS"] = KNOWN_GENOTYPES["DARTS_V2"]


def get_known_genotype(name: str) -> Genotype:
    """A published genotype by name; unknown names raise ConfigError listing the valid ones."""
    try:
        return KNOWN_GENOTYPES[name]
    except KeyError:
        raise ConfigError(f"unknown genotype {name!r}; known: {', '.join(KNOWN_GENOTYPES)}") from None


PROBE_STREAM = 0x6E6173
"""Seed stream of the analyses' probe architectures (``sample_genotype``'s default)."""
RANDOM_SEARCH_STREAM = 0x72616E64
"""Seed stream of ``search=random``: its cells are not the analyses' probe nets of the same seed."""


def sample_genotype(seed: int, nodes: int = 4, stream: int = PROBE_STREAM) -> Genotype:
    """A uniform random architecture of the DARTS space (the probe nets of the paper's Fig. 1).

    Each intermediate node takes two distinct inputs among the cell inputs and earlier nodes, each
    through an op drawn uniformly from the candidates other than ``none`` (the DARTS derivation
    never keeps ``none``). The same (seed, stream) gives the same genotype on every platform.
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)]))
    ops = [op for k, op in enumerate(PRIMITIVES) if k != NONE_INDEX]

    def cell() -> tuple[Pair, ...]:
        pairs: list[Pair] = []
        for i in range(nodes):
            for j in sorted(rng.choice(i + 2, size=2, replace=False).tolist()):
                pairs.append((ops[int(rng.integers(len(ops)))], int(j)))
        return tuple(pairs)

    concat = tuple(range(2, nodes + 2))
    return Genotype(normal=cell(), normal_concat=concat, reduce=cell(), reduce_concat=concat)
