"""Retrain a genotype on a target: run directory, resume, result.json with the search's provenance.

Run directory: ``<paths.runs>/train/<run-id>`` with run-id ``<target>-<genotype source>-s<seed>``
(plus ``-<preset>`` when the preset is not ``paper``), unless ``train.run_id`` names it. The
genotype source is the search run directory's name, the genotype file's stem, or a published
genotype's name (``genotype=DARTS_V2``).

Learning-rate rule (ImageNet): ``train.batch_size`` is the GLOBAL batch, split evenly over the
ranks; with ``train.lr_ref_batch`` set, the learning rate used is
``train.lr * global_batch / train.lr_ref_batch`` (linear scaling, Goyal et al. 2017), so the
paper's 0.5 at 1024 becomes 0.25 at 512 and stays 0.5 for 1024 spread over any number of GPUs.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from unrealnas import dist
from unrealnas.atomic import write_bytes_atomic, write_json_atomic
from unrealnas.checkpoint import load_checkpoint
from unrealnas.config.compose import to_yaml
from unrealnas.errors import CheckpointError, ConfigError
from unrealnas.lock import AlreadyRunning, folder_lock
from unrealnas.models import build_network, count_flops_m, count_params_m
from unrealnas.nas.genotype import KNOWN_GENOTYPES, Genotype
from unrealnas.rundir import CHECKPOINT_FILE, CONFIG_FILE, GENOTYPE_FILE, RESULT_FILE, TRAIN, run_path
from unrealnas.runtime import apply_threads, autocast_dtype, precision_name, threads_of
from unrealnas.train.graphed import train_cuda_graph_off
from unrealnas.train.loop import FitResult, LoopOptions, fit
from unrealnas.train.metrics import best_on_valid
from unrealnas.train.targets.base import CIFAR_SIZE_TARGETS, Target, TargetSpec
from unrealnas.train.targets.registry import build_target

PROVENANCE_KEYS = ("method", "search_data", "search_label", "num_classes", "seed")


@dataclass
class GenotypeSource:
    """A genotype and where it came from."""

    genotype: Genotype
    path: str | None  # genotype.json path (None for a published genotype named on the command line)
    name: str  # short name used in the run id
    provenance: dict[str, Any]  # method, search_data, search_label, num_classes, seed of the search


def resolve_genotype(spec: str | None) -> GenotypeSource:
    """Load ``genotype=`` (a genotype.json, a search run directory, or a published name such as DARTS_V2)."""
    if spec is None or str(spec).strip() == "":
        raise ConfigError("genotype=<genotype.json | search run dir | DARTS_V2> is required")
    spec = str(spec)
    if spec in KNOWN_GENOTYPES and not Path(spec).exists():
        prov = {"method": spec, "search_data": None, "search_label": None, "num_classes": None, "seed": None}
        return GenotypeSource(KNOWN_GENOTYPES[spec], None, spec.lower(), prov)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"genotype={spec}: no such file or run directory (or use a published name: "
                          f"{', '.join(KNOWN_GENOTYPES)})")
    file = path / GENOTYPE_FILE if path.is_dir() else path
    if path.is_dir() and not file.is_file():
        raise ConfigError(f"genotype={spec}: the directory has no {GENOTYPE_FILE} (is the search finished?)")
    genotype = Genotype.load(file)
    run_dir = file.parent
    prov: dict[str, Any] = {k: None for k in PROVENANCE_KEYS}
    result = run_dir / RESULT_FILE
    name = run_dir.name if file.name == GENOTYPE_FILE else file.stem
    if result.is_file():
        try:
            search = json.loads(result.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise ConfigError(f"{result} is not valid JSON; the search run directory is damaged") from None
        if isinstance(search, dict) and search.get("kind") == "search":
            prov = {k: search.get(k) for k in PROVENANCE_KEYS}
            name = run_dir.name
    return GenotypeSource(genotype, str(file.resolve()), name, prov)


def check_train_config(t: DictConfig) -> None:
    """Range and choice checks of ``cfg.train`` (one ConfigError line each)."""

    def check(cond: bool, key: str, fix: str) -> None:
        if not cond:
            raise ConfigError(f"config: train.{key}={t[key]!r} is invalid: {fix}")

    check(t.layers >= 3, "layers", "use at least 3 cells (two are reductions)")
    check(t.init_channels >= 2 and t.init_channels % 2 == 0, "init_channels", "use an even count >= 2")
    check(t.epochs >= 1, "epochs", "use at least 1 epoch")
    check(t.batch_size >= 1, "batch_size", "use a positive global batch")
    check(t.lr > 0, "lr", "use a positive learning rate")
    check(t.lr_ref_batch is None or t.lr_ref_batch >= 1, "lr_ref_batch", "use null or a positive batch size")
    check(0 < t.lr_gamma <= 1, "lr_gamma", "use a factor in (0, 1]")
    check(0 <= t.warmup_epochs < t.epochs, "warmup_epochs", "use 0 <= warmup_epochs < epochs")
    check(t.weight_decay >= 0 and t.grad_clip >= 0, "weight_decay", "use non-negative values")
    check(t.auxiliary_weight >= 0, "auxiliary_weight", "use 0 (no head) or a positive weight")
    check(0 <= t.drop_path < 1, "drop_path", "use a probability in [0, 1)")
    check(t.cutout >= 0, "cutout", "use 0 (off) or a length in px")
    check(0 <= t.label_smoothing < 1, "label_smoothing", "use a value in [0, 1)")
    check(8 <= t.resolution <= 4096, "resolution", "use a side from 8 to 4096 px")
    check(t.max_images is None or t.max_images >= 1, "max_images", "use null or a positive count")
    check(t.max_eval_images is None or t.max_eval_images >= 1, "max_eval_images", "use null or a positive count")
    check(t.eval_every >= 1, "eval_every", "use a positive epoch count")
    check(t.num_workers >= 0, "num_workers", "use 0 or more workers")


def run_id_for(cfg: DictConfig, source: GenotypeSource) -> str:
    """The run directory name: target, genotype source, seed (and the preset unless paper)."""
    if cfg.train.run_id:
        rid = str(cfg.train.run_id)
        if "/" in rid or rid in (".", ".."):
            raise ConfigError(f"config: train.run_id={rid!r} is invalid: use a plain folder name")
        return rid
    preset = "" if cfg.preset == "paper" else f"-{cfg.preset}"
    return f"{cfg.train.target}-{source.name}-s{cfg.seed}{preset}"


def network_kind(cfg: DictConfig, target_name: str) -> str:
    """``train.net``, with auto = cifar stem for CIFAR targets, imagenet stem otherwise."""
    if cfg.train.net != "auto":
        return str(cfg.train.net)
    return "cifar" if target_name in CIFAR_SIZE_TARGETS else "imagenet"


def fingerprint_of(cfg: DictConfig, genotype: Genotype, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must match to be resumed by this run."""
    t = cfg.train
    return {"genotype": genotype.to_json(), "net": network_kind(cfg, t.target), "layers": int(t.layers),
            "init_channels": int(t.init_channels), "num_classes": int(num_classes),
            "auxiliary": t.auxiliary_weight > 0, "target": str(t.target)}


