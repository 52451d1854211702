"""Config composition: presets, schema checks, one-line errors."""

from pathlib import Path

import pytest
import torch

from unrealnas.config import compose_config
from unrealnas.errors import ConfigError


def test_paper_defaults_match_protocol():
    cfg = compose_config([])
    assert cfg.preset == "paper"
    assert (cfg.search.layers, cfg.search.init_channels, cfg.search.batch_size) == (8, 16, 64)
    assert (cfg.search.warmup_epochs, cfg.search.epochs) == (5, 50)
    assert cfg.search.alpha_init == "zeros" and cfg.search.lr == 0.025 and cfg.search.lr_min == 0.0
    assert list(cfg.search.arch_betas) == [0.5, 0.999] and cfg.search.arch_lr == 3e-4
    assert cfg.data.name == "rlrn" and cfg.data.num_classes == 5000 and cfg.data.num_images == 50000
    # issue 11: the paper's 25k weight-step images, fp32 search, FractalDB's 362 px gray renders, SGAS as its reference
    assert cfg.search.num_train == 25_000 and cfg.search.amp == "off" and cfg.data.seed is None
    f = cfg.data.fractal
    assert (f.render_resolution, f.color, f.flips, f.render_points) == (362, False, True, 0)
    assert cfg.search.sgas.normalize_over == "all"


@pytest.mark.parametrize("data,classes", [("rlgd", 5000), ("rlrd", 1000), ("cifar10", 10)])
def test_data_groups(data, classes):
    cfg = compose_config([f"data={data}"])
    assert cfg.data.name == data and cfg.data.num_classes == classes


def test_smoke_preset_is_small():
    cfg = compose_config(["preset=smoke", "data=rlgd"])
    assert cfg.preset == "smoke" and cfg.data.num_images <= 1024 and cfg.search.layers <= 8


@pytest.mark.parametrize("override,needle", [
    ("data.num_classse=10", "num_classse"),
    ("data.num_classes=abc", "data.num_classes"),
    ("data=nope", "available: cifar10"),
    ("preset=huge", "available: paper, smoke"),
    ("data.num_classes=1", "from 2 to"),
    ("data.resolution=0", "data.resolution"),
    ("search.method=enas", "darts, darts2, sgas_c1, sgas_c2"),
    ("search.split=random", "same_flipped"),
    ("data.fractal.filling_rate=1.5", "filling_rate"),
    ("device=tpu", "device"),
])
def test_bad_values_fail_with_one_line(override, needle):
    with pytest.raises(ConfigError) as e:
        compose_config([override])
    msg = str(e.value)
    assert needle in msg and "\n" not in msg


def test_the_method_table_answers_every_stage():
    from unrealnas.config.methods import METHODS, SAMPLED_METHODS, method
    from unrealnas.launch.packing import pack_search_tasks
    from unrealnas.search.graphs import graph_off_reason

    assert tuple(METHODS) == ("darts", "darts2", "sgas_c1", "sgas_c2", "pcdarts", "rlnas", "random") and SAMPLED_METHODS == ("random",)
    assert [m for m in METHODS if METHODS[m].graphable] == ["darts", "sgas_c1", "sgas_c2", "pcdarts"]
    assert [m for m in METHODS if METHODS[m].packable] == ["darts", "darts2", "sgas_c1", "sgas_c2", "pcdarts"]
    with pytest.raises(ConfigError, match="search.method='nope': choose one of darts, darts2"):
        method("nope")
    gpu = torch.device("cuda", 0)
    assert graph_off_reason("auto", gpu, "darts") is None and "second-order" in graph_off_reason("auto", gpu, "darts2")
    dirs = [Path(f"/r/{s}") for s in range(3)]
    assert len(pack_search_tasks(["search=random"], [0, 1, 2], dirs, "g", 5, "random")) == 3  # never packed
    assert len(pack_search_tasks(["search=darts2"], [0, 1, 2], dirs, "g", 5, "darts2")) == 1
    assert len(pack_search_tasks(["search=pcdarts"], [0, 1, 2], dirs, "g", 5, "pcdarts")) == 1  # packed like darts
    assert len(pack_search_tasks(["search=rlnas"], [0, 1, 2], dirs, "g", 5, "rlnas")) == 3  # its own loop: never packed


def test_a_sweep_composes_once_per_group_choice_and_equals_one_by_one(monkeypatch):
    """compose_configs: the same configs (and errors) as compose_config, one Hydra composition per group set."""
    from omegaconf import OmegaConf

    from unrealnas.config import compose as compose_mod

    combos = [["search=darts", f"seed={s}", "data=rlrn", "data.num_classes=10", "preset=smoke"] for s in range(4)]
    combos += [["search=sgas_c1", "seed=4", "+experiment=smoke", "search.amp=bf16", "paths.runs=/x/y"],
               ["train=cifar100", "train.epochs=3", "data.label=rotation", "data=digits"]]
    calls = []
    real = compose_mod._hydra_compose
    monkeypatch.setattr(compose_mod, "_hydra_compose", lambda ovs: calls.append(tuple(ovs)) or real(ovs))
    fast = list(compose_mod.compose_configs(combos))
    assert len(calls) == 3  # the four seeds share one composition
    monkeypatch.setattr(compose_mod, "_hydra_compose", real)
    for combo, cfg in zip(combos, fast, strict=True):
        full = compose_mod.compose_config(combo)
        assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(full) and OmegaConf.is_struct(cfg)
    for bad, needle in ((["seed=abc"], "could not be converted"), (["search.amp=fp8"], "choose one of auto"),
                        (["nope=1"], "not in 'Config'")):
        with pytest.raises(ConfigError, match=needle):
            list(compose_mod.compose_configs([bad]))
