"""The benchmarks run in a tiny mode and return sane rows (no timing assertions); the GPU check: test_gpu_check_script.py."""

import functools
import json

import pytest
import torch

from unrealnas.benchmarks import data as data_bench
from unrealnas.benchmarks import search as search_bench
from unrealnas.benchmarks.table import format_table, pop_options, report
from unrealnas.config import compose_config
from unrealnas.errors import ConfigError

# A 3-cell, 2-channel supernet on 8x8 images: a search iteration takes well under a second on CPU.
TINY = ["preset=smoke", "device=cpu", "search.layers=3", "search.init_channels=2", "search.resolution=8",
        "search.batch_size=4", "data.num_classes=10"]


def test_table_aligns_columns_and_writes_json(tmp_path, capsys):
    rows = [{"name": "a", "images_per_s": 123456.7, "note": None}, {"name": "longer name", "images_per_s": 0.5}]
    text = format_table(rows, ["name", "images_per_s", "note"])
    lines = text.splitlines()
    assert lines[0].startswith("name") and "123,457" in text and "0.5" in text
    assert len({len(line) for line in lines[2:]}) == 1  # numbers right-aligned to one width
    report("demo", rows, ["name", "images_per_s"], str(tmp_path / "out.json"), notes=["a note"])
    payload = json.loads((tmp_path / "out.json").read_text())
    assert payload["benchmark"] == "demo" and payload["rows"] == rows and payload["notes"] == ["a note"]
    assert "load_avg_1m" in payload["meta"] and "a note" in capsys.readouterr().out


def test_pop_options_types_and_leaves_overrides():
    spec = {"quick": (bool, False), "steps": (int, None), "json": (str, None)}
    opts, rest = pop_options(["quick=true", "steps=3", "preset=smoke", "search.lr=0.1", "json=null"], spec)
    assert opts == {"quick": True, "steps": 3, "json": None} and rest == ["preset=smoke", "search.lr=0.1"]
    with pytest.raises(ConfigError, match="steps=x"):
        pop_options(["steps=x"], spec)
    with pytest.raises(ConfigError, match="quick=maybe"):
        pop_options(["quick=maybe"], spec)


def test_paper_projection_counts_every_iteration_per_image():
    p = search_bench.paper_schedule()
    assert p == {"warmup_epochs": 5, "search_epochs": 50, "batch_size": 64, "iters_per_epoch": 390,
                 "train_images": 25_000}
    assert search_bench.paper_hours(1.0, 64) == pytest.approx(390 * 55 / 3600)
    # a smaller measured batch is scaled per image: 8 images at half a second = 64 at 4 s
    assert search_bench.paper_hours(0.5, 8) == pytest.approx(search_bench.paper_hours(4.0, 64))


def test_search_benchmark_rows_side_by_side_with_ratios():
    cfg = compose_config(TINY)
    rows = search_bench.run_search_benchmark(cfg, ["darts", "darts2"], steps=1, warmup=0, seeds=[1, 2])
    assert [(r["method"], r["engine"], r["seeds"]) for r in rows] == [
        ("darts", "per_edge", 1), ("darts", "engine", 1), ("darts", "engine", 2),
        ("darts2", "per_edge", 1), ("darts2", "engine", 1), ("darts2", "engine", 2)]
    for r in rows:
        assert r["s_per_iter"] > 0 and r["images_per_s"] > 0 and r["paper_search_h"] > 0
        assert 0 < r["kernel_ops"] < r["ops_per_iter"] and (r["precision"], r["graph"]) == ("fp32", "eager")
    pe, one, two = rows[0], rows[1], rows[2]
    assert one["ops_per_iter"] < pe["ops_per_iter"]  # the fused engine dispatches fewer ops than per-edge
    assert one["ops_vs_per_edge"] == pytest.approx(pe["ops_per_iter"] / one["ops_per_iter"])
    assert two["ops_vs_S1"] == pytest.approx(two["ops_per_iter"] / one["ops_per_iter"]) and two["ops_vs_S1"] < 1.5
    assert pe["vs_per_edge"] is None and one["ops_vs_S1"] == 1.0
    assert rows[4]["ops_per_iter"] > one["ops_per_iter"]  # second order: three more passes
    with pytest.raises(ConfigError, match="'fast' is not one of"):
        search_bench.run_search_benchmark(cfg, ["darts"], steps=1, warmup=0, supernets=["fast"])
    with pytest.raises(ConfigError, match="packed"):
        search_bench.run_search_benchmark(cfg, ["darts"], steps=1, warmup=0, seeds=[0])


def test_recompute_rows_side_by_side_with_memory():
    """recompute=none,cell: a cell row beside each none row, fewer MiB saved per seed, more ops, ops_vs_none."""
    rows = search_bench.run_search_benchmark(compose_config(TINY), ["darts"], steps=1, warmup=0,
                                             supernets=["per_edge", "fused"], seeds=[1, 2], recomputes=["none", "cell"])
    assert [(r["engine"], r["seeds"], r["recompute"]) for r in rows] == [
        ("per_edge", 1, "none"), ("engine", 1, "none"), ("engine", 1, "cell"), ("engine", 2, "none"),
        ("engine", 2, "cell")]
    for none, cell in ((rows[1], rows[2]), (rows[3], rows[4])):
        assert 0 < cell["saved_mib_per_seed"] < none["saved_mib_per_seed"] / 2
        assert cell["ops_vs_none"] == pytest.approx(cell["ops_per_iter"] / none["ops_per_iter"])
        assert cell["ops_vs_none"] > 1
        assert none["ops_vs_none"] is None and cell["peak_mib"] is None  # peak_mib: CUDA only
    assert rows[4]["ops_vs_S1"] == pytest.approx(rows[4]["ops_per_iter"] / rows[2]["ops_per_iter"])
    # per seed: two packed seeds keep what one does
    assert rows[3]["saved_mib_per_seed"] == pytest.approx(rows[1]["saved_mib_per_seed"], rel=0.05)
    with pytest.raises(ConfigError, match="recompute=layer: 'layer' is not one of none, cell"):
        search_bench.run_search_benchmark(compose_config(TINY), ["darts"], steps=1, warmup=0, recomputes=["layer"])


