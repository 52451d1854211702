"""Shard store and generators: determinism, statistics, resume, corruption, bad input."""

import json

import h5py
import numpy as np
import pytest
from scipy import stats

from tests.conftest import smoke_overrides
from unrealnas.config import compose_config
from unrealnas.data import generators
from unrealnas.data.cifar import read_cifar
from unrealnas.data.generators import dataset_dir, generate_dataset
from unrealnas.data.store import PROGRESS, load_manifest, read_split, verify_dataset
from unrealnas.errors import DataError


def _cfg(tmp_path, *extra):
    return compose_config(smoke_overrides(tmp_path, *extra))


def test_same_seed_same_bytes_whatever_the_shard_size(tmp_path):
    a = generate_dataset(_cfg(tmp_path / "a", "data.shard_size=100", "data.num_images=1500"))
    b = generate_dataset(_cfg(tmp_path / "b", "data.shard_size=1024", "data.num_images=1500"))
    c = generate_dataset(_cfg(tmp_path / "c", "data.shard_size=100", "data.num_images=1500"))
    ra, rb = read_split(a), read_split(b)
    assert ra["images"].tobytes() == rb["images"].tobytes()
    assert np.array_equal(ra["labels"], rb["labels"])
    # same config: identical shard files, byte for byte (no timestamps in HDF5)
    assert [s["sha256"] for s in load_manifest(a)["splits"]["train"]["shards"]] == \
        [s["sha256"] for s in load_manifest(c)["splits"]["train"]["shards"]]


def test_different_seeds_differ(tmp_path):
    a = read_split(generate_dataset(_cfg(tmp_path, "seed=0")))
    b = read_split(generate_dataset(_cfg(tmp_path, "seed=1")))
    assert not np.array_equal(a["images"], b["images"]) and not np.array_equal(a["labels"], b["labels"])


def test_rlrn_statistics_and_uniform_labels(tmp_path):
    folder = generate_dataset(_cfg(tmp_path, "data.num_images=4000", "data.num_classes=10", "data.noise_dtype=float16"))
    arrays = read_split(folder)
    x = arrays["images"].astype(np.float64)
    assert arrays["images"].dtype == np.float16 and arrays["images"].shape == (4000, 32, 32, 3)
    assert abs(x.mean()) < 0.005 and abs(x.std() - 1.0) < 0.005
    # float16 keeps the statistics of the float32 draw it was rounded from
    x32 = generators.gaussian_noise(0, 4000, (32, 32, 3), 0, "float32").astype(np.float64)
    assert abs(x.mean() - x32.mean()) < 1e-4 and abs(x.std() - x32.std()) < 1e-4
    assert np.max(np.abs(x - x32)) < 2e-3 * max(1.0, np.abs(x32).max())
    counts = np.bincount(arrays["labels"], minlength=10)
    assert stats.chisquare(counts).pvalue > 0.001


def test_labels_chi_square_many_classes():
    labels = generators.random_labels(200_000, 1000, seed=3, dataset="rlrn")
    assert labels.min() == 0 and labels.max() == 999
    assert stats.chisquare(np.bincount(labels, minlength=1000)).pvalue > 0.001
    # a sampler favouring half the classes by 20% is caught by the same test
    p = np.where(np.arange(1000) < 500, 1.2, 1.0)
    biased = np.random.default_rng(0).choice(1000, size=200_000, p=p / p.sum())
    assert stats.chisquare(np.bincount(biased, minlength=1000)).pvalue < 0.001


def test_noise_is_independent_of_chunking():
    whole = generators.gaussian_noise(0, 3000, (4, 4, 3), 5, "float32")
    parts = np.concatenate([generators.gaussian_noise(a, b, (4, 4, 3), 5, "float32")
                            for a, b in [(0, 1), (1, 1100), (1100, 2049), (2049, 3000)]])
    assert np.array_equal(whole, parts)


def test_rlrd_images_equal_their_sources(tmp_path, cifar_root):
    folder = generate_dataset(_cfg(tmp_path, "data=rlrd", f"data.root={cifar_root}", "data.num_images=null",
                                   "data.num_classes=50"))
    arrays = read_split(folder)
    src = read_cifar(cifar_root, "cifar10", "train")
    assert arrays["images"].tobytes() == src.images[arrays["source_index"]].tobytes()
    assert np.array_equal(arrays["source_index"], np.arange(len(src.images)))
    assert arrays["labels"].max() < 50 and not np.array_equal(arrays["labels"], src.labels)
    manifest = load_manifest(folder)
    assert manifest["label"] == "random" and manifest["normalization"]["mean"][0] == pytest.approx(0.4914, abs=1e-3)


