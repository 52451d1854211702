"""Speed of the RLGD fractal generator: FracDB-100 at 32 px; the reference setting vs a per-point loop.

Rows: the category search (default cfg: 100 categories, 100k points at 512 px), rendering 60,000 images
at 32 px (each rendered at 362 px with 200k points and area-downsampled, on every core; ``cpu_seconds``
then counts this process only), their total, and one image at the reference setting (362 px, 200k points) rendered by
``render_fractals`` (cold: no cached cloud) and by a plain per-point Python loop written here as the
baseline (one chaos-game step and one 3x3 paste per point, as the FractalDB reference renderer does,
but pasting with a numpy slice instead of a PIL image per point: about 1 s per image where the
reference takes about 6 s, so ``speedup``, baseline seconds per image / vectorised seconds per
image, is a lower bound against the reference).
``quick`` searches 10 categories and renders their 6,000 images (a tenth of FracDB-100, clouds
included) and times the loop on 20k points; those rows are scaled up linearly and say so
(``extrapolated``). Single process; nothing is printed. ``cpu_seconds`` is process time, a steadier
figure than wall time on a shared machine.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np

from unrealnas.config.schema import FractalConfig
from unrealnas.data import fractal

FRACDB_IMAGES = 60_000  # FracDB-100: 100 categories x 600 instances
REF_RESOLUTION, REF_POINTS = 362, 200_000


def _timed(fn: Any) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def _row(name: str, images: int, seconds: float, cpu: float, **extra: Any) -> dict[str, Any]:
    return {"name": name, "images": images, "seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4),
            "images_per_s": round(images / seconds, 3) if seconds > 0 else float("inf"), **extra}


def per_point_reference_render(system: fractal.IFSSystem, weights: np.ndarray, n_points: int, resolution: int,
                               pad: int, seed: int, gray: bool = False) -> np.ndarray:
    """Baseline: one Python step per point of the chaos game, then one 3x3 paste per point (colour or gray 127).

    The FractalDB reference algorithm, re-implemented: one chain from (0, 0), points rescaled into
    the canvas, each pasting a 3x3 patch with a random non-empty mask (zeros included).
    """
    rng = np.random.default_rng(seed)
    params = (system.params * weights).tolist()
    cum = np.cumsum(system.probs).tolist()
    xs, ys = [0.0] * n_points, [0.0] * n_points
    x = y = 0.0
    for i, u in enumerate(rng.random(n_points).tolist()):
        k = 0
        while k < len(cum) - 1 and u > cum[k]:
            k += 1
        a, b, c, d, e, f = params[k]
        x, y = a * x + b * y + e, c * x + d * y + f
        xs[i], ys[i] = x, y
    px, py = np.asarray(xs), np.asarray(ys)
    keep = np.isfinite(px) & np.isfinite(py)
    px, py = px[keep], py[keep]
    span = resolution - 2 * pad
    cols = (np.minimum((px - px.min()) / np.ptp(px) * span, span - 1).astype(int) + pad).tolist()
    up = np.minimum((py - py.min()) / np.ptp(py) * span, span - 1).astype(int)
    rows = (resolution - 1 - pad - up).tolist()
    palette = fractal._PALETTE
    image = np.zeros((resolution, resolution, 3), dtype=np.uint8)
    masks = rng.integers(1, 512, size=len(cols)).tolist()
    bits = np.array([[(m >> o) & 1 for o in range(9)] for m in range(512)], dtype=np.uint8)
    bits = bits.reshape(512, 3, 3, 1)
    gray_rgb = np.full(3, fractal._GRAY, dtype=np.uint8)
    for j, (r, c, m) in enumerate(zip(rows, cols, masks, strict=True)):
        image[r - 1: r + 2, c - 1: c + 2] = bits[m] * (gray_rgb if gray else palette[j % len(palette)])
    return image


def sample_instances(num_categories: int, per_category: int, instances: int, seed: int) -> np.ndarray:
    """Image indices of ``per_category`` instances (one seeded choice, the same for every category) of each category."""
    chosen = np.sort(np.random.default_rng(seed).choice(instances, size=per_category, replace=False))
    return (np.arange(num_categories)[:, None] + num_categories * chosen[None, :]).reshape(-1)


def category_similarity(images: np.ndarray, category: np.ndarray, flips_out: bool = False) -> tuple[float, float]:
    """Mean pixel cosine similarity of image pairs within one category and across categories.

    ``flips_out``: a pair's similarity is the best over the 4 flips of the second image, so that
    mirrored instances count as alike.
    """
    x = images.reshape(len(images), images.shape[1], images.shape[2], -1).astype(np.float64)
    variants = [x, x[:, :, ::-1], x[:, ::-1], x[:, ::-1, ::-1]] if flips_out else [x]
    unit = [v.reshape(len(x), -1) / np.maximum(np.linalg.norm(v.reshape(len(x), -1), axis=1, keepdims=True), 1e-12)
            for v in variants]
    sim = np.max([unit[0] @ u.T for u in unit], axis=0)
    same = category[:, None] == category[None, :]
    off_diagonal = ~np.eye(len(x), dtype=bool)
    return float(sim[same & off_diagonal].mean()), float(sim[~same].mean())


def run_fractal_benchmark(quick: bool = False) -> list[dict[str, Any]]:
    """Time the category search and rendering; rows of name, images, seconds, images_per_s (+ extras)."""
    cfg = FractalConfig()
    rows: list[dict[str, Any]] = []
    # quick: 10 categories x 600 instances, one tenth of everything (clouds included), scaled up by 10
    scale = 10 if quick else 1
    part = dataclasses.replace(cfg, num_categories=cfg.num_categories // scale)
    (systems, draws), s_wall, s_cpu = _timed(lambda: fractal.search_with_draws(part, 0))
    note = f" ({part.num_categories} categories, extrapolated)" if quick else ""
    rows.append(_row(f"category search ({cfg.num_categories} categories, {cfg.search_points} points at "
                     f"{cfg.search_canvas} px){note}", cfg.num_categories, s_wall * scale, s_cpu * scale,
                     extrapolated=quick, candidates=draws * scale, candidates_per_s=round(draws / s_wall, 1)))

    n32 = FRACDB_IMAGES // scale
    workers = fractal.default_workers()
    fractal.clear_render_cache()
    _, r_wall, r_cpu = _timed(lambda: fractal.render_fractals(systems, np.arange(n32), part, 32, 3, 0, workers))
    note = f" ({n32} images of {part.num_categories} categories, extrapolated)" if quick else ""
    how = f"rendered at {cfg.render_resolution} px / {fractal.num_render_points(cfg, cfg.render_resolution)} points"
    rows.append(_row(f"render 32 px ({how}, area-downsampled, {workers} workers), {FRACDB_IMAGES} images{note}",
                     FRACDB_IMAGES, r_wall * scale, r_cpu * scale, extrapolated=quick, workers=workers))
    rows.append(_row(f"FracDB-100 at 32 px total (search + render {FRACDB_IMAGES}, {workers} workers)", FRACDB_IMAGES,
                     (s_wall + r_wall) * scale, (s_cpu + r_cpu) * scale, extrapolated=quick, workers=workers))

    n_ref = 2 if quick else 4  # distinct categories: each image needs its own cloud
    ref_cfg = dataclasses.replace(cfg, render_points=REF_POINTS, render_resolution=0, color=True)
    fractal.clear_render_cache()
    _, v_wall, v_cpu = _timed(
        lambda: fractal.render_fractals(systems, np.arange(n_ref), ref_cfg, REF_RESOLUTION, 3, 0))
    base_points = 20_000 if quick else REF_POINTS
    pad = fractal.render_pad(cfg, REF_RESOLUTION)
    _, b_wall, b_cpu = _timed(lambda: per_point_reference_render(systems[0], np.ones(6), base_points,
                                                                 REF_RESOLUTION, pad, 0))
    b_scale = REF_POINTS / base_points
    per_image, base_per_image = v_wall / n_ref, b_wall * b_scale
    rows.append(_row(f"render {REF_RESOLUTION} px / {REF_POINTS} points, vectorised, {n_ref} images in one "
                     "call (no cached cloud)", n_ref, v_wall, v_cpu,
                     speedup=round(base_per_image / per_image, 1)))
    fractal.clear_render_cache()
    _, o_wall, o_cpu = _timed(
        lambda: fractal.render_fractals(systems, np.arange(n_ref, n_ref + 1), ref_cfg, REF_RESOLUTION, 3, 0))
    rows.append(_row(f"render {REF_RESOLUTION} px / {REF_POINTS} points, vectorised, 1 image alone "
                     "(no cached cloud)", 1, o_wall, o_cpu, speedup=round(base_per_image / o_wall, 1)))
    rows.append(_row(f"render {REF_RESOLUTION} px / {REF_POINTS} points, per-point Python loop (baseline"
                     f"{', extrapolated from 20000 points' if quick else ''})", 1, base_per_image,
                     b_cpu * b_scale, extrapolated=quick))
    return rows
