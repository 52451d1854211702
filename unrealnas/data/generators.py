"""Dataset generators, one registry: each is a pure function of (config, seed) -> arrays.

- ``rlrn``: every pixel and channel i.i.d. N(0, 1), uniform random labels.
- ``rlgd``: FracDB-style IFS fractals (see ``fractal.py``), uniform random labels, category kept.
- ``rlrd``: real CIFAR train images, uniform random labels, source index kept.
- ``cifar10`` / ``cifar100`` / ``digits``: the real-label control (true labels).

Random streams are derived from the master seed with ``np.random.SeedSequence([seed, STREAM, ...])``
and generated in fixed blocks, so the bytes do not depend on the shard size or on workers.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from unrealnas.data import cifar
from unrealnas.data.store import SplitPlan, write_dataset
from unrealnas.errors import DataError

LABEL_STREAM = 1
NOISE_STREAM = 2
NOISE_BLOCK = 1024  # images per noise random stream: fixed, so that shard size never changes bytes


LABEL_SCHEME = 2  # 2: labels keyed by the dataset too (1 shared them across datasets of one seed)


def dataset_key(dataset: str) -> int:
    """A stable 32-bit integer naming a dataset kind and source (e.g. ``rlrd:cifar10``) in seed sequences."""
    return int.from_bytes(hashlib.sha256(dataset.encode()).digest()[:4], "little")


def random_labels(num_images: int, num_classes: int, seed: int, dataset: str) -> np.ndarray:
    """Uniform labels in [0, num_classes), drawn once per (dataset kind and source, seed, classes).

    Keying by the dataset makes RLRN and RLGD of one seed and class count independent
    (PROTOCOL section 1); the prefix of a longer draw is the shorter one.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, LABEL_STREAM, num_classes, dataset_key(dataset)]))
    return rng.integers(0, num_classes, size=num_images, dtype=np.int64)


