"""The DARTS search network (supernet): mixed ops on every edge, weighted by softmax(alpha).

Differences from the DARTS reference, on purpose:
- the alphas are ``nn.Parameter``s of the module, so they live in ``state_dict()`` and a search
  can resume (the reference kept them outside);
- the ``none`` op is never run: it adds ``w_none * 0``, which changes neither the output nor any
  gradient (alpha_none still gets its gradient through the softmax normalisation);
- SGAS edge decisions are part of the module (``edge_ops_*`` buffers, mirrored as Python lists
  so that forward branches on them without a host sync): a decided edge runs its one op with
  weight 1, a pruned edge is skipped, and a node sums over its kept edges only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from unrealnas.nas.genotype import UNDECIDED, Genotype, derive_genotype, num_edges
from unrealnas.nas.ops import NONE_INDEX, POOLING_OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN, get_op

ALPHA_NAMES = ("alpha_normal", "alpha_reduce")
CELL_TYPES = ("normal", "reduce")


class MixedOp(nn.Module):
    """One search edge: every candidate op (non-affine BN), summed with the edge's softmax weights."""

    def __init__(self, C: int, stride: int) -> None:
        super().__init__()
        self.ops = nn.ModuleList()
        for name in PRIMITIVES:
            op = get_op(name, C, stride, affine=False)
            if name in POOLING_OPS:
                # Pooling has no BN of its own; this keeps its output scale comparable to the
                # conv ops (as the DARTS reference does, in the search network only).
                op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
            self.ops.append(op)

    def forward(self, x: torch.Tensor, weights: Sequence[torch.Tensor] | None = None,
                fixed_op: int = UNDECIDED) -> torch.Tensor:
        """Weighted sum of all non-``none`` ops (``weights``: one 0-d tensor per op), or one fixed op."""
        if fixed_op != UNDECIDED:
            return self.ops[fixed_op](x)
        if weights is None:
            raise ValueError("an undecided edge needs its op weights")
        out: torch.Tensor | None = None
        for k, op in enumerate(self.ops):
            if k == NONE_INDEX:
                continue
            y = op(x)
            out = y * weights[k] if out is None else torch.addcmul(out, y, weights[k])
        assert out is not None
        return out


