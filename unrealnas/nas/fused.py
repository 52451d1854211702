"""The fused search cell: the edges that read the same state run their candidate ops as one set of kernels.

Same parameters as the per-edge cell (``SearchCell``, the readable reference): every kernel's weight
is built inside forward by stacking the per-edge parameters, so ``state_dict()`` keys, shapes and
checkpoints are those of the per-edge supernet. Edges are grouped by the state they read; with
4 nodes the 14 edges of a cell form 4 groups, each run as one chain of kernels::

    group 0: s0, s1 -> nodes 0..3 (8 edges; stride 2 in a reduction cell; s0, s1 share one BN)
    group 1: node 0 -> nodes 1..3 (3 edges)      group 2: node 1 -> nodes 2, 3 (2 edges)
    group 3: node 2 -> node 3     (1 edge)

    inside a group of E edges (channel blocks of C, stacked edge-major):

    x ─ relu ─ index [e: 2 copies] ─┬─ dw 5x5       [e: sep3 (3x3 zero-padded), sep5] ─ 1x1 (2E groups)
     │                              │                                    ─ BN ─ relu ─ dw 5x5 [e: sep3, sep5] ─┐
     │                              └─ dw 5x5 dil 2 [e: dil3 (zero-padded), dil5] ─────────────────────────────┤
     │                                   cat [e: sep3, sep5] [e: dil3, dil5] ─ 1x1 (4E groups) ─ q ────────────┤
     ├─ max pool ─ [source] (training; eval: [e], each edge's own running statistics) ─────────────────────────┤
     ├─ avg pool ─ [source] ───────────────────────────────────────────────────────────────────────────────────┤
     ├─ relu, even | odd pixels ─ index [e] ─ 1x1 (2E groups): skips of stride-2 edges (FactorizedReduce) ─────┤
     │                                                                       cat ─ one non-affine BN ─ z ──────┤
     └─ identity skip (stride 1) ─────────────────────────────────────────────────────────────── cat [z, x] ───┤
                     weighted op sum and node sums: one batched matmul, (nodes fed, rows) @ rows ──────────────┘

The 5x5 depthwise kernels are exact: a zero-padded 3x3 kernel with padding 2 computes the 3x3 conv
with padding 1, and dil_conv_3x3 (3x3, dilation 2, padding 2) is a zero-padded 5x5 with dilation 2,
padding 4, as dil_conv_5x5. ``none`` is never computed. Non-affine BN normalises each channel by its
own batch statistics, so one BN over the stacked channels is the per-edge math; in training the
running statistics of every per-edge BN module are updated from the batch statistics once per
forward (``BatchNormStats``). The op weights enter only through the matmul's coefficients, one
linear map of the (edges, ops) op weights per cell type (``CellPlan.coefficients``). Every edge is
fused: SGAS decisions are op-weight rows (a decided edge a one-hot row, a pruned edge a zero row),
so the network never branches on them and one captured graph serves every decision state.

Packed seeds (``SuperNet.pack``, ``seeds`` = S > 1) run this same computation with the
seed axis folded into every channel block: a block of C channels becomes S*C, seed-major (``[edge,
seed, C]`` in a group's stack), so the depthwise convs are unchanged, the pointwise and
FactorizedReduce convs get S times the groups (a packed conv's weight is already seed-major), one BN
still covers the stack, and the weighted op sum is one batched matmul over seeds, (S, slots, rows) @
(S, rows, N*C*H*W), each seed with its own op weights. Only the FactorizedReduce halves and a cell's
node concat are reordered per seed (``cat_per_seed``).

PC-DARTS (a cell with ``partial`` = K > 1 or edge betas): the groups above run on the first C/K
channels of each seed's state (``C_op``), with op weights already multiplied by each edge's
normalised beta; the other channels bypass the ops (max-pooled 2x2 on stride-2 edges) and are summed
per node with the betas alone (one einsum per group); a node is then the per-seed channel shuffle
(K groups) of [mixed part, bypass part]. The shuffle is a fixed permutation, so shuffling the node
sum equals summing the shuffled edge outputs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from unrealnas.nas.ops import PRIMITIVES, FactorizedReduce, ReLUConvBN

_OP = {name: PRIMITIVES.index(name) for name in PRIMITIVES}
SEP3, SEP5, DIL3, DIL5 = _OP["sep_conv_3x3"], _OP["sep_conv_5x5"], _OP["dil_conv_3x3"], _OP["dil_conv_5x5"]
MAX, AVG, SKIP = _OP["max_pool_3x3"], _OP["avg_pool_3x3"], _OP["skip_connect"]
if set(PRIMITIVES) != {"none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3",
                       "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}:
    raise ImportError("the fused supernet implements the 8 DARTS ops; extend unrealnas.nas.fused first")


# ----------------------------------------------------------------------------- BN statistics


class BatchNormStats:
    """Non-affine BN over stacked channels, with the running statistics of the per-edge modules.

    In training, ``normalize`` uses batch statistics and remembers them; ``flush`` then updates every
    per-edge module's running mean/var (momentum and the unbiased variance of ``nn.BatchNorm2d``) and
    ``num_batches_tracked`` with three foreach ops for the whole forward. A channel block may stand
    for several modules (the pooling BNs of the edges that read one state see the same batch, so
    in training one block serves them all). In eval mode it normalises with the concatenated running
    statistics of the modules (one module per block).
    """

    def __init__(self, training: bool) -> None:
        self.training = training
        self.blocks: list[Sequence[nn.BatchNorm2d]] = []
        self.means: list[torch.Tensor] = []
        self.invstds: list[torch.Tensor] = []
        self.counts: list[tuple[int, int]] = []  # (channels, values per channel) per normalize call
        self.sizes: list[int] = []  # channels per block

    def normalize(self, x: torch.Tensor, blocks: Sequence[Sequence[nn.BatchNorm2d]],
                  affine: nn.BatchNorm2d | None = None) -> torch.Tensor:
        """BN of ``x`` (N, channels, H, W); the k-th channel block belongs to the modules ``blocks[k]``.

        ``affine``: the one (affine) module of all of ``x``, whose weight and bias scale the output.
        """
        eps = blocks[0][0].eps
        weight, bias = (affine.weight, affine.bias) if affine is not None else (None, None)
        if not self.training:
            if any(len(b) != 1 for b in blocks):
                raise ValueError("eval-mode BN needs one module per channel block (its own running statistics)")
            mean = torch.cat([b[0].running_mean for b in blocks])
            var = torch.cat([b[0].running_var for b in blocks])
            return F.batch_norm(x, mean, var, weight, bias, False, 0.0, eps)
        out, mean, invstd = torch.native_batch_norm(x, weight, bias, None, None, True, 0.0, eps)
        self.blocks.extend(blocks)
        self.sizes += [x.shape[1] // len(blocks)] * len(blocks)
        self.means.append(mean)
        self.invstds.append(invstd)
        self.counts.append((x.shape[1], x.numel() // x.shape[1]))
        return out

    @torch.no_grad()
    def flush(self) -> None:
        """Apply the remembered batch statistics to the per-edge modules' running buffers."""
        if not self.blocks:
            return
        first = next(m for b in self.blocks for m in b)
        eps, momentum = first.eps, first.momentum
        sizes = self.sizes
        mean = torch.cat(self.means)
        invstd = torch.cat(self.invstds)
        # nn.BatchNorm2d keeps the unbiased variance: biased var = invstd^-2 - eps, times n / (n - 1).
        factor = _unbiased_factor(self.counts, invstd)
        var = (invstd.pow(-2) - eps) * factor
        dtype = first.running_mean.dtype
        mean_blocks, var_blocks = mean.to(dtype).split(sizes), var.to(dtype).split(sizes)
        pairs = [(m, k) for k, b in enumerate(self.blocks) for m in b]
        means, vars_ = [mean_blocks[k] for _, k in pairs], [var_blocks[k] for _, k in pairs]
        rms, rvs = [m.running_mean for m, _ in pairs], [m.running_var for m, _ in pairs]
        counters = [m.num_batches_tracked for m, _ in pairs]
        if torch._C._functorch.is_batchedtensor(mean):
            # under vmap (packed seeds: per-seed buffers) foreach ops have no batching rule
            for r, t in zip(rms + rvs, means + vars_, strict=True):
                r.mul_(1.0 - momentum).add_(t, alpha=momentum)  # lerp_ has no batching rule
            for c in counters:
                c.add_(1)
            self._clear()
            return
        torch._foreach_lerp_(rms, means, momentum)
        torch._foreach_lerp_(rvs, vars_, momentum)
        torch._foreach_add_(counters, 1)
        self._clear()

    def _clear(self) -> None:
        self.blocks, self.means, self.invstds, self.counts, self.sizes = [], [], [], [], []


