"""``search=rlnas``: RLNAS on the DARTS space (Zhang et al. 2021, megvii-model/RLNAS), two resumable phases.

1. **Supernet.** A single-path supernet (:class:`~unrealnas.nas.single_path.SinglePathNet`, affine BN)
   is trained on the dataset's labels (random labels: the method's point) with one uniformly
   sampled, repaired path per step (normal and reduction cell each), SGD with momentum, cosine
   schedule, gradient clipping. The weights at initialisation are kept (``supernet_init.pt``);
   ``checkpoint.pt`` holds everything needed to continue (weights, optimizer, scheduler, position).
   The path of step (epoch, batch) is drawn from ``SeedSequence([seed, PATH_STREAM, epoch, batch])``
   and the data order is a function of (seed, epoch), so a resumed run takes the same steps.
2. **Evolution.** :func:`~unrealnas.search.evolution.evolve` over the repaired candidates, fitness
   = the angle between a sub-network's initial and trained weight vectors
   (:class:`~unrealnas.nas.single_path.AngleTable`); its state is ``evolution.json`` (plain JSON),
   written after each population's evaluation and each generation, so a killed search resumes to
   the same genotype.

Why not the search engine: the engine's iteration is DARTS's bilevel step on the fused supernet,
which runs every op of every edge as stacked kernels with non-affine BN. RLNAS runs one op per
edge (a one-hot mixture on the fused supernet would cost all 8 ops and move the BN statistics of
ops that were not sampled), has no architecture step, and its angle reads affine BN weights. For
the same reason its seeds are not packed: ``seeds=[...]`` runs them one after another, each in
the run directory of its ``seed=N``.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from unrealnas.atomic import append_jsonl, read_jsonl, write_bytes_atomic, write_json_atomic
from unrealnas.checkpoint import load_checkpoint, save_checkpoint
from unrealnas.config.compose import to_yaml
from unrealnas.data.loaders import DeviceLoader, weight_step_images
from unrealnas.errors import NonFiniteError
from unrealnas.lock import folder_lock
from unrealnas.nas.genotype import count_skips
from unrealnas.nas.single_path import (
    AngleTable,
    Candidate,
    SinglePathNet,
    candidate_genotype,
    crossover_candidates,
    mutate_candidate,
    sample_candidate,
)
from unrealnas.observe import bar
from unrealnas.rundir import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    GENOTYPE_FILE,
    METRICS_FILE,
    PROVENANCE_FILE,
    RESULT_FILE,
    is_complete,
)
from unrealnas.runtime import provenance
from unrealnas.search.engine import seed_config
from unrealnas.search.evolution import EvolutionSettings, EvolutionState, evolve
from unrealnas.search.state import (
    FAULT_ENV,
    _trim_metrics,
    ensure_dataset,
    load_search_split,
    search_device,
    search_run_dir,
)

PATH_STREAM = 31  # seed stream of the supernet's sampled paths
EVOLUTION_STREAM = 32  # seed stream of the evolutionary search
# Test hook: SIGKILL this process after N fitness evaluations of the evolution (a job preempted in phase 2).
EVAL_FAULT_ENV = "UNREALNAS_FAULT_AFTER_EVALS"
INIT_FILE = "supernet_init.pt"
EVOLUTION_FILE = "evolution.json"


def evolution_settings(cfg: DictConfig) -> EvolutionSettings:
    """The evolution's numbers from ``search.rlnas`` (checked: one line, exit 2, when they make no search)."""
    r = cfg.search.rlnas
    settings = EvolutionSettings(int(r.population), int(r.parents), int(r.mutations), int(r.crossovers),
                                 int(r.generations))
    settings.check()
    return settings


def step_candidate(seed: int, epoch: int, batch: int, nodes: int) -> Candidate:
    """The path trained at (epoch, batch): a function of those numbers and the seed only."""
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), PATH_STREAM, int(epoch), int(batch)]))
    return sample_candidate(rng, nodes)


