"""One seed's search: its run directory, data, schedule, checkpoint and records (the engine advances it).

``<paths.runs>/search/<run-id>/`` holds ``config.yaml``, ``metrics.jsonl`` (one row per epoch),
``checkpoint.pt`` (everything needed to continue, written atomically at every epoch end and
every ``search.checkpoint_every`` steps), and at the end ``genotype.json``, ``genotype.png`` and
``result.json``. Re-running the same command resumes from the checkpoint; a finished run is a
no-op. The data order is a function of (seed, epoch), so a resumed run takes exactly the steps
the uninterrupted run would have taken.

A :class:`SearchRun` holds what is per seed: the dataset and its loaders, the validation stream,
the learning-rate schedule, SGAS state, meters, and the seed's supernet with its SGD and Adam
optimizers, which are the checkpoint's layout (``state_dict``) and the engine's starting point.
The iterations run in :mod:`unrealnas.search.engine`, for one seed or several packed together;
the engine copies its state back into each seed's run before that run checkpoints or logs.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from unrealnas.atomic import append_jsonl, read_jsonl, write_bytes_atomic, write_json_atomic
from unrealnas.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from unrealnas.config.methods import method as method_facts
from unrealnas.data.generators import check_manifest, data_seed, dataset_dir, generate_dataset
from unrealnas.data.loaders import ROTATIONS, DeviceLoader, load_split_to_device, search_loaders
from unrealnas.data.store import load_manifest
from unrealnas.errors import NonFiniteError
from unrealnas.nas.genotype import Genotype, count_skips
from unrealnas.nas.ops import PRIMITIVES
from unrealnas.nas.sgas import SGASState, apply_to_supernet, end_of_epoch, sgas_genotype
from unrealnas.nas.supernet import SuperNet
from unrealnas.rundir import (
    CHECKPOINT_FILE,
    GENOTYPE_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    RESULT_FILE,
    SEARCH,
    run_path,
)
from unrealnas.runtime import (
    allow_tf32,
    autocast_dtype,
    precision_name,
    resolve_device,
    use_channels_last,
)
from unrealnas.search.random import is_sampled, sampled_run_id

# Test hook: SIGKILL this process after N optimisation steps (simulates a preempted job).
FAULT_ENV = "UNREALNAS_FAULT_AFTER_STEPS"


def search_run_id(cfg: DictConfig) -> str:
    """Run id: method, dataset, classes, search seed (and data seed when it differs), plus a hash of the settings."""
    if is_sampled(cfg.search.method):
        return sampled_run_id(cfg)
    s = OmegaConf.to_container(cfg.search, resolve=True)
    for k in ("checkpoint_every", "eval_every", "compile", "supernet", "cuda_graph", "recompute"):
        s.pop(k, None)  # bookkeeping or engine only: same search, same id (old runs resume fused)
    facts = method_facts(cfg.search.method)
    # Keys read by one method only: the other methods keep the ids they had before the key (a run id is
    # a file contract: a changed id would restart every unfinished search from scratch)
    if not facts.partial_channels:
        s.pop("pc_k", None)
    if not facts.single_path:
        s.pop("rlnas", None)
    key = json.dumps([s, dataset_dir(cfg).name, int(cfg.seed)], sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    d = cfg.data
    if d.label == "rotation":  # same dataset folder as the source's own search: the label must change the id
        key = json.dumps([s, dataset_dir(cfg).name, int(cfg.seed), "rotation"], sort_keys=True)
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    classes = {"random": f"-c{d.num_classes}", "rotation": "-rot"}.get(str(d.label), "")
    dseed = data_seed(d, cfg.seed)
    data_part = f"-d{dseed}" if dseed != int(cfg.seed) else ""
    return f"{cfg.search.method}-{d.name}{classes}{data_part}-s{cfg.seed}-{digest}"


def search_run_dir(cfg: DictConfig) -> Path:
    """``<paths.runs>/search/<run-id>``."""
    return run_path(cfg.paths.runs, SEARCH, search_run_id(cfg))


@dataclass
class ValStream:
    """The persistent validation iterator (the reference rebuilt it every step): position = (epoch, batch)."""

    loader: DeviceLoader
    epoch: int = 0
    batch: int = 0
    _it: Iterator | None = field(default=None, repr=False)

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        while True:
            if self._it is None:
                self._it = self.loader.epoch(self.epoch, self.batch)
            try:
                item = next(self._it)
                self.batch += 1
                return item
            except StopIteration:
                self.epoch, self.batch, self._it = self.epoch + 1, 0, None

    def set_batch_size(self, batch_size: int) -> None:
        """New batch size from the next validation epoch on (so a resumed run does the same)."""
        if batch_size != self.loader.batch_size:
            self.loader.set_batch_size(batch_size)
            if self.batch:
                self.epoch, self.batch = self.epoch + 1, 0
            self._it = None

    def state_dict(self) -> dict[str, int]:
        """Position of the stream."""
        return {"epoch": self.epoch, "batch": self.batch, "batch_size": self.loader.batch_size}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Continue from a saved position."""
        self.loader.set_batch_size(state["batch_size"])
        self.epoch, self.batch, self._it = state["epoch"], state["batch"], None


