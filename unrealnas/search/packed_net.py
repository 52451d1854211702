"""S SuperNets as one seed-stacked network: every tensor holds the S seeds' channels side by side.

Layout: a per-seed tensor of C channels becomes S*C channels, seed-major (channels
``[s*C, (s+1)*C)`` are seed s). A conv of ``groups=g`` becomes ``groups=S*g`` with the S weights
concatenated on dim 0, so seed s only ever reads seed s; a BN over S*C channels keeps per-channel
batch statistics, i.e. per seed; pooling, ReLU and skip are per channel anyway. The classifier is
one batched matmul over (S, classes, C). Every parameter and buffer is seed-major on dim 0, so
seed s's slice of any tensor is ``t.view(S, -1)[s]`` (``seed_slice``). The only layout-aware code
is where channels are concatenated (a cell's nodes, FactorizedReduce's halves): per seed.

Kernels are shared by the seeds, so an iteration of S packed seeds dispatches the ops of one
(plus a handful): the point of packing on a launch-bound GPU. The cells run the fused cell
computation (``unrealnas.nas.fused``, ``fused=True``, the default) with the seed axis inside each
edge block: a fused group stacks E edges of S*C channels (``[edge, seed, C]``), its grouped convs get
S times the groups, one BN covers all, and the weighted op sums are one matmul per seed;
``fused=False`` runs every op of every edge (``PackedSearchCell``, the readable reference). The op weights come in as
``(S, edges, ops)`` rows (``SuperNet.forward(op_weights=...)`` semantics: every non-``none`` op runs;
an SGAS-decided edge is a one-hot row, a pruned edge a zero row), so all seeds run one graph.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from unrealnas.nas.fused import BatchNormStats, CellPlan, check_batchnorms, fused_cell_forward, make_plan
from unrealnas.nas.fused import cat_per_seed as _cat_per_seed
from unrealnas.nas.genotype import UNDECIDED, num_edges
from unrealnas.nas.ops import PRIMITIVES, FactorizedReduce
from unrealnas.nas.supernet import ALPHA_NAMES, CELL_TYPES, SearchCell, SuperNet


class PackedFactorizedReduce(FactorizedReduce):
    """FactorizedReduce whose two halves are concatenated per seed."""

    seeds: int

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Concatenate the even- and odd-pixel convs per seed and normalise."""
        x = self.relu(x)
        shifted = x
        if x.shape[-1] % 2 or x.shape[-2] % 2:
            shifted = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2))
        out = _cat_per_seed([self.conv_1(x), self.conv_2(shifted[:, :, 1:, 1:])], self.seeds)
        return self.bn(out)


class PackedSearchCell(SearchCell):
    """A search cell whose output concatenates its nodes per seed; every edge is weighted (no branching)."""

    seeds: int

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, weights: Sequence[Sequence[torch.Tensor]],
                edge_ops: Sequence[int] = ()) -> torch.Tensor:
        """Cell output; ``weights[e][k]`` is a (S*C, 1, 1) tensor (seed s's weight on its C channels)."""
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for _ in range(self.nodes):
            node: torch.Tensor | None = None
            for h in states:
                y = self.edges[e](h, weights[e], UNDECIDED)
                node = y if node is None else node + y
                e += 1
            assert node is not None
            states.append(node)
        return _cat_per_seed(states[2:], self.seeds)


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


def _pack_children(packed: nn.Module, sources: Sequence[nn.Module], seeds: int) -> None:
    for name, child in list(packed.named_children()):
        group = [getattr(m, name) for m in sources]
        if isinstance(child, nn.Conv2d):
            setattr(packed, name, _pack_conv(group))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(packed, name, _pack_bn(group))
        elif isinstance(child, nn.Linear):
            setattr(packed, name, PackedLinear([m.weight for m in group], [m.bias for m in group]))
        else:
            if isinstance(child, FactorizedReduce):
                child.__class__ = PackedFactorizedReduce
                child.seeds = seeds
            elif isinstance(child, SearchCell):
                child.__class__ = PackedSearchCell
                child.seeds = seeds
            _pack_children(child, group, seeds)


