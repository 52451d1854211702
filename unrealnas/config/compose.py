"""Compose the Hydra config from ``conf/`` plus command-line overrides, then validate it."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unrealnas.config.methods import SEARCH_METHODS
from unrealnas.errors import ConfigError
from unrealnas.rundir import CONFIG_FILE

DATA_NAMES = ("rlrn", "rlgd", "rlrd", "cifar10", "cifar100", "digits")
NOISE_DATA = ("rlrn",)  # generators whose images have no orientation (refused with rotation labels)


def package_dir(name: str) -> Path:
    """A folder shipped inside the package (``conf``, ``slurm``): a checkout's symlink or a wheel's copy."""
    from importlib.resources import files

    return Path(str(files("unrealnas") / name))


def conf_dir() -> Path:
    """The ``conf/`` folder: $UNREALNAS_CONF, else the one shipped in the package."""
    env = os.environ.get("UNREALNAS_CONF")
    path = Path(env) if env else package_dir("conf")
    if not (path / CONFIG_FILE).is_file():
        fix = "point UNREALNAS_CONF at a folder with config.yaml" if env else "reinstall unrealnas (its conf/ is missing)"
        raise ConfigError(f"config folder {path} has no config.yaml; {fix}")
    return path


def compose_config(overrides: list[str] | tuple[str, ...] = (), validate: bool = True) -> DictConfig:
    """Compose ``conf/config.yaml`` with Hydra overrides; wrong keys, types or values raise ConfigError."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        cfg = _hydra_compose(overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(_one_line(e)) from e
    if validate:
        validate_config(cfg)
    return cfg


def compose_configs(combos: Sequence[Sequence[str]], validate: bool = True) -> Iterator[DictConfig]:
    """:func:`compose_config` of every combination of a sweep, one at a time (a sweep's configs are not all held),
    each set of group choices composed by Hydra once.

    Hydra composes the defaults (config groups, ``+``/``~`` overrides) first and then sets each plain
    ``key=value`` override on the result (``OmegaConf.update``, struct mode). So combinations that
    differ only in plain values (``seed=0..9999``) share one composition, copied and given their values
    the way Hydra gives them; a combination that fails that way is composed in full for its exact error.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from unrealnas.config.overrides import refuse_hydra_overrides

    parser = OverridesParser.create()
    groups = {p.name for p in conf_dir().iterdir() if p.is_dir()}
    bases: dict[tuple[str, ...], DictConfig | None] = {}
    for combo in combos:
        refuse_hydra_overrides(combo)
        try:
            parsed = parser.parse_overrides(list(combo))
        except HydraException:
            yield compose_config(combo, validate)  # raises the one-line syntax error
            continue
        plain = [o for o in parsed if not (o.is_add() or o.is_force_add() or o.is_delete())
                 and o.package is None and o.key_or_group not in groups]
        structural = tuple(o.input_line for o in parsed if o not in plain)
        if structural not in bases:
            try:
                bases[structural] = _hydra_compose(structural)
            except (HydraException, OmegaConfBaseException):
                bases[structural] = None  # every combination on it gets the full path's error
        base = bases[structural]
        cfg = None
        if base is not None:
            cfg = copy.deepcopy(base)
            try:
                for o in plain:
                    OmegaConf.update(cfg, o.key_or_group, o.value(), merge=True)
                OmegaConf.resolve(cfg)
            except (HydraException, OmegaConfBaseException):
                cfg = None
        if cfg is None:
            yield compose_config(combo, validate)
            continue
        if validate:
            validate_config(cfg)
        yield cfg


def _hydra_compose(overrides: Sequence[str]) -> DictConfig:
    """Hydra's composition of ``conf/config.yaml`` with ``overrides``, unresolved and unvalidated."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from unrealnas.config.overrides import refuse_hydra_overrides
    from unrealnas.config.schema import register_schemas

    refuse_hydra_overrides(overrides)
    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
            return compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()


_INVALID_CHOICE = re.compile(r"^Invalid value '(?P<value>.*)', expected one of \[(?P<choices>.*)\]$")


