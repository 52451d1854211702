"""The search engine: every DARTS / SGAS search runs here, one seed or S seeds packed in one network.

One iteration (``SearchEngine.iteration``) is the architecture step (first-order DARTS, SGAS, or
second-order DARTS with per-seed finite differences), then the weight step (SGD with momentum and
weight decay, per-seed gradient clipping), for every seed at once, on one seed-stacked supernet
(``SuperNet.pack``). Which edges and seeds share a kernel::

    seeds s = 0..S-1 (their own data, labels, init, alphas, optimizers, SGAS decisions)
        |  inputs stacked on channels: (N, S*3, H, W), seed-major
        v
    stem conv (groups=S) ─ BN over S*C channels (per-channel statistics = per seed)
        v
    cell k:  preprocess (groups=S)
             group 0: s0, s1 ─> nodes 0..3   8 edges x S seeds x {sep3, sep5, dil3, dil5}: one depthwise
             group 1: node 0 ─> nodes 1..3   conv, one grouped pointwise conv, one BN per stage; pools on
             group 2: node 1 ─> nodes 2, 3   the source once; FactorizedReduce skips as one grouped conv
             group 3: node 2 ─> node 3       op sums: one (S, slots, rows) @ (S, rows, N*C*H*W) bmm
        v
    global pool ─ classifier: one (S, classes, C) bmm ─> logits (N, S, classes), losses (S,)

So an iteration of S seeds dispatches about the ops of one (the point of packing on a launch-bound
GPU), and S = 1 is an ordinary search. Per seed, exactly as a search on its own: data order,
validation stream, SGD and Adam state (elementwise, so a stacked step is S independent steps),
gradient clipping with the seed's own norm, the second-order finite-difference step from the
seed's own norm, SGAS decisions as op-weight rows with the weights, momentum and BN statistics of
switched-off ops left untouched (a search of one seed never runs those ops). Every weight is a
view into one flat tensor (param-major, seed-major inside each parameter), so clipping and SGD are
a few elementwise kernels whatever the number of parameters.

On CUDA the whole iteration can be replayed as one CUDA graph (``search.cuda_graph``), captured
and checked against an eager iteration by :class:`unrealnas.cuda_graph.GraphedStep`. The engine's
state is the master during the loop; before a seed checkpoints, logs, evaluates or decides, the
engine copies its slice back into that seed's :class:`~unrealnas.search.state.SearchRun`
(``to_runs``), which is the checkpoint layout of a search of one seed: a packed run and a run of
one seed resume each other's checkpoints.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf

from unrealnas.atomic import write_bytes_atomic, write_json_atomic
from unrealnas.config.compose import to_yaml
from unrealnas.config.methods import method as method_facts
from unrealnas.config.overrides import override_key
from unrealnas.config.schema import RECOMPUTE
from unrealnas.cuda_graph import GraphedStep
from unrealnas.errors import ConfigError, NonFiniteError
from unrealnas.lock import folder_lock
from unrealnas.nas.genotype import UNDECIDED
from unrealnas.nas.supernet import CELL_TYPES, SuperNet
from unrealnas.observe import RunBoard, bar
from unrealnas.rundir import CONFIG_FILE, METRICS_FILE, PROVENANCE_FILE, RESULT_FILE, is_complete
from unrealnas.runtime import apply_threads, autocast, autocast_dtype, provenance, resolve_device, threads_of
from unrealnas.search.graphs import graph_off_reason, use_cuda_graph
from unrealnas.search.state import (
    FAULT_ENV,
    SearchRun,
    _trim_metrics,
    ensure_dataset,
    finish,
    search_run_dir,
)

ENGINES = ("fused", "per_edge")  # search.supernet: the engine, or the per-edge reference (one seed, bench/tests)
HVP_R = 0.01  # second order: finite-difference radius r, eps = r / ||v|| (DARTS reference)


@dataclass(frozen=True)
class StepSettings:
    """What an iteration needs besides the networks: method, precision, clipping, graph policy."""

    method: str = "darts"
    grad_clip: float = 5.0
    amp: str = "off"
    channels_last: bool = False
    cuda_graph: str = "auto"
    compile: bool = False
    supernet: str = "fused"
    recompute: str = "none"  # search.recompute (RECOMPUTE): what backward recomputes instead of keeping

    @classmethod
    def from_search(cls, s: DictConfig, channels_last: bool) -> StepSettings:
        """The settings of a ``search`` config group (``channels_last`` as resolved for the device)."""
        return cls(str(s.method), float(s.grad_clip), str(s.amp), bool(channels_last), str(s.cuda_graph),
                   bool(s.compile), str(s.supernet), str(s.get("recompute", "none")))


@dataclass
class SeedState:
    """One seed's network and optimizers: where the engine starts from and what ``to_runs`` writes back."""

    model: SuperNet
    optimizer: torch.optim.SGD
    arch_optimizer: torch.optim.Adam


