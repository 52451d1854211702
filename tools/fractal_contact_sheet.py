"""Contact sheet of RLGD beside the FractalDB reference algorithm: 4 categories x 10 instances at 32 px.

usage (from the repo root):  PYTHONPATH=$PWD .venv/bin/python tools/fractal_contact_sheet.py [--out docs/rlgd_contact_sheet.png]

Left: ``render_fractals`` with the default config (362 px render, 200k points, gray patches, area
downsample to 32 px), categories 0..3 of seed 0 (the first four of FracDB-100 seed 0). Right: the
same (category, weight row, flip) cells drawn by ``per_point_reference_render``, a plain per-point
re-implementation of the reference loop (one chain, one 3x3 random-mask paste per point, pad 6 on
362 px, gray 127), flipped and area-downsampled the same way. The point sequences and masks differ
(other random streams), so the sheets agree in kind, not pixel for pixel. Slow: about a minute.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from unrealnas.benchmarks.fractal import per_point_reference_render
from unrealnas.config.schema import FractalConfig
from unrealnas.data import fractal

INSTANCES = (0, 1, 2, 3, 4, 5, 25, 50, 75, 100)  # rows 0-5; row 0 flipped h, v, hv; row 0 repeat 1
REF_PAD = 6  # the reference pads 6 px on its 362 px canvas


def sheets(categories: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(ours, reference) image grids, uint8 (categories, len(INSTANCES), 32, 32, 1)."""
    cfg = FractalConfig(num_categories=categories)
    systems = fractal.search_categories(cfg, seed)
    idx = (np.arange(categories)[:, None] + categories * np.array(INSTANCES)[None, :]).reshape(-1)
    ours, _ = fractal.render_fractals(systems, idx, cfg, 32, 1, seed)
    cat, row, flip, render = fractal.instance_layout(idx, categories)
    rows = fractal.weight_rows(cfg.weight_step)
    size = cfg.render_resolution
    renders: dict[int, np.ndarray] = {}
    ref = []
    for c, r, f, k in zip(cat, row, flip, render, strict=True):
        if k not in renders:  # one render per (category, row, repeat), flipped 4 ways, as the reference
            big = per_point_reference_render(systems[c], rows[r], 200_000, size, REF_PAD, seed=int(k), gray=True)
            renders[k] = fractal.area_downsample(big[None, :, :, :1], 32)[0]
        img = renders[k]
        img = img[:, ::-1] if f & 1 else img
        img = img[::-1] if f & 2 else img
        ref.append(img)
    shape = (categories, len(INSTANCES), 32, 32, 1)
    return ours.reshape(shape), np.stack(ref).reshape(shape)


def grid(images: np.ndarray, gap: int = 2) -> np.ndarray:
    """Tile (rows, cols, h, w, 1) images into one gray picture with white gaps."""
    n_r, n_c, h, w, _ = images.shape
    out = np.full((n_r * (h + gap) + gap, n_c * (w + gap) + gap), 255, dtype=np.uint8)
    for i in range(n_r):
        for j in range(n_c):
            out[gap + i * (h + gap): gap + i * (h + gap) + h, gap + j * (w + gap): gap + j * (w + gap) + w] = \
                images[i, j, :, :, 0]
    return out


def main() -> None:
    """Render both sheets and save them side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/rlgd_contact_sheet.png")
    args = ap.parse_args()
    ours, ref = sheets()
    fig, axes = plt.subplots(1, 2, figsize=(12, 3.4))
    titles = ("unrealnas RLGD (render_fractals, 362 px -> 32 px)",
              "reference algorithm (per-point loop, 362 px -> 32 px)")
    for ax, images, title in zip(axes, (ours, ref), titles, strict=True):
        ax.imshow(grid(images), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("instances: rows 0-5 | row 0 flipped h, v, hv | row 0 repeat 1", fontsize=8)
        ax.set_ylabel("category 0..3", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=150)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
