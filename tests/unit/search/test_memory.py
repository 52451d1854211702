"""Search memory (``unrealnas.search.memory``) and ``launcher.pack_seeds=auto`` sized by it."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import smoke_overrides
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.launch.packing import pack_seeds_choice, resolve_pack_seeds, seed_memory_of
from unrealnas.search.memory import (
    GIB,
    MARGIN,
    RESERVED_GIB,
    SeedMemory,
    fit_seeds,
    peak_batch,
    retained_bytes,
)

torch.set_num_threads(1)


def test_retained_bytes_counts_what_outlives_the_call():
    """Kept tensors count once (views and saves of one storage too); freed temporaries do not."""
    keep = []

    def f():
        a = torch.ones(1000)  # 4,000 bytes, kept (with a view of it)
        keep.extend([a, a[10:]])
        torch.ones(5000).sum()  # a temporary: gone when f returns
        return torch.zeros(250)  # 1,000 bytes, the result

    assert retained_bytes(f) == 5000


def test_seed_memory_cell_needs_less_and_grows_with_the_batch(tmp_path):
    """Per seed: recompute=cell keeps and peaks lower than none; a bigger batch needs more; SGAS counts its
    batch increases."""
    mem = {r: seed_memory_of(compose_config(smoke_overrides(tmp_path, f"search.recompute={r}")))
           for r in ("none", "cell")}
    assert 0 < mem["cell"].retained < mem["none"].retained / 2
    assert 0 < mem["cell"].peak < mem["none"].peak
    assert mem["none"].state == mem["cell"].state > 0
    big = seed_memory_of(compose_config(smoke_overrides(tmp_path, "search.batch_size=64")))
    assert big.batch == 64 and big.retained > mem["none"].retained
    sgas = compose_config(smoke_overrides(tmp_path, "search=sgas_c1"))
    s = sgas.search
    decisions = (s.epochs - s.sgas.warmup_dec_epoch) // s.sgas.decision_freq + 1
    assert peak_batch(s) == s.batch_size + s.sgas.batch_increase * max(decisions, 0)


def test_fit_seeds_arithmetic():
    """Seeds that fit = (card less margin and reserve) // need per seed, capped, with the reason."""
    per_seed = SeedMemory(batch=64, retained=GIB // 2, peak=GIB, state=0, recompute="none")
    card = 10 * GIB
    n, why = fit_seeds(per_seed, card, 100)
    assert n == int((card * (1 - MARGIN) - RESERVED_GIB * GIB) // GIB) == 8
    assert "1.00 GiB per seed" in why and "batch 64" in why
    assert fit_seeds(per_seed, card, 3)[0] == 3
    assert fit_seeds(per_seed, 2 * GIB, 5)[0] == 0


def test_pack_seeds_auto(tmp_path):
    """auto: 1 on CPU; on a GPU the memory fit (launcher.gpu_mem_gb here); no card known: one line naming the
    key; an explicit pack that does not fit the known card: one line with the memory it needs."""
    cfg = compose_config(smoke_overrides(tmp_path, "device=cpu", "launcher.pack_seeds=auto"))
    assert pack_seeds_choice(cfg) == (1, "launcher.pack_seeds=auto: 1 on CPU (compute-bound: packing saves nothing)")
    with pytest.raises(ConfigError, match=r"launcher.gpu_mem_gb="):
        resolve_pack_seeds(compose_config(smoke_overrides(tmp_path, "device=cuda", "launcher.pack_seeds=auto")))
    base = compose_config(smoke_overrides(tmp_path, "device=cuda"))
    need = seed_memory_of(base).need
    gb = (3.5 * need + RESERVED_GIB * GIB) / (1 - MARGIN) / 1e9  # room for 3 seeds, not 4
    cfg = compose_config(smoke_overrides(tmp_path, "device=cuda", "launcher.pack_seeds=auto",
                                         f"launcher.gpu_mem_gb={gb}"))
    n, why = pack_seeds_choice(cfg)
    assert n == 3 and why.startswith("launcher.pack_seeds=auto: 3 seeds") and "GiB per seed" in why
    cfg = compose_config(smoke_overrides(tmp_path, "device=cuda", "launcher.pack_seeds=8",
                                         f"launcher.gpu_mem_gb={gb}"))
    with pytest.raises(ConfigError, match=r"launcher.pack_seeds=8 needs 8 x .* GiB.*pack_seeds=auto \(fits 3\)"):
        resolve_pack_seeds(cfg)
    tiny = compose_config(smoke_overrides(tmp_path, "device=cuda", "launcher.pack_seeds=auto",
                                          "launcher.gpu_mem_gb=1.0"))
    with pytest.raises(ConfigError, match=r"one seed needs .*search.recompute=cell"):
        resolve_pack_seeds(tiny)
    with pytest.raises(ConfigError, match=r"launcher.pack_seeds=many: give auto, null or a seed count"):
        resolve_pack_seeds(compose_config(smoke_overrides(tmp_path, "launcher.pack_seeds=many")))
    assert resolve_pack_seeds(compose_config(smoke_overrides(tmp_path, "device=cuda", "launcher.pack_seeds=2"))) == 2


def test_pipeline_records_the_auto_pack_and_why(tmp_path):
    """A pipeline with pack_seeds=auto packs by the memory fit and says so in its plan notes."""
    from tests.unit.search.test_engine import _pipeline_plan

    plan = _pipeline_plan(tmp_path, "device=cuda", "launcher.pack_seeds=auto", "launcher.gpu_mem_gb=2000")
    assert [t.overrides[-1] for t in plan.stage("search").tasks] == ["seeds=[0,1,2]"]
    assert any(n.startswith("launcher.pack_seeds=auto: 16 seeds, ") and "GiB per seed" in n for n in plan.notes)