def target_spec(cfg: DictConfig, device: torch.device, env: dist.DistEnv) -> TargetSpec:
    """The explicit target arguments from the config (CIFAR falls back to data.root, ``dataset`` to data.*)."""
    t = cfg.train
    root = t.root
    if root is None and t.target in ("cifar10", "cifar100"):
        root = cfg.data.root
    if root is None and t.target == "dataset":
        from unrealnas.data.generators import check_manifest, dataset_dir
        from unrealnas.data.store import load_manifest

        folder = dataset_dir(cfg)  # the dataset that data.* and seed describe: its manifest must agree
        check_manifest(cfg, load_manifest(folder), folder)
        root = str(folder)
    return TargetSpec(root=root, seed=int(cfg.seed), device=device, env=env, batch_size=int(t.batch_size),
                      resolution=int(t.resolution), cutout=int(t.cutout), max_images=t.max_images,
                      max_eval_images=t.max_eval_images, num_workers=int(t.num_workers),
                      uncertainty=str(t.uncertainty), frontal_only=bool(t.frontal_only),
                      loader=str(t.loader), ffcv_max_resolution=int(t.ffcv_max_resolution))


def loop_options(cfg: DictConfig, device: torch.device, target: Target, env: dist.DistEnv) -> LoopOptions:
    """The loop's explicit options: AMP and channels_last resolved for ``device``, LR scaled by the batch."""
    t = cfg.train
    amp = autocast_dtype(device, str(t.amp))  # None: fp32
    cl = t.channels_last == "on" or (t.channels_last == "auto" and device.type == "cuda")
    global_batch = target.per_rank_batch * env.world_size
    lr = float(t.lr) * (global_batch / t.lr_ref_batch if t.lr_ref_batch else 1.0)
    graph_off = train_cuda_graph_off(str(t.cuda_graph), device, str(t.optimizer), amp,
                                     env.distributed)
    return LoopOptions(
        epochs=int(t.epochs), lr=lr, seed=int(cfg.seed), optimizer=str(t.optimizer), lr_min=float(t.lr_min),
        schedule=str(t.schedule), lr_gamma=float(t.lr_gamma), warmup_epochs=int(t.warmup_epochs),
        momentum=float(t.momentum), weight_decay=float(t.weight_decay), grad_clip=float(t.grad_clip),
        aux_weight=float(t.auxiliary_weight), drop_path=float(t.drop_path), label_smoothing=float(t.label_smoothing),
        amp=amp, channels_last=cl, eval_every=int(t.eval_every),
        cuda_graph=graph_off is None, cuda_graph_strict=str(t.cuda_graph) == "on", cuda_graph_off=graph_off or "",
    )


