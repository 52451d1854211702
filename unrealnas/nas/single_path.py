"""RLNAS's single-path supernet on the DARTS space, its path sampler, and the angle of a sub-network.

RLNAS (Zhang et al. 2021, megvii-model/RLNAS, ``darts_search_space/cifar10``) trains a supernet in
which every step runs ONE op per edge, drawn uniformly from the 8 candidates (``none`` included),
then repairs each cell so that every intermediate node keeps exactly two non-``none`` inputs (the
DARTS cell shape). A sub-network is scored by the angle between its weight vector at
initialisation and after training. Here a candidate is ``2 * E`` op indices (``E`` = 14 edges for
4 nodes): the normal cell's codes, then the reduction cell's, index 0 = ``none``
(``PRIMITIVES`` order).

The weight vector of a sub-network (the reference's definition): for every cell, every path from
a cell input through intermediate nodes (30 paths for 4 nodes) that crosses no ``none`` edge,
the concatenated weights of the ops on it (an edge on several paths appears several times); then
the stem, each cell's two preprocessing blocks and the classifier's weight. Parameter-free ops
enter as constants, as the reference does: a 3x3 pooling as C x 9 entries of 1/9 (plus the
affine BN that follows it in the supernet), an identity skip as the C x C identity matrix.
:class:`AngleTable` gets the same angle from per-op dot products computed once, so an evolution
evaluates thousands of candidates without concatenating any vector.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn

from unrealnas.nas.genotype import Genotype
from unrealnas.nas.ops import (
    NONE_INDEX,
    POOLING_OPS,
    PRIMITIVES,
    FactorizedReduce,
    Identity,
    ReLUConvBN,
    get_op,
)

Candidate = tuple[int, ...]
NUM_OPS = len(PRIMITIVES)


def num_edges(nodes: int) -> int:
    """Edges of a cell with ``nodes`` intermediate nodes (node j has j + 2 inputs): 14 for 4."""
    return nodes * (nodes + 3) // 2


def edge_index(src: int, dst: int) -> int:
    """The edge from state ``src`` into state ``dst`` (>= 2) in the cell's edge order."""
    return sum(range(2, dst)) + src


def cell_paths(nodes: int) -> list[tuple[int, ...]]:
    """Every path from a cell input (state 0 or 1) through increasing intermediate states (30 for 4 nodes)."""
    inner = range(2, nodes + 2)
    return [(start, *subset) for start in (0, 1) for r in range(nodes, 0, -1)
            for subset in itertools.combinations(inner, r)]


# ----------------------------------------------------------------------------- the sampler


def repair_cell(codes: Sequence[int], nodes: int, rng: np.random.Generator) -> list[int]:
    """Give every node exactly two non-``none`` inputs, RLNAS's rule: too few ``none`` edges -> random
    kept edges become ``none``; too many -> random ``none`` edges get an op drawn uniformly from the others."""
    out, start = [int(c) for c in codes], 0
    for j in range(nodes):
        edges = range(start, start + j + 2)
        nones = [e for e in edges if out[e] == NONE_INDEX]
        want = j  # j + 2 inputs, two kept
        if len(nones) < want:
            kept = [e for e in edges if out[e] != NONE_INDEX]
            for e in rng.choice(kept, size=want - len(nones), replace=False):
                out[int(e)] = NONE_INDEX
        elif len(nones) > want:
            for e in rng.choice(nones, size=len(nones) - want, replace=False):
                k = int(rng.integers(NUM_OPS - 1))
                out[int(e)] = k + (k >= NONE_INDEX)  # uniform over the ops other than none
        start += j + 2
    return out


def repair(candidate: Sequence[int], nodes: int, rng: np.random.Generator) -> Candidate:
    """Repair both cells of a candidate (normal codes, then reduction codes)."""
    e = num_edges(nodes)
    return tuple(repair_cell(candidate[:e], nodes, rng) + repair_cell(candidate[e:], nodes, rng))


def sample_candidate(rng: np.random.Generator, nodes: int) -> Candidate:
    """A uniform op per edge (``none`` included) for both cells, then repaired: RLNAS's path sampler."""
    return repair(rng.integers(NUM_OPS, size=2 * num_edges(nodes)).tolist(), nodes, rng)


def mutate_candidate(cand: Candidate, rng: np.random.Generator, nodes: int, prob: float,
                     reduce_too: bool) -> Candidate:
    """Each code (the normal cell's only, as RLNAS, unless ``reduce_too``) redrawn with probability ``prob``."""
    out = list(cand)
    for i in range(len(out) if reduce_too else num_edges(nodes)):
        if rng.random() < prob:
            out[i] = int(rng.integers(NUM_OPS))
    return repair(out, nodes, rng)