class SupernetRun:
    """Phase 1: the single-path supernet of one seed, its data, optimizer and position."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data_folder: Path, say: Callable[[str], None]):
        self.cfg, self.run_dir, self.say = cfg, run_dir, say
        s = cfg.search
        self.device = search_device(cfg)
        data = load_search_split(cfg, data_folder, self.device)
        self.manifest = data.manifest
        n = weight_step_images(len(data.labels), s.train_portion, s.num_train)
        self.loader = DeviceLoader(data.images[:n], data.labels[:n], s.batch_size, int(cfg.seed),
                                   augment=str(s.rlnas.augment), normalization=self.manifest.get("normalization"))
        self.total_epochs = int(s.warmup_epochs) + int(s.epochs)
        torch.manual_seed(int(cfg.seed))  # weight init is a function of the seed
        self.net = SinglePathNet(s.init_channels, int(self.manifest["num_classes"]), s.layers, s.nodes,
                                 s.stem_multiplier, in_channels=int(self.manifest["shape"][2])).to(self.device)
        self.weight_decay = float(s.weight_decay) if s.weight_decay is not None else 0.0
        # ~2,000 weight tensors (8 ops x 14 edges per cell): listed once, updated with foreach kernels
        self.params = list(self.net.parameters())
        self.optimizer = torch.optim.SGD(self.params, lr=s.lr, momentum=s.momentum, weight_decay=self.weight_decay,
                                         foreach=True)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.total_epochs,
                                                                    eta_min=s.lr_min)
        self.epoch, self.batch = 0, 0
        self.meters = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this run."""
        return {"run_id": self.run_dir.name, "dataset": self.manifest["name"], "method": "rlnas"}

    def save(self) -> None:
        """Write the checkpoint atomically."""
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, {
            "fingerprint": self.fingerprint(), "model": self.net.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "batch": self.batch,
            "meters": dict(self.meters)})

    def restore(self) -> bool:
        """Continue from the checkpoint if there is one (a corrupt or foreign one raises CheckpointError)."""
        path = self.run_dir / CHECKPOINT_FILE
        if not path.exists():
            return False
        state = load_checkpoint(path, self.fingerprint())
        self.net.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.batch, self.meters = int(state["epoch"]), int(state["batch"]), dict(state["meters"])
        # The uninterrupted run holds a (zeroed) gradient for every weight a step has used, so SGD keeps
        # applying momentum and weight decay to it; those weights are the ones with a momentum buffer.
        for p in self.params:
            if self.optimizer.state.get(p, {}).get("momentum_buffer") is not None:
                p.grad = torch.zeros_like(p)
        return True

    def initial_net(self) -> SinglePathNet:
        """The supernet at initialisation (written once, before the first step)."""
        init = copy.deepcopy(self.net)
        init.load_state_dict(load_checkpoint(self.run_dir / INIT_FILE, self.fingerprint())["model"])
        return init

    def train(self) -> None:
        """Train to the last epoch, checkpointing every epoch (and every ``search.checkpoint_every`` steps)."""
        s = self.cfg.search
        if not (self.run_dir / INIT_FILE).exists():
            save_checkpoint(self.run_dir / INIT_FILE, {"fingerprint": self.fingerprint(), "model": self.net.state_dict()})
        fault_after, steps = int(os.environ.get(FAULT_ENV, "0")), 0
        self.net.train()
        while self.epoch < self.total_epochs:
            t0 = time.perf_counter()
            batches = bar(self.loader.epoch(self.epoch, self.batch), len(self.loader), unit="step",
                          desc=f"rlnas supernet {self.epoch + 1}/{self.total_epochs}", initial=self.batch)
            for x, y in batches:
                cand = step_candidate(int(self.cfg.seed), self.epoch, self.batch, int(s.nodes))
                logits = self.net(x, cand)
                loss = F.cross_entropy(logits, y)
                # Gradients kept as zeros (not None), as the reference's torch did: the weight decay and
                # momentum of the ops a step did not sample still act on them.
                self.optimizer.zero_grad(set_to_none=False)
                loss.backward()
                if s.grad_clip:
                    torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip, foreach=True)
                self.optimizer.step()
                m = self.meters
                m["loss_sum"] += float(loss.detach()) * len(y)  # one sync per step, as the reference's loss.item()
                m["correct"] += int((logits.argmax(-1) == y).sum())
                m["seen"] += len(y)
                self.batch += 1
                steps += 1
                if s.checkpoint_every and self.batch % s.checkpoint_every == 0 and self.batch < len(self.loader):
                    m["seconds"] += time.perf_counter() - t0
                    t0 = time.perf_counter()
                    self.save()
                if fault_after and steps >= fault_after:
                    os.kill(os.getpid(), signal.SIGKILL)
            self.meters["seconds"] += time.perf_counter() - t0
            self._end_epoch()

    def _end_epoch(self) -> None:
        m = self.meters
        loss = m["loss_sum"] / max(m["seen"], 1)
        if not np.isfinite(loss):
            raise NonFiniteError(f"rlnas supernet loss became {loss} at epoch {self.epoch}: lower search.lr "
                                 "(the last checkpoint is kept)")
        row = {"epoch": self.epoch, "phase": "supernet", "lr": self.optimizer.param_groups[0]["lr"],
               "train_loss": loss, "train_acc": 100.0 * m["correct"] / max(m["seen"], 1), "seconds": m["seconds"],
               "images_per_s": m["seen"] / m["seconds"] if m["seconds"] else None}
        self.scheduler.step()
        append_jsonl(self.run_dir / METRICS_FILE, row)  # first the row, then the checkpoint (state.py's order)
        self.epoch, self.batch = self.epoch + 1, 0
        self.meters = {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.save()
        self.say(f"rlnas supernet epoch {self.epoch}/{self.total_epochs} train_acc {row['train_acc']:.2f} "
                 f"loss {loss:.4f}")


def run_evolution(run: SupernetRun) -> EvolutionState:
    """Phase 2: the evolutionary search with the angle as fitness, resumed from ``evolution.json``."""
    cfg, s = run.cfg, run.cfg.search
    nodes, prob, reduce_too = int(s.nodes), float(s.rlnas.mutation_prob), bool(s.rlnas.mutate_reduce)
    table = AngleTable(run.initial_net(), run.net)
    path = run.run_dir / EVOLUTION_FILE
    state = EvolutionState.from_json(json.loads(path.read_text())) if path.exists() else None
    if state is not None:
        run.say(f"{run.run_dir}: resuming the evolution at generation {state.generation}")
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), EVOLUTION_STREAM]))

    fault_after, evals = int(os.environ.get(EVAL_FAULT_ENV, "0")), [0]

    def fitness(cand: Candidate) -> float:
        if fault_after and evals[0] >= fault_after:
            os.kill(os.getpid(), signal.SIGKILL)
        evals[0] += 1
        return table(cand)

    def save(st: EvolutionState) -> None:
        write_json_atomic(path, st.to_json())

    return evolve(evolution_settings(cfg), fitness,
                  sample=lambda g: sample_candidate(g, nodes),
                  mutate=lambda c, g: mutate_candidate(c, g, nodes, prob, reduce_too),
                  crossover=lambda a, b, g: crossover_candidates(a, b, g, nodes),
                  rng=rng, state=state, save=save)


