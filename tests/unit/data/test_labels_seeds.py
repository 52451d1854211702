"""Random labels are keyed by dataset; ``data.seed`` picks the dataset, ``seed`` the search."""

import re

import numpy as np
from scipy import stats

from tests.conftest import smoke_overrides
from unrealnas.config import compose_config
from unrealnas.data.generators import dataset_dir, generate_dataset, random_labels
from unrealnas.data.store import load_manifest, read_split
from unrealnas.search.state import search_run_id


def _cfg(tmp_path, *extra):
    return compose_config(smoke_overrides(tmp_path, *extra))


def test_labels_of_two_datasets_of_one_seed_are_independent():
    a = random_labels(20_000, 10, 0, "rlrn")
    b = random_labels(20_000, 10, 0, "rlgd")
    c = random_labels(20_000, 10, 0, "rlrd:cifar10")
    assert np.array_equal(a, random_labels(20_000, 10, 0, "rlrn"))  # still a pure function
    for x, y in ((a, b), (a, c), (b, c)):
        # independence: the 10x10 contingency table passes a chi-square test; equal vectors would fail it
        table = np.zeros((10, 10))
        np.add.at(table, (x, y), 1)
        assert stats.chi2_contingency(table).pvalue > 0.001
        assert abs(np.mean(x == y) - 0.1) < 0.01


def test_rlrn_and_rlgd_datasets_of_one_seed_carry_different_labels(tmp_path):
    extra = ("data.num_classes=10", "data.num_images=256", "seed=0")
    rn = read_split(generate_dataset(_cfg(tmp_path, "data=rlrn", *extra)))["labels"]
    gd = read_split(generate_dataset(_cfg(tmp_path, "data=rlgd", "data.fractal.num_categories=2", *extra)))["labels"]
    assert not np.array_equal(rn, gd) and np.mean(rn == gd) < 0.25


def test_data_seed_picks_the_dataset_and_seed_the_search(tmp_path):
    default = _cfg(tmp_path, "seed=3")
    assert default.data.seed is None and dataset_dir(default) == dataset_dir(_cfg(tmp_path, "seed=3", "data.seed=3"))
    runs = [_cfg(tmp_path, f"seed={s}", "data.seed=7") for s in range(5)]
    assert len({dataset_dir(c) for c in runs}) == 1  # five searches on one dataset
    ids = [search_run_id(c) for c in runs]
    assert len(set(ids)) == 5 and all("-d7-s" in i for i in ids)
    assert re.fullmatch(r"darts-rlrn-c5000-s3-[0-9a-f]{8}", search_run_id(default))  # ids of data.seed=null unchanged
    folder = generate_dataset(runs[0])
    assert load_manifest(folder)["seed"] == 7 and load_manifest(folder)["label_scheme"] == 2
    assert dataset_dir(_cfg(tmp_path, "seed=0", "data.seed=8")) != folder