def search_device(cfg: DictConfig) -> torch.device:
    """The search's device (``device``), with deterministic kernels when ``search.deterministic``."""
    device = resolve_device(cfg.device)
    if cfg.search.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    return device


def load_search_split(cfg: DictConfig, data_folder: Path, device: torch.device) -> Any:
    """The dataset's train split on ``device``, resized to ``search.resolution`` where that differs."""
    data = load_split_to_device(data_folder, device, verify=cfg.data.verify_on_load)
    resolution = cfg.search.resolution
    if resolution and resolution != data.images.shape[-1]:
        data.images = resize_images(data.images, resolution)
    return data


class SearchRun:
    """The state of one search and the loop that advances it."""

    def __init__(self, cfg: DictConfig, run_dir: Path, data_folder: Path, progress: Callable[[str], None]):
        self.cfg, self.run_dir, self.say = cfg, run_dir, progress
        s = cfg.search
        self.device = search_device(cfg)
        if autocast_dtype(self.device, s.amp) is None:
            allow_tf32(self.device)  # fp32 search (the default): TF32 tensor cores on CUDA
        self.precision = precision_name(self.device, autocast_dtype(self.device, s.amp))
        data = load_search_split(cfg, data_folder, self.device)
        self.manifest = data.manifest
        # rotation (UnNAS): labels made per batch from the images; otherwise the stored ones
        self.rotation = cfg.data.label == "rotation"
        self.label = "rotation" if self.rotation else str(self.manifest["label"])
        self.num_classes = ROTATIONS if self.rotation else int(self.manifest["num_classes"])
        # Rotation labels are a learnable task like true labels (UnNAS: two halves, arch weight decay
        # 1e-3), so they take the true-label defaults of split and weight decay.
        self.random_labels = self.label == "random"
        self.split = s.split or ("same_flipped" if self.random_labels else "other_half")
        wd = s.weight_decay if s.weight_decay is not None else (0.0 if self.random_labels else 3e-4)
        arch_wd = s.arch_weight_decay if s.arch_weight_decay is not None else (0.0 if self.random_labels else 1e-3)
        self.total_epochs = s.warmup_epochs + s.epochs
        self.train_loader, val_loader = search_loaders(data, s.batch_size, int(cfg.seed), self.split, s.train_portion,
                                                         num_train=s.num_train, rotation=self.rotation)
        self.val = ValStream(val_loader)
        torch.manual_seed(int(cfg.seed))  # weight init is a function of the seed
        self.model = SuperNet(s.init_channels, self.num_classes, s.layers, s.nodes,
                              s.stem_multiplier, s.alpha_init, in_channels=int(self.manifest["shape"][2]),
                              fused=s.supernet == "fused",
                              partial_channels=int(s.pc_k) if method_facts(s.method).partial_channels else None)
        self.model.to(self.device)
        self.channels_last = use_channels_last(self.device, s.channels_last)
        # the seed's optimizers: the checkpoint's layout and the engine's starting point
        self.optimizer = torch.optim.SGD(self.model.weight_parameters(), lr=s.lr, momentum=s.momentum,
                                         weight_decay=wd, foreach=True)
        self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(self.optimizer, self.total_epochs, eta_min=s.lr_min)
        self.arch_optimizer = torch.optim.Adam(self.model.arch_parameters(), lr=s.arch_lr, betas=tuple(s.arch_betas),
                                               weight_decay=arch_wd)
        self.sgas = (SGASState(nodes=s.nodes, base_batch_size=s.batch_size, batch_increase=s.sgas.batch_increase,
                               history_size=s.sgas.history_size) if method_facts(s.method).sgas else None)
        # Before any step (and before a resume): the initial alphas are a function of the seed.
        self.alpha_entropy_start = alpha_entropy(*self.model.alpha_softmax())
        self.epoch, self.batch = 0, 0
        self.meters = _zero_meters()
        self.hparams = {"weight_decay": wd, "arch_weight_decay": arch_wd, "split": self.split}
        self.board: Any = None  # a RunBoard while the engine advances the search
        self.engine_record: dict[str, Any] = {}  # what ran it (engine, seeds in process, CUDA graph outcome)

    # ------------------------------------------------------------------ checkpoint

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed by this run."""
        return {"run_id": self.run_dir.name, "dataset": self.manifest["name"], "method": self.cfg.search.method}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly where the run stands."""
        return {"fingerprint": self.fingerprint(), "model": self.model.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "architect": {"optimizer": self.arch_optimizer.state_dict()}, "sgas": self.sgas.state_dict() if self.sgas else None,
                "rng": rng_state(), "epoch": self.epoch, "batch": self.batch, "val": self.val.state_dict(),
                "train_batch_size": self.train_loader.batch_size, "meters": dict(self.meters)}

    def save(self) -> None:
        """Write the checkpoint atomically (the previous one survives a crash mid-write)."""
        save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.state_dict())

    def restore(self) -> bool:
        """Load the checkpoint if there is one; a corrupt or foreign one raises CheckpointError."""
        path = self.run_dir / CHECKPOINT_FILE
        if not path.exists():
            return False
        state = load_checkpoint(path, self.fingerprint())
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.arch_optimizer.load_state_dict(state["architect"]["optimizer"])
        if self.sgas is not None:
            self.sgas.load_state_dict(state["sgas"])
            apply_to_supernet(self.sgas, self.model)
        set_rng_state(state["rng"])
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])
        self.train_loader.set_batch_size(int(state["train_batch_size"]))
        self.val.load_state_dict(state["val"])
        self.meters = dict(state["meters"])
        return True

    # ------------------------------------------------------------------ per-epoch records

    def fold_meters(self, loss_sum: torch.Tensor, correct: torch.Tensor, t0: float) -> None:
        """Add the device-side loss sum and correct count (one host sync) and the seconds since ``t0``."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        m = self.meters
        m["loss_sum"] += float(loss_sum)
        if not math.isfinite(m["loss_sum"]):  # checked before any checkpoint could keep the diverged weights
            raise NonFiniteError(f"search loss became {m['loss_sum']} at epoch {self.epoch} batch {self.batch}: "
                                 "the search diverged; lower search.lr or search.arch_lr (the last checkpoint is kept)")
        m["correct"] += int(correct)
        # images the loss saw: each drawn image counts 4 times under rotation labels
        m["seen"] = self.batch * self.train_loader.batch_size * (ROTATIONS if self.rotation else 1)
        m["seconds"] += time.perf_counter() - t0

    def end_epoch(self, epoch: int, val: tuple[float, float] | None) -> None:
        """Log epoch ``epoch`` (metrics row, TensorBoard, progress line), step the schedule, make the SGAS
        decisions and checkpoint; ``val``: (loss, accuracy) on the architecture split, if evaluated."""
        s = self.cfg.search
        lr = self.optimizer.param_groups[0]["lr"]
        self.scheduler.step()
        decisions = []
        if self.sgas is not None:
            made = end_of_epoch(self.sgas, epoch, self.model, s.sgas.criterion, s.sgas.warmup_dec_epoch,
                                s.sgas.decision_freq, s.sgas.normalize_over)
            decisions = [d.__dict__ for d in made]
            self.train_loader.set_batch_size(self.sgas.batch_size)
            self.val.set_batch_size(self.sgas.batch_size)
        genotype = self.genotype()
        val_loss, val_acc = val if val is not None else (None, None)
        m = self.meters
        p_normal, p_reduce = self.model.alpha_softmax()
        skip_normal, skip_reduce = count_skips(genotype)
        row = {"epoch": epoch, "phase": "warmup" if epoch < s.warmup_epochs else "search", "lr": lr,
               "train_loss": m["loss_sum"] / max(m["seen"], 1), "train_acc": 100.0 * m["correct"] / max(m["seen"], 1),
               "val_loss": val_loss, "val_acc": val_acc, "seconds": m["seconds"],
               "images_per_s": m["seen"] / m["seconds"] if m["seconds"] else None,
               "batch_size": self.train_loader.batch_size, "skip_normal": skip_normal, "skip_reduce": skip_reduce,
               "alpha_entropy": alpha_entropy(p_normal, p_reduce),
               "arch_steps": 0 if epoch < s.warmup_epochs else self.batch,  # one architecture step per batch
               "genotype": genotype.to_json(), "alphas_softmax": {"normal": p_normal.tolist(), "reduce": p_reduce.tolist()},
               "sgas_decisions": decisions}
        # metrics first, then the checkpoint: a crash in between repeats this epoch, and resume
        # drops the rows of epochs the checkpoint has not reached (see _trim_metrics)
        append_jsonl(self.run_dir / METRICS_FILE, row)
        if self.board is not None:
            self.board.scalars(epoch + 1, {k: v for k, v in row.items() if k != "epoch"}, "search/")
            self.board.alphas(epoch + 1, row["alphas_softmax"], PRIMITIVES)
        self.epoch, self.batch, self.meters = epoch + 1, 0, _zero_meters()
        self.save()
        self.say(f"epoch {epoch + 1}/{self.total_epochs} train_acc {row['train_acc']:.2f} "
                 f"val_acc {val_acc if val_acc is None else round(val_acc, 2)} skips {skip_normal}/{skip_reduce} "
                 f"{row['images_per_s'] or 0:.0f} img/s")

    def genotype(self) -> Genotype:
        """The genotype the current state selects."""
        if self.sgas is not None:
            return sgas_genotype(self.sgas, self.model.alpha_normal, self.model.alpha_reduce)
        return self.model.genotype()

    def evaluates(self, epoch: int) -> bool:
        """Whether epoch ``epoch`` ends with a pass over the architecture split (the last, and every eval_every)."""
        every = self.cfg.search.eval_every
        return epoch + 1 == self.total_epochs or bool(every and (epoch + 1) % every == 0)


def alpha_entropy(p_normal: torch.Tensor, p_reduce: torch.Tensor) -> float:
    """Mean entropy (nats) of the op distribution softmax(alpha) over every edge of both cells (uniform: ln 8)."""
    p = torch.cat([p_normal.detach().float().cpu(), p_reduce.detach().float().cpu()])
    return float(torch.special.entr(p).sum(-1).mean())


def resize_images(images: torch.Tensor, size: int) -> torch.Tensor:
    """Area-resize a whole NCHW split once (CPU presets search on smaller images), keeping its dtype."""
    out = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area")
    return out.round().clamp(0, 255).to(torch.uint8) if images.dtype == torch.uint8 else out.to(images.dtype)


def _zero_meters() -> dict[str, float]:
    return {"loss_sum": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}


def _trim_metrics(path: Path, epoch: int) -> None:
    """Keep only metric rows of epochs before ``epoch`` (rows past the checkpoint are redone)."""
    rows = read_jsonl(path)
    keep = [r for r in rows if r.get("epoch", -1) < epoch]
    # A torn line (a killed writer) is dropped here, so that the next append starts a clean line.
    if len(keep) != len(rows) or (path.exists() and len([ln for ln in path.read_bytes().splitlines() if ln.strip()])
                                  != len(rows)):
        write_bytes_atomic(path, "".join(json.dumps(r) + "\n" for r in keep).encode())


def ensure_dataset(cfg: DictConfig, progress: Callable[[str], None]) -> Path:
    """The dataset folder of ``cfg``, generated on the fly if it does not exist yet, and checked to be that dataset."""
    folder = dataset_dir(cfg)
    if not (folder / MANIFEST_FILE).exists():
        progress(f"dataset {folder} not found: generating it")
        generate_dataset(cfg, progress, wait=True)  # another task generating it: wait, then use it
    # A shared data.id must not hand a seed-1 search the seed-0 dataset: the manifest decides.
    check_manifest(cfg, load_manifest(folder), folder)
    return folder


def finish(run: SearchRun, started: float) -> None:
    """Write genotype.json, the cell drawing and result.json (last: it marks the run complete)."""
    from unrealnas.nas.draw import draw_genotype

    run_dir, cfg = run.run_dir, run.cfg
    genotype = run.genotype()
    genotype.save(run_dir / GENOTYPE_FILE)
    try:
        draw_genotype(genotype, run_dir / "genotype.png")
    except Exception as e:  # a drawing failure must not lose a finished search
        run.say(f"warning: could not draw the genotype ({e})")
    rows = read_jsonl(run_dir / METRICS_FILE)
    compute_s = sum(r.get("seconds") or 0.0 for r in rows)
    last = rows[-1] if rows else {}
    hours_key = "gpu_hours" if run.device.type == "cuda" else "cpu_hours"
    skip_normal, skip_reduce = count_skips(genotype)
    result = {
        "kind": "search", "status": "completed", "method": cfg.search.method, "search_data": cfg.data.name,
        "search_label": run.label, "num_classes": run.num_classes, "seed": int(cfg.seed),
        "data_seed": int(run.manifest["seed"]), "target": None, "dataset": run.manifest["name"], "preset": cfg.preset,
        "metrics": {"train_acc": last.get("train_acc"), "val_acc": last.get("val_acc"),
                    "skip_normal": skip_normal, "skip_reduce": skip_reduce,
                    "alpha_entropy_start": run.alpha_entropy_start,
                    "alpha_entropy_end": alpha_entropy(*run.model.alpha_softmax()),
                    "arch_steps": sum(int(r.get("arch_steps") or 0) for r in rows)},
        "params_m": None, hours_key: compute_s / 3600.0, "wall_s": time.time() - started, "compute_s": compute_s,
        "epochs": run.total_epochs, "genotype": GENOTYPE_FILE, "genotype_json": genotype.to_json(),
        "alphas": {"normal": run.model.alpha_normal.detach().cpu().tolist(),
                   "reduce": run.model.alpha_reduce.detach().cpu().tolist()},
        # PC-DARTS: the raw edge betas beside the alphas (softmax over each node's edges normalises them)
        **({"betas": {"normal": run.model.beta_normal.detach().cpu().tolist(),
                      "reduce": run.model.beta_reduce.detach().cpu().tolist()}}
           if run.model.partial_channels is not None else {}),
        "hparams": run.hparams, "device": str(run.device), "precision": run.precision, **run.engine_record,
    }
    if run.sgas is not None:
        result["sgas"] = run.sgas.state_dict()
    write_json_atomic(run_dir / RESULT_FILE, result)
    run.say(f"{run_dir}: search completed; genotype {json.dumps(genotype.to_json())}")