def test_true_label_control_keeps_labels(tmp_path, cifar_root):
    folder = generate_dataset(_cfg(tmp_path, "data=cifar10", f"data.root={cifar_root}", "data.num_images=null"))
    src = read_cifar(cifar_root, "cifar10", "train")
    arrays = read_split(folder)
    assert np.array_equal(arrays["labels"], src.labels) and load_manifest(folder)["num_classes"] == 10


def test_rerun_is_noop(tmp_path):
    cfg = _cfg(tmp_path)
    folder = generate_dataset(cfg)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    assert generate_dataset(cfg) == folder
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes


def test_interrupted_generation_resumes_to_the_same_bytes(tmp_path, monkeypatch):
    cfg = _cfg(tmp_path, "data.shard_size=128", "data.num_images=512")
    real = generators.gaussian_noise
    calls = {"n": 0}

    def dies_after_two(*a, **k):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt  # the job is killed while writing shard 3
        return real(*a, **k)

    monkeypatch.setattr(generators, "gaussian_noise", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        generate_dataset(cfg)
    folder = dataset_dir(cfg)
    assert (folder / PROGRESS).exists() and not (folder / "manifest.json").exists()
    with pytest.raises(DataError, match="interrupted"):
        read_split(folder)  # never looks complete
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5")}
    assert len(kept) == 2
    monkeypatch.setattr(generators, "gaussian_noise", real)
    generate_dataset(cfg)
    assert {p.name: p.stat().st_mtime_ns for p in folder.glob("*.h5") if p.name in kept} == kept  # not rewritten
    fresh = generate_dataset(_cfg(tmp_path / "fresh", "data.shard_size=128", "data.num_images=512"))
    assert read_split(folder)["images"].tobytes() == read_split(fresh)["images"].tobytes()


def _corrupt(path, offset=-100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_catches_altered_and_truncated_shards(tmp_path):
    folder = generate_dataset(_cfg(tmp_path))
    assert verify_dataset(folder)["kind"] == "rlrn"
    shard = sorted(folder.glob("train-*.h5"))[1]
    good = shard.read_bytes()
    _corrupt(shard)
    with pytest.raises(DataError, match="sha256"):
        verify_dataset(folder)
    with pytest.raises(DataError, match=shard.name):
        read_split(folder)  # loading verifies too
    shard.write_bytes(good[:-10])
    with pytest.raises(DataError, match="truncated"):
        verify_dataset(folder)
    shard.unlink()
    with pytest.raises(DataError, match="missing"):
        verify_dataset(folder)


def test_malformed_manifest(tmp_path):
    folder = generate_dataset(_cfg(tmp_path))
    (folder / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        verify_dataset(folder)
    (folder / "manifest.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(DataError, match="lacks"):
        verify_dataset(folder)
    with pytest.raises(DataError, match="does not exist"):
        verify_dataset(tmp_path / "nope")


def test_existing_folder_with_other_dataset_is_refused(tmp_path):
    generate_dataset(_cfg(tmp_path, "data.id=mine", "seed=0"))
    before = read_split(tmp_path / "datasets" / "mine")["images"]
    with pytest.raises(DataError, match="different dataset"):
        generate_dataset(_cfg(tmp_path, "data.id=mine", "seed=1"))
    assert np.array_equal(read_split(tmp_path / "datasets" / "mine")["images"], before)


def test_unwritable_output(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="paths.data"):
        generate_dataset(compose_config(["preset=smoke", f"paths.data={blocker}/sub"]))


def test_shard_layout(tmp_path):
    folder = generate_dataset(_cfg(tmp_path, "data.shard_size=200", "data.num_images=512"))
    manifest = load_manifest(folder)
    shards = manifest["splits"]["train"]["shards"]
    assert [s["file"] for s in shards] == ["train-00000.h5", "train-00001.h5", "train-00002.h5"]
    with h5py.File(folder / shards[0]["file"]) as f:
        assert f["images"].shape == (200, 32, 32, 3) and f["labels"].dtype == np.int64
    for key in ("kind", "params", "seed", "num_classes", "shape", "dtype", "normalization", "library_version"):
        assert key in manifest
