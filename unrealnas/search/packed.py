"""Packed seeds: ``unrealnas search 'seeds=[0,1,2,3,4]'`` runs S searches in one process, one network.

Each seed is an ordinary :class:`~unrealnas.search.run.SearchRun` (its own dataset, loaders, data
order, validation stream, initial weights and alphas, scheduler, SGAS state and run directory,
with the run id of ``seed=N``). The iterations run on a :class:`PackedSuperNet` that holds the S
seeds' channels side by side, so every kernel serves all seeds. Per seed, exactly as the single
run: SGD with momentum and weight decay and Adam on the alphas (elementwise, so a stacked step is
S independent steps), gradient clipping with the seed's own norm, SGAS decisions as masked op
weights (decided edge one-hot, pruned edge zero) with the weights of switched-off ops left
untouched, as the single run's SGD leaves parameters without a gradient (and their BN running
statistics and batch counters, which a single run does not update: it does not run those ops).
Results equal single runs within float rounding, which fp32 chaos grows over a run (grouped and
per-seed kernels sum in different orders; a near-tie in a max-pool window or a near-zero Adam
moment turns 1e-7 into O(lr)): the tiny-size tests see alphas within 1e-4 and the same genotypes.

The packed state is the master during the loop; at every checkpoint and epoch end it is copied
back into the seed runs (``to_runs``), which then save, log, evaluate and decide as single runs do.
A resumed pack restores every seed from its own ordinary checkpoint and packs them again, so a
killed pack, resumed, ends like an uninterrupted one, and any seed can also be resumed alone.
Second-order DARTS is not packed (its virtual-weight passes would need per-seed finite-difference
steps): ``search=darts2`` with ``seeds=[...]`` is refused.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from unrealnas.config.compose import to_yaml
from unrealnas.errors import ConfigError
from unrealnas.io import write_bytes_atomic, write_json_atomic
from unrealnas.lock import folder_lock
from unrealnas.nas.genotype import UNDECIDED
from unrealnas.nas.ops import NONE_INDEX, PRIMITIVES
from unrealnas.nas.supernet import CELL_TYPES
from unrealnas.runtime import autocast_for, provenance, resolve_device
from unrealnas.search.graphs import GraphedStep, use_cuda_graph
from unrealnas.search.packed_net import PackedSuperNet, op_weight_rows, packed_losses
from unrealnas.search.run import (
    FAULT_ENV,
    SearchRun,
    _trim_metrics,
    ensure_dataset,
    finish,
    is_complete,
    search_run_dir,
)


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
    keys = {o.lstrip("+~").split("=", 1)[0] for o in overrides}
    if "seeds" in keys and "seed" in keys:
        raise ConfigError("seeds=[...] and seed=N together: give either the list or one seed")


def seed_config(cfg: DictConfig, seed: int) -> DictConfig:
    """The single-run config of one packed seed (the config ``seed=N`` composes)."""
    out = cfg.copy()
    OmegaConf.set_struct(out, False)
    out.seed = int(seed)
    out.seeds = None
    OmegaConf.set_struct(out, True)
    return out


class PackedSearch:
    """S seed runs advanced together on one packed network (see the module docstring)."""

    def __init__(self, runs: Sequence[SearchRun]) -> None:
        self.runs = list(runs)
        self.S = len(self.runs)
        r0 = self.runs[0]
        self.cfg, self.device, self.say = r0.cfg, r0.device, r0.say
        s = self.cfg.search
        self.cuda_graph = use_cuda_graph(str(s.cuda_graph), self.device, str(s.method))
        self.net = PackedSuperNet([r.model for r in self.runs]).to(self.device)
        # NCHW throughout: the weights are views into one flat tensor in their logical order, so
        # channels_last weights (and inputs, which would then be converted per conv) are not used
        self.forward = torch.compile(self.net) if s.compile else self.net
        # every weight is a view into one flat tensor (param-major, seed-major inside each param):
        # clipping and SGD are then a few elementwise kernels, whatever the number of parameters
        self.params = [p for _, p in self.net.named_parameters()]
        self.names = [n for n, _ in self.net.named_parameters()]
        self.flat = torch.cat([p.detach().reshape(-1) for p in self.params])
        self.offsets: list[int] = []
        o = 0
        for p in self.params:
            self.offsets.append(o)
            p.data = self.flat[o:o + p.numel()].view_as(p)
            o += p.numel()
        # the float buffers (BN running statistics) likewise: one tensor, so that those of ops an SGAS
        # decision switched off can be put back after each iteration (a single run does not run them)
        buffers = dict(self.net.named_buffers())
        self.buf_names = [n for n, b in buffers.items() if b.is_floating_point()]
        self.flat_buf = torch.cat([buffers[n].reshape(-1) for n in self.buf_names])
        self.buf_offsets: list[int] = []
        o = 0
        for n in self.buf_names:
            module_name, _, leaf = n.rpartition(".")
            module = self.net.get_submodule(module_name)
            self.buf_offsets.append(o)
            module._buffers[leaf] = self.flat_buf[o:o + buffers[n].numel()].view_as(buffers[n])
            o += buffers[n].numel()
        # num_batches_tracked is one counter per packed BN; a seed whose op was switched off keeps its own
        self.frozen_counts: dict[tuple[int, str], int] = {}
        seed_buffers = [dict(r.model.named_buffers()) for r in self.runs]
        for n, b in buffers.items():
            if not b.is_floating_point():
                for s_, own_buffers in enumerate(seed_buffers):
                    own = int(own_buffers[n])
                    if own != int(b):
                        self.frozen_counts[(s_, n)] = own
        self.seg = torch.cat([torch.arange(self.S, device=self.device).repeat_interleave(p.numel() // self.S)
                              for p in self.params])
        self.momentum_buf: torch.Tensor | None = None
        self.lr = torch.tensor(float(r0.optimizer.param_groups[0]["lr"]), device=self.device)
        g = r0.optimizer.param_groups[0]
        self.momentum, self.weight_decay = float(g["momentum"]), float(g["weight_decay"])
        self.grad_clip = float(s.grad_clip)
        a = r0.architect.optimizer.param_groups[0]
        self.alphas = [torch.stack([r.model.arch_parameters()[i].detach() for r in self.runs]).requires_grad_()
                       for i in range(len(CELL_TYPES))]
        self.arch_optimizer = torch.optim.Adam(self.alphas, lr=a["lr"], betas=a["betas"],
                                               weight_decay=a["weight_decay"], capturable=self.cuda_graph)
        self.graphed = GraphedStep(self.iteration) if self.cuda_graph else None
        self.decisions_version = 0
        self.fixed: list[torch.Tensor] | None = None
        self.undecided: list[torch.Tensor] | None = None
        self.frozen_rows: list[torch.Tensor] | None = None
        self.active: torch.Tensor | None = None
        self.active_buf: torch.Tensor | None = None
        self._load_optimizer_states()
        self.refresh_decisions()

    # ------------------------------------------------------------------ per-seed state in and out

    def _seed_range(self, i: int, s: int) -> slice:
        n = self.params[i].numel() // self.S
        return slice(self.offsets[i] + s * n, self.offsets[i] + (s + 1) * n)

    def _load_optimizer_states(self) -> None:
        bufs = []
        have = False
        per_run = [dict(r.model.named_parameters()) for r in self.runs]
        for name in self.names:
            for r, params in zip(self.runs, per_run, strict=True):
                p = params[name]
                b = r.optimizer.state.get(p, {}).get("momentum_buffer")
                have = have or b is not None
                bufs.append(b.reshape(-1) if b is not None else torch.zeros(p.numel(), device=self.device))
        self.momentum_buf = torch.cat(bufs).to(self.device) if have else None
        states = [r.architect.optimizer.state for r in self.runs]
        for i, a in enumerate(self.alphas):
            per_seed = [st.get(r.model.arch_parameters()[i]) for st, r in zip(states, self.runs, strict=True)]
            if any(p for p in per_seed):
                step = per_seed[0]["step"].clone()
                self.arch_optimizer.state[a] = {
                    "step": step.to(self.device) if self.cuda_graph else step,
                    "exp_avg": torch.stack([p["exp_avg"] for p in per_seed]),
                    "exp_avg_sq": torch.stack([p["exp_avg_sq"] for p in per_seed])}

    @torch.no_grad()
    def to_runs(self) -> None:
        """Copy each seed's slice of weights, buffers, alphas and optimizer states into its run."""
        buffers = dict(self.net.named_buffers())
        for s, r in enumerate(self.runs):
            params = dict(r.model.named_parameters())
            for i, name in enumerate(self.names):
                p = params[name]
                p.copy_(self.flat[self._seed_range(i, s)].view_as(p))
                if self.momentum_buf is not None:
                    r.optimizer.state[p]["momentum_buffer"] = self.momentum_buf[self._seed_range(i, s)].view_as(p).clone()
            for name, b in r.model.named_buffers():
                if name in buffers and b.is_floating_point():
                    b.copy_(buffers[name].reshape(self.S, -1)[s].view_as(b))
                elif name in buffers:
                    b.fill_(self.frozen_counts.get((s, name), int(buffers[name])))
            for i, a in enumerate(r.model.arch_parameters()):
                a.copy_(self.alphas[i][s])
                st = self.arch_optimizer.state.get(self.alphas[i])
                if st:
                    r.architect.optimizer.state[a] = {"step": st["step"].detach().cpu().clone(),
                                                      "exp_avg": st["exp_avg"][s].clone(),
                                                      "exp_avg_sq": st["exp_avg_sq"][s].clone()}

    def refresh_decisions(self) -> None:
        """Masks from the seeds' SGAS edge decisions: op weight rows, frozen alpha rows, active weights."""
        codes = [[r.model.edge_ops(t) for t in CELL_TYPES] for r in self.runs]
        self.decisions_version += 1  # a captured iteration holds the old masks: recapture
        if all(c == UNDECIDED for per in codes for t in per for c in t):
            self.fixed = self.undecided = self.frozen_rows = self.active = self.active_buf = None
            return
        k = len(PRIMITIVES)
        fixed, undecided = [], []
        for t in range(len(CELL_TYPES)):
            c = torch.tensor([per[t] for per in codes], dtype=torch.long)  # (S, E)
            onehot = torch.nn.functional.one_hot(c.clamp(min=0), k).float()
            onehot[c == NONE_INDEX] = 0.0  # pruned: a zero row
            fixed.append(onehot.to(self.device))
            undecided.append((c == UNDECIDED).unsqueeze(-1).to(self.device))
        self.fixed, self.undecided = fixed, undecided
        self.frozen_rows = [~u for u in undecided]
        # weights of ops a decision switched off get no gradient in a single run: SGD leaves them alone
        def switched_off(name: str, s: int) -> bool:
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
        for name, b in buffers.items():
            if not b.is_floating_point():
                for s in range(self.S):
                    if switched_off(name, s):
                        self.frozen_counts.setdefault((s, name), int(b))

    # ------------------------------------------------------------------ the iteration

    def _losses(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = op_weight_rows(self.alphas, self.fixed, self.undecided)
        with _autocast(self.device, self.cfg.search.amp, self.cuda_graph):
            logits = self.forward(x, w)
        return packed_losses(logits, y), logits

    def arch_step(self, xv: torch.Tensor, yv: torch.Tensor) -> None:
        """One first-order Adam step on every seed's alphas (frozen SGAS rows put back)."""
        loss, _ = self._losses(xv, yv)
        grads = torch.autograd.grad(loss.sum(), self.alphas)
        saved = None
        if self.frozen_rows is not None:
            grads = [g.masked_fill(m, 0.0) for g, m in zip(grads, self.frozen_rows, strict=True)]
            saved = [a.detach().clone() for a in self.alphas]
        for a, g in zip(self.alphas, grads, strict=True):
            a.grad = g
        self.arch_optimizer.step()
        if saved is not None:
            with torch.no_grad():
                for a, old, m in zip(self.alphas, saved, self.frozen_rows, strict=True):
                    a.copy_(torch.where(m, old, a))
        self.arch_optimizer.zero_grad(set_to_none=True)

    def weight_step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One SGD step of every seed's weights with per-seed clipping; returns (losses, correct) per seed."""
        loss, logits = self._losses(x, y)
        grads = torch.autograd.grad(loss.sum(), self.params)
        with torch.no_grad():
            g = torch.cat([t.reshape(-1) for t in grads])
            if self.grad_clip:
                # torch.nn.utils.clip_grad_norm_ per seed: coef = min(1, max_norm / (norm + 1e-6))
                sq = torch.zeros(self.S, device=g.device, dtype=torch.float32).index_add_(0, self.seg, g.float() * g)
                coef = torch.clamp(self.grad_clip / (sq.sqrt() + 1e-6), max=1.0)
                g = g * coef.index_select(0, self.seg)
            self._sgd(g)
        correct = (logits.argmax(-1) == y).sum(0)
        return loss.detach(), correct

    def _sgd(self, g: torch.Tensor) -> None:
        # torch.optim.SGD (momentum, no dampening or nesterov), on the flat weights; lr a device tensor
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
        """One packed search iteration (the architecture step unless warming up, then the weight step)."""
        saved = self.flat_buf.clone() if self.active_buf is not None else None
        if xv is not None and yv is not None:
            self.arch_step(xv, yv)
        out = self.weight_step(x, y)
        if saved is not None:
            with torch.no_grad():
                self.flat_buf.copy_(torch.where(self.active_buf, self.flat_buf, saved))
        return out

    # ------------------------------------------------------------------ the loop

    def _stack(self, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.stack([b[0] for b in batches], dim=1)
        n, s, c, h, w = x.shape
        return x.view(n, s * c, h, w), torch.stack([b[1] for b in batches], dim=1)

    def run(self) -> None:
        """Advance every seed to its last epoch, checkpointing each seed's run as a single run would."""
        s = self.cfg.search
        r0 = self.runs[0]
        fault_after = int(os.environ.get(FAULT_ENV, "0"))
        steps_done = 0
        while r0.epoch < r0.total_epochs:
            epoch, warm = r0.epoch, r0.epoch < s.warmup_epochs
            self.lr.fill_(float(r0.optimizer.param_groups[0]["lr"]))
            t0 = time.perf_counter()
            loss_sum = torch.zeros(self.S, device=self.device)
            correct = torch.zeros(self.S, device=self.device, dtype=torch.long)
            loaders = [r.train_loader.epoch(epoch, r.batch) for r in self.runs]
            for batches in zip(*loaders, strict=True):
                x, y = self._stack(batches)
                xv = yv = None
                if not warm:
                    xv, yv = self._stack([next(r.val) for r in self.runs])
                if self.graphed is not None:
                    loss, ok = self.graphed((warm, y.shape[0], self.decisions_version), x, y, xv, yv)
                else:
                    loss, ok = self.iteration(x, y, xv, yv)
                loss_sum += loss * y.shape[0]
                correct += ok
                for r in self.runs:
                    r.batch += 1
                steps_done += 1
                if s.checkpoint_every and r0.batch % s.checkpoint_every == 0 and r0.batch < len(r0.train_loader):
                    self._fold(loss_sum, correct, t0)
                    loss_sum.zero_(), correct.zero_()
                    t0 = time.perf_counter()
                    self.to_runs()
                    for r in self.runs:
                        r.save()
                if fault_after and steps_done >= fault_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            self._fold(loss_sum, correct, t0)
            self.to_runs()
            with warnings.catch_warnings():
                # the seed runs' SGD never steps (the packed one does): their schedulers warn about it
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step", category=UserWarning)
                for r in self.runs:
                    r._end_epoch(epoch)
            self.refresh_decisions()

    def _fold(self, loss_sum: torch.Tensor, correct: torch.Tensor, t0: float) -> None:
        # each seed's run logs the wall time of the packed step it shared with the others
        for i, r in enumerate(self.runs):
            r._fold_meters(loss_sum[i], correct[i], t0)


def _autocast(device: torch.device, amp: str, graph: bool) -> contextlib.AbstractContextManager:
    ctx = autocast_for(device, amp)
    if graph and isinstance(ctx, torch.autocast):
        # the autocast weight cache must not outlive a graph capture (torch.cuda.graph docs)
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=False)
    return ctx


def run_packed(cfg: DictConfig, seeds: Sequence[int], progress: Callable[[str], None] | None = None) -> list[Path]:
    """Run (or resume, or skip the finished ones of) the searches of ``seeds`` as one pack; their run dirs."""
    say = progress or (lambda _m: None)
    use_cuda_graph(str(cfg.search.cuda_graph), resolve_device(cfg.device), str(cfg.search.method))  # bad value: fail now
    if cfg.search.method == "darts2":
        raise ConfigError("search=darts2 cannot be packed (per-seed second-order steps): "
                          "run each seed with seed=N, or use search=darts / sgas_c1 / sgas_c2")
    cfgs = [seed_config(cfg, s) for s in seeds]
    dirs = [search_run_dir(c) for c in cfgs]
    todo = [(c, d) for c, d in zip(cfgs, dirs, strict=True) if not is_complete(d)]
    for d in dirs:
        if is_complete(d):
            say(f"{d}: already completed, nothing to do")
    if not todo:
        return dirs
    # One writer per run directory, as for a single search: a double submission says "already running".
    with contextlib.ExitStack() as locks:
        for _, d in todo:
            locks.enter_context(folder_lock(d))
        todo = [(c, d) for c, d in todo if not is_complete(d)]  # a writer we raced may have finished some
        if todo:
            _run_pack(todo, say)
    return dirs


def _run_pack(todo: Sequence[tuple[DictConfig, Path]], say: Callable[[str], None]) -> None:
    started = time.time()
    runs = []
    for c, d in todo:
        folder = ensure_dataset(c, say)
        d.mkdir(parents=True, exist_ok=True)
        run = SearchRun(c, d, folder, say)
        if run.restore():
            say(f"{d}: resuming at epoch {run.epoch} batch {run.batch}")
        runs.append(run)
    positions = {(r.epoch, r.batch, r.train_loader.batch_size) for r in runs}
    if len(positions) > 1:
        # e.g. killed between two seeds' checkpoint writes: continue each seed on its own, exactly
        say(f"packed seeds stand at different positions {sorted(positions)}: continuing them one by one")
        from unrealnas.search.run import run_search

        del runs
        for c, _ in todo:
            run_search(c, say)
        return
    for r in runs:
        _trim_metrics(r.run_dir / "metrics.jsonl", r.epoch)
        write_bytes_atomic(r.run_dir / "config.yaml", to_yaml(r.cfg).encode())
        write_json_atomic(r.run_dir / "provenance.json", provenance(r.precision))
    say(f"packing {len(runs)} seeds {[int(r.cfg.seed) for r in runs]} into one network")
    PackedSearch(runs).run()
    for r in runs:
        finish(r, started)