def test_engine_bench_iterations_update_weights_and_alphas():
    cfg = compose_config(TINY)
    b = search_bench.build_engine_bench(cfg, "darts", 2, torch.device("cpu"))
    alphas = [a.detach().clone() for a in b.engine.alphas]
    flat = b.engine.flat.clone()
    search_bench.measure(b, torch.device("cpu"), steps=2, warmup=0, count=False)
    assert all(not torch.equal(a, a2) for a, a2 in zip(alphas, b.engine.alphas, strict=True))
    assert not torch.equal(flat, b.engine.flat)
    assert all(v.state_dict()["batch"] == 2 for v in b.val)  # each seed's validation stream advanced per iteration


def test_bf16_rows_run_as_labelled_on_cpu():
    rows = search_bench.run_search_benchmark(compose_config(TINY), ["darts"], steps=1, warmup=0,
                                             supernets=["fused"], precisions=["bf16"])
    assert [(r["precision"], r["engine"]) for r in rows] == [("bf16", "engine")]
    b = search_bench.build_engine_bench(compose_config(TINY), "darts", 1, torch.device("cpu"), precision="bf16")
    assert b.engine.settings.amp == "bf16"


@pytest.mark.slow
def test_compile_row_runs(monkeypatch):
    # dynamo's eager backend traces the supernet as compile=true does, without inductor's minutes of codegen on CPU
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="eager"))
    rows = search_bench.run_search_benchmark(compose_config(TINY), ["darts"], steps=1, warmup=0,
                                             supernets=["fused"], compile_=True)
    assert [r["compile"] for r in rows] == [False, True]
    assert rows[1]["s_per_iter"] > 0 and rows[1]["ops_per_iter"] is None and "no op count" in rows[1]["note"]


def test_bench_search_cli_writes_json_and_prints_json_rows(tmp_path, capsys):
    out = tmp_path / "search.json"
    assert search_bench.main([*TINY, "steps=1", "warmup=0", "methods=darts", "packed=1", f"json={out}", "threads=1"]) == 0
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == "search" and len(payload["rows"]) == 2
    text = capsys.readouterr().out
    assert "paper_search_h" in text and "darts" in text
    assert search_bench.main([*TINY, "steps=1", "warmup=0", "methods=darts", "supernet=fused", "packed=1,2",
                              "format=json", "threads=1"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [(r["engine"], r["method"], r["seeds"]) for r in doc["rows"]] == [("engine", "darts", 1),
                                                                             ("engine", "darts", 2)]
    assert all(r["ops_per_iter"] > 0 and r["s_per_iter"] > 0 for r in doc["rows"])
    with pytest.raises(ConfigError, match="format=csv"):
        search_bench.main([*TINY, "format=csv"])


def test_data_benchmark_rows(tmp_path, capsys):
    out = tmp_path / "data.json"
    rc = data_bench.main([*TINY, "quick=true", "images=256", "fractal=false", "ffcv=false", f"tmp={tmp_path}",
                          f"json={out}", "threads=1"])
    assert rc == 0
    rows = json.loads(out.read_text())["rows"]
    sections = {r["section"] for r in rows}
    assert {"generator rlrn", "generator rlrd", "store", "loader", "search step"} <= sections
    measured = [r for r in rows if r.get("images_per_s") is not None]
    assert all(r["images_per_s"] > 0 and r["seconds"] > 0 for r in measured)
    devices = [r for r in rows if r.get("kind") == "device"]
    assert len(devices) == 3 and all(r["vs_step"] > 0 for r in devices)
    assert any("skipped" in (r.get("note") or "") for r in rows)  # FFCV and fractal rows say why they are absent
    step = next(r for r in rows if r.get("kind") == "step")
    assert step["images"] == 2 * 8 * 2  # quick on CPU: batch 8, two batches per iteration, 2 timed iterations
    assert "device loader vs search step" in capsys.readouterr().out
    assert not list(tmp_path.glob("unrealnas-bench-data-*"))  # the temp datasets are removed


def test_target_notes_report_met_and_not_met():
    rows = [{"name": "FracDB-100 at 32 px total (search + render 60000)", "seconds": 45.0, "extrapolated": True},
            {"name": "render 362 px / 200000 points, vectorised, 1 image alone", "speedup": 30.0, "images": 1,
             "seconds": 0.03},
            {"name": "search", "kind": "step", "images_per_s": 100.0},
            {"name": "DeviceLoader x", "kind": "device", "vs_step": 25.0}]
    notes = data_bench.target_notes(rows, torch.device("cpu"))
    assert "45.0 s (extrapolated from a tenth) -> met" in notes[0]
    assert "30x" in notes[1] and "NOT met" in notes[1] and "reference loop: 200x" in notes[1]
    assert "25x" in notes[2] and "-> met" in notes[2]


@pytest.mark.slow
@pytest.mark.ffcv
def test_ffcv_rows(tmp_path):
    pytest.importorskip("ffcv")
    cfg_rows = data_bench.run_data_benchmark(TINY, quick=True, tmp=tmp_path, ffcv=True, n_images=256,
                                             fractal_rows=lambda quick: [])
    ffcv_rows = [r for r in cfg_rows if "FFCV" in r["name"]]
    assert len(ffcv_rows) == 2 and all(r["images_per_s"] > 0 for r in ffcv_rows), ffcv_rows