def _one_line(e: BaseException) -> str:
    """One line from a Hydra/OmegaConf error: the root cause, its key, and the valid choices if listed."""
    root = e
    while root.__cause__ is not None:
        root = root.__cause__
    text = str(root).strip()
    first = text.splitlines()[0] if text else type(root).__name__
    key = getattr(root, "full_key", None)
    bad_choice = _INVALID_CHOICE.match(first)
    if bad_choice and key:  # a typed choice (config/schema.py): the house's "key=value is invalid: choose" line
        return f"config: {key}={bad_choice['value']!r} is invalid: choose one of {bad_choice['choices']}"
    if key and key not in first:
        first = f"{first} (key: {key})"
    if "Available options in" in text:
        options = [ln.strip() for ln in text.split("Available options in", 1)[1].splitlines()[1:]]
        options = [o for o in options if o and not o.startswith(("Config search path", "provider="))]
        first = f"{first}; available: {', '.join(options)}"
    elif "not in" in first:
        first = f"{first}; run 'unrealnas config' to see every key and its default"
    return f"config: {first}"


def _check(cond: bool, key: str, value, fix: str) -> None:
    if not cond:
        raise ConfigError(f"config: {key}={value!r} is invalid: {fix}")


MAX_NAME_BYTES = 200  # a folder name, leaving room for suffixes under the usual 255-byte limit


def plain_name_problem(value: str) -> str | None:
    """Why ``value`` cannot be one folder name (None when it can): every name that becomes a path is checked."""
    if value in ("", ".", "..") or "/" in value or "\\" in value or "\0" in value:
        return "use a plain folder name (no '/', not '.' or '..')"
    if len(value.encode()) > MAX_NAME_BYTES:
        return f"use at most {MAX_NAME_BYTES} bytes (file names are limited to 255)"
    return None


