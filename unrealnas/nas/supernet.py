"""The DARTS search network (supernet): mixed ops on every edge, weighted by softmax(alpha).

One class for a search of one seed and for S seeds packed side by side (``seeds=S``, or
``SuperNet.pack(nets)`` of S one-seed supernets). Its forward is the fused engine
(``unrealnas.nas.fused``): the edges that read one state run as one set of kernels, and with S
seeds every tensor holds the S seeds' channels side by side, seed-major, so one kernel serves all
seeds (see ``pack``). The module tree is the per-edge one (one module per op per edge), which is
also the ``state_dict`` layout; ``fused=False`` runs that tree edge by edge instead
(``unrealnas.nas.per_edge``, the readable reference the engine is tested against).

Differences from the DARTS reference, on purpose:
- the alphas are ``nn.Parameter``s of the module, so they live in ``state_dict()`` and a search
  can resume (the reference kept them outside);
- the ``none`` op is never run: it adds ``w_none * 0``, which changes neither the output nor any
  gradient (alpha_none still gets its gradient through the softmax normalisation);
- PC-DARTS (``partial_channels`` = K): each edge's ops have C/K channels and read the first C/K
  channels of their state, the rest bypasses them (max-pooled 2x2 on a stride-2 edge); the two
  parts are concatenated and channel-shuffled (K groups), and every edge output is scaled by its
  node's softmax-normalised ``beta`` (edge normalisation). The betas are parameters next to the
  alphas (``beta_normal``, ``beta_reduce``, one per edge) and enter the genotype's edge ranking;
- SGAS edge decisions are part of the module (``edge_ops_*`` buffers, mirrored as Python lists
  so that no forward syncs with the device) and enter the fused forward as op-weight rows: a
  decided edge is a one-hot row, a pruned edge a zero row (the per-edge reference branches: a
  decided edge runs its one op, a pruned edge is skipped).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from unrealnas.config.schema import RECOMPUTE
from unrealnas.nas.fused import (
    BatchNormStats,
    CellPlan,
    check_batchnorms,
    checkpointed_cell_forward,
    fused_cell_forward,
    make_plan,
)
from unrealnas.nas.genotype import UNDECIDED, Genotype, derive_genotype, normalised_betas, num_edges
from unrealnas.nas.ops import NONE_INDEX, POOLING_OPS, PRIMITIVES, FactorizedReduce, ReLUConvBN, get_op
from unrealnas.nas.per_edge import mixed_op, per_edge_forward, search_cell

ALPHA_NAMES = ("alpha_normal", "alpha_reduce")
BETA_NAMES = ("beta_normal", "beta_reduce")  # PC-DARTS edge normalisation (partial_channels set)
ARCH_NAMES = ALPHA_NAMES + BETA_NAMES
CELL_TYPES = ("normal", "reduce")


class MixedOp(nn.Module):
    """One search edge: every candidate op (non-affine BN), summed with the edge's op weights."""

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
        """The per-edge reference (``unrealnas.nas.per_edge.mixed_op``)."""
        return mixed_op(self, x, weights, fixed_op)


class SearchCell(nn.Module):
    """A search cell: two preprocessed inputs, ``nodes`` intermediate nodes, all edges mixed."""

    def __init__(self, nodes: int, C_prev_prev: int, C_prev: int, C: int, reduction: bool,
                 reduction_prev: bool, partial: int = 1) -> None:
        """``partial`` = K: the edges' ops see C/K channels (PC-DARTS; 1 = every channel, DARTS)."""
        super().__init__()
        if C % partial:
            raise ValueError(f"{C} channels do not split into {partial} partial-channel groups")
        self.reduction = reduction
        self.nodes = nodes
        self.C = C
        self.partial = partial
        self.C_op = C // partial  # channels each candidate op sees
        if reduction_prev:
            self.preprocess0: nn.Module = FactorizedReduce(C_prev_prev, C, affine=False)
        else:
            self.preprocess0 = ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=False)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList()
        for i in range(nodes):
            for j in range(i + 2):
                # Only edges from the two cell inputs stride in a reduction cell.
                self.edges.append(MixedOp(self.C_op, 2 if reduction and j < 2 else 1))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]],
                edge_ops: Sequence[int]) -> torch.Tensor:
        """The per-edge reference (``unrealnas.nas.per_edge.search_cell``)."""
        return search_cell(self, s0, s1, weights, edge_ops)