def load_pretrained(model: torch.nn.Module, path: str, fingerprint: dict[str, Any]) -> None:
    """Initialise from another retrain of the same genotype and network (classifiers dropped)."""
    state = load_checkpoint(path, fingerprint, keys=("genotype", "net", "layers", "init_channels"))
    has_aux = any(k.startswith("auxiliary_head.") for k in model.state_dict())
    # the auxiliary head only helps training: an ImageNet one is dropped when this net has none (CheXpert)
    weights = {k: v for k, v in state["model"].items()
               if not (k.startswith("classifier.") or k.startswith("auxiliary_head.classifier.")
                       or (not has_aux and k.startswith("auxiliary_head.")))}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    bad = [k for k in missing if not (k.startswith("classifier.") or k.startswith("auxiliary_head."))]
    if bad or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this network (missing {bad[:3]}, unexpected {unexpected[:3]})")


def _git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _result(cfg: DictConfig, source: GenotypeSource, status: str, run_id: str, **extra: Any) -> dict[str, Any]:
    return {"kind": "train", "status": status, **source.provenance, "target": str(cfg.train.target),
            "train_seed": int(cfg.seed), "run_id": run_id, "genotype": source.path or source.name,
            "preset": str(cfg.preset), "git_sha": _git_sha(), "command": " ".join(sys.argv),
            "host": socket.gethostname(), "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "slurm_array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
            "threads": torch.get_num_threads(), **extra}


def run_retrain(cfg: DictConfig, progress: Callable[[str], None] | None = None,
                stop_after: int | None = None) -> Path:
    """Retrain (or resume, or skip if finished) the configured genotype on ``cfg.train.target``; return the run dir."""
    say = progress or (lambda _m: None)
    apply_threads(threads_of(cfg))  # before any tensor work: the reduction order follows the thread count
    check_train_config(cfg.train)
    source = resolve_genotype(cfg.genotype)
    run_dir = run_path(cfg.paths.runs, TRAIN, run_id_for(cfg, source))
    result_path = run_dir / RESULT_FILE
    if _completed(result_path):
        say(f"{run_dir} already completed; nothing to do")
        return run_dir
    env = dist.detect_env()
    device = dist.resolve_device(str(cfg.device), env)
    env = dist.init_distributed(device, env)
    with contextlib.ExitStack() as stack:
        # One writer per run directory; rank 0 holds the lock for the whole job, and every rank
        # learns whether it got it (the ranks of a second submission must all stop, not hang).
        busy = None
        if env.is_main:
            try:
                stack.enter_context(folder_lock(run_dir))
            except AlreadyRunning as e:
                busy = e.holder
        busy = dist.broadcast_object(busy)
        if busy is not None:
            raise AlreadyRunning(run_dir, busy)
        if _completed(result_path):  # the writer that held it finished while we got here
            say(f"{run_dir} already completed; nothing to do")
            return run_dir
        _retrain_locked(cfg, source, run_dir, env, device, say, stop_after)
    return run_dir


