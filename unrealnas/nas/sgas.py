"""SGAS (Li et al., CVPR 2020): greedy edge decisions on top of the DARTS supernet.

Per edge, with p = softmax(alpha) and p~ the non-``none`` probabilities renormalised:
edge importance = 1 - p(none); selection certainty = 1 - H(p~) / log(#non-none ops); selection
stability = mean over the stored p~ of the last ``history_size`` epochs of the histogram
intersection sum_k min(p~_k, p~'_k). Criterion 1 scores an edge norm(importance) x norm(certainty),
criterion 2 also x norm(stability).

What the reference (lightaime/sgas, cnn/train_search.py ``edge_decision`` and utils.normalize)
does, and this module by default (``search.sgas.normalize_over: all``): norm is min-max over
ALL 14 edges of the cell, decided and pruned ones included, without an epsilon, a constant
vector giving zeros; the argmax is then taken over the undecided edges only. ``undecided``
normalises over the undecided edges instead (this suite's earlier behaviour, kept as a knob;
the two pick different edges in a large share of synthetic runs). Alphas train from epoch 0:
the reference has no alpha warm-up (conf/search/sgas_*.yaml: warmup_epochs 0, 50 epochs).

Schedule (0-based epoch index over the whole search run, as in the reference): at the end of
epoch ``warmup_dec_epoch`` and every ``decision_freq`` epochs after it, each cell type with
undecided edges fixes its best-scored edge to its argmax non-``none`` op (its alpha row is
frozen from then on); when a node has 2 decided edges its other incoming edges are pruned. Each
decision epoch grows the batch size by ``batch_increase``. Total epochs = warmup_dec_epoch +
freq * (2 * nodes - 1) + post_train + 1 (50 for 9, 5, 5): decisions after epochs 9, 14, ..., 44.

Other choices:
- the history of p~ is recorded every epoch for both criteria (criterion 1 ignores it; the
  reference records it for criterion 2 only), after the decision of that epoch, so a decision
  sees the p~ of the previous ``history_size`` epochs: the same values the reference uses;
- ties go to the lowest edge index (first maximum), as torch.argmax in the reference.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import torch

from unrealnas.nas.genotype import UNDECIDED, Genotype, derive_genotype, node_edge_ranges, num_edges
from unrealnas.nas.ops import NONE_INDEX, PRIMITIVES
from unrealnas.nas.supernet import CELL_TYPES, SuperNet

NormalizeOver = Literal["all", "undecided"]
"""Edges the min-max normalisation runs over: all (the reference) or the undecided ones."""
NORMALIZE_OVER = ("all", "undecided")
Criterion = Literal["c1", "c2", 1, 2]
"""SGAS criterion: 1 / "c1" (importance x certainty) or 2 / "c2" (also x stability)."""


def _criterion(criterion: Criterion | str | int) -> str:
    name = {1: "c1", 2: "c2", "1": "c1", "2": "c2", "c1": "c1", "c2": "c2"}.get(criterion)
    if name is None:
        raise ValueError(f"SGAS criterion must be 1, 2, 'c1' or 'c2', got {criterion!r}")
    return name


# ----------------------------------------------------------------------------- scores (pure)


def non_none_probs(p: torch.Tensor) -> torch.Tensor:
    """p~: the op probabilities (..., ops) without ``none``, renormalised to sum to 1."""
    rest = torch.cat([p[..., :NONE_INDEX], p[..., NONE_INDEX + 1:]], dim=-1)
    return rest / rest.sum(dim=-1, keepdim=True)


def best_non_none_op(p_edge: torch.Tensor) -> int:
    """Index (in PRIMITIVES) of the most probable op other than ``none`` (first maximum on ties)."""
    i = int(torch.argmax(non_none_probs(p_edge)))
    return i + 1 if i >= NONE_INDEX else i


def edge_importance(p: torch.Tensor) -> torch.Tensor:
    """1 - p(none) per edge, for op probabilities p (..., ops)."""
    return 1.0 - p[..., NONE_INDEX]


def selection_certainty(p: torch.Tensor) -> torch.Tensor:
    """1 - H(p~) / log(#non-none ops) per edge: 1 for a one-hot choice, 0 for a uniform one."""
    pt = non_none_probs(p)
    entropy = -torch.special.xlogy(pt, pt).sum(dim=-1)  # 0 log 0 = 0
    return 1.0 - entropy / math.log(pt.shape[-1])


def selection_stability(history: Sequence[torch.Tensor], p_tilde: torch.Tensor,
                        history_size: int = 4) -> torch.Tensor:
    """Mean histogram intersection of p~ (edges, ops-1) with each of the last ``history_size`` p~.

    With no history yet it is 0 for every edge (as the reference).
    """
    past = list(history)[-history_size:] if history_size > 0 else []
    if not past:
        return torch.zeros(p_tilde.shape[:-1], dtype=p_tilde.dtype)
    inter = [torch.minimum(h.to(p_tilde), p_tilde).sum(dim=-1) for h in past]
    return torch.stack(inter).mean(dim=0)


def minmax_normalize(v: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(v - min) / (max - min) over the entries where ``mask`` is True (all if None), 0 elsewhere.

    A constant vector (max == min) normalises to all zeros.
    """
    if mask is None:
        mask = torch.ones_like(v, dtype=torch.bool)
    out = torch.zeros_like(v)
    if not bool(mask.any()):
        return out
    sel = v[mask]
    lo, hi = sel.min(), sel.max()
    if hi > lo:
        out[mask] = (sel - lo) / (hi - lo)
    return out


def edge_scores(p: torch.Tensor, criterion: Criterion, history: Sequence[torch.Tensor] = (),
                candidates: torch.Tensor | None = None, history_size: int = 4,
                normalize_over: NormalizeOver = "all") -> torch.Tensor:
    """SGAS score per edge (-inf for non-candidates); p: op probabilities (edges, ops)."""
    criterion = _criterion(criterion)
    if candidates is None:
        candidates = torch.ones(p.shape[0], dtype=torch.bool)
    if normalize_over not in NORMALIZE_OVER:
        raise ValueError(f"SGAS normalize_over must be 'all' or 'undecided', got {normalize_over!r}")
    norm_mask = candidates if normalize_over == "undecided" else None
    score = minmax_normalize(edge_importance(p), norm_mask) * minmax_normalize(selection_certainty(p), norm_mask)
    if criterion == "c2":
        stability = selection_stability(history, non_none_probs(p), history_size)
        score = score * minmax_normalize(stability, norm_mask)
    return score.masked_fill(~candidates, -math.inf)


def is_decision_epoch(epoch: int, warmup_dec_epoch: int = 9, decision_freq: int = 5) -> bool:
    """Whether the end of (0-based) ``epoch`` is a decision point."""
    return epoch >= warmup_dec_epoch and (epoch - warmup_dec_epoch) % decision_freq == 0


def total_epochs(nodes: int = 4, warmup_dec_epoch: int = 9, decision_freq: int = 5, post_train: int = 5) -> int:
    """Epochs of an SGAS search: warm-up, one decision per kept edge, post-training (50 by default)."""
    return warmup_dec_epoch + decision_freq * (2 * nodes - 1) + post_train + 1


# ----------------------------------------------------------------------------- state


@dataclass
class EdgeDecision:
    """One decision: ``edge`` of ``cell_type`` fixed to ``op`` at the end of ``epoch``."""

    epoch: int
    cell_type: str
    edge: int
    op: str
    score: float
    pruned: list[int]


@dataclass
class SGASState:
    """Everything an SGAS search decides and remembers; ``state_dict()`` is plain JSON-able data."""

    nodes: int = 4
    base_batch_size: int = 64
    batch_increase: int = 8
    history_size: int = 4
    edge_ops: dict[str, list[int]] = field(default_factory=dict)
    history: dict[str, list[list[list[float]]]] = field(default_factory=dict)
    num_decisions: int = 0
    decisions: list[EdgeDecision] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = num_edges(self.nodes)
        for t in CELL_TYPES:
            self.edge_ops.setdefault(t, [UNDECIDED] * k)
            self.history.setdefault(t, [])

    @property
    def batch_size(self) -> int:
        """Current batch size: the base plus ``batch_increase`` per decision epoch so far."""
        return self.base_batch_size + self.batch_increase * self.num_decisions

    def candidates(self, cell_type: str) -> list[int]:
        """Undecided, unpruned edges of ``cell_type``."""
        return [e for e, c in enumerate(self.edge_ops[cell_type]) if c == UNDECIDED]

    def is_complete(self) -> bool:
        """True once every edge of both cell types is decided or pruned."""
        return not any(self.candidates(t) for t in CELL_TYPES)

    def state_dict(self) -> dict[str, Any]:
        """A deep, JSON-serialisable copy of the state."""
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` output."""
        self.nodes = int(state["nodes"])
        self.base_batch_size = int(state["base_batch_size"])
        self.batch_increase = int(state["batch_increase"])
        self.history_size = int(state["history_size"])
        self.edge_ops = {t: [int(c) for c in state["edge_ops"][t]] for t in CELL_TYPES}
        self.history = {t: [[[float(x) for x in row] for row in h] for h in state["history"][t]]
                        for t in CELL_TYPES}
        self.num_decisions = int(state["num_decisions"])
        self.decisions = [EdgeDecision(**d) for d in state["decisions"]]

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> SGASState:
        """A new state restored from ``state_dict()`` output."""
        out = cls(nodes=int(state["nodes"]))
        out.load_state_dict(state)
        return out


def _probs(alpha: torch.Tensor) -> torch.Tensor:
    # Decisions run once per epoch on a 14 x 8 matrix: float64 on the CPU, for exact ties and sums.
    return torch.softmax(alpha.detach().to("cpu", torch.float64), dim=-1)


def _prune_full_nodes(edge_ops: list[int], nodes: int) -> list[int]:
    pruned = []
    for edges in node_edge_ranges(nodes):
        decided = [e for e in edges if edge_ops[e] not in (UNDECIDED, NONE_INDEX)]
        if len(decided) >= 2:
            for e in edges:
                if edge_ops[e] == UNDECIDED:
                    edge_ops[e] = NONE_INDEX
                    pruned.append(e)
    return pruned


def make_decision(state: SGASState, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor,
                  criterion: Criterion, epoch: int = -1,
                  normalize_over: NormalizeOver = "all") -> list[EdgeDecision]:
    """Fix the best undecided edge of each cell type (that has one) and prune full nodes.

    Uses the stored history (the previous epochs' p~) for criterion 2; counts one decision
    (one batch-size increase) if any cell type decided.
    """
    made = []
    for cell_type, alpha in zip(CELL_TYPES, (alpha_normal, alpha_reduce), strict=True):
        cand_list = state.candidates(cell_type)
        if not cand_list:
            continue
        p = _probs(alpha)
        candidates = torch.zeros(p.shape[0], dtype=torch.bool)
        candidates[cand_list] = True
        history = [torch.tensor(h, dtype=torch.float64) for h in state.history[cell_type]]
        score = edge_scores(p, criterion, history, candidates, state.history_size, normalize_over)
        edge = int(torch.argmax(score))  # first maximum on ties
        op = best_non_none_op(p[edge])
        state.edge_ops[cell_type][edge] = op
        pruned = _prune_full_nodes(state.edge_ops[cell_type], state.nodes)
        made.append(EdgeDecision(epoch, cell_type, edge, PRIMITIVES[op], float(score[edge]), pruned))
    if made:
        state.num_decisions += 1
        state.decisions.extend(made)
    return made


def record_history(state: SGASState, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor) -> None:
    """Append this epoch's p~ of both cell types, keeping the last ``history_size``."""
    for cell_type, alpha in zip(CELL_TYPES, (alpha_normal, alpha_reduce), strict=True):
        h = state.history[cell_type]
        h.append(non_none_probs(_probs(alpha)).tolist())
        del h[: max(0, len(h) - state.history_size)]


def apply_to_supernet(state: SGASState, supernet: SuperNet) -> None:
    """Make the supernet follow the decisions: decided edges run one op, pruned edges are skipped,
    and their alpha rows stay frozen (the Architect restores them after every Adam step)."""
    if supernet.nodes != state.nodes:
        raise ValueError(f"SGAS state has {state.nodes} nodes, the supernet {supernet.nodes}")
    supernet.set_edge_ops(state.edge_ops["normal"], state.edge_ops["reduce"])


def end_of_epoch(state: SGASState, epoch: int, supernet: SuperNet, criterion: Criterion,
                 warmup_dec_epoch: int = 9, decision_freq: int = 5,
                 normalize_over: NormalizeOver = "all") -> list[EdgeDecision]:
    """The SGAS work at the end of (0-based) ``epoch``: decide if it is a decision epoch, record the
    history, update the supernet. Returns the decisions made (empty if none)."""
    made: list[EdgeDecision] = []
    if is_decision_epoch(epoch, warmup_dec_epoch, decision_freq):
        made = make_decision(state, supernet.alpha_normal, supernet.alpha_reduce, criterion, epoch,
                             normalize_over)
    record_history(state, supernet.alpha_normal, supernet.alpha_reduce)
    if made:
        apply_to_supernet(state, supernet)
    return made


def sgas_genotype(state: SGASState, alpha_normal: torch.Tensor, alpha_reduce: torch.Tensor) -> Genotype:
    """The genotype: exactly the decisions once complete; before that, undecided slots are filled by
    edge importance (the reference's rule for intermediate genotypes)."""
    return derive_genotype(alpha_normal, alpha_reduce, state.nodes,
                           fixed=(state.edge_ops["normal"], state.edge_ops["reduce"]), edge_rank="importance")
