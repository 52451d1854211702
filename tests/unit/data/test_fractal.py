"""RLGD fractal generator: search validity, determinism, rendering semantics and category signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from unrealnas.config.schema import FractalConfig
from unrealnas.data import fractal
from unrealnas.data.fractal import IFSSystem, render_fractals, search_categories
from unrealnas.errors import DataError

SMALL = FractalConfig(num_categories=4, search_points=20_000, search_canvas=128, search_pad=2, render_resolution=128)


@pytest.fixture(scope="module")
def systems() -> list[IFSSystem]:
    return search_categories(SMALL, seed=0)


def _reference_filling_rate(system: IFSSystem, n_points: int, size: int, pad: int, seed: int) -> float:
    """One chain, one point at a time (the reference's way), after a burn-in."""
    rng = np.random.default_rng(seed)
    cum = np.cumsum(system.probs)
    choice = np.minimum(np.searchsorted(cum, rng.random(n_points + 100)), system.num_maps - 1)
    pts = np.empty((n_points, 2))
    x = y = 0.0
    for i, k in enumerate(choice):
        a, b, c, d, e, f = system.params[k]
        x, y = a * x + b * y + e, c * x + d * y + f
        if i >= 100:
            pts[i - 100] = x, y
    pts = (pts - pts.min(0)) / np.ptp(pts, axis=0) * (size - 2 * pad)
    pix = np.minimum(pts.astype(int), size - 2 * pad - 1) + pad
    return len({(int(u), int(v)) for u, v in pix}) / size**2


def test_search_is_a_pure_function_of_cfg_and_seed(systems):
    again = search_categories(SMALL, seed=0)
    assert again == systems
    other = search_categories(SMALL, seed=1)
    assert all(not np.array_equal(a.params, b.params) for a, b in zip(systems, other, strict=True))
    # candidates are drawn in a fixed order: fewer categories is a prefix of more
    assert search_categories(dataclasses.replace(SMALL, num_categories=2), seed=0) == systems[:2]


def test_accepted_systems_are_valid(systems):
    assert len(systems) == SMALL.num_categories
    for s in systems:
        assert SMALL.min_maps <= s.num_maps <= SMALL.max_maps
        assert s.params.shape == (s.num_maps, 6) and np.all(np.abs(s.params) <= 1)
        det = np.abs(s.params[:, 0] * s.params[:, 3] - s.params[:, 1] * s.params[:, 2])
        np.testing.assert_allclose(s.probs, det / det.sum(), rtol=1e-12)
        assert s.filling_rate >= SMALL.filling_rate


def test_filling_rates_agree_with_an_independent_measurement(systems):
    # the rate of one cloud scatters by ~0.03 (rare far points set the scale), so compare means of 3 clouds
    size, pad, n = SMALL.search_canvas, SMALL.search_pad, SMALL.search_points
    mine = np.mean([fractal.measure_filling_rates(systems, SMALL, seed=k) for k in range(3)], axis=0)
    for s, rate in zip(systems, mine, strict=True):
        ref = np.mean([_reference_filling_rate(s, n, size, pad, seed=k) for k in range(3)])
        assert ref >= SMALL.filling_rate - 0.05
        assert abs(ref - rate) < 0.03


def test_filling_rate_of_given_points_is_exact():
    """Vectorised binning and counting equal a plain recount from the same raw chaos-game points."""
    sierpinski = np.array([[0.5, 0, 0, 0.5, 0, 0], [0.5, 0, 0, 0.5, 0.5, 0], [0.5, 0, 0, 0.5, 0, 0.5]])
    blow_up = np.array([[1e200, 0, 0, 1e200, 1, 1], [0.5, 0, 0, 0.5, 0, 0]])  # every chain overflows
    some_blow_up = np.array([[0.5, 0.1, 0, 0.5, 0.3, 0], [1e250, 0, 0, 1e250, 1, 1]])  # chains hit it twice
    params = [sierpinski, blow_up, some_blow_up]
    probs = [np.full(3, 1 / 3), np.array([0.9, 0.1]), np.array([0.98, 0.02])]
    size, pad, n = 64, 2, 3000
    xs, ys, finite = fractal._chaos_game(params, probs, [np.random.default_rng(k) for k in range(3)], n)
    flat, ok = fractal._to_pixels(xs, ys, finite, size, pad)
    assert ok.tolist() == [True, False, True]
    assert finite[0].all() and not finite[1].any() and 0 < finite[2].sum() < len(finite[2])
    assert np.all(flat[:, 1] == size * size) and np.all(flat[:, 2][:, ~finite[2]] == size * size)
    for s in (0, 2):
        x, y = xs[:, s][:, finite[s]].ravel(), ys[:, s][:, finite[s]].ravel()
        assert len(x) >= n * finite[s].mean() and np.all(np.isfinite(x))
        bins = size - 2 * pad
        cols = np.floor((x - x.min()) / (x.max() - x.min()) * bins * (1 - 1e-9)).astype(int) + pad
        rows = size - 1 - pad - np.floor((y - y.min()) / (y.max() - y.min()) * bins * (1 - 1e-9)).astype(int)
        got = flat[:, s][:, finite[s]].ravel()
        assert set(got.tolist()) == set((rows * size + cols).tolist())
    cfg = dataclasses.replace(SMALL, search_canvas=size, search_pad=pad, search_points=n)
    rates = fractal._filling_rates(params[:2], probs[:2], [np.random.default_rng(k) for k in range(2)], cfg)
    assert rates[1] == 0.0
    assert rates[0] == len(set(flat[:, 0].ravel().tolist())) / size**2
    assert 0.15 < rates[0] < 0.25  # Sierpinski's triangle: ~60^log2(3) of 64 x 64 pixels


def test_map_counts_cover_the_configured_range():
    cfg = dataclasses.replace(SMALL, num_categories=12, min_maps=2, max_maps=3, filling_rate=0.05)
    counts = {s.num_maps for s in search_categories(cfg, seed=3)}
    assert counts == {2, 3}


def test_impossible_filling_rate_raises_data_error():
    cfg = dataclasses.replace(SMALL, filling_rate=0.99, search_points=2_000, max_tries=5)
    with pytest.raises(DataError, match="filling_rate"):
        search_categories(cfg, seed=0)


def test_ifs_system_json_round_trip(systems):
    import json

    for s in systems:
        back = IFSSystem.from_json(json.loads(json.dumps(s.to_json())))
        assert back == s
        assert back.params.dtype == np.float64 and not back.params.flags.writeable


def test_weight_rows_vary_one_parameter():
    rows = fractal.weight_rows(0.4)
    assert rows.shape == (25, 6)
    assert np.all(rows[0] == 1)
    for r in rows[1:]:
        assert np.count_nonzero(r != 1) == 1
    np.testing.assert_allclose(np.sort(rows[1:, 2][rows[1:, 2] != 1]), [0.2, 0.6, 1.4, 1.8])


def test_render_points_rule():
    cfg = FractalConfig()
    assert (cfg.render_resolution, cfg.color, cfg.flips) == (362, False, True)  # FractalDB's defaults
    assert fractal.num_render_points(cfg, fractal.render_resolution(cfg, 32)) == 200_000
    assert fractal.num_render_points(cfg, 362) == 200_000
    assert fractal.num_render_points(cfg, 32) == 1563
    assert fractal.num_render_points(dataclasses.replace(cfg, render_points=777), 32) == 777
    assert fractal.render_pad(cfg, 362) == 4 and fractal.render_pad(cfg, 32) == 1


def test_rendering_is_identical_whatever_the_chunking(systems):
    idx = np.arange(300)
    fractal.clear_render_cache()
    whole, cat = render_fractals(systems, idx, SMALL, 32, 3, seed=7)
    fractal.clear_render_cache()
    rng = np.random.default_rng(0)
    perm = rng.permutation(idx)
    cuts = np.sort(rng.choice(np.arange(1, 300), size=6, replace=False))
    for part in np.split(perm, cuts):
        got, got_cat = render_fractals(systems, part, SMALL, 32, 3, seed=7)
        assert np.array_equal(got, whole[part]) and np.array_equal(got_cat, cat[part])
    other, _ = render_fractals(systems, idx, SMALL, 32, 3, seed=8)
    assert np.mean(np.any(other != whole, axis=(1, 2, 3))) > 0.9


def test_internal_batch_sizes_change_no_byte(systems, monkeypatch):
    """Search batches, cloud batches, gather chunks and painting chunks are speed knobs only."""
    idx = np.arange(0, 400, 3)
    fractal.clear_render_cache()
    want, _ = render_fractals(systems, idx, SMALL, 20, 3, seed=1)
    for name, value in [("_SEARCH_BATCH", 3), ("_CLOUD_BATCH_POINTS", 5_000), ("_GATHER_ELEMENTS", 500),
                        ("_RENDERS_PER_CALL", 2)]:
        monkeypatch.setattr(fractal, name, value)
    fractal.clear_render_cache()
    got, _ = render_fractals(systems, idx, SMALL, 20, 3, seed=1)
    assert np.array_equal(got, want)
    assert search_categories(SMALL, seed=0) == systems
    fractal.clear_render_cache()


def test_output_dtype_shape_gray_and_colour(systems):
    idx = np.arange(40)
    colour = dataclasses.replace(SMALL, color=True)
    img, cat = render_fractals(systems, idx, colour, 24, 3, seed=0)
    assert img.shape == (40, 24, 24, 3) and img.dtype == np.uint8
    assert cat.dtype == np.int64 and np.array_equal(cat, idx % len(systems))
    assert np.any(img[..., 0] != img[..., 1])  # coloured
    gray, _ = render_fractals(systems, idx, SMALL, 24, 1, seed=0)  # gray is the default (patch_gray)
    assert gray.shape == (40, 24, 24, 1) and gray.max() <= 127 and len(np.unique(gray)) > 10  # smooth, not binary
    plain, _ = render_fractals(systems, idx, SMALL, 24, 3, seed=0)
    assert np.array_equal(plain, np.repeat(gray, 3, axis=-1))
    direct, _ = render_fractals(systems, idx, dataclasses.replace(SMALL, render_resolution=0), 24, 1, seed=0)
    assert set(np.unique(direct)) == {0, 127}  # rendered at 24 px: the binary patches, no downsample
    # gray lights exactly the pixels the coloured render lights (on the render canvas)
    big, _ = render_fractals(systems, idx, colour, 128, 3, seed=0)
    big_gray, _ = render_fractals(systems, idx, SMALL, 128, 1, seed=0)
    assert np.array_equal(big_gray[..., 0] > 0, big.max(-1) > 0)


def test_instances_of_one_weight_row_share_their_points(systems):
    """Re-seeding: one (category, row) has one point sequence; instances differ in masks and flips only."""
    n = len(systems)
    cfg = dataclasses.replace(SMALL, patch=False, flips=False, color=False)
    same_row = np.array([1, 1 + 25 * n])  # instance 0 and 25: both weight row 0
    img, _ = render_fractals(systems, same_row, cfg, 32, 1, seed=0)
    assert np.array_equal(img[0], img[1])
    other_row, _ = render_fractals(systems, np.array([1 + n]), cfg, 32, 1, seed=0)
    assert not np.array_equal(img[0], other_row[0])
    patched, _ = render_fractals(systems, same_row, dataclasses.replace(cfg, patch=True), 32, 1, seed=0)
    assert not np.array_equal(patched[0], patched[1])  # the random masks differ


def test_patch_paste_matches_a_per_point_loop():
    """The vectorised last-writer table equals pasting the 3x3 patches one point at a time."""
    rng = np.random.default_rng(0)
    res, n = 12, 150
    cols = rng.integers(1, res - 1, size=(n, 1, 1)).astype(np.int32)
    rows = rng.integers(1, res - 1, size=(n, 1, 1)).astype(np.int32)
    (table,) = fractal._render_tables(rows * res + cols, np.array([True]), res, patch=True)
    owner = np.full((res, res), -1)
    owner_cell = np.zeros((res, res), dtype=int)
    for j in range(n):
        r, c = rows[j, 0, 0], cols[j, 0, 0]
        for o in range(9):
            owner[r + o // 3 - 1, c + o % 3 - 1] = j
            owner_cell[r + o // 3 - 1, c + o % 3 - 1] = o
    assert np.array_equal(table.pixels, np.flatnonzero(owner >= 0))
    assert np.array_equal(table.point, owner.reshape(-1)[table.pixels])
    assert np.array_equal(table.cell, owner_cell.reshape(-1)[table.pixels])


def test_rendered_filling_rate_is_sensible(systems):
    """At 32 px with the default point rule the images are neither blank nor saturated blobs."""
    img, _ = render_fractals(systems, np.arange(200), SMALL, 32, 3, seed=0)
    lit = (img.max(-1) > 0).mean(axis=(1, 2))
    assert 0.1 < lit.mean() < 0.5
    assert lit.min() > 0.01 and lit.max() < 0.8
    cfg = dataclasses.replace(SMALL, patch=False)
    nopatch, _ = render_fractals(systems, np.arange(200), cfg, 32, 3, seed=0)
    assert (nopatch.max(-1) > 0).mean() < lit.mean() * 1.5  # the 3x3 masks add area but ~half stays dark


def _flip_invariant_distance(a: np.ndarray, b: np.ndarray) -> float:
    return min(float(np.mean(np.abs(a - f))) for f in (b, b[::-1], b[:, ::-1], b[::-1, ::-1]))


def test_images_of_one_category_are_more_alike(systems):
    n = len(systems)
    # instances of one (category, weight row) differ by masks and flips only: far closer than other categories
    idx = np.concatenate([np.arange(n * 5) + 25 * n * k for k in range(4)])
    img, cat = render_fractals(systems, idx, SMALL, 32, 1, seed=0)
    row = (idx // n) % 25
    density = (img[..., 0] > 0).reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4))  # 4x4 pooling averages the speckle
    same, other = [], []
    for i in range(len(idx)):
        for j in range(i + 1, len(idx), 3):
            if cat[i] != cat[j]:
                other.append(_flip_invariant_distance(density[i], density[j]))
            elif row[i] == row[j]:
                same.append(_flip_invariant_distance(density[i], density[j]))
    assert np.mean(same) < 0.7 * np.mean(other)
    # across all 25 weight rows (without flips), a nearest-centroid classifier beats the 1/n chance level
    per_cat = 30
    cfg = dataclasses.replace(SMALL, flips=False)
    img, cat = render_fractals(systems, np.arange(n * per_cat), cfg, 32, 1, seed=0)
    x = (img[..., 0] > 0).reshape(-1, 8, 4, 8, 4).mean(axis=(2, 4)).reshape(len(img), -1)
    train = np.arange(len(x)) < n * 20
    centroids = np.stack([x[train & (cat == c)].mean(0) for c in range(n)])
    pred = np.argmin(((x[~train, None] - centroids[None]) ** 2).sum(-1), axis=1)
    assert np.mean(pred == cat[~train]) > 0.5


def test_flips_are_balanced_and_flip_one_render(systems):
    """Every weight row with each of the 4 flips; the 4 flips of a render are that render mirrored."""
    n = len(systems)
    idx = np.arange(100 * n)
    category, row, flip, render = fractal.instance_layout(idx, n)
    counts = np.zeros((n, 25, 4), dtype=int)
    np.add.at(counts, (category, row, flip), 1)
    assert np.all(counts == 1)
    assert len(np.unique(render)) == 25 * n  # 100 images per category, 25 renders, each 4 times
    base = np.array([2, 2 + 7 * n])  # category 2, rows 0 and 7, flip 0
    img, _ = render_fractals(systems, np.concatenate([base + 25 * n * f for f in range(4)]), SMALL, 32, 1, seed=0)
    a, h, v, hv = img[0:2], img[2:4], img[4:6], img[6:8]
    assert np.array_equal(h, a[:, :, ::-1]) and np.array_equal(v, a[:, ::-1]) and np.array_equal(hv, a[:, ::-1, ::-1])
    again, _ = render_fractals(systems, base + 100 * n, SMALL, 32, 1, seed=0)  # repeat 1: new masks, same cloud
    assert not np.array_equal(again, a)


def test_downsample_is_the_exact_box_filter_of_the_render(systems):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(2, 45, 45, 3), dtype=np.uint8)
    cover = [np.clip(np.minimum(np.arange(45) + 1, (i + 1) * 45 / 16) - np.maximum(np.arange(45), i * 45 / 16), 0, None)
             for i in range(16)]
    w = np.stack(cover)  # exact fractional overlaps
    want = np.einsum("ik,nklc,jl->nijc", w, x.astype(float), w) / (45 / 16) ** 2
    assert np.max(np.abs(fractal.area_downsample(x, 16) - want)) <= 0.5 + 1e-9
    for cfg in (SMALL, dataclasses.replace(SMALL, color=True), dataclasses.replace(SMALL, patch=False)):
        small, _ = render_fractals(systems, np.arange(8), cfg, 32, 3, seed=3)
        big, _ = render_fractals(systems, np.arange(8), cfg, 128, 3, seed=3)
        assert np.array_equal(small, fractal.area_downsample(big, 32))  # never built, same bytes


def test_worker_processes_change_no_byte(systems):
    idx = np.arange(0, 600, 7)
    fractal.clear_render_cache()
    one, cat1 = render_fractals(systems, idx, SMALL, 32, 3, seed=5)
    fractal.clear_render_cache()  # the workers must not inherit finished clouds
    two, cat2 = render_fractals(systems, idx, SMALL, 32, 3, seed=5, workers=2)
    assert np.array_equal(one, two) and np.array_equal(cat1, cat2)


def test_images_of_one_category_are_more_alike_in_pixel_cosine():
    """The acceptance measure at small size: 6 categories x 12 instances (rows, flips, repeats mixed)."""
    from unrealnas.benchmarks.fractal import category_similarity, sample_instances

    cfg = FractalConfig(num_categories=6)  # the real search canvas; rendered at 362 px, gray
    systems = search_categories(cfg, seed=1)
    idx = sample_instances(len(systems), 12, 600, seed=0)
    img, cat = render_fractals(systems, idx, cfg, 32, 1, seed=0)
    within, across = category_similarity(img, cat)
    within_f, across_f = category_similarity(img, cat, flips_out=True)
    assert within > across + 0.01 and within_f > across_f + 0.03  # measured 0.574/0.551, 0.643/0.594
    # stamping patches on the 32 px canvas (the old RLGD) separates the categories less
    direct, _ = render_fractals(systems, idx, dataclasses.replace(cfg, render_resolution=0), 32, 1, seed=0)
    d_within, d_across = category_similarity(direct, cat, flips_out=True)
    assert within_f - across_f > 1.5 * (d_within - d_across)


def test_rlgd_dataset_same_seed_same_bytes_whatever_workers_and_shards(tmp_path):
    from tests.conftest import smoke_overrides
    from unrealnas.config import compose_config
    from unrealnas.data.generators import generate_dataset
    from unrealnas.data.store import load_manifest, read_split

    common = ("data=rlgd", "data.num_images=120", "data.fractal.num_categories=3", "data.fractal.render_resolution=96")
    fractal.clear_render_cache()
    a = generate_dataset(compose_config(smoke_overrides(tmp_path / "a", *common, "data.workers=1", "data.shard_size=50")))
    fractal.clear_render_cache()
    b = generate_dataset(compose_config(smoke_overrides(tmp_path / "b", *common, "data.workers=2", "data.shard_size=64")))
    ra, rb = read_split(a), read_split(b)
    assert a.name == b.name  # workers and shard size are not part of the dataset's identity
    assert ra["images"].tobytes() == rb["images"].tobytes() and np.array_equal(ra["category"], rb["category"])
    assert load_manifest(a)["params"]["fractal"]["render_resolution"] == 96


def test_fractal_blocks_render_ahead_without_changing_bytes(systems):
    whole = fractal.FractalBlocks(systems, SMALL, 300, 16, 1, seed=2)
    tiny = fractal.FractalBlocks(systems, SMALL, 300, 16, 1, seed=2, budget_bytes=16 * 16 * 40)  # 40 images a span
    for a, b in ((0, 70), (70, 140), (140, 300), (10, 20)):
        x, cx = whole(a, b)
        y, cy = tiny(a, b)
        assert np.array_equal(x, y) and np.array_equal(cx, cy) and np.array_equal(cx, np.arange(a, b) % len(systems))
    assert len(whole.images) == 300  # one span: every cloud computed once
