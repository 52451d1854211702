"""The per-edge supernet forward: one kernel per op per edge, the readable reference of the search math.

No search runs it. The tests check the engine (``SuperNet``'s fused, seed-stacked forward) against
it, and ``unrealnas bench search supernet=per_edge`` times it inside the engine's own iteration as
the plain baseline. It reads the very same modules (``SuperNet``'s per-edge module tree, which is
also the ``state_dict`` layout), so a network can be run either way.

The math, written as the DARTS reference writes it:

- an edge is a mixed op: ``sum_k w[k] * op_k(x)`` over the non-``none`` ops (``none`` adds
  ``w_none * 0``, which changes neither the output nor any gradient);
- a node sums its incoming edges; a cell concatenates its nodes;
- SGAS decisions (``codes``, given when no explicit op weights are): a decided edge runs its one
  op with weight 1, a pruned edge (code 0 = ``none``) is skipped, a node sums its kept edges only.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from unrealnas.nas.genotype import UNDECIDED
from unrealnas.nas.ops import NONE_INDEX


def mixed_op(edge: nn.Module, x: torch.Tensor, weights: Sequence[torch.Tensor] | None,
             fixed_op: int = UNDECIDED) -> torch.Tensor:
    """One search edge (``edge.ops``, one module per candidate): weighted sum of its ops, or one fixed op."""
    if fixed_op != UNDECIDED:
        return edge.ops[fixed_op](x)
    if weights is None:
        raise ValueError("an undecided edge needs its op weights")
    out: torch.Tensor | None = None
    for k, op in enumerate(edge.ops):
        if k == NONE_INDEX:
            continue
        y = op(x)
        out = y * weights[k] if out is None else torch.addcmul(out, y, weights[k])
    assert out is not None
    return out


def search_cell(cell: nn.Module, s0: torch.Tensor, s1: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]],
                codes: Sequence[int]) -> torch.Tensor:
    """Cell output (concat of the nodes); ``codes[e]`` is UNDECIDED, a fixed op, or 0 = pruned."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    e = 0
    for i in range(cell.nodes):
        node: torch.Tensor | None = None
        for h in states:
            code = codes[e]
            if code != NONE_INDEX:  # a pruned edge adds nothing: sum over kept edges only
                y = mixed_op(cell.edges[e], h, weights[e] if code == UNDECIDED else None, code)
                node = y if node is None else node + y
            e += 1
        if node is None:
            raise RuntimeError(f"node {i} of a search cell has every incoming edge pruned")
        states.append(node)
    return torch.cat(states[2:], dim=1)


def per_edge_forward(net: nn.Module, x: torch.Tensor, w_normal: torch.Tensor, w_reduce: torch.Tensor,
                     codes: dict[str, Sequence[int]]) -> torch.Tensor:
    """Class logits of a (one-seed) ``SuperNet`` run edge by edge; ``w_*`` are (edges, ops) op weights."""
    # views to one 0-d tensor per (edge, op), built once per forward instead of per edge
    rows = {"normal": [r.unbind(0) for r in w_normal.unbind(0)],
            "reduce": [r.unbind(0) for r in w_reduce.unbind(0)]}
    s0 = s1 = net.stem(x)
    for cell in net.cells:
        cell_type = "reduce" if cell.reduction else "normal"
        s0, s1 = s1, search_cell(cell, s0, s1, rows[cell_type], codes[cell_type])
    return net.classifier(net.global_pooling(s1).flatten(1))