class PackedSuperNet(nn.Module):
    """S seeds' SuperNets (same hyper-parameters) packed into one network; see the module docstring."""

    def __init__(self, supernets: Sequence[SuperNet], fused: bool = True) -> None:
        """``fused``: run the cells with the fused kernels (seed axis folded in); False: every op per edge."""
        super().__init__()
        if not supernets:
            raise ValueError("packing needs at least one supernet")
        # The packing walks the per-edge modules (one conv per op per edge); a fused supernet holds the
        # very same modules (it only runs them differently), so either engine packs.
        self.seeds = len(supernets)
        ref = supernets[0]
        self.nodes = ref.nodes
        body = copy.deepcopy(ref)
        _pack_children(body, supernets, self.seeds)
        # the cells and the head of the packed network; alphas and SGAS state stay per seed, outside
        self.stem, self.cells, self.global_pooling, self.classifier = (body.stem, body.cells, body.global_pooling,
                                                                        body.classifier)
        # channels of each cell's nodes (per seed): the width its op weights are expanded to
        self.cell_channels = [cell.preprocess1.op[1].out_channels // self.seeds for cell in self.cells]
        self.fused = bool(fused)
        self._plans: dict[str, CellPlan] = {}
        if self.fused:
            for cell in self.cells:
                check_batchnorms(cell)
            norms = [m for m in self.modules() if isinstance(m, nn.BatchNorm2d)]
            conv, norm = self.stem  # a conv and its BN (SuperNet's stem), normalised with the cells' BNs
            if not (isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d) and norm.affine
                    and norm.track_running_stats and norm.eps == 1e-5 and norm.momentum == norms[-1].momentum):
                raise TypeError(f"the fused packed supernet needs SuperNet's stem (conv, affine BN), got {self.stem}")
            k = num_edges(self.nodes)
            self._plans = {t: make_plan(self.nodes, t == "reduce", [UNDECIDED] * k, len(PRIMITIVES))
                           for t in CELL_TYPES}

    def forward(self, x: torch.Tensor, op_weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """(N, S, classes) logits for images ``x`` (N, S*in_channels, H, W); op_weights (S, edges, ops) each."""
        device_type = x.device.type
        if torch.is_autocast_enabled(device_type):
            dtype = torch.get_autocast_dtype(device_type)
            op_weights = tuple(w.to(dtype) for w in op_weights)
        if self.fused:
            return self.classifier(self.global_pooling(self._fused_cells(x, op_weights)).flatten(1))
        cache: dict[tuple[int, int], list[tuple[torch.Tensor, ...]]] = {}
        s0 = s1 = self.stem(x)
        for cell, c in zip(self.cells, self.cell_channels, strict=True):
            t = int(cell.reduction)
            if (t, c) not in cache:
                w = op_weights[t]  # (S, E, K) -> (E, K, S*C, 1, 1): seed s's weight on its C channels
                e, k = w.shape[1], w.shape[2]
                w = w.permute(1, 2, 0).unsqueeze(-1).expand(e, k, self.seeds, c).reshape(e, k, self.seeds * c, 1, 1)
                cache[(t, c)] = [r.unbind(0) for r in w.unbind(0)]
            s0, s1 = s1, cell(s0, s1, cache[(t, c)])
        out = self.global_pooling(s1).flatten(1)
        return self.classifier(out)


    def _stem(self, x: torch.Tensor, bn: BatchNormStats) -> torch.Tensor:
        # The stem's BN joins the cells' one update of the running statistics: every buffer of a
        # PackedSearch is a view of one flat tensor, so an in-place update after the stem BN had saved
        # its running statistics for backward would invalidate them (shared version counter).
        conv, norm = self.stem
        return bn.normalize(conv(x), [[norm]], affine=norm)

    def _fused_cells(self, x: torch.Tensor, op_weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # every edge fused (decisions are op-weight rows); BN running statistics written once, at the end
        coefs = {t: self._plans[t].coefficients(w, self.training) for t, w in zip(CELL_TYPES, op_weights, strict=True)
                 if any(c.reduction == (t == "reduce") for c in self.cells)}
        bn = BatchNormStats(self.training)
        s0 = s1 = self._stem(x, bn)
        for cell in self.cells:
            t = "reduce" if cell.reduction else "normal"
            s0, s1 = s1, fused_cell_forward(cell, self._plans[t], s0, s1, coefs[t], bn, self.seeds)
        bn.flush()
        return s1


def seed_slice(t: torch.Tensor, seeds: int, s: int, shape: torch.Size) -> torch.Tensor:
    """Seed ``s``'s part of a seed-major packed tensor, shaped like the per-seed tensor."""
    return t.reshape(seeds, -1)[s].view(shape)


def packed_losses(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(S,) mean cross-entropy per seed of (N, S, classes) logits against (N, S) labels."""
    return F.cross_entropy(logits.float().permute(0, 2, 1), y, reduction="none").mean(0)


def op_weight_rows(alphas: Sequence[torch.Tensor], fixed: Sequence[torch.Tensor] | None,
                   undecided: Sequence[torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, E, K) op weights per cell type: softmax(alpha), or the fixed one-hot / zero row of SGAS edges."""
    out = []
    for i in range(len(CELL_TYPES)):
        w = F.softmax(alphas[i].float(), dim=-1)
        if fixed is not None and undecided is not None:
            w = torch.where(undecided[i], w, fixed[i])
        out.append(w)
    return out[0], out[1]


__all__ = ["ALPHA_NAMES", "PackedSuperNet", "op_weight_rows", "packed_losses", "seed_slice"]
