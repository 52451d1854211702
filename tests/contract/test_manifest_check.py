"""A dataset is what its manifest says; a corrupt shard is repaired by the command the error names (item 4)."""

from __future__ import annotations

import re

import pytest

from tests.conftest import smoke_overrides
from unrealnas.atomic import sha256_file
from unrealnas.cli import main as cli
from unrealnas.config import compose_config
from unrealnas.data.generators import check_manifest, dataset_dir, expected_manifest, generate_dataset
from unrealnas.data.store import load_manifest, verify_dataset
from unrealnas.errors import DataError

DATA = ["data.num_images=64", "data.num_classes=10", "data.shard_size=16", "data.id=shared"]
TINY = ["search.layers=3", "search.init_channels=2", "search.resolution=8", "search.batch_size=8",
        "search.warmup_epochs=1", "search.epochs=1"]


def _one_error(capsys) -> str:
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1
    return lines[0]


def test_search_and_retrain_refuse_a_shared_data_id_holding_another_seed(tmp_path, capsys):
    folder = generate_dataset(compose_config(smoke_overrides(tmp_path, *DATA, "seed=0")))
    assert cli.main(["search", *smoke_overrides(tmp_path, *DATA, *TINY, "seed=1")]) == 2
    line = _one_error(capsys)
    assert f"dataset {folder} holds seed=0 but the config asks for 1" in line and "data.id" in line
    assert not (tmp_path / "runs" / "search").exists() or not any((tmp_path / "runs" / "search").iterdir())
    retrain = ["retrain", *smoke_overrides(tmp_path, *DATA[:-1], "data.id=shared", "data.num_classes=5",
                                           "train=dataset", "genotype=DARTS_V2", "train.layers=3", "device=cpu")]
    assert cli.main(retrain) == 2
    assert "holds num_classes=10 but the config asks for 5" in _one_error(capsys)


def test_every_field_the_config_fixes_is_compared(tmp_path):
    cfg = compose_config(smoke_overrides(tmp_path, *DATA, "data=rlrd", "data.source=cifar100"))
    want = expected_manifest(cfg)
    assert want == {"kind": "rlrd", "shape": [32, 32, 3], "seed": 0, "num_classes": 10, "params.num_images": 64,
                    "params.source": "cifar100"}
    manifest = {"kind": "rlrd", "shape": [32, 32, 3], "seed": 0, "num_classes": 10,
                "params": {"num_images": 64, "source": "cifar10"}}
    with pytest.raises(DataError, match="holds params.source='cifar10' but the config asks for 'cifar100'"):
        check_manifest(cfg, manifest, tmp_path)
    check_manifest(cfg, {**manifest, "params": {"num_images": 64, "source": "cifar100"}}, tmp_path)


def test_corrupt_shard_message_names_the_command_that_repairs_exactly_it(tmp_path, capsys):
    overrides = smoke_overrides(tmp_path, *DATA)
    folder = generate_dataset(compose_config(overrides))
    shards = sorted(folder.glob("train-*.h5"))
    assert len(shards) == 4
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}
    good = sha256_file(shards[2])
    data = bytearray(shards[2].read_bytes())
    data[-100] ^= 0xFF
    shards[2].write_bytes(bytes(data))
    assert cli.main(["search", *overrides, *TINY]) == 2
    line = _one_error(capsys)
    command = re.search(r"'(unrealnas generate --repair [^']+)'", line)
    assert command and "sha256" in line, line
    # Plain generate still says complete (the trap); the named command really repairs.
    assert cli.main(["generate", *overrides]) == 0
    with pytest.raises(DataError):
        verify_dataset(folder)
    assert cli.main(command.group(1).split()[1:]) == 0
    assert "re-wrote 1 shard(s) train-00002.h5" in capsys.readouterr().err
    verify_dataset(folder)
    assert sha256_file(shards[2]) == good
    after = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in shards}
    assert {k for k in before if before[k] != after[k]} == {"train-00002.h5"}  # the others untouched
    # The overrides form works too, and a healthy folder needs nothing.
    assert cli.main(["generate", "--repair", *overrides]) == 0
    assert "nothing to repair" in capsys.readouterr().err
    assert dataset_dir(compose_config(overrides)) == folder and load_manifest(folder)["recipe"]["seed"] == 0
