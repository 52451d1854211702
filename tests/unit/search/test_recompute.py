"""``search.recompute=cell``: the engine's iterations with per-cell recomputation equal the plain ones bit for bit.

Bit-identical on CPU: the recomputation runs the same kernels on the same inputs, so every saved
tensor it rebuilds has the same bytes, and the backward (the same ops in the same order) gives
the same gradients. Checked for first and second order and SGAS, one seed and packed seeds, fp32 and
bf16 autocast, on
weights, momentum, alphas, Adam state, BN running statistics and batch counters.
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import smoke_overrides
from tests.unit.search.test_engine import ARCH_LR, CLIP, LR, MOMENTUM, WD, batches, seed_net
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError
from unrealnas.search.engine import SearchEngine, SeedState, StepSettings
from unrealnas.search.memory import retained_bytes

torch.set_num_threads(1)


def _engine(nets, method: str, recompute: str, supernet: str = "fused", amp: str = "off") -> SearchEngine:
    states = [SeedState(n, torch.optim.SGD(n.weight_parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD),
                        torch.optim.Adam(n.arch_parameters(), lr=ARCH_LR, betas=(0.5, 0.999)))
              for n in nets]
    settings = StepSettings(method, CLIP, amp=amp, cuda_graph="off", supernet=supernet, recompute=recompute)
    return SearchEngine(states, settings, torch.device("cpu"))


def _state(engine: SearchEngine) -> list[torch.Tensor]:
    out = [engine.flat, engine.flat_buf, *engine.alphas, *engine.counter_bufs]
    if engine.momentum_buf is not None:
        out.append(engine.momentum_buf)
    for st in engine.arch_optimizer.state.values():
        out += [t for t in st.values() if isinstance(t, torch.Tensor)]
    return [t.detach().clone() for t in out]


@pytest.mark.parametrize("seeds", [1, 2])
@pytest.mark.parametrize("method", ["darts", "darts2", "sgas"])
def test_cell_recompute_is_bit_identical_to_none(method, seeds):
    """Three iterations (one without architecture step, as in the warm-up) with recompute=cell leave every
    weight, momentum, alpha, Adam moment, BN running statistic and batch counter bit-identical to none."""
    decided = method == "sgas"
    engines = {r: _engine([seed_net(s, decided=decided) for s in range(seeds)],
                          "darts2" if method == "darts2" else "darts", r) for r in ("none", "cell")}
    assert engines["cell"].net.recompute == "cell"
    start = engines["cell"].flat_buf.clone()
    losses = {}
    for r, engine in engines.items():
        out = []
        for step in range(3):
            x, y = engine.stack(batches(seeds, step))
            xv, yv = engine.stack(batches(seeds, 10 + step)) if step else (None, None)
            out.append(engine.step(x, y, xv, yv)[0])
        losses[r] = torch.stack(out)
    assert torch.equal(losses["none"], losses["cell"])
    plain, recomputed = _state(engines["none"]), _state(engines["cell"])
    assert len(plain) == len(recomputed)
    for a, b in zip(plain, recomputed, strict=True):
        assert torch.equal(a, b)
    # the statistics moved (a test that compared two untouched buffers would pass for nothing)
    assert not torch.equal(engines["cell"].flat_buf, start)


def test_cell_recompute_under_bf16_autocast_is_bit_identical():
    """The recomputation runs under the forward's autocast state (bf16 on CPU): still bit-identical."""
    states = {}
    for r in ("none", "cell"):
        engine = _engine([seed_net(s) for s in range(2)], "darts", r, amp="bf16")
        for step in range(2):
            x, y = engine.stack(batches(2, step))
            xv, yv = engine.stack(batches(2, 10 + step))
            engine.step(x, y, xv, yv)
        states[r] = _state(engine)
    assert all(torch.equal(a, b) for a, b in zip(states["none"], states["cell"], strict=True))


def test_recompute_takes_bn_statistics_once():
    """The counters advance by one per forward with recompute=cell (not again in the recomputation)."""
    engine = _engine([seed_net(0)], "darts", "cell")
    x, y = engine.stack(batches(1, 0))
    before = [int(c) for c in engine.counter_bufs]
    engine.weight_step(x, y)  # one forward, one backward (which recomputes every cell)
    assert [int(c) - b for c, b in zip(engine.counter_bufs, before, strict=True)] == [1] * len(before)


def test_recompute_keeps_a_fraction_of_the_activations():
    """What one forward leaves alive for backward: recompute=cell keeps far less than none (3 cells: < 1/2)."""
    kept = {}
    for r in ("none", "cell"):
        engine = _engine([seed_net(0)], "darts", r)
        x, y = engine.stack(batches(1, 0, n=8, hw=16))
        kept[r] = retained_bytes(lambda e=engine, x=x, y=y: e._losses(x, y)[0])
    assert 0 < kept["cell"] < kept["none"] / 2, kept


def test_bad_recompute_is_one_line(tmp_path):
    """An unknown level, or recomputation on the per-edge reference, is a ConfigError naming the fix."""
    with pytest.raises(ConfigError, match=r"search.recompute='layer'.*none, cell"):
        compose_config(smoke_overrides(tmp_path, "search.recompute=layer"))
    with pytest.raises(ConfigError, match=r"search.recompute='cell' is invalid: .*use search.supernet=fused"):
        compose_config(smoke_overrides(tmp_path, "search.recompute=cell", "search.supernet=per_edge"))
    with pytest.raises(ConfigError, match=r"search.recompute='layer'"):
        _engine([seed_net(0)], "darts", "layer")
    with pytest.raises(ConfigError, match=r"search.supernet=fused"):
        _engine([seed_net(0, fused=False)], "darts", "cell", supernet="per_edge")


def test_a_search_with_recompute_cell_writes_the_run_of_none(tmp_path):
    """A whole (tiny) packed search with recompute=cell: same run directories, checkpoint bytes of the model,
    alphas and genotypes as none (bit for bit); its result records the level; the run id is none's (so a
    checkpoint of either level resumes under the other)."""
    from tests.unit.search.test_engine import _overrides, _result
    from unrealnas.search.engine import run_seeds

    dirs = {}
    for r in ("none", "cell"):
        cfg = compose_config(_overrides(tmp_path / r, "seeds=[0,1]", f"search.recompute={r}"))
        dirs[r] = run_seeds(cfg, [0, 1], lambda _m: None)
    for a, b in zip(dirs["none"], dirs["cell"], strict=True):
        assert a.name == b.name
        ra, rb = _result(a), _result(b)
        assert ra["genotype_json"] == rb["genotype_json"] and ra["alphas"] == rb["alphas"]
        assert "recompute" not in ra and rb["recompute"] == "cell"
        ma = torch.load(a / "checkpoint.pt", weights_only=True)["model"]
        mb = torch.load(b / "checkpoint.pt", weights_only=True)["model"]
        assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)