def crossover_candidates(a: Candidate, b: Candidate, rng: np.random.Generator, nodes: int) -> Candidate:
    """Each code taken from parent ``a`` or ``b`` with probability 1/2, then repaired."""
    return repair([x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True)], nodes, rng)


def candidate_genotype(cand: Candidate, nodes: int) -> Genotype:
    """The ordinary genotype of a repaired candidate: per node its two non-``none`` inputs, in input order."""
    e = num_edges(nodes)

    def cell(codes: Sequence[int]) -> tuple[tuple[str, int], ...]:
        pairs = []
        for j in range(nodes):
            kept = [(PRIMITIVES[codes[edge_index(i, j + 2)]], i) for i in range(j + 2)
                    if codes[edge_index(i, j + 2)] != NONE_INDEX]
            if len(kept) != 2:
                raise ValueError(f"node {j} has {len(kept)} inputs; repair the candidate first")
            pairs += kept
        return tuple(pairs)

    concat = tuple(range(2, nodes + 2))
    return Genotype(normal=cell(cand[:e]), normal_concat=concat, reduce=cell(cand[e:]), reduce_concat=concat)


# ----------------------------------------------------------------------------- the network


class SinglePathCell(nn.Module):
    """A DARTS search cell with affine BN whose forward runs one op per edge (RLNAS's supernet cell)."""

    def __init__(self, nodes: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.nodes, self.reduction = nodes, reduction
        self.preprocess0: nn.Module = (FactorizedReduce(C_prev_prev, C) if reduction_prev
                                       else ReLUConvBN(C_prev_prev, C, 1, 1, 0))
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0)
        self.edges = nn.ModuleList()
        for j in range(nodes):
            for i in range(j + 2):
                stride = 2 if reduction and i < 2 else 1
                ops = nn.ModuleList()
                for name in PRIMITIVES:
                    op = get_op(name, C, stride, affine=True)
                    if name in POOLING_OPS:  # RLNAS: pooling followed by an affine BN
                        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=True))
                    ops.append(op)
                self.edges.append(ops)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, codes: Sequence[int]) -> torch.Tensor:
        """Run the sampled op of every non-``none`` edge; concatenate the intermediate nodes."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for j in range(self.nodes):
            terms = [self.edges[edge_index(i, j + 2)][codes[edge_index(i, j + 2)]](h)
                     for i, h in enumerate(states) if codes[edge_index(i, j + 2)] != NONE_INDEX]
            if not terms:
                raise ValueError(f"node {j} has no input; repair the candidate first")
            states.append(sum(terms[1:], terms[0]))
        return torch.cat(states[2:], dim=1)


class SinglePathNet(nn.Module):
    """RLNAS's supernet: stem, ``layers`` single-path cells (reductions at 1/3 and 2/3), pooling, classifier."""

    def __init__(self, C: int, num_classes: int, layers: int, nodes: int = 4, stem_multiplier: int = 3,
                 in_channels: int = 3):
        super().__init__()
        self.nodes, self.layers = nodes, layers
        c_curr = stem_multiplier * C
        self.stem = nn.Sequential(nn.Conv2d(in_channels, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr))
        c_pp, c_p, c_curr = c_curr, c_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            c_curr = c_curr * 2 if reduction else c_curr
            self.cells.append(SinglePathCell(nodes, c_pp, c_p, c_curr, reduction, reduction_prev))
            reduction_prev = reduction
            c_pp, c_p = c_p, nodes * c_curr
        self.classifier = nn.Linear(c_p, num_classes)

    def forward(self, x: torch.Tensor, cand: Candidate) -> torch.Tensor:
        """Logits of the sub-network ``cand`` (normal codes, then reduction codes)."""
        e = num_edges(self.nodes)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, cand[e:] if cell.reduction else cand[:e])
        return self.classifier(s1.mean((2, 3)))


# ----------------------------------------------------------------------------- the angle


def angle(a: torch.Tensor, b: torch.Tensor) -> float:
    """The angle (radians) between two weight vectors: arccos of their cosine, in float64."""
    a, b = a.double().flatten(), b.double().flatten()
    cos = torch.dot(a, b) / (a.norm() * b.norm())
    return math.acos(max(-1.0, min(1.0, float(cos))))


def _params(module: nn.Module) -> list[torch.Tensor]:
    return [p.detach().reshape(-1) for p in module.parameters()]