def _completed(result_path: Path) -> bool:
    try:
        return json.loads(result_path.read_text()).get("status") == "completed"
    except (OSError, ValueError, AttributeError):
        return False


def _retrain_locked(cfg: DictConfig, source: GenotypeSource, run_dir: Path, env: dist.DistEnv, device: torch.device,
                    say: Callable[[str], None], stop_after: int | None) -> None:
    result_path = run_dir / RESULT_FILE
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    spec = target_spec(cfg, device, env)
    target = build_target(str(cfg.train.target), spec)
    files = {} if target.files_official is None else {"data_files_official": target.files_official}
    if target.files_official is False:
        say(f"warning: the {cfg.train.target} files under {spec.root} do not match the "
            f"official md5s (a re-pack or another version); results may not be comparable (result.json: "
            f"data_files_official=false)")
    fingerprint = fingerprint_of(cfg, source.genotype, target.num_classes)
    ckpt_path = run_dir / CHECKPOINT_FILE
    # Check an existing checkpoint before writing anything, so a mismatch leaves the run untouched.
    resume = load_checkpoint(ckpt_path, fingerprint) if ckpt_path.is_file() else None
    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(run_dir / CONFIG_FILE, to_yaml(cfg).encode())
    dist.barrier()
    torch.manual_seed(int(cfg.seed))  # the initial weights are a function of the seed
    model = build_network(fingerprint["net"], source.genotype, int(cfg.train.init_channels), target.num_classes,
                          int(cfg.train.layers), auxiliary=cfg.train.auxiliary_weight > 0,
                          in_channels=target.in_channels)
    params_m = count_params_m(model)
    flops_m = count_flops_m(model, (target.in_channels, target.input_size, target.input_size))
    if cfg.train.pretrained and resume is None:
        load_pretrained(model, str(cfg.train.pretrained), fingerprint)
        say(f"initialised from {cfg.train.pretrained} (classifier dropped)")
    opts = loop_options(cfg, device, target, env)
    say(f"{run_dir}: {cfg.train.target}, {params_m:.2f}M params, {flops_m:.0f}M mult-adds, {env.world_size} rank(s) "
        f"on {device}, lr {opts.lr:g} at global batch {target.per_rank_batch * env.world_size}")
    rid = run_dir.name
    hosts = [str(h) for h in dist.all_gather_objects(socket.gethostname())]  # per rank, in rank order
    precision = precision_name(device, opts.amp)
    try:
        out: FitResult = fit(model, target, opts, run_dir, device, env, fingerprint, resume, say, stop_after)
    except Exception as e:
        if env.is_main:
            write_json_atomic(result_path, _result(cfg, source, "failed", rid, error=f"{type(e).__name__}: {e}",
                                                   params_m=params_m, flops_m=flops_m, world_size=env.world_size,
                                                   hosts=hosts, precision=precision, **files))
        raise
    if out.completed and env.is_main:
        hours = out.wall_s * env.world_size / 3600.0
        hours_key = "gpu_hours" if device.type == "cuda" else "cpu_hours"
        metrics = {k: v for k, v in out.metrics.items() if k != "val_loss"}
        notes = {}
        if target.multilabel:
            best_epoch, best = best_on_valid(out.history)
            level = "per study (max probability over a study's views)" if target.eval_groups is not None else "per image"
            metrics.update(auroc_last=metrics.get("auroc"), auroc_best_valid=best, best_valid_epoch=best_epoch)
            notes = {"metric_notes": {
                "auroc": f"mean AUROC of the {len(target.label_names)} pathologies, {level}, last epoch (reported)",
                "auroc_last": "the same as auroc", "auroc_image": "mean AUROC per image, last epoch",
                "auroc_best_valid": "best auroc over the evaluated epochs (epoch best_valid_epoch), chosen on the "
                                    "validation split itself"}}
        write_json_atomic(result_path, _result(
            cfg, source, "completed", rid, metrics=metrics, params_m=params_m, flops_m=flops_m,
            wall_s=out.wall_s, **{hours_key: hours}, world_size=env.world_size, hosts=hosts, epochs=opts.epochs,
            lr=opts.lr, global_batch=target.per_rank_batch * env.world_size, finished_at=time.time(),
            precision=precision, cuda_graph=out.cuda_graph, **files, **notes,
        ))
        say(f"done: {metrics}")
    dist.barrier()