def validate_config(cfg: DictConfig) -> None:
    """Range and choice checks the type system cannot express."""
    for key in ("data.id", "train.run_id"):  # both become a folder under paths.data / paths.runs
        value = OmegaConf.select(cfg, key)
        if value is not None and str(value) != "":
            problem = plain_name_problem(str(value))
            _check(problem is None, key, value, problem or "")
    d = cfg.data
    # YAML and the command line read an unquoted `true` as a boolean, which OmegaConf stores as "True"
    d.label = str(d.label).lower()
    _check(d.name in DATA_NAMES, "data.name", d.name, f"choose one of {', '.join(DATA_NAMES)}")
    # a rotated noise image is another noise image: the rotation is not in the data, nothing to learn
    _check(not (d.label == "rotation" and d.name in NOISE_DATA), "data.label", d.label,
           f"rotation labels need images with an orientation, {d.name} is noise: choose data=digits, cifar10, "
           "cifar100, rlrd or rlgd")
    _check(2 <= d.num_classes <= 100_000, "data.num_classes", d.num_classes, "use a class count from 2 to 100000")
    _check(d.num_images is None or d.num_images >= 2, "data.num_images", d.num_images, "use at least 2 images")
    _check(4 <= d.resolution <= 4096, "data.resolution", d.resolution, "use a resolution from 4 to 4096 px")
    _check(d.channels in (1, 3), "data.channels", d.channels, "use 1 or 3 channels")
    _check(d.shard_size >= 1, "data.shard_size", d.shard_size, "use at least 1 image per shard")
    f = d.fractal
    _check(2 <= f.min_maps <= f.max_maps, "data.fractal.min_maps", f.min_maps, "need 2 <= min_maps <= max_maps")
    _check(0.0 < f.filling_rate < 1.0, "data.fractal.filling_rate", f.filling_rate, "use a rate in (0, 1)")
    _check(f.num_categories >= 1, "data.fractal.num_categories", f.num_categories, "use at least 1 category")
    _check(f.search_points >= 100, "data.fractal.search_points", f.search_points, "use at least 100 points")
    _check(f.render_resolution == 0 or f.render_resolution >= d.resolution, "data.fractal.render_resolution",
           f.render_resolution, f"use 0 (render at data.resolution) or at least data.resolution={d.resolution}")
    _check(d.workers >= 0, "data.workers", d.workers, "use 0 (one per core) or a positive process count")
    _check(f.render_points >= 0, "data.fractal.render_points", f.render_points, "use 0 (auto) or a positive count")
    _check(f.search_canvas > 2 * f.search_pad, "data.fractal.search_canvas", f.search_canvas, "must exceed 2*search_pad")
    s = cfg.search
    _check(s.method in SEARCH_METHODS, "search.method", s.method, f"choose one of {', '.join(SEARCH_METHODS)}")
    _check(s.num_train >= 0, "search.num_train", s.num_train, "use 0 (train_portion) or a positive image count")
    _check(0.0 < s.train_portion <= 1.0, "search.train_portion", s.train_portion, "use a fraction in (0, 1]")
    _check(s.layers >= 3, "search.layers", s.layers, "use at least 3 cells (two are reductions)")
    _check(s.init_channels >= 1 and s.batch_size >= 1, "search.batch_size", s.batch_size, "use positive sizes")
    _check(s.epochs >= 1 and s.warmup_epochs >= 0, "search.epochs", s.epochs, "use at least 1 search epoch")
    r = s.rlnas
    _check(not (s.method == "rlnas" and d.label == "rotation"), "data.label", d.label,
           "search=rlnas trains on the dataset's stored labels (RLNAS: random ones); rotation labels are for "
           "search=darts, darts2, sgas_c1 or sgas_c2")
    # `+search.unrolled=...` slips past the schema (a `+` adds keys); RLNAS has no architecture step to unroll
    _check(not (s.method == "rlnas" and "unrolled" in s), "search.unrolled", s.get("unrolled"),
           "search=rlnas has no architecture step to unroll: drop it (second-order DARTS is search=darts2)")
    _check(1 <= r.parents <= r.population, "search.rlnas.population", r.population,
           f"use a population of at least search.rlnas.parents={r.parents} (RLNAS: 50 and 10)")
    _check(0 <= r.mutations and 0 <= r.crossovers and r.mutations + r.crossovers <= r.population,
           "search.rlnas.mutations", r.mutations, f"mutations + crossovers must not exceed population={r.population}")
    _check(r.generations >= 1, "search.rlnas.generations", r.generations, "use at least 1 generation")
    _check(0.0 <= r.mutation_prob <= 1.0, "search.rlnas.mutation_prob", r.mutation_prob, "use a probability in [0, 1]")
    _check(len(s.arch_betas) == 2, "search.arch_betas", list(s.arch_betas), "give two betas, e.g. [0.5,0.999]")
    if s.method == "pcdarts":
        _check(s.pc_k >= 1 and s.init_channels % s.pc_k == 0, "search.pc_k", s.pc_k,
               f"use a K >= 1 that divides search.init_channels={s.init_channels} (PC-DARTS: 4)")
        _check(s.supernet == "fused", "search.supernet", str(s.supernet),
               "search=pcdarts runs in the fused supernet (the per-edge reference is DARTS's): use search.supernet=fused")
        # `+search.unrolled=...` slips past the schema; PC-DARTS here is first order only
        _check("unrolled" not in s, "search.unrolled", s.get("unrolled"),
               "search=pcdarts is first order only (second-order DARTS with partial channels is not supported): drop it")
    _check(s.recompute == "none" or s.supernet == "fused", "search.recompute", str(s.recompute),
           "recomputation runs in the fused supernet: use search.supernet=fused or search.recompute=none")
    _check(cfg.launcher.local_workers >= 1, "launcher.local_workers", cfg.launcher.local_workers,
           "use 1 (one task at a time) or more")
    _check(str(cfg.log_level).upper() in ("DEBUG", "INFO", "WARNING", "ERROR"), "log_level", cfg.log_level,
           "choose DEBUG, INFO, WARNING or ERROR")
    dev = str(cfg.device)
    _check(dev in ("auto", "cpu", "cuda") or dev.startswith("cuda:"), "device", dev, "choose auto, cpu, cuda or cuda:N")


def to_yaml(cfg: DictConfig) -> str:
    """The resolved config as YAML (written into every run directory)."""
    return OmegaConf.to_yaml(cfg, resolve=True)


def group_choices(group: str) -> list[str]:
    """The option names of a config group (``conf/<group>/*.yaml``)."""
    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def available_experiments() -> list[str]:
    """The overlay names under ``conf/experiment/``."""
    return sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