def op_parts(op: nn.Module, name: str) -> list[torch.Tensor]:
    """The weight pieces of one edge op (constants for parameter-free ops, as RLNAS)."""
    if name in POOLING_OPS:
        bn = op[1]
        return [torch.full((bn.num_features * 9,), 1.0 / 9.0, device=bn.weight.device), *_params(bn)]
    if isinstance(op, Identity):
        raise TypeError("an identity carries no channel count; use identity_part")
    return _params(op)


def identity_part(C: int, device: torch.device) -> torch.Tensor:
    """The identity skip's constant: the C x C identity matrix, flattened."""
    return torch.eye(C, device=device).reshape(-1)


def _edge_vector(cell: SinglePathCell, e: int, code: int) -> torch.Tensor:
    op, name = cell.edges[e][code], PRIMITIVES[code]
    if isinstance(op, Identity):
        bn = cell.preprocess1.op[2]
        return identity_part(bn.num_features, bn.running_mean.device)
    return torch.cat(op_parts(op, name))


def extra_vector(net: SinglePathNet) -> torch.Tensor:
    """The weights every sub-network shares: stem conv and BN, the preprocessing blocks, the classifier's weight."""
    parts = _params(net.stem)
    for cell in net.cells:
        parts += _params(cell.preprocess0) + _params(cell.preprocess1)
    parts.append(net.classifier.weight.detach().reshape(-1))
    return torch.cat(parts)


def path_multiplicity(codes: Sequence[int], nodes: int) -> list[int]:
    """How many none-free paths of the cell cross each edge (the times it appears in the weight vector)."""
    count = [0] * num_edges(nodes)
    for path in cell_paths(nodes):
        edges = [edge_index(a, b) for a, b in itertools.pairwise(path)]
        if all(codes[e] != NONE_INDEX for e in edges):
            for e in edges:
                count[e] += 1
    return count


def subnet_vector(net: SinglePathNet, cand: Candidate) -> torch.Tensor:
    """The sub-network's weight vector, concatenated path by path as RLNAS builds it (the reference form)."""
    e_n = num_edges(net.nodes)
    parts = []
    for cell in net.cells:
        codes = cand[e_n:] if cell.reduction else cand[:e_n]
        for path in cell_paths(net.nodes):
            edges = [edge_index(a, b) for a, b in itertools.pairwise(path)]
            if all(codes[e] != NONE_INDEX for e in edges):
                parts += [_edge_vector(cell, e, codes[e]) for e in edges]
    parts.append(extra_vector(net))
    return torch.cat(parts)


class AngleTable:
    """The angle of any sub-network between two states of one supernet, from per-op dot products.

    cos = sum_k m_k <a_k, b_k> / sqrt(sum_k m_k |a_k|^2 * sum_k m_k |b_k|^2) over the pieces k of the
    vector with multiplicities m_k (paths crossing an edge), which is exactly the cosine of the
    concatenated vectors of :func:`subnet_vector`.
    """

    def __init__(self, initial: SinglePathNet, trained: SinglePathNet):
        self.nodes = initial.nodes
        self.reduction = [c.reduction for c in initial.cells]
        # table[cell, edge, op] = (<a, b>, |a|^2, |b|^2) in float64
        self.table = np.zeros((len(initial.cells), num_edges(self.nodes), NUM_OPS, 3))
        for c, (ca, cb) in enumerate(zip(initial.cells, trained.cells, strict=True)):
            for e in range(num_edges(self.nodes)):
                for k in range(NUM_OPS):
                    if k == NONE_INDEX:
                        continue
                    a, b = _edge_vector(ca, e, k).double(), _edge_vector(cb, e, k).double()
                    self.table[c, e, k] = (float(a @ b), float(a @ a), float(b @ b))
        a, b = extra_vector(initial).double(), extra_vector(trained).double()
        self.extra = np.array([float(a @ b), float(a @ a), float(b @ b)])

    def __call__(self, cand: Candidate) -> float:
        """The angle (radians) of sub-network ``cand``."""
        e = num_edges(self.nodes)
        total = self.extra.copy()
        mult = {False: path_multiplicity(cand[:e], self.nodes), True: path_multiplicity(cand[e:], self.nodes)}
        for c, red in enumerate(self.reduction):
            codes = cand[e:] if red else cand[:e]
            for edge, m in enumerate(mult[red]):
                if m:
                    total += m * self.table[c, edge, codes[edge]]
        cos = total[0] / math.sqrt(total[1] * total[2])
        return math.acos(max(-1.0, min(1.0, cos)))