class SearchCell(nn.Module):
    """A search cell: two preprocessed inputs, ``nodes`` intermediate nodes, all edges mixed."""

    def __init__(self, nodes: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool) -> None:
        super().__init__()
        self.reduction = reduction
        self.nodes = nodes
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(i + 2):
                # Only edges from the two cell inputs stride in a reduction cell.
                self.edges.append(MixedOp(C, 2 if reduction and j < 2 else 1))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]],
                edge_ops: Sequence[int]) -> torch.Tensor:
        """Cell output (concat of the nodes); ``edge_ops[e]`` is UNDECIDED, a fixed op, or 0 = pruned."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for i in range(self.nodes):
            node: torch.Tensor | None = None
            for h in states:
                code = edge_ops[e]
                if code != NONE_INDEX:  # a pruned edge adds nothing: sum over kept edges only
                    y = self.edges[e](h, weights[e] if code == UNDECIDED else None, code)
                    node = y if node is None else node + y
                e += 1
            if node is None:
                raise RuntimeError(f"node {i} of a search cell has every incoming edge pruned")
            states.append(node)
        return torch.cat(states[2:], dim=1)


class SuperNet(nn.Module):
    """The DARTS search network: stem, ``layers`` search cells, global pool, linear classifier."""

    def __init__(self, C: int, num_classes: int, layers: int, nodes: int = 4, stem_multiplier: int = 3,
                 alpha_init: Literal["zeros", "randn"] = "zeros", in_channels: int = 3,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> None:
        super().__init__()
        if alpha_init not in ("zeros", "randn"):
            raise ValueError(f"alpha_init must be 'zeros' or 'randn', got {alpha_init!r}")
        self.C, self.num_classes, self.layers, self.nodes = C, num_classes, layers, nodes
        self.criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
        C_curr = stem_multiplier * C
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, C_curr, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_curr),
        )
        C_prev_prev, C_prev, C_curr = C_curr, C_curr, C
        self.cells = nn.ModuleList()
        reduction_prev = False
        for i in range(layers):
            reduction = i in (layers // 3, 2 * layers // 3)
            if reduction:
                C_curr *= 2
            self.cells.append(SearchCell(nodes, C_prev_prev, C_prev, C_curr, reduction, reduction_prev))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(C_prev, num_classes)

        k, n_ops = num_edges(nodes), len(PRIMITIVES)
        # UnrealNAS initialises alphas to zero (uniform softmax); the DARTS reference used 1e-3 randn.
        for name in ALPHA_NAMES:
            init = torch.zeros(k, n_ops) if alpha_init == "zeros" else 1e-3 * torch.randn(k, n_ops)
            self.register_parameter(name, nn.Parameter(init))
        for cell_type in CELL_TYPES:
            self.register_buffer(f"edge_ops_{cell_type}", torch.full((k,), UNDECIDED, dtype=torch.long))
        # Python mirror of the edge_ops buffers: forward branches on it without a device sync.
        self._edge_ops: dict[str, list[int]] = {t: [UNDECIDED] * k for t in CELL_TYPES}
        self.register_load_state_dict_post_hook(_sync_edge_ops_after_load)

    # ------------------------------------------------------------------ parameters

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights ``[alpha_normal, alpha_reduce]`` (each edges x ops)."""
        return [self.alpha_normal, self.alpha_reduce]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) for every network weight, i.e. everything but the alphas."""
        return ((n, p) for n, p in self.named_parameters() if n not in ALPHA_NAMES)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every network weight (the weight optimizer's parameters), i.e. everything but the alphas."""
        return [p for _, p in self.named_weight_parameters()]

    # ------------------------------------------------------------------ SGAS edge state

    def edge_ops(self, cell_type: str) -> tuple[int, ...]:
        """Per edge of ``cell_type``: UNDECIDED (-1), a decided op index, or 0 (``none``) if pruned."""
        return tuple(self._edge_ops[cell_type])

    def set_edge_ops(self, normal: Sequence[int], reduce: Sequence[int]) -> None:
        """Set the SGAS decisions of both cell types (see ``edge_ops``)."""
        for cell_type, codes in zip(CELL_TYPES, (normal, reduce), strict=True):
            codes = [int(c) for c in codes]
            k = num_edges(self.nodes)
            if len(codes) != k or any(not UNDECIDED <= c < len(PRIMITIVES) for c in codes):
                raise ValueError(f"{cell_type} edge ops must be {k} codes in -1..{len(PRIMITIVES) - 1}")
            self._edge_ops[cell_type] = codes
            buf = getattr(self, f"edge_ops_{cell_type}")
            buf.copy_(torch.tensor(codes, dtype=torch.long))

    def frozen_alpha_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean (edges,) masks of the alpha rows that must not change (decided or pruned edges)."""
        return self.edge_ops_normal != UNDECIDED, self.edge_ops_reduce != UNDECIDED

    # ------------------------------------------------------------------ forward

    def alpha_softmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over ops of (alpha_normal, alpha_reduce), in fp32."""
        return F.softmax(self.alpha_normal.float(), dim=-1), F.softmax(self.alpha_reduce.float(), dim=-1)

    def forward(self, x: torch.Tensor,
                op_weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Class logits for images ``x`` (N, in_channels, H, W).

        ``op_weights=(w_normal, w_reduce)`` ((edges, ops) each) replaces softmax(alpha) and the SGAS
        branching: every non-``none`` op of every edge runs, weighted by its row (a pruned edge is a
        zero row, a decided edge a one-hot row), so the code path is the same for every state (vmap).
        """
        if op_weights is None:
            w_normal, w_reduce = self.alpha_softmax()
            edge_ops = self._edge_ops
        else:
            w_normal, w_reduce = op_weights
            edge_ops = {t: [UNDECIDED] * len(self._edge_ops[t]) for t in CELL_TYPES}
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Weights in the autocast dtype, cast once: an fp32 scalar would make autocast
            # promote every weighted sum (addcmul) to fp32.
            dtype = torch.get_autocast_dtype(device_type)
            w_normal, w_reduce = w_normal.to(dtype), w_reduce.to(dtype)
        # Views to one 0-d tensor per (edge, op), built once per forward instead of per edge.
        rows = {"normal": [r.unbind(0) for r in w_normal.unbind(0)],
                "reduce": [r.unbind(0) for r in w_reduce.unbind(0)]}
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            cell_type = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell(s0, s1, rows[cell_type], edge_ops[cell_type])
        out = self.global_pooling(s1).flatten(1)
        return self.classifier(out)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training criterion (cross-entropy by default) of ``self(x)`` against labels ``y``."""
        return self.criterion(self(x), y)

    def genotype(self, edge_rank: Literal["max_op", "importance"] = "max_op") -> Genotype:
        """The discrete cells the current alphas (and SGAS decisions, if any) select."""
        decided = any(c != UNDECIDED for t in CELL_TYPES for c in self._edge_ops[t])
        fixed = (self._edge_ops["normal"], self._edge_ops["reduce"]) if decided else None
        return derive_genotype(self.alpha_normal, self.alpha_reduce, self.nodes, fixed=fixed,
                               edge_rank=edge_rank)


def _sync_edge_ops_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """Refresh the Python mirror of the edge_ops buffers after load_state_dict (one sync, at load)."""
    assert isinstance(module, SuperNet)
    for cell_type in CELL_TYPES:
        module._edge_ops[cell_type] = [int(c) for c in getattr(module, f"edge_ops_{cell_type}").tolist()]
