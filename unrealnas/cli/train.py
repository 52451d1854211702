"""The retraining verbs: ``retrain``, ``evaluate <run dir>``, ``describe``."""

from __future__ import annotations

import json
from pathlib import Path

from omegaconf import OmegaConf

from unrealnas.config.overrides import split_args
from unrealnas.errors import ConfigError, UserError
from unrealnas.observe import say as _say  # timestamped, on the unrealnas logger
from unrealnas.rundir import CHECKPOINT_FILE, CONFIG_FILE

# Output size of each target, so ``describe`` needs no data on disk.
TARGET_CLASSES = {"cifar10": 10, "cifar100": 100, "digits": 10, "imagenet": 1000, "chexpert": 5}


def cmd_retrain(args: list[str]) -> int:
    """Retrain a genotype: ``retrain train=<target> genotype=<path | search run dir | DARTS_V2>``."""
    from unrealnas.config import compose_config
    from unrealnas.train.retrain import run_retrain

    positional, overrides = split_args(args)
    if positional:
        raise UserError(f"retrain takes only key=value overrides, got {' '.join(positional)}")
    print(run_retrain(compose_config(overrides), progress=_say))
    return 0


def cmd_describe(args: list[str]) -> int:
    """Print the network's parameters (M, auxiliary head excluded) and multiply-adds (M) without training."""
    from unrealnas.config import compose_config
    from unrealnas.models import build_network, count_flops_m, count_params_m
    from unrealnas.train.retrain import check_train_config, network_kind, resolve_genotype
    from unrealnas.train.targets.base import FIXED_32PX_TARGETS

    positional, overrides = split_args(args)
    if positional:
        raise UserError(f"describe takes only key=value overrides, got {' '.join(positional)}")
    cfg = compose_config(overrides)
    check_train_config(cfg.train)
    target = str(cfg.train.target)
    if target not in TARGET_CLASSES:
        raise ConfigError(f"unknown train.target {target!r}; choose one of {', '.join(TARGET_CLASSES)}")
    source = resolve_genotype(cfg.genotype)
    kind = network_kind(cfg, target)
    classes = TARGET_CLASSES[target]
    side = 32 if target in FIXED_32PX_TARGETS else int(cfg.train.resolution)
    model = build_network(kind, source.genotype, int(cfg.train.init_channels), classes, int(cfg.train.layers),
                          auxiliary=cfg.train.auxiliary_weight > 0)
    info = {"params_m": round(count_params_m(model), 4), "flops_m": round(count_flops_m(model, (3, side, side)), 2),
            "target": target, "net": kind, "layers": int(cfg.train.layers),
            "init_channels": int(cfg.train.init_channels), "num_classes": classes, "resolution": side,
            "genotype": source.path or source.name}
    if cfg.format == "json":
        print(json.dumps(info))
    else:
        print(f"{info['genotype']} on {target} ({kind} net, {info['layers']} cells, {info['init_channels']} channels, "
              f"{classes} classes, {side}x{side} px)")
        print(f"params: {info['params_m']:.2f} M (auxiliary head excluded)")
        print(f"FLOPs:  {info['flops_m']:.0f} M (multiply-adds of conv and linear layers, one image)")
    return 0


def cmd_evaluate(args: list[str]) -> int:
    """Evaluate a retrain run directory's checkpoint on its target's evaluation split; print JSON metrics."""
    import torch

    from unrealnas import dist
    from unrealnas.checkpoint import load_checkpoint
    from unrealnas.config.compose import validate_config
    from unrealnas.config.schema import Config
    from unrealnas.models import build_network
    from unrealnas.train.loop import evaluate
    from unrealnas.train.retrain import fingerprint_of, loop_options, resolve_genotype, target_spec
    from unrealnas.train.targets.registry import build_target

    positional, overrides = split_args(args)
    if len(positional) != 1:
        raise UserError("usage: unrealnas evaluate <retrain run dir> [key=value overrides, e.g. device=cpu]")
    run_dir = Path(positional[0])
    cfg_path = run_dir / CONFIG_FILE
    if not cfg_path.is_file():
        raise UserError(f"{run_dir} is not a retrain run directory (no config.yaml)")
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.load(cfg_path),
                              OmegaConf.from_dotlist(overrides))
    except Exception as e:  # OmegaConf raises several types for bad keys/values
        raise ConfigError(f"{cfg_path} with {overrides}: {str(e).splitlines()[0]}") from e
    validate_config(cfg)
    env = dist.detect_env({})  # evaluation runs as one process
    device = dist.resolve_device(str(cfg.device), env)
    target = build_target(str(cfg.train.target), target_spec(cfg, device, env))
    source = resolve_genotype(cfg.genotype)
    fingerprint = fingerprint_of(cfg, source.genotype, target.num_classes)
    state = load_checkpoint(run_dir / CHECKPOINT_FILE, fingerprint)
    model = build_network(fingerprint["net"], source.genotype, int(cfg.train.init_channels), target.num_classes,
                          int(cfg.train.layers), auxiliary=cfg.train.auxiliary_weight > 0,
                          in_channels=target.in_channels)
    model.load_state_dict(state["model"])
    model.to(device)
    with torch.no_grad():
        metrics = evaluate(model, target, device, loop_options(cfg, device, target, env))
    print(json.dumps({"run_dir": str(run_dir), "epoch": int(state["epoch"]), **metrics}))
    return 0
