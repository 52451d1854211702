"""The one training loop: every target (CIFAR, ImageNet, CheXpert) trains through :func:`fit`.

Per epoch: reseed the RNGs from (seed, epoch, rank), set the drop-path probability (linear
ramp from 0), train, evaluate, step the per-epoch LR schedule, write the checkpoint atomically
(rank 0), then append the epoch's row to metrics.jsonl. The checkpoint holds the metric
history, so a crash between the two writes is repaired on resume by rewriting metrics.jsonl
from it. Resume happens at epoch boundaries; the data order and augmentation draws of every
epoch are functions of (seed, epoch), so a killed and resumed run ends with the same weights
as an uninterrupted one.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from unrealnas import dist
from unrealnas.atomic import append_jsonl, read_jsonl, write_bytes_atomic
from unrealnas.checkpoint import rng_state, save_checkpoint, set_rng_state
from unrealnas.cuda_graph import GraphedStep, graph_outcome
from unrealnas.dist import DistEnv
from unrealnas.errors import ConfigError
from unrealnas.observe import RunBoard, bar
from unrealnas.rundir import CHECKPOINT_FILE, METRICS_FILE
from unrealnas.runtime import autocast
from unrealnas.train.metrics import chexpert_metrics, topk_correct
from unrealnas.train.targets.base import Target, derive_seed


@dataclass
class LoopOptions:
    """Everything the loop needs, as explicit values (built from ``cfg.train`` at the edge)."""

    epochs: int
    lr: float  # effective learning rate (after linear batch scaling)
    seed: int = 0
    optimizer: str = "sgd"
    lr_min: float = 0.0
    schedule: str = "cosine"
    lr_gamma: float = 0.97
    warmup_epochs: int = 0
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0
    aux_weight: float = 0.4
    drop_path: float = 0.0
    label_smoothing: float = 0.0
    amp: str | None = None  # None | "bf16" | "fp16"
    channels_last: bool = False
    eval_every: int = 1
    cuda_graph: bool = False  # replay the step as a CUDA graph (unrealnas.train.graphed)
    cuda_graph_strict: bool = False  # train.cuda_graph=on: a failed capture or self-check is an error
    cuda_graph_off: str = "train.cuda_graph=off"  # why the step is not captured (result.json), when it is not
    extra_row: dict[str, Any] = field(default_factory=dict)


@dataclass
class FitResult:
    """What a finished (or stopped) call to :func:`fit` leaves behind."""

    epochs_done: int
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    wall_s: float
    completed: bool
    cuda_graph: dict[str, Any] = field(default_factory=dict)  # unrealnas.cuda_graph.graph_outcome, for result.json


def lr_factor(epoch: int, opts: LoopOptions) -> float:
    """LR multiplier of ``epoch`` (0-based): linear warm-up, then cosine to lr_min, x gamma, or constant."""
    w = opts.warmup_epochs
    if epoch < w:
        return (epoch + 1) / w
    e, span = epoch - w, max(1, opts.epochs - w)
    if opts.schedule == "cosine":
        floor = opts.lr_min / opts.lr if opts.lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * e / span))
    if opts.schedule == "exp":
        return opts.lr_gamma ** e
    if opts.schedule == "constant":
        return 1.0
    raise ConfigError(f"train.schedule={opts.schedule!r} is invalid: choose cosine, exp or constant")


def build_optimizer(model: nn.Module, opts: LoopOptions) -> torch.optim.Optimizer:
    """SGD with momentum (the paper) or Adam (the CheXpert transfer protocol)."""
    if opts.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=opts.lr, momentum=opts.momentum, weight_decay=opts.weight_decay)
    if opts.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    raise ConfigError(f"train.optimizer={opts.optimizer!r} is invalid: choose sgd or adam")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's random."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def compute_loss(out: torch.Tensor | tuple[torch.Tensor, torch.Tensor], y: torch.Tensor, multilabel: bool,
                 aux_weight: float, label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (main + aux_weight x auxiliary) and the main logits; multi-label labels < 0 are masked."""
    logits, aux = out if isinstance(out, tuple) else (out, None)

    def one(z: torch.Tensor) -> torch.Tensor:
        z = z.float()
        if multilabel:
            mask = (y >= 0).float()
            per = F.binary_cross_entropy_with_logits(z, y.clamp(min=0).float(), reduction="none")
            # Mean over the labelled entries only (the "ignore" policy masks uncertain ones).
            return (per * mask).sum() / mask.sum().clamp(min=1.0)
        return F.cross_entropy(z, y, label_smoothing=label_smoothing)

    loss = one(logits)
    if aux is not None and aux_weight > 0:
        loss = loss + aux_weight * one(aux)
    return loss, logits


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               opts: LoopOptions, multilabel: bool = False, scaler: torch.amp.GradScaler | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (forward, backward, clip, update); returns the detached loss and logits."""
    optimizer.zero_grad(set_to_none=True)
    with autocast(x.device, opts.amp, cache=not opts.cuda_graph):
        out = model(x)
    loss, logits = compute_loss(out, y, multilabel, opts.aux_weight, opts.label_smoothing)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
    else:
        loss.backward()
    if opts.grad_clip > 0:
        nn.utils.clip_grad_norm_(model.parameters(), opts.grad_clip)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return loss.detach(), logits.detach()


@torch.no_grad()
def evaluate(model: nn.Module, target: Target, device: torch.device, opts: LoopOptions) -> dict[str, Any]:
    """Metrics on the target's evaluation split, combined over ranks (errors and AUROC in percent)."""
    model.eval()
    if target.multilabel:
        scores, labels = [], []
        for x, y in target.eval_batches():
            if opts.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast(device, opts.amp):
                z = model(x)
            scores.append(torch.sigmoid(z.float()).cpu())
            labels.append(y.cpu())
        s = torch.cat(scores) if scores else torch.zeros(0, target.num_classes)
        lab = torch.cat(labels) if labels else torch.zeros(0, target.num_classes)
        idx = target.eval_indices()
        idx = np.asarray(idx if idx is not None else np.arange(len(s)))[: len(s)]
        parts = dist.all_gather_objects((s.numpy(), lab.numpy(), idx))
        all_s = np.concatenate([p[0] for p in parts])
        all_y = np.concatenate([p[1] for p in parts])
        groups = None
        if target.eval_groups is not None:
            groups = np.asarray(target.eval_groups)[np.concatenate([p[2] for p in parts])]
        return chexpert_metrics(all_s, all_y, target.label_names, groups)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # top1, top5, loss, n
    for x, y in target.eval_batches():
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with autocast(device, opts.amp):
            z = model(x)
        c1, c5 = topk_correct(z.float(), y)
        sums += torch.tensor([c1, c5, float(F.cross_entropy(z.float(), y, reduction="sum")), len(y)],
                             dtype=torch.float64, device=device)
    dist.all_reduce_sum(sums)
    n = max(1.0, float(sums[3]))
    return {"top1_err": 100.0 * (1 - float(sums[0]) / n), "top5_err": 100.0 * (1 - float(sums[1]) / n),
            "val_loss": float(sums[2]) / n}


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def fit(model: nn.Module, target: Target, opts: LoopOptions, run_dir: str | Path, device: torch.device,
        env: DistEnv, fingerprint: dict[str, Any], resume: dict[str, Any] | None = None,
        progress: Callable[[str], None] | None = None, stop_after: int | None = None) -> FitResult:
    """Train ``model`` on ``target`` for ``opts.epochs`` epochs, resuming from ``resume`` (a loaded checkpoint).

    ``stop_after`` ends the call after that many epochs of this call (tests simulate a kill
    with it); the run then continues on the next call.
    """
    run_dir = Path(run_dir)
    say = progress or (lambda _m: None)
    model.to(device)
    if opts.channels_last:
        model.to(memory_format=torch.channels_last)
    net = _unwrap(model)
    optimizer = build_optimizer(model, opts)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, opts))
    scaler = torch.amp.GradScaler(device.type) if opts.amp == "fp16" else None
    start, history, wall_prev = 0, [], 0.0
    if resume is not None:
        net.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
        if scaler is not None and resume.get("scaler"):
            scaler.load_state_dict(resume["scaler"])
        set_rng_state(resume["rng"])
        start, history, wall_prev = int(resume["epoch"]), list(resume["history"]), float(resume["wall_s"])
        if env.is_main:
            # Rows written after the checkpoint by a killed run are dropped; rows lost are restored.
            on_disk = read_jsonl(run_dir / METRICS_FILE)
            if [r.get("epoch") for r in on_disk] != [r["epoch"] for r in history]:
                write_bytes_atomic(run_dir / METRICS_FILE, "".join(_json_line(r) for r in history).encode())
        say(f"resuming at epoch {start}/{opts.epochs}")
    if env.distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    metrics: dict[str, Any] = dict(resume.get("last_eval", {})) if resume is not None else {}
    graphed = None
    if opts.cuda_graph:
        graphed = GraphedStep(
            lambda x, y: train_step(model, optimizer, x, y, opts, target.multilabel), device=device,
            state=lambda: train_state(net, optimizer),
            # drop path draws its masks inside the graph, not the ones eager draws: replay and eager
            # legitimately differ, so with drop path the capture is only guarded, not compared
            checked=(lambda: dict(net.named_parameters())) if opts.drop_path == 0 else None,
            say=say, setting_name="train.cuda_graph", strict=opts.cuda_graph_strict)
    ran = 0
    board = RunBoard(run_dir, first_step=start + 1) if env.is_main else None
    for epoch in range(start, opts.epochs):
        if stop_after is not None and ran >= stop_after:
            return FitResult(epoch, metrics, history, wall_prev, False, graph_outcome(graphed, opts.cuda_graph_off))
        t0 = time.perf_counter()
        seed_everything(derive_seed(opts.seed, "train-epoch", epoch, env.rank))
        net.drop_path_prob = opts.drop_path * epoch / opts.epochs
        lr = optimizer.param_groups[0]["lr"]
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        correct = torch.zeros((), dtype=torch.float64, device=device)
        seen = 0
        batches = target.train_batches(epoch)
        if env.is_main:
            batches = bar(batches, target.steps_per_epoch(), desc=f"retrain epoch {epoch + 1}/{opts.epochs}", unit="step")
        for x, y in batches:
            if opts.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            if graphed is not None:  # lr and drop path are constant within an epoch: one graph per epoch
                loss, logits = graphed((epoch, tuple(x.shape)), x, y)
            else:
                loss, logits = train_step(model, optimizer, x, y, opts, target.multilabel, scaler)
            loss_sum += loss.double() * len(y)
            if not target.multilabel:
                correct += (logits.argmax(1) == y).sum()
            seen += len(y)
        if not math.isfinite(float(loss_sum)):
            raise FloatingPointError(f"training loss is not finite at epoch {epoch}; lower train.lr")
        train_s = time.perf_counter() - t0
        stats = dist.all_reduce_sum(torch.stack([loss_sum, correct, torch.tensor(float(seen), dtype=torch.float64,
                                                                                  device=device)]))
        n = max(1.0, float(stats[2]))
        row: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, "drop_path": net.drop_path_prob,
                               "train_loss": float(stats[0]) / n}
        if not target.multilabel:
            row["train_top1_err"] = 100.0 * (1 - float(stats[1]) / n)
        if (epoch + 1) % opts.eval_every == 0 or epoch + 1 == opts.epochs:
            metrics = evaluate(model, target, device, opts)
            row.update(metrics)
        scheduler.step()
        epoch_s = time.perf_counter() - t0
        wall_prev += epoch_s
        row.update({"epoch_s": epoch_s, "train_images_per_s": float(stats[2]) / max(train_s, 1e-9),
                    "wall_s": wall_prev, **opts.extra_row})
        history.append(row)
        if env.is_main:
            save_checkpoint(run_dir / CHECKPOINT_FILE, {
                "fingerprint": fingerprint, "epoch": epoch + 1, "model": net.state_dict(),
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
                # The data order is a function of (seed, epoch): this is all a sampler needs.
                "data_state": {"seed": opts.seed, "next_epoch": epoch + 1},
                "history": history, "last_eval": metrics, "wall_s": wall_prev,
            })
            append_jsonl(run_dir / METRICS_FILE, row)
            board.scalars(epoch + 1, {k: v for k, v in row.items() if k != "epoch"}, "train/")
        dist.barrier()
        ran += 1
        shown = ", ".join(f"{k}={v:.3g}" for k, v in metrics.items() if isinstance(v, float))
        say(f"epoch {epoch + 1}/{opts.epochs} loss {row['train_loss']:.4f} lr {lr:.4g} {shown} ({epoch_s:.1f}s)")
    if board is not None:
        board.close()
    return FitResult(opts.epochs, metrics, history, wall_prev, True, graph_outcome(graphed, opts.cuda_graph_off))


def train_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every tensor a training step mutates: weights, buffers (BN statistics), the optimizer's state.

    Stable order, the optimizer's lazily created state last (what a graph self-check snapshots).
    """
    out = [*net.parameters(), *net.buffers()]
    for group in optimizer.param_groups:
        for p in group["params"]:
            out.extend(v for v in optimizer.state.get(p, {}).values() if isinstance(v, torch.Tensor))
    return out


def _json_line(row: dict[str, Any]) -> str:
    import json

    return json.dumps(row) + "\n"