class SearchEngine:
    """S seeds' searches as one network and one iteration (see the module docstring)."""

    def __init__(self, seeds: Sequence[SeedState], settings: StepSettings, device: torch.device,
                 say: Callable[[str], None] = lambda _m: None) -> None:
        self.seeds_state, self.settings, self.device, self.say = list(seeds), settings, device, say
        self.S = len(self.seeds_state)
        if settings.supernet not in ENGINES:
            raise ConfigError(f"search.supernet={settings.supernet!r}: choose {' or '.join(ENGINES)}")
        models = [st.model for st in self.seeds_state]
        if settings.supernet == "per_edge" and self.S != 1:
            # the readable reference (timed by the bench, checked by the tests) runs one seed, edge by edge
            raise ConfigError("search.supernet=per_edge runs one seed (the reference); pack seeds with fused")
        if settings.recompute not in RECOMPUTE:
            raise ConfigError(f"search.recompute={settings.recompute!r}: choose {' or '.join(RECOMPUTE)}")
        if settings.recompute != "none" and settings.supernet != "fused":
            raise ConfigError(f"search.recompute={settings.recompute} runs in the fused supernet: "
                              "use search.supernet=fused or search.recompute=none")
        self.net = SuperNet.pack(models).to(device)
        self.net.recompute = settings.recompute
        self.second_order = method_facts(settings.method).second_order
        self.graph_setting = settings.cuda_graph
        self.cuda_graph = use_cuda_graph(settings.cuda_graph, device, settings.method)
        self.graph_off_reason = graph_off_reason(settings.cuda_graph, device, settings.method)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per run: let cuDNN pick its fastest kernels
        self.forward = torch.compile(self.net) if settings.compile else self.net
        self.alphas = self.net.arch_parameters()
        self.params = self.net.weight_parameters()
        self.names = [n for n, _ in self.net.named_weight_parameters()]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.offsets: list[int] = []
        o = 0
        for p in self.params:
            self.offsets.append(o)
            p.data = self.flat[o:o + p.numel()].view_as(p)
            o += p.numel()
        self.grad_flat = torch.empty_like(self.flat)
        self.grad_views = [self.grad_flat[o:o + p.numel()].view_as(p) for p, o in zip(self.params, self.offsets,
                                                                                       strict=True)]
        # the float buffers (BN running statistics) likewise: one tensor, so that those of ops an SGAS
        # decision switched off can be put back after each iteration (a one-seed search does not run them)
        buffers = dict(self.net.named_buffers())
        self.buf_names = [n for n, b in buffers.items() if b.is_floating_point()]
        self.flat_buf = torch.cat([buffers[n].reshape(-1) for n in self.buf_names])
        self.buf_offsets: list[int] = []
        o = 0
        for n in self.buf_names:
            module_name, _, leaf = n.rpartition(".")
            self.buf_offsets.append(o)
            self.net.get_submodule(module_name)._buffers[leaf] = self.flat_buf[o:o + buffers[n].numel()].view_as(
                buffers[n])
            o += buffers[n].numel()
        self.counters = [n for n, b in buffers.items() if not b.is_floating_point() and n.endswith("num_batches_tracked")]
        self.counter_bufs = [buffers[n] for n in self.counters]  # updated in place: looked up once, not per pass
        # num_batches_tracked is one counter per packed BN; a seed whose op was switched off keeps its own
        self.frozen_counts: dict[tuple[int, str], int] = {}
        seed_buffers = [dict(m.named_buffers()) for m in models]
        for n in self.counters:
            for s_, own in enumerate(seed_buffers):
                if int(own[n]) != int(buffers[n]):
                    self.frozen_counts[(s_, n)] = int(own[n])
        self._per_seed_index()
        g0 = self.seeds_state[0].optimizer.param_groups[0]
        self.lr = torch.tensor(float(g0["lr"]), device=device)
        self.momentum, self.weight_decay = float(g0["momentum"]), float(g0["weight_decay"])
        self.momentum_buf: torch.Tensor | None = None
        a = self.seeds_state[0].arch_optimizer.param_groups[0]
        self.arch_optimizer = torch.optim.Adam(self.alphas, lr=a["lr"], betas=a["betas"],
                                               weight_decay=a["weight_decay"], capturable=self.cuda_graph)
        self._load_optimizer_states()
        self.decisions: tuple = ()
        self.decisions_version = 0
        self.frozen_rows: list[torch.Tensor] | None = None
        self.active: torch.Tensor | None = None
        self.active_buf: torch.Tensor | None = None
        self.refresh_decisions()
        self.graphed = (GraphedStep(self.iteration, device=device, state=self.graph_state, checked=self.graph_checked,
                                    strict=settings.cuda_graph == "on", say=say, setting_name="search.cuda_graph")
                        if self.cuda_graph else None)

    # ------------------------------------------------------------------ layout

    def _per_seed_index(self) -> None:
        # seed of every flat element, and the permutation that lists the flat tensor seed by seed: per-seed
        # norms are then one gather and one row reduction (no same-address atomics), whatever S
        S = self.S
        self.seg = self.perm = None
        if S == 1:
            return
        seg, perm = [], [[] for _ in range(S)]
        for p, o in zip(self.params, self.offsets, strict=True):
            n = p.numel() // S
            seg.append(torch.arange(S, dtype=torch.int32).repeat_interleave(n))
            for s in range(S):
                perm[s].append(torch.arange(o + s * n, o + (s + 1) * n, dtype=torch.int32))
        self.seg = torch.cat(seg).to(self.device)
        self.perm = torch.cat([t for per in perm for t in per]).to(self.device)

    def per_seed_norms(self, g: torch.Tensor) -> torch.Tensor:
        """(S,) L2 norms of each seed's part of a flat (param-major) tensor, in fp32."""
        if self.perm is None:  # one seed
            return torch.linalg.vector_norm(g.float()).reshape(1)
        return torch.linalg.vector_norm(g.index_select(0, self.perm).view(self.S, -1).float(), dim=1)

    def per_seed_scale(self, g: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
        """``g`` with seed s's part multiplied by ``coef[s]``."""
        return g * coef if self.seg is None else g * coef.index_select(0, self.seg)

    def _seed_range(self, i: int, s: int) -> slice:
        n = self.params[i].numel() // self.S
        return slice(self.offsets[i] + s * n, self.offsets[i] + (s + 1) * n)

    # ------------------------------------------------------------------ per-seed state in and out

    def _load_optimizer_states(self) -> None:
        bufs, have = [], False
        per_seed = [dict(st.model.named_parameters()) for st in self.seeds_state]
        for name in self.names:
            for st, params in zip(self.seeds_state, per_seed, strict=True):
                p = params[name]
                b = st.optimizer.state.get(p, {}).get("momentum_buffer")
                have = have or b is not None
                bufs.append(b.reshape(-1) if b is not None else torch.zeros(p.numel(), device=self.device))
        self.momentum_buf = torch.cat(bufs).to(self.device) if have else None
        for i, a in enumerate(self.alphas):
            states = [st.arch_optimizer.state.get(st.model.arch_parameters()[i]) for st in self.seeds_state]
            if any(states):
                step = states[0]["step"].clone()
                self.arch_optimizer.state[a] = {
                    "step": step.to(self.device) if self.cuda_graph else step,
                    "exp_avg": torch.stack([p["exp_avg"] for p in states]).to(self.device),
                    "exp_avg_sq": torch.stack([p["exp_avg_sq"] for p in states]).to(self.device)}

    @torch.no_grad()
    def to_runs(self) -> None:
        """Copy each seed's slice of weights, buffers, alphas and optimizer states into its SeedState."""
        buffers = dict(self.net.named_buffers())
        for s, st in enumerate(self.seeds_state):
            params = dict(st.model.named_parameters())
            for i, name in enumerate(self.names):
                p = params[name]
                p.copy_(self.flat[self._seed_range(i, s)].view_as(p))
                if self.momentum_buf is not None:
                    st.optimizer.state[p]["momentum_buffer"] = self.momentum_buf[self._seed_range(i, s)].view_as(p).clone()
            for name, b in st.model.named_buffers():
                if name.startswith("edge_ops_"):
                    continue  # the seed's own decisions are the master copy
                if b.is_floating_point():
                    b.copy_(buffers[name].reshape(self.S, -1)[s].view_as(b))
                else:
                    b.fill_(self.frozen_counts.get((s, name), int(buffers[name])))
            for i, a in enumerate(st.model.arch_parameters()):
                a.copy_(self.alphas[i][s])
                ast = self.arch_optimizer.state.get(self.alphas[i])
                if ast:
                    st.arch_optimizer.state[a] = {"step": ast["step"].detach().cpu().clone(),
                                                  "exp_avg": ast["exp_avg"][s].clone(),
                                                  "exp_avg_sq": ast["exp_avg_sq"][s].clone()}

    def set_lr(self, lr: float) -> None:
        """The weight learning rate of the coming iterations (a device tensor: graphs read it in place)."""
        self.lr.fill_(float(lr))

    def refresh_decisions(self) -> bool:
        """Take the seeds' SGAS decisions into the network (op-weight rows, frozen alpha rows, switched-off
        weights); True when they changed since the last call (a captured graph is then out of date)."""
        codes = tuple(tuple(st.model.edge_ops(t) for t in CELL_TYPES) for st in self.seeds_state)
        if codes == self.decisions:
            return False
        self.decisions = codes
        self.decisions_version += 1
        self.net.set_edge_ops([c[0] for c in codes], [c[1] for c in codes])
        if not self.net.decided():
            self.frozen_rows = self.active = self.active_buf = None
            return True
        self.frozen_rows = [m.unsqueeze(-1) for m in self.net.frozen_alpha_masks()]

        def switched_off(name: str, s: int) -> bool:
            # weights and BN statistics of ops a decision switched off: a one-seed search never runs them
            parts = name.split(".")
            if len(parts) < 6 or parts[0] != "cells" or parts[2] != "edges" or parts[4] != "ops":
                return False
            cell, edge, op = int(parts[1]), int(parts[3]), int(parts[5])
            code = codes[s][int(self.net.cells[cell].reduction)][edge]
            return code != UNDECIDED and op != code

        active = torch.ones(self.flat.numel(), dtype=torch.bool)
        for i, name in enumerate(self.names):
            for s in range(self.S):
                if switched_off(name, s):
                    active[self._seed_range(i, s)] = False
        self.active = active.to(self.device)
        buffers = dict(self.net.named_buffers())
        active_buf = torch.ones(self.flat_buf.numel(), dtype=torch.bool)
        for i, name in enumerate(self.buf_names):
            n = buffers[name].numel() // self.S
            for s in range(self.S):
                if switched_off(name, s):
                    active_buf[self.buf_offsets[i] + s * n:self.buf_offsets[i] + (s + 1) * n] = False
        self.active_buf = active_buf.to(self.device)
        for name in self.counters:
            for s in range(self.S):
                if switched_off(name, s):
                    self.frozen_counts.setdefault((s, name), int(buffers[name]))
        return True

    # ------------------------------------------------------------------ the iteration

    def _losses(self, x: torch.Tensor, y: torch.Tensor, net: Callable | None = None,
                amp: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """((S,) mean cross-entropy per seed, (N, S, classes) logits) of stacked images and labels."""
        w = self.net.op_weights()
        with autocast(self.device, autocast_dtype(self.device, self.settings.amp) if amp else None, cache=not self.cuda_graph):
            logits = (net or self.forward)(x, w)
        if logits.dim() == 2:  # the per-edge reference returns (N, classes)
            logits = logits.unsqueeze(1)
        n, S, k = logits.shape
        losses = F.cross_entropy(logits.float().reshape(n * S, k), y.reshape(n * S), reduction="none")
        return losses.view(n, S).mean(0), logits

    def alpha_grads(self, xv: torch.Tensor, yv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        """Every seed's alpha gradients, first or second order (DARTS eq. 7, per-seed finite differences)."""
        if not self.second_order:
            loss, _ = self._losses(xv, yv)
            return list(torch.autograd.grad(loss.sum(), self.alphas))
        # second order in fp32, as the DARTS reference (a finite difference in bf16 is mostly round-off)
        with torch.autocast(self.device.type, enabled=False):
            return self._unrolled_alpha_grads(xv, yv, x, y)

    def _unrolled_alpha_grads(self, xv: torch.Tensor, yv: torch.Tensor, x: torch.Tensor,
                              y: torch.Tensor) -> list[torch.Tensor]:
        # The extra passes (at w' and w +- eps v) run on the network itself with its flat weights
        # overwritten in place (no per-weight copies: a few elementwise kernels whatever the number
        # of weights); the weights, the BN running statistics and the batch counters are put back
        # after them, so that only the pass at w reaches the real network (train-mode BN normalises
        # by batch statistics: the outputs do not depend on the running buffers).
        loss, _ = self._losses(x, y, amp=False)
        g = self._flat_grads(torch.autograd.grad(loss.sum(), self.params))
        counters = self.counter_bufs
        with torch.no_grad():
            w0, buf0, count0 = self.flat.clone(), self.flat_buf.clone(), torch._foreach_mul(counters, 1)
            # virtual step w' = w - xi * (momentum * buf + g + wd * w): the exact next SGD step, xi = lr
            d = g.add(self.flat, alpha=self.weight_decay) if self.weight_decay else g
            if self.momentum and self.momentum_buf is not None:
                d = d.add(self.momentum_buf, alpha=self.momentum)
            self.flat.sub_(d * self.lr)
        del g, d
        try:
            # dalpha and v = dL_val/dw' at (w', alpha)
            loss, _ = self._losses(xv, yv, amp=False)
            grads = torch.autograd.grad(loss.sum(), [*self.alphas, *self.params])
            dalpha, v = grads[:len(self.alphas)], self._flat_grads(grads[len(self.alphas):])
            # mixed Hessian-vector product by central differences, eps_s = r / ||v_s|| for each seed s
            with torch.no_grad():
                R = HVP_R / self.per_seed_norms(v)  # (S,)
                step = self.per_seed_scale(v, R)
            sides = []
            for sign in (1.0, -1.0):
                with torch.no_grad():
                    torch.add(w0, step, alpha=sign, out=self.flat)
                loss, _ = self._losses(x, y, amp=False)
                sides.append(torch.autograd.grad(loss.sum(), self.alphas))
        finally:
            with torch.no_grad():
                self.flat.copy_(w0)
                self.flat_buf.copy_(buf0)
                torch._foreach_copy_(counters, count0)
        scale = (self.lr / (2 * R)).view(-1, 1, 1)  # xi / (2 eps_s) per seed
        return [da - (gp - gm) * scale for da, gp, gm in zip(dalpha, *sides, strict=True)]

    def _flat_grads(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        # the weights' gradients in the flat layout (param-major, seed-major inside each parameter):
        # one foreach copy into views made once (a cat of reshapes dispatches a view per weight);
        # the buffer is reused, so each caller consumes it before the next gradient comes
        torch._foreach_copy_(self.grad_views, list(grads))
        return self.grad_flat

    def arch_step(self, xv: torch.Tensor, yv: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> None:
        """One Adam step on every seed's alphas (frozen SGAS rows put back)."""
        grads = self.alpha_grads(xv, yv, x, y)
        saved = None
        if self.frozen_rows is not None:
            grads = [g.masked_fill(m, 0.0) for g, m in zip(grads, self.frozen_rows, strict=True)]
            saved = [a.detach().clone() for a in self.alphas]
        for a, g in zip(self.alphas, grads, strict=True):
            a.grad = g
        self.arch_optimizer.step()
        if saved is not None:
            # Adam's momentum would still move a frozen row with a zero gradient
            with torch.no_grad():
                for a, old, m in zip(self.alphas, saved, self.frozen_rows, strict=True):
                    a.copy_(torch.where(m, old, a))
        self.arch_optimizer.zero_grad(set_to_none=True)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every seed's weights with per-seed clipping; returns (losses, correct) per seed."""
        loss, logits = self._losses(x, y)
        grads = torch.autograd.grad(loss.sum(), self.params)
        with torch.no_grad():
            g = self._flat_grads(grads)
            if self.settings.grad_clip:
                # torch.nn.utils.clip_grad_norm_ per seed: coef = min(1, max_norm / (norm + 1e-6))
                coef = torch.clamp(self.settings.grad_clip / (self.per_seed_norms(g) + 1e-6), max=1.0)
                g = self.per_seed_scale(g, coef)
            self._sgd(g)
        return loss.detach(), (logits.argmax(-1) == y).sum(0)

    def _sgd(self, g: torch.Tensor) -> None:
        # torch.optim.SGD (momentum, no dampening or nesterov) on the flat weights; lr a device tensor
        if self.weight_decay:
            g = g.add(self.flat, alpha=self.weight_decay)
        old = (self.flat.clone(), None if self.momentum_buf is None else self.momentum_buf.clone()) \
            if self.active is not None else None
        if self.momentum:
            if self.momentum_buf is None:
                self.momentum_buf = g.clone()
            else:
                self.momentum_buf.mul_(self.momentum).add_(g)
            g = self.momentum_buf
        self.flat.sub_(g * self.lr)
        if old is not None:
            self.flat.copy_(torch.where(self.active, self.flat, old[0]))
            if self.momentum_buf is not None and old[1] is not None:
                self.momentum_buf.copy_(torch.where(self.active, self.momentum_buf, old[1]))

    def iteration(self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor | None,
                  yv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """One search iteration of every seed: the architecture step (unless warming up), then the weight step.

        ``x`` (N, S*channels, H, W) and ``y`` (N, S) are the seeds' training batches stacked
        (``stack``); ``xv``, ``yv`` their architecture batches, or None in the warm-up epochs.
        """
        saved = self.flat_buf.clone() if self.active_buf is not None else None
        if xv is not None and yv is not None:
            self.arch_step(xv, yv, x, y)
        out = self.weight_step(x, y)
        if saved is not None:
            with torch.no_grad():
                self.flat_buf.copy_(torch.where(self.active_buf, self.flat_buf, saved))
        return out

    def step(self, x: torch.Tensor, y: torch.Tensor, xv: torch.Tensor | None,
             yv: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``iteration``, replayed as a CUDA graph where ``search.cuda_graph`` captured one."""
        if self.settings.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
            xv = None if xv is None else xv.contiguous(memory_format=torch.channels_last)
        if self.graphed is not None:
            return self.graphed((xv is None, y.shape[0], self.decisions_version), x, y, xv, yv)
        return self.iteration(x, y, xv, yv)

    def stack(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        """The seeds' (images, labels) batches as one input: (N, S*C, H, W) seed-major and (N, S)."""
        x = torch.stack([b[0] for b in batches], dim=1)
        n, s, c, h, w = x.shape
        return x.view(n, s * c, h, w), torch.stack([b[1] for b in batches], dim=1)

    @torch.no_grad()
    def evaluate(self, batches: Sequence[Sequence[tuple[torch.Tensor, torch.Tensor]]]) -> list[tuple[float, float]]:
        """Per seed (loss, accuracy %) of the network in eval mode over each seed's batches (one pass each)."""
        self.net.eval()
        loss_sum = torch.zeros(self.S, device=self.device)
        correct = torch.zeros(self.S, device=self.device, dtype=torch.long)
        seen = 0
        try:
            for per_seed in zip(*batches, strict=True):
                x, y = self.stack(per_seed)
                if self.settings.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                loss, logits = self._losses(x, y)
                loss_sum += loss * y.shape[0]
                correct += (logits.argmax(-1) == y).sum(0)
                seen += y.shape[0]
        finally:
            self.net.train()
        return [(float(ls) / max(seen, 1), 100.0 * int(c) / max(seen, 1))
                for ls, c in zip(loss_sum.tolist(), correct.tolist(), strict=True)]

    # ------------------------------------------------------------------ graphs

    def graph_state(self) -> list[torch.Tensor]:
        """Every tensor an iteration changes (a graph's self-check snapshots and restores them)."""
        out = [self.flat, self.flat_buf, *self.alphas]
        out += self.counter_bufs
        if self.momentum_buf is not None:
            out.append(self.momentum_buf)
        for st in self.arch_optimizer.state.values():
            out += [t for t in st.values() if isinstance(t, torch.Tensor)]
        return out

    def graph_checked(self) -> list[torch.Tensor]:
        """What a replay must reproduce of an eager iteration: weights and alphas."""
        return [self.flat, *self.alphas]

    def record(self) -> dict[str, Any]:
        """What result.json and provenance.json say about the engine that ran."""
        if self.graphed is not None:
            graph = self.graphed.outcome
        else:
            graph = {"cuda_graph": "off", "reason": self.graph_off_reason}
        return {"engine": "per_edge" if self.settings.supernet == "per_edge" else "fused",
                "seeds_in_process": self.S, "cuda_graph": graph, "channels_last": self.settings.channels_last,
                # only when on: the records of plain runs keep their bytes
                **({"recompute": self.settings.recompute} if self.settings.recompute != "none" else {})}


# ----------------------------------------------------------------------------- the loop over epochs


class SearchLoop:
    """The seeds' runs advanced together on one engine, checkpointing each as a search on its own would."""

    def __init__(self, runs: Sequence[SearchRun]) -> None:
        self.runs = list(runs)
        r0 = self.runs[0]
        self.cfg, self.device = r0.cfg, r0.device
        self.engine = SearchEngine([SeedState(r.model, r.optimizer, r.arch_optimizer) for r in self.runs],
                                   StepSettings.from_search(self.cfg.search, r0.channels_last), r0.device, r0.say)
        for r in self.runs:
            r.engine_record = self.engine.record()

    def run(self) -> None:
        """Advance every seed to its last epoch."""
        s, r0, engine = self.cfg.search, self.runs[0], self.engine
        fault_after = int(os.environ.get(FAULT_ENV, "0"))
        steps_done = 0
        for r in self.runs:
            r.board = RunBoard(r.run_dir, first_step=r.epoch + 1)
        try:
            while r0.epoch < r0.total_epochs:
                epoch, warm = r0.epoch, r0.epoch < s.warmup_epochs
                engine.set_lr(float(r0.optimizer.param_groups[0]["lr"]))
                t0 = time.perf_counter()
                loss_sum = torch.zeros(engine.S, device=self.device)
                correct = torch.zeros(engine.S, device=self.device, dtype=torch.long)
                loaders = [r.train_loader.epoch(epoch, r.batch) for r in self.runs]
                batches = bar(zip(*loaders, strict=True), len(r0.train_loader), unit="step",
                              desc=f"search epoch {epoch + 1}/{r0.total_epochs}", initial=r0.batch)
                for per_seed in batches:
                    x, y = engine.stack(per_seed)
                    xv = yv = None
                    if not warm:
                        xv, yv = engine.stack([next(r.val) for r in self.runs])
                    loss, ok = engine.step(x, y, xv, yv)
                    loss_sum += loss * y.shape[0]  # on the device: no host sync inside the step loop
                    correct += ok
                    for r in self.runs:
                        r.batch += 1
                    steps_done += 1
                    if s.checkpoint_every and r0.batch % s.checkpoint_every == 0 and r0.batch < len(r0.train_loader):
                        self._fold(loss_sum, correct, t0)
                        loss_sum.zero_(), correct.zero_()
                        t0 = time.perf_counter()
                        self._save()
                    if fault_after and steps_done >= fault_after:
                        os.kill(os.getpid(), signal.SIGKILL)
                self._fold(loss_sum, correct, t0)
                self._end_epoch(epoch)
        finally:
            for r in self.runs:
                r.board.close()
                r.board = None

    def _save(self) -> None:
        self.engine.to_runs()
        for r in self.runs:
            r.engine_record = self.engine.record()
            r.save()

    def _fold(self, loss_sum: torch.Tensor, correct: torch.Tensor, t0: float) -> None:
        # each seed's run logs the wall time of the packed step it shared with the others
        for i, r in enumerate(self.runs):
            r.fold_meters(loss_sum[i], correct[i], t0)

    def _end_epoch(self, epoch: int) -> None:
        engine = self.engine
        engine.to_runs()
        vals: list[tuple[float, float] | None] = [None] * len(self.runs)
        if self.runs[0].evaluates(epoch):
            vals = list(engine.evaluate([r.val.loader.epoch(0) for r in self.runs]))
        with warnings.catch_warnings():
            # the seeds' SGD never steps (the engine's does): their schedulers warn about it
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
            for r, val in zip(self.runs, vals, strict=True):
                r.engine_record = engine.record()
                r.end_epoch(epoch, val)
        engine.refresh_decisions()


# ----------------------------------------------------------------------------- seeds and run directories


def packed_seeds(cfg: DictConfig) -> list[int] | None:
    """The seeds of ``cfg.seeds`` (None when absent); duplicates or an empty list raise ConfigError."""
    seeds = cfg.get("seeds")
    if seeds is None:
        return None
    seeds = [int(s) for s in seeds]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={seeds}: give one or more distinct seeds, e.g. 'seeds=[0,1,2,3,4]'")
    return seeds


def check_seed_overrides(overrides: Sequence[str]) -> None:
    """``seeds=[...]`` and ``seed=N`` on one command line are ambiguous: ConfigError."""
    keys = {override_key(o) for o in overrides}
    if "seeds" in keys and "seed" in keys:
        raise ConfigError("seeds=[...] and seed=N together: give either the list or one seed")


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The config of one seed (the config ``seed=N`` composes)."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.seed = int(seed)
    out.seeds = None
    OmegaConf.set_struct(out, True)
    return out


def run_seeds(cfg: DictConfig, seeds: Sequence[int], say: Callable[[str], None]) -> list[Path]:
    """Run (or resume, or skip the finished ones of) the searches of ``seeds`` in one process; their run dirs."""
    apply_threads(threads_of(cfg))  # before any tensor work: the reduction order follows the thread count
    device = resolve_device(cfg.device)
    use_cuda_graph(str(cfg.search.cuda_graph), device, str(cfg.search.method))  # a bad value fails now
    if len(seeds) > 1 and cfg.search.supernet == "per_edge":
        raise ConfigError("search.supernet=per_edge runs one seed (the reference); pack seeds with fused")
    cfgs = [seed_config(cfg, s) for s in seeds]
    dirs = [search_run_dir(c) for c in cfgs]
    for d in dirs:
        if is_complete(d):
            say(f"{d}: already completed, nothing to do")
    todo = [(c, d) for c, d in zip(cfgs, dirs, strict=True) if not is_complete(d)]
    if not todo:
        return dirs
    # every seed's dataset exists and is that dataset before any run directory is made
    folders = {d: ensure_dataset(c, say) for c, d in todo}
    # One writer per run directory: a double submission says "already running (host, pid)".
    with contextlib.ExitStack() as locks:
        for _, d in todo:
            locks.enter_context(folder_lock(d))
        todo = [(c, d) for c, d in todo if not is_complete(d)]  # a writer we raced may have finished some
        if todo:
            _run_locked(todo, folders, say)
    return dirs


def _run_locked(todo: Sequence[tuple[DictConfig, Path]], folders: dict[Path, Path],
                say: Callable[[str], None]) -> None:
    started = time.time()
    runs = []
    for c, d in todo:
        folder = folders[d]
        run = SearchRun(c, d, folder, say)
        if run.restore():
            say(f"{d}: resuming at epoch {run.epoch} batch {run.batch}")
        runs.append(run)
    positions = {(r.epoch, r.batch, r.train_loader.batch_size) for r in runs}
    if len(positions) > 1:
        # e.g. killed between two seeds' checkpoint writes: continue each seed on its own, exactly
        say(f"packed seeds stand at different positions {sorted(positions)}: continuing them one by one")
        del runs
        for c, d in todo:
            _run_locked([(c, d)], folders, say)
        return
    for r in runs:
        _trim_metrics(r.run_dir / METRICS_FILE, r.epoch)
        write_bytes_atomic(r.run_dir / CONFIG_FILE, to_yaml(r.cfg).encode())
    if len(runs) > 1:
        say(f"packing {len(runs)} seeds {[int(r.cfg.seed) for r in runs]} into one network")
    loop = SearchLoop(runs)
    for r in runs:
        write_json_atomic(r.run_dir / PROVENANCE_FILE, {**provenance(r.precision), **r.engine_record})
    try:
        loop.run()
    except NonFiniteError as e:
        for r in runs:
            write_json_atomic(r.run_dir / RESULT_FILE, {
                "kind": "search", "status": "failed", "method": r.cfg.search.method, "search_data": r.cfg.data.name,
                "search_label": r.label, "num_classes": r.num_classes,
                "seed": int(r.cfg.seed), "dataset": r.manifest["name"], "preset": r.cfg.preset, "error": str(e),
                "epoch": r.epoch, "batch": r.batch, "wall_s": time.time() - started, **r.engine_record})
        raise
    for r in runs:
        finish(r, started)