class PackedLinear(nn.Module):
    """S independent linear layers: (N, S*C) -> (N, S, classes), weight (S, classes, C), bias (S, classes)."""

    def __init__(self, weights: Sequence[torch.Tensor], biases: Sequence[torch.Tensor]) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.stack([w.detach() for w in weights]))
        self.bias = nn.Parameter(torch.stack([b.detach() for b in biases]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Per-seed logits."""
        s, k, c = self.weight.shape
        out = torch.baddbmm(self.bias.unsqueeze(1), x.view(-1, s, c).transpose(0, 1), self.weight.transpose(1, 2))
        return out.transpose(0, 1)


class SuperNet(nn.Module):
    """The DARTS search network: stem, ``layers`` search cells, global pool, linear classifier.

    With ``seeds`` = S > 1 it is S independent supernets (each initialised from the RNG in turn)
    packed into one (see ``pack``): inputs (N, S*in_channels, H, W), logits (N, S, classes),
    alphas and SGAS decisions per seed ((S, edges, ops) and (S, edges)).
    """

    def __init__(self, C: int, num_classes: int, layers: int, nodes: int = 4, stem_multiplier: int = 3,
                 alpha_init: Literal["zeros", "randn"] = "zeros", in_channels: int = 3,
                 criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                 fused: bool = True, seeds: int = 1, partial_channels: int | None = None) -> None:
        """``fused``: the fused engine (default); False: the per-edge reference (one seed only).

        ``partial_channels`` = K: PC-DARTS (1/K of each edge's channels through its ops, edge
        normalisation betas); None: DARTS.
        """
        super().__init__()
        if alpha_init not in ("zeros", "randn"):
            raise ValueError(f"alpha_init must be 'zeros' or 'randn', got {alpha_init!r}")
        if seeds < 1 or (seeds > 1 and not fused):
            raise ValueError(f"seeds={seeds}: one or more, and the per-edge reference runs one seed")
        if partial_channels is not None and (partial_channels < 1 or not fused):
            raise ValueError(f"partial_channels={partial_channels}: K >= 1, in the fused supernet (the per-edge "
                             "reference is DARTS's)")
        if seeds > 1:
            nets = [SuperNet(C, num_classes, layers, nodes, stem_multiplier, alpha_init, in_channels, criterion,
                             partial_channels=partial_channels) for _ in range(seeds)]
            self.__dict__.update(SuperNet.pack(nets).__dict__)
            return
        self.C, self.num_classes, self.layers, self.nodes = C, num_classes, layers, nodes
        self.seeds, self.stacked = 1, False
        self.partial_channels = partial_channels
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
            self.cells.append(SearchCell(nodes, C_prev_prev, C_prev, C_curr, reduction, reduction_prev,
                                         partial_channels or 1))
            reduction_prev = reduction
            C_prev_prev, C_prev = C_prev, nodes * C_curr
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier: nn.Module = nn.Linear(C_prev, num_classes)

        k, n_ops = num_edges(nodes), len(PRIMITIVES)
        # UnrealNAS initialises alphas to zero (uniform softmax); the DARTS reference used 1e-3 randn.
        for name in ALPHA_NAMES:
            init = torch.zeros(k, n_ops) if alpha_init == "zeros" else 1e-3 * torch.randn(k, n_ops)
            self.register_parameter(name, nn.Parameter(init))
        if partial_channels is not None:  # drawn after the alphas: DARTS's draws are unchanged
            for name in BETA_NAMES:  # PC-DARTS: 1e-3 randn (model_search.py); zeros = uniform, as the alphas
                self.register_parameter(name, nn.Parameter(torch.zeros(k) if alpha_init == "zeros"
                                                           else 1e-3 * torch.randn(k)))
        for cell_type in CELL_TYPES:
            self.register_buffer(f"edge_ops_{cell_type}", torch.full((k,), UNDECIDED, dtype=torch.long))
        self._finish_init(fused)

    def _finish_init(self, fused: bool) -> None:
        # Python mirror of the edge_ops buffers: forward never reads them from the device.
        self._edge_ops: dict[str, list] = {t: getattr(self, f"edge_ops_{t}").tolist() for t in CELL_TYPES}
        self._rows: dict[tuple, tuple[list[torch.Tensor], list[torch.Tensor]] | None] = {}
        self.register_load_state_dict_post_hook(_sync_edge_ops_after_load)
        self.fused = bool(fused)
        self.recompute = "none"  # search.recompute: "cell" recomputes each cell's activations in backward
        if self.fused:
            for cell in self.cells:
                check_batchnorms(cell)
            conv, norm = self.stem  # a conv and its BN, normalised with the cells' BNs (BatchNormStats)
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.affine
                    and norm.track_running_stats and norm.eps == 1e-5):
                raise TypeError(f"the fused supernet needs a stem of a conv and an affine BN, got {self.stem}")
        self._plans: dict[str, CellPlan] = {t: make_plan(self.nodes, t == "reduce", len(PRIMITIVES))
                                            for t in CELL_TYPES}

    @classmethod
    def pack(cls, nets: Sequence[SuperNet]) -> SuperNet:
        """S one-seed supernets (same hyper-parameters) as one seed-stacked supernet (copies; see below).

        A per-seed tensor of C channels becomes S*C channels, seed-major (channels ``[s*C, (s+1)*C)``
        are seed s). A conv of ``groups=g`` becomes ``groups=S*g`` with the S weights concatenated on
        dim 0, so seed s only ever reads seed s; a BN over S*C channels keeps per-channel batch
        statistics, i.e. per seed; pooling, ReLU and skip are per channel anyway. The classifier is
        one batched matmul over (S, classes, C). Every parameter and buffer is seed-major on dim 0,
        so seed s's part of any tensor is ``t.reshape(S, -1)[s]`` (``seed_slice``); alphas are
        (S, edges, ops), decisions (S, edges). S = 1 is allowed (logits (N, 1, classes)).
        """
        if not nets or any(n.stacked for n in nets) or (len(nets) > 1 and not all(n.fused for n in nets)):
            raise ValueError("pack one or more one-seed supernets (the per-edge reference: one only)")
        ref, S = nets[0], len(nets)
        out = cls.__new__(cls)
        nn.Module.__init__(out)
        out.C, out.num_classes, out.layers, out.nodes = ref.C, ref.num_classes, ref.layers, ref.nodes
        out.seeds, out.stacked, out.criterion = S, True, ref.criterion
        out.partial_channels = ref.partial_channels
        body = copy.deepcopy(ref)
        _pack_children(body, nets)
        out.stem, out.cells, out.global_pooling, out.classifier = body.stem, body.cells, body.global_pooling, \
            body.classifier
        for name in ALPHA_NAMES + (BETA_NAMES if ref.partial_channels is not None else ()):
            out.register_parameter(name, nn.Parameter(torch.stack([getattr(n, name).detach() for n in nets])))
        for t in CELL_TYPES:
            out.register_buffer(f"edge_ops_{t}", torch.stack([getattr(n, f"edge_ops_{t}") for n in nets]))
        out._finish_init(ref.fused)
        return out

    # ------------------------------------------------------------------ parameters

    def arch_parameters(self) -> list[nn.Parameter]:
        """The architecture weights ``[alpha_normal, alpha_reduce]`` (each [seeds x] edges x ops), then
        with PC-DARTS ``[beta_normal, beta_reduce]`` (each [seeds x] edges)."""
        if self.partial_channels is not None:
            return [self.alpha_normal, self.alpha_reduce, self.beta_normal, self.beta_reduce]
        return [self.alpha_normal, self.alpha_reduce]

    def named_weight_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        """(name, parameter) for every network weight, i.e. everything but the alphas (and betas)."""
        return ((n, p) for n, p in self.named_parameters() if n not in ARCH_NAMES)

    def weight_parameters(self) -> list[nn.Parameter]:
        """Every network weight (the weight optimizer's parameters), i.e. everything but the alphas."""
        return [p for _, p in self.named_weight_parameters()]

    # ------------------------------------------------------------------ SGAS edge state

    def edge_ops(self, cell_type: str) -> tuple:
        """Per edge of ``cell_type``: UNDECIDED (-1), a decided op index, or 0 (``none``) if pruned
        (stacked: one such tuple per seed)."""
        codes = self._edge_ops[cell_type]
        return tuple(tuple(c) for c in codes) if self.stacked else tuple(codes)

    def set_edge_ops(self, normal: Sequence, reduce: Sequence) -> None:
        """Set the SGAS decisions of both cell types (see ``edge_ops``; stacked: one list per seed)."""
        k = num_edges(self.nodes)
        for cell_type, codes in zip(CELL_TYPES, (normal, reduce), strict=True):
            rows = [[int(c) for c in r] for r in codes] if self.stacked else [[int(c) for c in codes]]
            if len(rows) != self.seeds or any(len(r) != k or any(not UNDECIDED <= c < len(PRIMITIVES) for c in r)
                                              for r in rows):
                raise ValueError(f"{cell_type} edge ops must be {k} codes in -1..{len(PRIMITIVES) - 1}"
                                 + (f" for each of {self.seeds} seeds" if self.stacked else ""))
            self._edge_ops[cell_type] = rows if self.stacked else rows[0]
            buf = getattr(self, f"edge_ops_{cell_type}")
            buf.copy_(torch.tensor(rows if self.stacked else rows[0], dtype=torch.long))
        self._rows.clear()

    def frozen_alpha_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Boolean ([seeds,] edges) masks of the alpha rows that must not change (decided or pruned edges)."""
        return self.edge_ops_normal != UNDECIDED, self.edge_ops_reduce != UNDECIDED

    def decided(self) -> bool:
        """Whether any edge of any seed is decided or pruned."""
        flat = [c for t in CELL_TYPES for c in _flatten(self._edge_ops[t])]
        return any(c != UNDECIDED for c in flat)

    # ------------------------------------------------------------------ forward

    def alpha_softmax(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Softmax over ops of (alpha_normal, alpha_reduce), in fp32."""
        return F.softmax(self.alpha_normal.float(), dim=-1), F.softmax(self.alpha_reduce.float(), dim=-1)

    def edge_weights(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """PC-DARTS: ([seeds,] edges) betas softmax-normalised over each node's incoming edges, in fp32;
        None without partial channels."""
        if self.partial_channels is None:
            return None
        return (normalised_betas(self.beta_normal.float(), self.nodes),
                normalised_betas(self.beta_reduce.float(), self.nodes))

    def op_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """([seeds,] edges, ops) weights of every op: softmax(alpha), or the SGAS row (one-hot if decided,
        zero if pruned); no host sync."""
        w = self.alpha_softmax()
        rows = self._decision_rows(w[0].device)
        if rows is None:
            return w
        fixed, undecided = rows
        return torch.where(undecided[0], w[0], fixed[0]), torch.where(undecided[1], w[1], fixed[1])

    def _decision_rows(self, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]] | None:
        if device not in self._rows:
            if not self.decided():
                self._rows[device] = None
            else:
                fixed, undecided = [], []
                for t in CELL_TYPES:
                    c = torch.tensor(self._edge_ops[t], dtype=torch.long)
                    onehot = F.one_hot(c.clamp(min=0), len(PRIMITIVES)).float()
                    onehot[c == NONE_INDEX] = 0.0  # pruned: a zero row
                    fixed.append(onehot.to(device))
                    undecided.append((c == UNDECIDED).unsqueeze(-1).to(device))
                self._rows[device] = (fixed, undecided)
        return self._rows[device]

    def forward(self, x: torch.Tensor,
                op_weights: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Class logits for images ``x`` (N, [seeds *] in_channels, H, W): (N, classes) or stacked (N, S, classes).

        ``op_weights``: (w_normal, w_reduce), each ([seeds,] edges, ops), used instead of
        ``op_weights()`` (the softmax of the alphas with the SGAS rows).
        """
        if op_weights is None and not self.fused:  # the per-edge reference branches on the decisions
            return per_edge_forward(self, x, *self.alpha_softmax(), self._edge_ops)
        if op_weights is None:
            op_weights = self.op_weights()
        w_normal, w_reduce = op_weights
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            # Weights in the autocast dtype, cast once: an fp32 scalar would make autocast
            # promote every weighted sum to fp32.
            dtype = torch.get_autocast_dtype(device_type)
            w_normal, w_reduce = w_normal.to(dtype), w_reduce.to(dtype)
        if not self.fused:  # one seed (a stacked per-edge net: its seed axis of length 1 dropped)
            k = num_edges(self.nodes)
            if self.stacked:
                w_normal, w_reduce = w_normal[0], w_reduce[0]
            return per_edge_forward(self, x, w_normal, w_reduce, {t: [UNDECIDED] * k for t in CELL_TYPES})
        return self.classifier(self.global_pooling(self._fused_cells(x, (w_normal, w_reduce))).flatten(1))

    def _fused_cells(self, x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # One weight map per cell type (all cells of a type share alphas and decisions); the BN
        # running statistics of every fused edge (and the stem's) are written once, after the last
        # cell: an in-place update while the forward still holds them for backward would invalidate
        # them when the buffers are views of one tensor (the engine's flat buffers).
        betas = self.edge_weights()
        if betas is not None:
            # PC-DARTS: an edge's output is beta_e * shuffle(cat(mixed op, bypass)); the shuffle is linear,
            # so the mixed part's op weights become w[e, op] * beta_e (the same matmul) and the bypass
            # gets beta_e alone (fused_cell_forward)
            betas = tuple(b.to(w.dtype) for b, w in zip(betas, weights, strict=True))
            weights = (weights[0] * betas[0].unsqueeze(-1), weights[1] * betas[1].unsqueeze(-1))
        coefs = {t: self._plans[t].coefficients(w, self.training) for t, w in zip(CELL_TYPES, weights, strict=True)
                 if any(c.reduction == (t == "reduce") for c in self.cells)}
        bypass = None if betas is None else {t: self._plans[t].bypass_coefficients(b) for t, b in
                                             zip(CELL_TYPES, betas, strict=True) if t in coefs}
        bn = BatchNormStats(self.training)
        conv, norm = self.stem
        s0 = s1 = bn.normalize(conv(x), [[norm]], affine=norm)
        if self.recompute not in RECOMPUTE:
            raise ValueError(f"recompute={self.recompute!r}: choose {' or '.join(RECOMPUTE)}")
        # recompute only where a backward will come (training with grad); not under vmap (functional tests)
        cell_forward = (checkpointed_cell_forward if self.recompute == "cell" and self.training
                        and torch.is_grad_enabled() and not torch._C._functorch.is_batchedtensor(x)
                        else fused_cell_forward)
        for cell in self.cells:
            t = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, cell_forward(cell, self._plans[t], s0, s1, coefs[t], bn, self.seeds,
                                      None if bypass is None else bypass[t])
        bn.flush()
        return s1

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training criterion (cross-entropy by default) of ``self(x)`` against labels ``y``."""
        return self.criterion(self(x), y)

    def genotype(self, edge_rank: Literal["max_op", "importance"] = "max_op") -> Genotype:
        """The discrete cells the current alphas (and SGAS decisions, if any) select (one seed)."""
        if self.stacked:
            raise ValueError("a stacked supernet has one genotype per seed: derive them from each seed's alphas")
        fixed = (self._edge_ops["normal"], self._edge_ops["reduce"]) if self.decided() else None
        betas = None if self.partial_channels is None else (self.beta_normal, self.beta_reduce)
        return derive_genotype(self.alpha_normal, self.alpha_reduce, self.nodes, fixed=fixed,
                               edge_rank=edge_rank, betas=betas)


def seed_slice(t: torch.Tensor, seeds: int, s: int, shape: torch.Size) -> torch.Tensor:
    """Seed ``s``'s part of a seed-major packed tensor, shaped like the per-seed tensor."""
    return t.reshape(seeds, -1)[s].view(shape)


def _flatten(codes: list) -> list[int]:
    return [c for r in codes for c in r] if codes and isinstance(codes[0], list) else list(codes)


def _pack_conv(convs: Sequence[nn.Conv2d]) -> nn.Conv2d:
    c = convs[0]
    s = len(convs)
    out = nn.Conv2d(s * c.in_channels, s * c.out_channels, c.kernel_size, stride=c.stride, padding=c.padding,
                    dilation=c.dilation, groups=s * c.groups, bias=c.bias is not None,
                    device=c.weight.device, dtype=c.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(torch.cat([m.weight for m in convs]))
        if c.bias is not None:
            out.bias.copy_(torch.cat([m.bias for m in convs]))
    return out


def _pack_bn(bns: Sequence[nn.BatchNorm2d]) -> nn.BatchNorm2d:
    b = bns[0]
    out = nn.BatchNorm2d(len(bns) * b.num_features, eps=b.eps, momentum=b.momentum, affine=b.affine,
                         track_running_stats=b.track_running_stats, device=b.running_mean.device)
    with torch.no_grad():
        if b.affine:
            out.weight.copy_(torch.cat([m.weight for m in bns]))
            out.bias.copy_(torch.cat([m.bias for m in bns]))
        out.running_mean.copy_(torch.cat([m.running_mean for m in bns]))
        out.running_var.copy_(torch.cat([m.running_var for m in bns]))
        out.num_batches_tracked.copy_(max(m.num_batches_tracked for m in bns))
    return out


def _pack_children(packed: nn.Module, sources: Sequence[nn.Module]) -> None:
    for name, child in list(packed.named_children()):
        group = [getattr(m, name) for m in sources]
        if isinstance(child, nn.Conv2d):
            setattr(packed, name, _pack_conv(group))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(packed, name, _pack_bn(group))
        elif isinstance(child, nn.Linear):
            setattr(packed, name, PackedLinear([m.weight for m in group], [m.bias for m in group]))
        else:
            _pack_children(child, group)


def _sync_edge_ops_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """Refresh the Python mirror of the edge_ops buffers after load_state_dict (one sync, at load)."""
    assert isinstance(module, SuperNet)
    for cell_type in CELL_TYPES:
        module._edge_ops[cell_type] = getattr(module, f"edge_ops_{cell_type}").tolist()
    module._rows.clear()