_FACTORS: dict[tuple, torch.Tensor] = {}


def _unbiased_factor(counts: list[tuple[int, int]], like: torch.Tensor) -> torch.Tensor:
    # n / (n - 1) per channel, a constant of the shapes: built once per shape signature and device.
    key = (tuple(counts), like.device, like.dtype)
    f = _FACTORS.get(key)
    if f is None:
        f = torch.cat([torch.full((c,), n / max(n - 1, 1), dtype=like.dtype) for c, n in counts]).to(like.device)
        if len(_FACTORS) > 64:
            _FACTORS.clear()
        _FACTORS[key] = f
    return f


def check_batchnorms(cell: nn.Module) -> None:
    """Raise TypeError unless every BN of a search cell is one ``BatchNormStats`` stands in for."""
    for m in cell.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not (
                isinstance(m, nn.BatchNorm2d) and m.affine is False and m.track_running_stats
                and isinstance(m.momentum, float) and m.eps == 1e-5):
            raise TypeError(f"the fused supernet needs non-affine BatchNorm2d (momentum, eps 1e-5), got {m}")


# ----------------------------------------------------------------------------- the plan of a cell


@dataclass
class Group:
    """The fused edges that read one or two states (see the module docstring)."""

    sources: tuple[int, ...]  # state indices read (0, 1 = the cell inputs; 2 + i = node i)
    edges: tuple[int, ...]  # fused edge indices, in stacking order
    src_pos: tuple[int, ...]  # per edge: position of its source in ``sources``
    node0: int  # first node this group feeds; its output has one slot per node node0..nodes-1
    stride: int
    index: dict[tuple, torch.Tensor] = field(default_factory=dict)  # cached channel indices per device

    def rows(self, training: bool) -> list[tuple[tuple[int, ...], int]]:
        """(edge positions, op) of each C-channel block of the batch-normalised stack ``z``, in order.

        In training a pooling block serves every edge of its source (same batch statistics); in eval
        each edge has its own (its own running statistics).
        """
        E = range(len(self.edges))
        rows = [((k,), op) for k in E for op in (SEP3, SEP5)] + [((k,), op) for k in E for op in (DIL3, DIL5)]
        if training:
            rows += [(tuple(k for k in E if self.src_pos[k] == p), op) for op in (MAX, AVG)
                     for p in range(len(self.sources))]
        else:
            rows += [((k,), op) for op in (MAX, AVG) for k in E]
        return rows + ([((k,), SKIP) for k in E] if self.stride == 2 else [])

    def idx(self, name: str, C: int, device: torch.device, seeds: int = 1) -> torch.Tensor:
        """Channel indices into the stacked sources (``seeds`` x C channels each, seed-major): ``rep``
        (conv input per edge and conv chain), ``pool`` (max then avg pool per edge), ``fr`` (per edge,
        per seed: even then odd pixels, the order of a packed FactorizedReduce's output)."""
        key = (name, C, device, seeds)
        t = self.index.get(key)
        if t is None:
            n = len(self.sources)
            if name == "fr":
                vals = [(k * n + p) * seeds * C + s * C + c for p in self.src_pos for s in range(seeds)
                        for k in range(2) for c in range(C)]
            else:
                if name == "rep":
                    blocks = [p for p in self.src_pos for _ in range(2)]
                else:
                    blocks = [k * n + p for k in range(2) for p in self.src_pos]
                vals = [b * seeds * C + c for b in blocks for c in range(seeds * C)]
            t = self.index[key] = torch.tensor(vals, dtype=torch.long, device=device)
        return t


