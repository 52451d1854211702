"""CheXpert: CSV labels, uncertainty policies, grayscale radiographs as 3-channel tensors.

``train.root`` is the dataset folder holding ``train.csv`` and ``valid.csv`` (CheXpert-v1.0 or
-small). The CSV columns are Path, Sex, Age, Frontal/Lateral, AP/PA, then 14 observations with
1 (positive), 0 (negative), -1 (uncertain) or empty (unmentioned). The 5 evaluated pathologies
are learned as 5 sigmoid outputs. Unmentioned counts as negative; uncertain follows
``train.uncertainty``: ``u_ones`` (positive), ``u_zeros`` (negative) or ``ignore`` (masked
out of the loss and of the AUROC). The reported AUROC is per study, as the CheXpert benchmark:
a study's score is the max probability over its views (``auroc``; ``auroc_image`` per image
beside it). Paths in the CSV start with the dataset folder's name
(``CheXpert-v1.0-small/train/...``), so they are resolved against the root's parent, or
against the root itself when that exists.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from unrealnas.errors import ConfigError, DataError
from unrealnas.train.targets.base import TargetSpec
from unrealnas.train.targets.imagenet import IMAGENET_MEAN, IMAGENET_STD, SampledTarget

PATHOLOGIES = ("Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion")
META_COLUMNS = ("Path", "Sex", "Age", "Frontal/Lateral", "AP/PA")
OBSERVATIONS = ("No Finding", "Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                "Fracture", "Support Devices")
MASKED = -1.0  # label value the loss and the AUROC skip (the "ignore" policy)
POLICIES = {"u_ones": 1.0, "u_zeros": 0.0, "ignore": MASKED}


def map_label(value: str, policy: str, where: str = "") -> float:
    """One CSV cell to a training label: 1 -> 1, 0 / empty -> 0, -1 -> the policy's value."""
    if policy not in POLICIES:
        raise ConfigError(f"unknown uncertainty policy {policy!r}; choose one of {', '.join(POLICIES)}")
    v = value.strip()
    if v == "":
        return 0.0
    try:
        x = float(v)
    except ValueError:
        raise DataError(f"{where}: label {value!r} is not 1, 0, -1 or empty") from None
    if x == 1.0:
        return 1.0
    if x == 0.0:
        return 0.0
    if x == -1.0:
        return POLICIES[policy]
    raise DataError(f"{where}: label {value!r} is not 1, 0, -1 or empty")


def read_chexpert_csv(path: str | Path, policy: str, frontal_only: bool = False) -> tuple[list[str], np.ndarray]:
    """Image paths and (N, 5) float32 labels of the evaluated pathologies (MASKED where ignored)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CheXpert CSV {path} does not exist; train.root must hold train.csv and valid.csv")
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in (*META_COLUMNS, *PATHOLOGIES) if c not in header]
        if missing:
            raise DataError(f"CheXpert CSV {path} lacks column(s) {', '.join(missing)}; expected "
                            f"{', '.join(META_COLUMNS)} then the 14 observations")
        paths, labels = [], []
        for line, row in enumerate(reader, start=2):
            if frontal_only and (row["Frontal/Lateral"] or "").strip().lower() != "frontal":
                continue
            where = f"{path}:{line}"
            if not (row["Path"] or "").strip():
                raise DataError(f"{where}: empty Path")
            paths.append(row["Path"].strip())
            labels.append([map_label(row[c] or "", policy, where) for c in PATHOLOGIES])
    if not paths:
        raise DataError(f"CheXpert CSV {path} has no usable rows" + (" (frontal_only=true)" if frontal_only else ""))
    return paths, np.asarray(labels, dtype=np.float32)


def study_ids(paths: list[str]) -> np.ndarray:
    """Study index of every CSV Path (``.../patientP/studyS/viewV.jpg``: the folder above the image)."""
    _, inverse = np.unique([str(Path(p).parent) for p in paths], return_inverse=True)
    return inverse.astype(np.int64)


def resolve_image(root: Path, rel: str) -> Path:
    """The file of a CSV Path: under the root's parent (official layout) or under the root."""
    for base in (root.parent, root):
        p = base / rel
        if p.is_file():
            return p
    raise DataError(f"CheXpert image {rel!r} not found under {root.parent} or {root}")


class RadiographDataset(Dataset):
    """Grayscale radiographs resized to a square, repeated to 3 channels, ImageNet-normalised."""

    def __init__(self, root: Path, paths: list[str], labels: np.ndarray, resolution: int) -> None:
        self.root, self.paths, self.labels, self.resolution = root, paths, torch.from_numpy(labels), resolution
        self.mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD).view(3, 1, 1)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        from PIL import Image

        path = resolve_image(self.root, self.paths[i])
        try:
            with Image.open(path) as im:
                im = im.convert("L").resize((self.resolution, self.resolution), Image.BILINEAR)
                x = torch.from_numpy(np.asarray(im, dtype=np.uint8).copy())
        except OSError as e:
            raise DataError(f"CheXpert image {path} cannot be read ({e})") from e
        # One gray channel repeated to 3, so ImageNet-pretrained stems apply unchanged.
        x = x.float().div_(255.0).unsqueeze(0).expand(3, -1, -1)
        return (x - self.mean) / self.std, self.labels[i]


class CheXpertTarget(SampledTarget):
    """CheXpert multi-label classification of the 5 evaluated pathologies (mean AUROC)."""

    name = "chexpert"
    net = "imagenet"
    multilabel = True
    label_names = PATHOLOGIES

    def __init__(self, spec: TargetSpec) -> None:
        if spec.root is None:
            raise DataError("chexpert: no data root; set train.root to the folder holding train.csv and valid.csv")
        root = Path(spec.root).expanduser()
        self.spec = spec
        tp, ty = read_chexpert_csv(root / "train.csv", spec.uncertainty, spec.frontal_only)
        # The validation labels are radiologist consensus (0/1); the policy applies if -1 appears anyway.
        vp, vy = read_chexpert_csv(root / "valid.csv", spec.uncertainty, spec.frontal_only)
        resolve_image(root, tp[0])  # fail now, in one line, if the image folder is not where the CSV says
        self.train_ds: Dataset = RadiographDataset(root, tp, ty, spec.resolution)
        self.val_ds: Dataset = RadiographDataset(root, vp, vy, spec.resolution)
        if spec.max_images is not None and spec.max_images < len(tp):
            self.train_ds = Subset(self.train_ds, list(range(spec.max_images)))
        if spec.max_eval_images is not None and spec.max_eval_images < len(vp):
            self.val_ds = Subset(self.val_ds, list(range(spec.max_eval_images)))
        self.eval_groups = study_ids(vp)[: len(self.val_ds)]
        self.num_classes = len(PATHOLOGIES)
        self.input_size = spec.resolution
        self._setup_sampler()