def gaussian_noise(start: int, stop: int, shape: tuple[int, int, int], seed: int, dtype: str) -> np.ndarray:
    """Images [start, stop) of an i.i.d. N(0,1) dataset, independent of how the range is chunked."""
    out = np.empty((stop - start, *shape), dtype=dtype)
    per_image = int(np.prod(shape))
    for block in range(start // NOISE_BLOCK, (stop - 1) // NOISE_BLOCK + 1):
        b0 = block * NOISE_BLOCK
        lo, hi = max(start, b0), min(stop, b0 + NOISE_BLOCK)
        rng = np.random.default_rng(np.random.SeedSequence([seed, NOISE_STREAM, block]))
        # draw the whole block (float32) so image i always gets the same numbers
        values = rng.standard_normal((hi - b0) * per_image, dtype=np.float32)
        out[lo - start:hi - start] = values[(lo - b0) * per_image:].reshape(hi - lo, *shape).astype(dtype)
    return out


@dataclass
class DatasetSpec:
    """Everything needed to write one dataset: manifest header and the split plans."""

    header: dict[str, Any]
    splits: list[SplitPlan] = field(default_factory=list)


GENERATORS: dict[str, Callable[[DictConfig, int], DatasetSpec]] = {}


def register_generator(name: str):
    """Decorator: add a dataset builder to the registry."""
    def wrap(fn):
        GENERATORS[name] = fn
        return fn
    return wrap


def get_generator(name: str) -> Callable[[DictConfig, int], DatasetSpec]:
    """Look up a generator by name; unknown names list the valid ones."""
    if name not in GENERATORS:
        raise DataError(f"unknown dataset generator {name!r}; choose one of {', '.join(sorted(GENERATORS))}")
    return GENERATORS[name]


def _header(cfg: DictConfig, seed: int, kind: str, label: str, num_classes: int, shape, dtype: str,
            normalization: dict | None, params: dict, extras: list[str]) -> dict[str, Any]:
    extra = {"label_scheme": LABEL_SCHEME} if label == "random" else {}
    return {"name": None, "kind": kind, "label": label, "seed": int(seed), **extra, "num_classes": int(num_classes),
            "shape": [int(s) for s in shape], "dtype": dtype, "normalization": normalization,
            "params": params, "extras": extras}


@register_generator("rlrn")
def build_rlrn(cfg: DictConfig, seed: int) -> DatasetSpec:
    """RLRN: Gaussian noise images with uniform random labels."""
    n, res, ch = int(cfg.num_images or 50_000), cfg.resolution, cfg.channels
    shape = (res, res, ch)
    labels = random_labels(n, cfg.num_classes, seed, "rlrn")
    header = _header(cfg, seed, "rlrn", "random", cfg.num_classes, shape, cfg.noise_dtype, None,
                     {"num_images": n, "resolution": res, "channels": ch, "noise_dtype": cfg.noise_dtype}, [])
    block = lambda a, b: {"images": gaussian_noise(a, b, shape, seed, cfg.noise_dtype), "labels": labels[a:b]}  # noqa: E731
    return DatasetSpec(header, [SplitPlan("train", n, block)])


@register_generator("rlgd")
def build_rlgd(cfg: DictConfig, seed: int) -> DatasetSpec:
    """RLGD: FracDB-style fractal images with uniform random labels (category kept as metadata)."""
    from unrealnas.data.fractal import FractalBlocks, default_workers, search_categories

    fcfg = OmegaConf.to_object(cfg.fractal) if isinstance(cfg.fractal, DictConfig) else cfg.fractal
    n, res, ch = int(cfg.num_images or 60_000), cfg.resolution, cfg.channels
    systems = search_categories(fcfg, seed)
    labels = random_labels(n, cfg.num_classes, seed, "rlgd")
    params = {"num_images": n, "resolution": res, "channels": ch, "fractal": OmegaConf.to_container(cfg.fractal)}
    header = _header(cfg, seed, "rlgd", "random", cfg.num_classes, (res, res, ch), "uint8",
                     {"mean": list(cifar.CIFAR10_MEAN), "std": list(cifar.CIFAR10_STD)}, params, ["category"])
    header["systems"] = [s.to_json() for s in systems]

    render = FractalBlocks(systems, fcfg, n, res, ch, seed, int(cfg.get("workers") or default_workers()))

    def block(a: int, b: int) -> dict[str, np.ndarray]:
        images, category = render(a, b)
        return {"images": images, "labels": labels[a:b], "category": category}

    return DatasetSpec(header, [SplitPlan("train", n, block)])


def read_source(root: str | None, source: str) -> tuple[cifar.CifarSplit, tuple, tuple]:
    """The train split of a real image source and its normalisation (mean, std)."""
    if source == "digits":
        from unrealnas.data.digits import DIGITS_MEAN, DIGITS_STD, read_digits

        return read_digits("train"), DIGITS_MEAN, DIGITS_STD
    stats = (cifar.CIFAR10_MEAN, cifar.CIFAR10_STD) if source == "cifar10" else (cifar.CIFAR100_MEAN, cifar.CIFAR100_STD)
    return cifar.read_cifar(root, source, "train"), *stats


def _build_cifar(cfg: DictConfig, seed: int, source: str, random_label: bool) -> DatasetSpec:
    data, mean, std = read_source(cfg.root, source)
    n_src = len(data.images)
    n = n_src if cfg.num_images is None else int(cfg.num_images)
    if n > n_src:
        raise DataError(f"data.num_images={n} exceeds the {n_src} images of {source} train; lower it or set null")
    if cfg.resolution != 32 or cfg.channels != 3:
        raise DataError(f"{source} images are 32x32x3; set data.resolution=32 data.channels=3")
    num_classes = cfg.num_classes if random_label else data.num_classes
    labels = random_labels(n, num_classes, seed, f"rlrd:{source}") if random_label else data.labels[:n]
    params = {"num_images": n, "source": source, "source_official": data.official,
              "source_sha256": hashlib.sha256(data.images[:n].tobytes() + data.labels[:n].tobytes()).hexdigest()}
    kind = "rlrd" if random_label else source
    header = _header(cfg, seed, kind, "random" if random_label else "true", num_classes, (32, 32, 3), "uint8",
                     {"mean": list(mean), "std": list(std)}, params, ["source_index"])
    images = data.images

    def block(a: int, b: int) -> dict[str, np.ndarray]:
        return {"images": images[a:b], "labels": labels[a:b], "source_index": np.arange(a, b, dtype=np.int64)}

    return DatasetSpec(header, [SplitPlan("train", n, block)])


@register_generator("rlrd")
def build_rlrd(cfg: DictConfig, seed: int) -> DatasetSpec:
    """RLRD: real CIFAR train images with uniform random labels."""
    return _build_cifar(cfg, seed, cfg.source, random_label=True)


@register_generator("cifar10")
def build_cifar10(cfg: DictConfig, seed: int) -> DatasetSpec:
    """Real-label control: CIFAR-10 train images with their true labels."""
    return _build_cifar(cfg, seed, "cifar10", random_label=False)


@register_generator("digits")
def build_digits(cfg: DictConfig, seed: int) -> DatasetSpec:
    """scikit-learn's bundled digits (upsampled to 32x32x3) with their true labels."""
    return _build_cifar(cfg, seed, "digits", random_label=False)


@register_generator("cifar100")
def build_cifar100(cfg: DictConfig, seed: int) -> DatasetSpec:
    """CIFAR-100 train images with their true labels."""
    return _build_cifar(cfg, seed, "cifar100", random_label=False)


RANDOM_LABEL_KINDS = ("rlrn", "rlgd", "rlrd")  # generators that store uniform random labels; the rest store true ones
SELF_SUPERVISED_LABELS = ("rotation",)  # data.label values made by the loader from the images (no stored labels)
ROTATIONS = 4  # data.label=rotation: every image at 0/90/180/270 degrees, the rotation its label (UnNAS)


def stored_label(data_cfg: DictConfig) -> str:
    """The labels the dataset folder holds: ``data.label``, or for a self-supervised label the source's own
    (so ``data.label=rotation`` reads the very folder the source's random- or true-label search reads)."""
    label = str(data_cfg.label)
    if label in SELF_SUPERVISED_LABELS:
        return "random" if str(data_cfg.name) in RANDOM_LABEL_KINDS else "true"
    return label


def data_seed(data_cfg: DictConfig, seed: int) -> int:
    """The seed that picks the dataset: ``data.seed``, or the master seed when it is null."""
    value = data_cfg.get("seed")
    return int(seed) if value is None else int(value)


def dataset_id(data_cfg: DictConfig, seed: int) -> str:
    """Folder name of a dataset: readable prefix plus a hash of every parameter that changes its bytes.

    ``seed`` is the master seed; ``data.seed`` overrides it for the data.
    """
    if data_cfg.get("id"):
        return str(data_cfg.id)
    seed = data_seed(data_cfg, seed)
    keys = dict(OmegaConf.to_container(data_cfg, resolve=True))
    for k in ("id", "shard_size", "verify_on_load", "root", "seed", "workers"):
        keys.pop(k, None)
    keys["label"] = stored_label(data_cfg)
    if keys["label"] == "random":
        keys["label_scheme"] = LABEL_SCHEME  # new label draws: new folder, never a stale one
    if keys["name"] != "rlgd":
        keys.pop("fractal", None)
    if keys["name"] != "rlrn":
        keys.pop("noise_dtype", None)
    if keys["label"] == "true":
        keys.pop("num_classes", None)
    digest = hashlib.sha256(json.dumps([keys, int(seed)], sort_keys=True).encode()).hexdigest()[:8]
    classes = "" if keys["label"] == "true" else f"-c{data_cfg.num_classes}"
    return f"{data_cfg.name}{classes}-s{seed}-{digest}"


def dataset_dir(cfg: DictConfig) -> Path:
    """Folder of the dataset the config describes: ``<paths.data>/<dataset_id>`` (seed: ``data.seed`` or ``seed``)."""
    return Path(cfg.paths.data) / dataset_id(cfg.data, cfg.seed)


# Images a generator makes when data.num_images is null (None: all images of the real source).
DEFAULT_NUM_IMAGES = {"rlrn": 50_000, "rlgd": 60_000}


def dataset_seed(cfg: DictConfig) -> int:
    """The seed a dataset is generated from (the one place that says which config key holds it)."""
    return data_seed(cfg.data, cfg.seed)  # data.seed, or the search seed when null


def expected_manifest(cfg: DictConfig) -> dict[str, Any]:
    """The manifest fields that the config fixes: kind, source, seed, classes and sizes."""
    d = cfg.data
    want: dict[str, Any] = {"kind": str(d.name), "shape": [int(d.resolution), int(d.resolution), int(d.channels)]}
    if stored_label(d) == "random":  # true labels of real images: the seed changes no byte of the data
        want["seed"] = dataset_seed(cfg)
        want["num_classes"] = int(d.num_classes)
    n = d.num_images if d.num_images is not None else DEFAULT_NUM_IMAGES.get(str(d.name))
    if n is not None:
        want["params.num_images"] = int(n)
    if d.name == "rlrd":
        want["params.source"] = str(d.source)
    return want


def check_manifest(cfg: DictConfig, manifest: dict[str, Any], folder: Path) -> None:
    """Refuse, in one line, a dataset folder whose manifest is not the dataset the config describes."""
    for key, value in expected_manifest(cfg).items():
        have: Any = manifest
        for part in key.split("."):
            have = have.get(part) if isinstance(have, dict) else None
        if have != value:
            raise DataError(f"dataset {folder} holds {key}={have!r} but the config asks for {value!r}; "
                            "use another data.id or paths.data (or delete that folder)")


def repair_dataset(cfg: DictConfig | None, folder: Path | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[Path, list[str]]:
    """Re-write exactly the shards of a dataset that fail their size or sha256 check; return (folder, shards).

    The generator and its parameters come from ``cfg``, or with ``cfg=None`` from the recipe the
    manifest recorded at generation. A re-written shard must match the manifest's sha256 again.
    """
    from unrealnas.data.store import load_manifest, repair_shards

    say = progress or (lambda _m: None)
    if cfg is not None:
        folder = dataset_dir(cfg) if folder is None else Path(folder)
        data_cfg, seed = cfg.data, dataset_seed(cfg)
    else:
        folder = Path(folder)
        recipe = load_manifest(folder).get("recipe")
        if not isinstance(recipe, dict) or "data" not in recipe or "seed" not in recipe:
            raise DataError(f"{folder}/manifest.json records no recipe (written before repair existed); run "
                            "'unrealnas generate --repair' with the overrides that generated it")
        data_cfg, seed = OmegaConf.create(recipe["data"]), int(recipe["seed"])
    spec = get_generator(str(data_cfg.name))(data_cfg, seed)
    spec.header["name"] = folder.name
    return folder, repair_shards(folder, spec.header, spec.splits, say)


def generate_dataset(cfg: DictConfig, progress: Callable[[str], None] | None = None, wait: bool = False) -> Path:
    """Generate (or resume, or find complete) the dataset described by ``cfg``; returns its folder.

    A folder another process is writing raises :class:`~unrealnas.lock.AlreadyRunning`, or with
    ``wait=True`` (a search that needs the data) waits for that writer to finish.
    """
    spec = get_generator(cfg.data.name)(cfg.data, dataset_seed(cfg))
    folder = dataset_dir(cfg)
    spec.header["name"] = folder.name
    # The recipe lets `generate --repair <folder>` rebuild any shard without the original command line.
    recipe = {"data": OmegaConf.to_container(cfg.data, resolve=True), "seed": dataset_seed(cfg)}
    write_dataset(folder, spec.header, spec.splits, int(cfg.data.shard_size), progress, wait=wait, recipe=recipe)
    return folder