@dataclass
class CellPlan:
    """The fused groups of a cell (every edge, grouped by the state it reads) and the op-weight map."""

    nodes: int
    groups: list[Group]
    # per training mode: nonzero entries of the weight map, (row of coef, edge*ops+op), and per group
    # the size of its (slots, rows [+ sources]) coefficient block
    coef_index: dict[bool, list[tuple[int, int]]]
    coef_sizes: dict[bool, list[int]]
    maps: dict[tuple, torch.Tensor] = field(default_factory=dict)
    modules: dict[nn.Module, CellModules] = field(default_factory=dict)  # per cell that runs this plan

    @property
    def fused_edges(self) -> list[int]:
        """Every fused edge, group-major (the stacking order of the per-cell weights)."""
        return [e for g in self.groups for e in g.edges]

    def coefficients(self, w: torch.Tensor, training: bool) -> list[torch.Tensor]:
        """Per group its (slots, rows [+ sources]) weights of ``z`` [and the identity skips], from w (edges, ops);
        from packed seeds' w (S > 1, edges, ops) one (slots, rows [+ sources], S) block per group."""
        key = (w.device, w.dtype, training)
        gmap = self.maps.get(key)
        if gmap is None:
            gmap = torch.zeros(sum(self.coef_sizes[training]), w.shape[-2] * w.shape[-1], dtype=w.dtype)
            for r, c in self.coef_index[training]:
                gmap[r, c] = 1.0
            gmap = self.maps[key] = gmap.to(w.device)
        if w.dim() == 3 and w.shape[0] > 1:  # packed seeds: every seed's weight map application as one matmul, seeds innermost
            flat = torch.mm(gmap, w.reshape(w.shape[0], -1).t()).split(self.coef_sizes[training])
            return [f.view(self.nodes - g.node0, -1, w.shape[0]) for f, g in zip(flat, self.groups, strict=True)]
        flat = torch.mv(gmap, w.reshape(-1)).split(self.coef_sizes[training])
        return [f.view(self.nodes - g.node0, -1) for f, g in zip(flat, self.groups, strict=True)]


    def bypass_coefficients(self, beta: torch.Tensor) -> list[torch.Tensor]:
        """PC-DARTS: per group the (slots, sources, S, 1) normalised betas ([S,] edges) of the edge from each
        source to each node it feeds (the weights of the bypassed channels), one gather for the cell type."""
        b = beta.reshape(-1, beta.shape[-1])  # (S, edges)
        key = ("bypass", b.device)
        idx = self.maps.get(key)
        if idx is None:  # node i's edges start at i(i+3)/2, as SearchCell numbers them; built once (graph capture)
            rows = [(i * (i + 3)) // 2 + j for g in self.groups for i in range(g.node0, self.nodes) for j in g.sources]
            idx = self.maps[key] = torch.tensor(rows, dtype=torch.long, device=b.device)
        flat = b.index_select(1, idx).t()  # (rows, S)
        sizes = [(self.nodes - g.node0) * len(g.sources) for g in self.groups]
        return [f.view(self.nodes - g.node0, len(g.sources), b.shape[0], 1)
                for f, g in zip(flat.split(sizes), self.groups, strict=True)]


def make_plan(nodes: int, reduction: bool, n_ops: int) -> CellPlan:
    """The fused layout of a cell: its edges grouped by the state they read."""
    edge_of: dict[tuple[int, int], int] = {}  # (node i, state j) -> edge, numbered as in SearchCell
    for i in range(nodes):
        for j in range(i + 2):
            edge_of[(i, j)] = len(edge_of)
    groups: list[Group] = []
    coef_index: dict[bool, list[tuple[int, int]]] = {True: [], False: []}
    coef_sizes: dict[bool, list[int]] = {True: [], False: []}
    for sources in [(0, 1)] + [(s,) for s in range(2, nodes + 1)]:
        node0 = 0 if sources == (0, 1) else sources[0] - 1
        members = sorted((e, sources.index(j), i) for (i, j), e in edge_of.items() if j in sources)
        stride = 2 if reduction and sources == (0, 1) else 1
        g = Group(sources, tuple(m[0] for m in members), tuple(m[1] for m in members), node0, stride)
        slots = nodes - node0
        for training in (True, False):
            index, row0 = coef_index[training], sum(coef_sizes[training])
            rows = g.rows(training)
            width = len(rows) + (len(sources) if stride == 1 else 0)
            for r, (ks, op) in enumerate(rows):  # coef[slot, r] = w[edge, op] for the node each edge feeds
                for k in ks:
                    edge, _, node = members[k]
                    index.append((row0 + (node - node0) * width + r, edge * n_ops + op))
            if stride == 1:  # identity skips: coef[slot, rows + source]
                for edge, pos, node in members:
                    index.append((row0 + (node - node0) * width + len(rows) + pos, edge * n_ops + SKIP))
            coef_sizes[training].append(slots * width)
        groups.append(g)
    return CellPlan(nodes, groups, coef_index, coef_sizes)


# ----------------------------------------------------------------------------- weights


class _StackParams(torch.autograd.Function):
    """``torch.stack`` of per-edge parameters whose backward is one ``unbind`` (not one select each)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(*ws: torch.Tensor) -> torch.Tensor:  # noqa: D102 - autograd.Function protocol
        return torch.stack(ws)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: D102
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, ...]:  # noqa: D102
        return grad.unbind(0)


@dataclass
class _GroupModules:
    act1: nn.Module  # the ReLU every conv op of the group starts with
    act2: nn.Module  # the ReLU of the second separable stage
    max_pool: nn.Module
    avg_pool: nn.Module
    bn1: list[list[nn.BatchNorm2d]]  # BN blocks after the first pointwise conv
    bnz: dict[bool, list[list[nn.BatchNorm2d]]]  # BN blocks of ``z``, per training mode


@dataclass
class CellModules:
    """The per-edge modules the fused kernels of one cell read, in stacking order (looked up once)."""

    dw_small: list[nn.Module]  # 3x3 depthwise convs (zero-padded to 5x5), kind-major then group-major
    dw_large: list[nn.Module]  # the 5x5 partner of each
    dw_sizes: list[int]
    pw: list[nn.Module]
    pw_sizes: list[int]
    fr: list[nn.Module]  # FactorizedReduce convs of the strided group (conv_1, conv_2 per edge)
    groups: list[_GroupModules]
    pre_bn: list[nn.BatchNorm2d]


def cell_modules(cell: nn.Module, plan: CellPlan, seeds: int = 1) -> CellModules:
    """The modules of ``cell`` that ``plan`` fuses, cached on the plan (module lookups cost Python time).

    ``seeds``: the cell's modules are packed seeds' (``SuperNet.pack``), S*C channels each.
    """
    cm = plan.modules.get(cell)
    if cm is not None:
        return cm
    C = cell.C_op * seeds  # channels per edge block (the ops' channels: C/K with partial channels)
    per_group = [[cell.edges[e].ops for e in g.edges] for g in plan.groups]
    kinds = (lambda o: (o[SEP3].op[0].op[1], o[SEP5].op[0].op[1]),
             lambda o: (o[SEP3].op[1].op[1], o[SEP5].op[1].op[1]),
             lambda o: (o[DIL3].op[1], o[DIL5].op[1]))
    pairs = [pair(o) for pair in kinds for ops in per_group for o in ops]
    pw = []
    for ops in per_group:
        pw += [m.op[0].op[2] for o in ops for m in (o[SEP3], o[SEP5])]
        pw += [m.op[1].op[2] for o in ops for m in (o[SEP3], o[SEP5])]
        pw += [m.op[2] for o in ops for m in (o[DIL3], o[DIL5])]
    fr = [c for g, ops in zip(plan.groups, per_group, strict=True) if g.stride == 2
          for o in ops for c in (o[SKIP].conv_1, o[SKIP].conv_2)]
    groups = []
    for g, ops in zip(plan.groups, per_group, strict=True):
        first = ops[0]
        # Activation and pooling are the group's own modules (the same on every edge, as SuperNet builds
        # them), so a network whose modules were swapped (tests: softplus for a smooth net) fuses too.
        groups.append(_GroupModules(
            first[SEP3].op[0].op[0], first[SEP3].op[1].op[0], first[MAX][0], first[AVG][0],
            [[m[op].op[0].op[3]] for m in ops for op in (SEP3, SEP5)],
            {t: [[_bn_of(ops[j], op) for j in ks] for ks, op in g.rows(t)] for t in (True, False)}))
    pre_bn = []
    for m in (cell.preprocess0, cell.preprocess1):
        if not isinstance(m, FactorizedReduce | ReLUConvBN):
            raise TypeError(f"the fused supernet preprocesses with ReLUConvBN or FactorizedReduce, got {m}")
        pre_bn.append(m.bn if isinstance(m, FactorizedReduce) else m.op[2])
    cm = plan.modules[cell] = CellModules(
        [a for a, _ in pairs], [b for _, b in pairs], [2 * len(ops) * C for _ in kinds for ops in per_group],
        pw, [s * C for ops in per_group for s in (2 * len(ops), 4 * len(ops))], fr, groups, pre_bn)
    return cm


def cell_weights(cm: CellModules, C: int, seeds: int = 1) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per-group kernel weights stacked from the per-edge parameters (read now, so functional calls work).

    Depthwise: one 5x5 tensor for all of the cell, 3x3 kernels zero-padded; each group's ``dw1``,
    ``dw2``, ``dwd`` is ``[e, (sep3 | sep5) or (dil3 | dil5), C]``. Pointwise: ``pw1`` is
    ``[e, (sep3 | sep5)]``, ``pw2`` is ``[e, (sep3 | sep5)]`` then ``[e, (dil3 | dil5)]``. ``C`` is the
    channels of one seed; with packed seeds each block above is seed-major (a packed conv's weight).
    """
    small = F.pad(_StackParams.apply(*[m.weight for m in cm.dw_small]), (1, 1, 1, 1))
    dw = torch.stack([small, _StackParams.apply(*[m.weight for m in cm.dw_large])], 1).view(-1, 1, 5, 5)
    chunks = dw.split(cm.dw_sizes)
    n = len(cm.groups)
    out = {name: chunks[k * n:(k + 1) * n] for k, name in enumerate(("dw1", "dw2", "dwd"))}
    chunks = _StackParams.apply(*[m.weight for m in cm.pw]).view(-1, C, 1, 1).split(cm.pw_sizes)
    out["pw1"], out["pw2"] = chunks[0::2], chunks[1::2]
    if cm.fr:  # only the first group of a reduction cell; its skips are FactorizedReduce
        fr = _StackParams.apply(*[m.weight for m in cm.fr])  # [e, parity, seed, C/2 out]
        if seeds > 1:  # to [e, seed, parity]: the output order of a packed FactorizedReduce
            fr = fr.view(-1, 2, seeds, fr.shape[1] // seeds, C).transpose(1, 2)
        out["fr"] = (fr.reshape(-1, C, 1, 1),)
    return out


# ----------------------------------------------------------------------------- forward


def _group_forward(C: int, g: Group, gm: _GroupModules, k: int, x: torch.Tensor,
                   weights: dict[str, tuple[torch.Tensor, ...]], coef: torch.Tensor, bn: BatchNormStats,
                   seeds: int = 1) -> torch.Tensor:
    """Contributions (N, slots, S, C, H', W') of group ``g`` (k-th of the plan) to nodes node0..nodes-1.

    ``C`` is one seed's channels; with S packed ``seeds`` every channel block is S*C (seed-major), the
    pointwise convs get S times the groups and ``coef`` is (slots, rows, S): one weighted sum per seed.
    """
    N = x.shape[0]
    E, st, S = len(g.edges), g.stride, seeds
    dev = x.device
    xr = gm.act1(x)
    rep = xr.index_select(1, g.idx("rep", C, dev, S))  # [e, 2 chains, S, C]
    d1 = F.conv2d(rep, weights["dw1"][k], stride=st, padding=2, groups=2 * E * S * C)
    dd = F.conv2d(rep, weights["dwd"][k], stride=st, padding=4, dilation=2, groups=2 * E * S * C)
    b1 = bn.normalize(F.conv2d(d1, weights["pw1"][k], groups=2 * E * S), gm.bn1)
    d2 = F.conv2d(gm.act2(b1), weights["dw2"][k], padding=2, groups=2 * E * S * C)
    q = F.conv2d(torch.cat([d2, dd], 1), weights["pw2"][k], groups=4 * E * S)
    pools = [gm.max_pool(x), gm.avg_pool(x)]
    if bn.training:  # one block per (pool, source): see Group.rows
        parts = [q, *pools]
    else:
        parts = [q, torch.cat(pools, 1).index_select(1, g.idx("pool", C, dev, S))]
    if st == 2:
        parts.append(_factorized_reduce(xr, g, weights["fr"][0], S))
    z = bn.normalize(torch.cat(parts, 1), gm.bnz[bn.training])
    if st == 1:  # the identity skips join the stack after BN (one copy instead of a second matmul)
        z = torch.cat([z, x], 1)
    # weighted op sum and node sums in one batched matmul: (slots, rows) @ (rows, C*H*W) per image
    # (coef follows z: a float64 network gets fp32 alpha softmax weights, as the per-edge path promotes)
    # returned as (N, slots, S, C, H', W'), contiguous (the node sums then view it as (N, S*C, H', W'))
    rows = coef.shape[1]
    L = z.shape[1] * z.shape[2] * z.shape[3] // (rows * S)
    if S == 1:  # (slots, rows) over the images: a batched matmul, no relayout
        return torch.bmm(coef.to(z.dtype).expand(N, -1, -1), z.reshape(N, rows, L)).view(N, -1, 1, C, *z.shape[-2:])
    # per seed, read in place: z's rows are [row, seed] for every image, so one block-diagonal
    # (slots*S, rows*S) matrix per image does every seed's sum with no relayout of z or of the output
    # (the zero blocks cost FLOPs a bandwidth-bound GPU does not notice; a non-finite value of one seed
    # reaches the others through them, and the whole pack stops as a NonFiniteError anyway)
    block = coef.to(z.dtype).unsqueeze(1) * _eye(S, z).view(1, S, 1, S)  # [slot, seed, row, seed']
    out = torch.bmm(block.view(1, -1, rows * S).expand(N, -1, -1), z.reshape(N, rows * S, L))
    return out.view(N, -1, S, C, *z.shape[-2:])


_EYES: dict[tuple, torch.Tensor] = {}


def _eye(S: int, like: torch.Tensor) -> torch.Tensor:
    # the (S, S) identity, built once per size, device and dtype (no op per forward)
    key = (S, like.device, like.dtype)
    if key not in _EYES:
        _EYES[key] = torch.eye(S, device=like.device, dtype=like.dtype)
    return _EYES[key]


def _bn_of(ops: nn.ModuleList, op: int) -> nn.Module:
    # the BN that ends op ``op`` of an edge (the second one of a separable conv)
    if op in (SEP3, SEP5):
        return ops[op].op[1].op[3]
    if op in (DIL3, DIL5):
        return ops[op].op[3]
    if op in (MAX, AVG):
        return ops[op][1]
    return ops[op].bn  # FactorizedReduce skip


def cat_per_seed(parts: Sequence[torch.Tensor], seeds: int) -> torch.Tensor:
    """Concatenate seed-major channel blocks per seed: [a_s0, b_s0, a_s1, b_s1, ...] (plain cat for 1)."""
    if seeds == 1:
        return torch.cat(list(parts), 1)
    n, _, h, w = parts[0].shape
    return torch.cat([p.view(n, seeds, -1, h, w) for p in parts], dim=2).view(n, -1, h, w)


def _preprocess_convs(m: nn.Module, x: torch.Tensor, seeds: int) -> list[torch.Tensor]:
    # the conv outputs of a ReLUConvBN or FactorizedReduce cell-input preprocessing, before its BN
    if isinstance(m, FactorizedReduce):
        x = m.relu(x)
        shifted = F.pad(x, (0, x.shape[-1] % 2, 0, x.shape[-2] % 2)) if (x.shape[-1] % 2 or x.shape[-2] % 2) else x
        halves = [m.conv_1(x), m.conv_2(shifted[:, :, 1:, 1:])]
        return halves if seeds == 1 else [cat_per_seed(halves, seeds)]
    return [m.op[1](m.op[0](x))]


def _preprocess(cell: nn.Module, cm: CellModules, s0: torch.Tensor, s1: torch.Tensor,
                bn: BatchNormStats, seeds: int) -> torch.Tensor:
    """Both preprocessed cell inputs stacked (N, 2*S*C, H, W), with one BN: the first group's input."""
    convs = _preprocess_convs(cell.preprocess0, s0, seeds) + _preprocess_convs(cell.preprocess1, s1, seeds)
    return bn.normalize(torch.cat(convs, 1), [[m] for m in cm.pre_bn])


def _factorized_reduce(xr: torch.Tensor, g: Group, weight: torch.Tensor, seeds: int) -> torch.Tensor:
    """The FactorizedReduce convs of the group's edges (before their BN): (N, E*S*C, H/2, W/2)."""
    H, W = xr.shape[-2:]
    shifted = F.pad(xr, (0, W % 2, 0, H % 2)) if (H % 2 or W % 2) else xr
    both = torch.cat([xr[:, :, ::2, ::2], shifted[:, :, 1::2, 1::2]], 1)  # [parity, source, S, C]
    C = xr.shape[1] // (len(g.sources) * seeds)
    return F.conv2d(both.index_select(1, g.idx("fr", C, xr.device, seeds)), weight, groups=2 * len(g.edges) * seeds)


def fused_cell_forward(cell: nn.Module, plan: CellPlan, s0: torch.Tensor, s1: torch.Tensor,
                       coefs: list[torch.Tensor], bn: BatchNormStats, seeds: int = 1,
                       bypass: list[torch.Tensor] | None = None) -> torch.Tensor:
    """Cell output (concat of the nodes), the math of the per-edge cell (``unrealnas.nas.per_edge``) fused.

    ``seeds`` > 1: ``cell`` is a packed cell of S seeds (S*C seed-major channels per tensor, see
    ``SuperNet.pack``), ``coefs`` every seed's (``CellPlan.coefficients`` of (S, edges, ops)); the output
    concatenates the nodes per seed. ``bypass``: PC-DARTS (``CellPlan.bypass_coefficients`` of the
    normalised betas), the cell's ops seeing ``cell.C_op`` channels (``coefs`` then hold op weight x beta).
    """
    if bypass is not None:
        return _partial_cell_forward(cell, plan, s0, s1, coefs, bn, seeds, bypass)
    cm = cell_modules(cell, plan, seeds)
    inputs = _preprocess(cell, cm, s0, s1, bn, seeds)
    C = cell.C
    weights = cell_weights(cm, C, seeds)
    contrib: list[list[torch.Tensor]] = [[] for _ in range(plan.nodes)]
    states: list[torch.Tensor] = []
    for k, g in enumerate(plan.groups):  # group k reads the cell inputs (k = 0) or node k - 1
        if k > 0:  # every contribution to node k - 1 is in: earlier groups feed later nodes only
            states.append(_sum(contrib[k - 1]))
        x = inputs if k == 0 else states[-1]
        out = _group_forward(C, g, cm.groups[k], k, x, weights, coefs[k], bn, seeds)
        for slot, t in enumerate(out.unbind(1)):
            contrib[g.node0 + slot].append(t)
    states.append(_sum(contrib[plan.nodes - 1]))
    return cat_per_seed(states, seeds)


def _partial_cell_forward(cell: nn.Module, plan: CellPlan, s0: torch.Tensor, s1: torch.Tensor,
                          coefs: list[torch.Tensor], bn: BatchNormStats, seeds: int,
                          bypass: list[torch.Tensor]) -> torch.Tensor:
    """The PC-DARTS cell (see the module docstring): ops on C/K channels, the rest bypassed, shuffled per node."""
    cm = cell_modules(cell, plan, seeds)
    inputs = _preprocess(cell, cm, s0, s1, bn, seeds)
    C, Cp, S = cell.C, cell.C_op, seeds
    K = C // Cp
    weights = cell_weights(cm, Cp, seeds)
    contrib: list[list[torch.Tensor]] = [[] for _ in range(plan.nodes)]  # (N, S, C, H, W): [mixed | bypass]
    states: list[torch.Tensor] = []

    def node(i: int) -> torch.Tensor:
        # the channel shuffle of K groups per seed: channel g*Cp + c of [mixed | bypass] goes to c*K + g
        total = _sum_parts(contrib[i])
        n, _, _, h, w = total.shape
        return total.view(n, S, K, Cp, h, w).transpose(2, 3).reshape(n, S * C, h, w)

    for k, g in enumerate(plan.groups):
        if k > 0:
            states.append(node(k - 1))
        x = inputs if k == 0 else states[-1]
        n, _, h, w = x.shape
        src = x.view(n, len(g.sources), S, C, h, w)
        part = src[:, :, :, :Cp].reshape(n, -1, h, w)  # [source, seed, Cp]: the group's input layout
        rest = src[:, :, :, Cp:]
        if g.stride == 2 and C == Cp:  # K = 1: nothing bypasses (an empty tensor of the strided size)
            rest = rest[..., ::2, ::2]
        elif g.stride == 2:  # the bypassed channels of a reduction edge: 2x2 max pool (PC-DARTS MixedOp);
            # ceil_mode: an odd size rounds up as the strided ops do (even sizes: the reference's pool)
            rest = F.max_pool2d(rest.reshape(n, -1, h, w), 2, 2, ceil_mode=True)
            rest = rest.view(n, len(g.sources), S, C - Cp, *rest.shape[-2:])
        out = _group_forward(Cp, g, cm.groups[k], k, part, weights, coefs[k], bn, seeds)  # (N, slots, S, Cp, h', w')
        # bypass sums per node: (N, 1, sources, S, X) x (slots, sources, S, 1), summed over the sources
        byp = (rest.flatten(3).unsqueeze(1) * bypass[k].to(rest.dtype)).sum(2)
        both = torch.cat([out, byp.view(n, plan.nodes - g.node0, S, C - Cp, *rest.shape[-2:])], dim=3)
        for slot, t in enumerate(both.unbind(1)):
            contrib[g.node0 + slot].append(t)
    states.append(node(plan.nodes - 1))
    return cat_per_seed(states, seeds)


def _sum_parts(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    total = parts[0]
    for t in parts[1:]:
        total = total + t
    return total


def checkpointed_cell_forward(cell: nn.Module, plan: CellPlan, s0: torch.Tensor, s1: torch.Tensor,
                              coefs: list[torch.Tensor], bn: BatchNormStats, seeds: int = 1,
                              bypass: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``fused_cell_forward`` keeping only its inputs for backward, which runs it again (``search.recompute=cell``).

    Exact: the recomputation runs the same kernels on the same inputs and weights (nothing in the
    cell is random, and the weights do not change between a forward and its backward), so the
    gradients are those of the plain forward. BN running statistics are taken once: the forward
    records its batch statistics in ``bn`` (flushed after the last cell, as without recomputation);
    the recomputation records into a throwaway ``BatchNormStats``, so no running buffer moves twice.
    """
    pending = [bn]

    def run(a: torch.Tensor, b: torch.Tensor, *c: torch.Tensor) -> torch.Tensor:
        stats = pending.pop() if pending else BatchNormStats(bn.training)  # second call: the recomputation
        if bypass is not None:  # PC-DARTS: the bypass coefficients ride after the op coefficients
            return fused_cell_forward(cell, plan, a, b, list(c[:len(coefs)]), stats, seeds, list(c[len(coefs):]))
        return fused_cell_forward(cell, plan, a, b, list(c), stats, seeds)

    # non-reentrant: works with torch.autograd.grad (every DARTS order) and checks the recomputed shapes;
    # no RNG state to restore (the supernet draws no random numbers)
    extra = () if bypass is None else tuple(bypass)
    return checkpoint(run, s0, s1, *coefs, *extra, use_reentrant=False, preserve_rng_state=False)


def _sum(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    # one node's contributions, each (N, S, C, H, W) (possibly strided), as an (N, S*C, H, W) state
    total = parts[0]
    for t in parts[1:]:
        total = total + t
    return total.flatten(1, 2)