def run_rlnas(cfg: DictConfig, seeds: list[int], say: Callable[[str], None]) -> list[Path]:
    """Run (or resume, or skip when finished) the RLNAS searches of ``seeds``, one after another."""
    evolution_settings(cfg)  # bad numbers fail before any data is generated
    dirs = []
    for seed in seeds:
        c = seed_config(cfg, seed)  # the config `seed=N` composes: the same run directory
        run_dir = search_run_dir(c)
        dirs.append(run_dir)
        if is_complete(run_dir):
            say(f"{run_dir}: already completed, nothing to do")
            continue
        folder = ensure_dataset(c, say)
        with folder_lock(run_dir):
            if not is_complete(run_dir):
                _run_one(c, run_dir, folder, say)
    return dirs


def _run_one(cfg: DictConfig, run_dir: Path, folder: Path, say: Callable[[str], None]) -> None:
    started = time.time()
    run = SupernetRun(cfg, run_dir, folder, say)
    if run.restore():
        say(f"{run_dir}: resuming the supernet at epoch {run.epoch} batch {run.batch}")
    _trim_metrics(run_dir / METRICS_FILE, run.epoch)
    write_bytes_atomic(run_dir / CONFIG_FILE, to_yaml(cfg).encode())
    write_json_atomic(run_dir / PROVENANCE_FILE, {**provenance("fp32"), "engine": "rlnas single path"})
    run.train()
    t0 = time.perf_counter()
    state = run_evolution(run)
    # the evolution's time is search cost too (measured in this process; a resumed one counts its last part)
    append_jsonl(run_dir / METRICS_FILE, {"epoch": run.total_epochs, "phase": "evolution",
                                             "seconds": time.perf_counter() - t0, "generations": state.generation,
                                             "evaluated": len(state.fitness), "best_angle": state.fitness[state.parents[0]]})
    _finish(run, state, started)


def _finish(run: SupernetRun, state: EvolutionState, started: float) -> None:
    """genotype.json, the drawing and result.json (last: it marks the run complete)."""
    from unrealnas.nas.draw import draw_genotype

    cfg, run_dir = run.cfg, run.run_dir
    best = state.parents[0]
    genotype = candidate_genotype(best, int(cfg.search.nodes))
    genotype.save(run_dir / GENOTYPE_FILE)
    try:
        draw_genotype(genotype, run_dir / "genotype.png")
    except Exception as e:  # a drawing failure must not lose a finished search
        run.say(f"warning: could not draw the genotype ({e})")
    rows = read_jsonl(run_dir / METRICS_FILE)
    compute_s = sum(r.get("seconds") or 0.0 for r in rows)  # supernet epochs and the evolution
    last = next((r for r in reversed(rows) if r.get("phase") == "supernet"), {})
    skip_normal, skip_reduce = count_skips(genotype)
    hours_key = "gpu_hours" if run.device.type == "cuda" else "cpu_hours"
    result = {
        "kind": "search", "status": "completed", "method": "rlnas", "search_data": cfg.data.name,
        "search_label": run.manifest["label"], "num_classes": int(run.manifest["num_classes"]), "seed": int(cfg.seed),
        "data_seed": int(run.manifest["seed"]), "target": None, "dataset": run.manifest["name"], "preset": cfg.preset,
        "metrics": {"train_acc": last.get("train_acc"), "angle": state.fitness[best], "skip_normal": skip_normal,
                    "skip_reduce": skip_reduce, "evaluated": len(state.fitness)},
        "params_m": None, hours_key: compute_s / 3600.0, "wall_s": time.time() - started, "compute_s": compute_s,
        "epochs": run.total_epochs, "genotype": GENOTYPE_FILE, "genotype_json": genotype.to_json(),
        "candidate": list(best), "alphas": None, "hparams": {"weight_decay": run.weight_decay},
        "device": str(run.device), "precision": "fp32", "engine": "rlnas single path",
    }
    write_json_atomic(run_dir / RESULT_FILE, result)
    run.say(f"{run_dir}: rlnas search completed (angle {state.fitness[best]:.4f}); genotype "
            f"{json.dumps(genotype.to_json())}")
