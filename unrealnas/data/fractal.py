"""RLGD: FracDB-style fractal images from random iterated function systems (IFS), in pure numpy.

Category search (``search_categories``): candidate ``t`` draws its number of affine maps, its
parameters ``(a, b, c, d, e, f) ~ U(-1, 1)`` and its chaos game from its own stream
``SeedSequence([seed, _STREAM_SEARCH, t])``; candidates are taken in order ``t = 0, 1, ...`` and the
first ``num_categories`` that pass the filling-rate test become the categories. So the result is a
pure function of (cfg, seed), whatever batch the candidates are evaluated in, and the first ``k``
categories do not depend on ``num_categories``. The filling rate is lit pixels / all pixels of the
1x1-point render on the ``search_canvas``; one cloud's rate scatters by about 0.03 between point
sequences (rare far points set the scale), so a system accepted at 0.20 may measure 0.17 next time,
as in the reference.

Chaos game: instead of one chain of ``n`` points (the reference), ``M = clip(isqrt(n), 8, 1024)``
chains start at (0, 0), run ``_BURN_IN`` steps that are thrown away (so ``M`` copies of the
transient do not smear the cloud), then ``T = ceil(n / M)`` recorded steps; point ``j = t * M + m``
(``n`` is rounded up to whole steps, by at most ``M - 1`` points). Map ``k`` is taken when
``cum[k-1] < u <= cum[k]``, as in the reference. A chain that leaves the floats (inf/NaN) is dropped
whole: its last finite points are on their way to infinity and would stretch the bounding box (the
reference drops the 100 points before a NaN). The cloud is shifted to 0 and each axis cut into
``size - 2 * pad`` bins starting at ``pad``; y points up. A cloud with no finite chain or a zero or
non-finite extent is degenerate: rejected at search time, rendered as a black image.

Rendering (``render_fractals``), as FractalDB: each image is rendered on a ``render_resolution``
canvas (362 px, the reference's) with the reference's points per render (200k at 362 px,
``render_points == 0``: ``round(200_000 * (render_resolution / 362) ** 2)``, at least
``_MIN_RENDER_POINTS``), then box-filter (area) downsampled to ``data.resolution``: a 32 px image
is a smooth shape with thin filaments, not the binary speckle of 3x3 patches stamped on 32 px.
The downsample weights are exact integer overlaps and the sums are exact in float64, so the bytes
do not depend on BLAS; the canvas itself is never built (see ``_paint``).

Instances (``instance_layout``): image ``i`` is category ``i % C``, instance ``j = i // C``, weight
row ``j % 25`` (row 0 = identity; then for each of the six parameters, that parameter of every map
scaled by 1-2k, 1-k, 1+k, 1+2k; the map probabilities stay those of the category, as in the
reference), flip code ``(j // 25) % 4`` and repeat ``j // 100``: every weight row with each of the 4
flips (none, horizontal, vertical, both), balanced, and the 4 flips of one render are that render
flipped, as the reference writes each render 4 times (FracDB-100: 6 repeats x 25 rows x 4 flips).
Re-seeding, decided: like the reference, the point sequence is re-seeded identically for every
render of one (category, weight row), from ``SeedSequence([seed, _STREAM_CLOUD, category, row])``;
repeats of one row differ only in their patch masks (and hue offset). One cloud therefore serves
all its renders and is computed once per call. The per-render randomness is counter-based: render
``r`` has the key ``mix(s + r * g)`` (``s`` from ``SeedSequence([seed, _STREAM_IMAGE])``, ``mix`` the
SplitMix64 finaliser, ``g`` its golden-ratio increment); its hue offset comes from ``mix(key ^
salt)`` and the mask of point ``p`` from ``mix(key + (p + 1) * g)``, the p-th SplitMix64 output. Every
byte of image ``i`` is a pure function of (systems, cfg, resolution, channels, seed, i), whatever
chunk of indices it is rendered in, however many worker processes share the clouds, and whatever
the cache holds.

Patch filter, as in the reference: point ``j`` pastes a 3x3 patch with a random non-empty mask
(uniform over the 511 masks) centred on its pixel; the paste also writes the mask's zeros, so a
pixel shows the mask bit (and colour) of the LAST point whose patch covers it (about half the
covered pixels stay dark). Which point that is depends only on the cloud, so it is computed once per
cloud (a scatter-max of point ids on the base pixels, then a max over the 9 shifts) and each render
only evaluates its own mask bits there. Without the patch filter each point lights its one pixel.

Colour: gray by default (``color=False``): 127 on every channel, FractalDB's ``patch_gray``;
``channels == 1`` is always gray. With ``color=True`` point ``j`` gets hue ``(j + offset) mod 128`` on
a 128-step HSV wheel with S = V = 0.75 (the reference's colour wheel), ``offset`` random per render.

The border is ``search_pad`` scaled from the search canvas to the render canvas (4 px at 362 for
the default 6 px at 512; the reference pads 6 px on both canvases; at least 1 px with the patch
filter so that patches stay inside). ``render_resolution == 0`` renders directly at
``data.resolution`` (the old speckle images).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from unrealnas.errors import ConfigError, DataError

if TYPE_CHECKING:
    from unrealnas.config.schema import FractalConfig

_STREAM_SEARCH = 0x5EA4C  # arbitrary constants keep the streams of one seed apart
_STREAM_CLOUD = 0xC10D
_STREAM_IMAGE = 0x1A6E
_STREAM_CHECK = 0xC4EC
_BURN_IN = 64  # steps discarded per chain; the transient from (0, 0) shrinks like e^(lambda * steps)
_REF_POINTS, _REF_RESOLUTION = 200_000, 362  # the reference rendering setting (FractalDB)
_MIN_RENDER_POINTS = 256  # a floor for tiny images (the density rule gives 8 px only 98 points)
_SEARCH_BATCH = 32  # candidates evaluated per vectorised chaos game (does not change any result)
_CLOUD_BATCH_POINTS = 4_000_000  # points per vectorised chaos game while rendering (bounds memory)
_GATHER_ELEMENTS = 1 << 18  # chain-steps whose map coefficients are gathered in one call (bounds memory)
_RENDERS_PER_CALL = 64  # renders per sparse downsample product (bounds the covered x renders value matrix)
_UNDER_ONE = 1.0 - 1e-9  # bins per extent a hair under the bin count: the maximum lands in the last bin
_HUES = 128
_GRAY = 127
_CACHE_BYTES = 256 << 20  # per-process cache of per-cloud render tables


@dataclass(frozen=True, eq=False)
class IFSSystem:
    """One fractal category: the affine maps of an IFS, their probabilities and measured filling rate."""

    params: np.ndarray  # (n_maps, 6) float64 a, b, c, d, e, f: x' = a x + b y + e, y' = c x + d y + f
    probs: np.ndarray  # (n_maps,) proportional to |a d - b c|, normalised
    filling_rate: float  # lit pixels / all pixels of the 1x1-point render on the search canvas

    def __post_init__(self) -> None:
        params = np.array(self.params, dtype=np.float64).reshape(-1, 6)
        probs = np.array(self.probs, dtype=np.float64).reshape(-1)
        if len(probs) != len(params) or len(params) == 0:
            raise ValueError(f"IFSSystem: {len(params)} maps but {len(probs)} probabilities")
        params.flags.writeable = False  # shared by cached clouds: must not change under them
        probs.flags.writeable = False
        object.__setattr__(self, "params", params)
        object.__setattr__(self, "probs", probs)
        object.__setattr__(self, "filling_rate", float(self.filling_rate))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IFSSystem):
            return NotImplemented
        return (np.array_equal(self.params, other.params) and np.array_equal(self.probs, other.probs)
                and self.filling_rate == other.filling_rate)

    __hash__ = None  # type: ignore[assignment]

    @property
    def num_maps(self) -> int:
        """Number of affine maps."""
        return len(self.params)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready dict; floats round-trip exactly."""
        return {"params": self.params.tolist(), "probs": self.probs.tolist(),
                "filling_rate": self.filling_rate}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> IFSSystem:
        """Inverse of ``to_json``."""
        return cls(np.asarray(obj["params"], dtype=np.float64), np.asarray(obj["probs"], dtype=np.float64),
                   float(obj["filling_rate"]))


def map_probabilities(params: np.ndarray) -> np.ndarray:
    """Map probabilities p_i proportional to |a_i d_i - b_i c_i| (uniform if all are zero)."""
    det = np.abs(params[:, 0] * params[:, 3] - params[:, 1] * params[:, 2])
    total = det.sum()
    return det / total if total > 0 else np.full(len(params), 1.0 / len(params))


def weight_rows(k: float) -> np.ndarray:
    """The 25 weight rows (25, 6): identity, then per parameter the factors 1-2k, 1-k, 1+k, 1+2k."""
    rows = np.ones((25, 6))
    for p in range(6):
        for j, factor in enumerate((1 - 2 * k, 1 - k, 1 + k, 1 + 2 * k)):
            rows[1 + 4 * p + j, p] = factor
    return rows


def num_render_points(cfg: FractalConfig, resolution: int) -> int:
    """Points per rendered image: cfg.render_points, or the reference density (200k at 362 px) if 0."""
    if cfg.render_points > 0:
        return int(cfg.render_points)
    return max(_MIN_RENDER_POINTS, round(_REF_POINTS * (resolution / _REF_RESOLUTION) ** 2))


def render_pad(cfg: FractalConfig, resolution: int) -> int:
    """Border (px) of a rendered image: search_pad scaled to the resolution (>= 1 with patches)."""
    pad = round(cfg.search_pad * resolution / cfg.search_canvas)
    return max(pad, 1) if cfg.patch else pad


def _cloud_shape(n_points: int) -> tuple[int, int]:
    """(chains, recorded steps) of a cloud of at least n_points points."""
    # sqrt balances the burn-in (chains x _BURN_IN wasted steps) against numpy calls (one set per step)
    chains = int(np.clip(math.isqrt(n_points), 8, 1024))
    return chains, -(-n_points // chains)


def _cumulative(probs: np.ndarray) -> np.ndarray:
    cum = np.cumsum(probs)
    cum[-1] = 1.0  # rounding must not leave u in (cum[-1], 1) without a map
    return cum


def _chaos_game(params: list[np.ndarray], probs: list[np.ndarray], rngs: list[np.random.Generator],
                n_points: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Chaos game of S systems at once -> x, y (T, S, M) float64 and finite-chain mask (S, M)."""
    n_sys = len(params)
    n_chains, steps = _cloud_shape(n_points)
    total = _BURN_IN + steps
    kmax = max(len(p) for p in params)
    table = np.zeros((6, n_sys * kmax))  # rows a, c, b, d, e, f: x and y advance in one ufunc call
    which = np.empty((total, n_sys, n_chains), dtype=np.int32)
    for s, (p, pr, rng) in enumerate(zip(params, probs, rngs, strict=True)):
        table[:, s * kmax: s * kmax + len(p)] = p[:, [0, 2, 1, 3, 4, 5]].T
        u = rng.random((total, n_chains))
        k = np.full(u.shape, s * kmax, dtype=np.int32)
        for edge in _cumulative(pr)[:-1]:
            k += u > edge  # map j is taken when cum[j-1] < u <= cum[j] (a searchsorted, 10x faster here)
        which[:, s] = k
    width = n_sys * n_chains
    which = which.reshape(total, width)
    rec = np.empty((steps, 2, width))  # recorded (x, y) per step
    xy = np.zeros((2, width))
    tmp = np.empty_like(xy)
    per_gather = max(1, _GATHER_ELEMENTS // width)  # steps whose coefficients are gathered per call
    coef = np.empty((6, per_gather, width))
    pairs = coef.reshape(3, 2, per_gather, width)  # (a, c), (b, d), (e, f)
    with np.errstate(over="ignore", invalid="ignore"):
        for t0 in range(0, total, per_gather):
            t1 = min(t0 + per_gather, total)
            for r in range(6):
                table[r].take(which[t0:t1], out=coef[r, : t1 - t0], mode="clip")  # clip: unbuffered out
            for t in range(t0, t1):
                new = rec[t - _BURN_IN] if t >= _BURN_IN else np.empty_like(xy)
                # always (a x + b y) + e: the same operations in the same order, so repeats are exact
                np.multiply(pairs[0, :, t - t0], xy[0], out=new)
                np.multiply(pairs[1, :, t - t0], xy[1], out=tmp)
                new += tmp
                new += pairs[2, :, t - t0]
                xy = new
        # inf and NaN are absorbing (inf * 0 is NaN), so a chain's last point tells whether it ever left
        finite = np.isfinite(xy).all(axis=0)
    shape = (steps, n_sys, n_chains)
    return rec[:, 0].reshape(shape), rec[:, 1].reshape(shape), finite.reshape(n_sys, n_chains)


def _to_pixels(xs: np.ndarray, ys: np.ndarray, finite: np.ndarray, size: int,
               pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Clouds (T, S, M) -> flat pixel index (row 0 at the top) int32 (T, S, M) and ok (S,).

    Points of dropped chains and of degenerate clouds get index size * size, a bin past the canvas.
    """
    whole = finite.all(axis=1)
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        x0, x1 = xs.min(axis=(0, 2)), xs.max(axis=(0, 2))
        y0, y1 = ys.min(axis=(0, 2)), ys.max(axis=(0, 2))
        for s in np.flatnonzero(~whole & finite.any(axis=1)):  # rare: only the finite chains count
            keep = finite[s]
            x0[s], x1[s] = xs[:, s, keep].min(), xs[:, s, keep].max()
            y0[s], y1[s] = ys[:, s, keep].min(), ys[:, s, keep].max()
        ex, ey = x1 - x0, y1 - y0
        span = size - 2 * pad
        sx, sy = (span * _UNDER_ONE) / ex, (span * _UNDER_ONE) / ey
        ok = finite.any(axis=1) & np.isfinite(sx) & np.isfinite(sy) & (ex > 0) & (ey > 0)
        x0, y0, sx, sy = (np.where(ok, v, 0.0)[:, None] for v in (x0, y0, sx, sy))
        col = ((xs - x0) * sx).astype(np.int32)
        row = ((ys - y0) * sy).astype(np.int32)
    col += pad
    # y points up, rows go down: bin b from the bottom is row (size - 1 - pad - b)
    np.subtract(size - 1 - pad, row, out=row)
    row *= size
    row += col
    if not (whole & ok).all():
        row[:, ~(finite & ok[:, None])] = size * size
    return row, ok


def _draw_candidate(rng: np.random.Generator, cfg: FractalConfig) -> np.ndarray:
    n_maps = int(rng.integers(cfg.min_maps, cfg.max_maps + 1))
    return rng.uniform(-1.0, 1.0, size=(n_maps, 6))


def measure_filling_rates(systems: list[IFSSystem], cfg: FractalConfig, seed: int) -> np.ndarray:
    """Filling rates of systems on the search canvas with fresh chaos games (for checks, not the search)."""
    rngs = [np.random.default_rng(np.random.SeedSequence([seed, _STREAM_CHECK, j]))
            for j in range(len(systems))]
    return _filling_rates([s.params for s in systems], [s.probs for s in systems], rngs, cfg)


def _filling_rates(params: list[np.ndarray], probs: list[np.ndarray], rngs: list[np.random.Generator],
                   cfg: FractalConfig) -> np.ndarray:
    area = cfg.search_canvas ** 2
    cloud = _chaos_game(params, probs, rngs, cfg.search_points)
    flat, ok = _to_pixels(*cloud, cfg.search_canvas, cfg.search_pad)
    canvas = np.zeros((len(params), area + 1), dtype=bool)
    flat += (np.arange(len(params), dtype=np.int32) * (area + 1))[:, None]
    canvas.reshape(-1)[flat.reshape(-1)] = True
    return np.where(ok, np.count_nonzero(canvas[:, :area], axis=1) / area, 0.0)


def search_categories(cfg: FractalConfig, seed: int) -> list[IFSSystem]:
    """Category search: draw IFS systems until cfg.num_categories pass the filling-rate test."""
    return search_with_draws(cfg, seed)[0]


def search_with_draws(cfg: FractalConfig, seed: int) -> tuple[list[IFSSystem], int]:
    """``search_categories`` plus the number of candidate systems drawn (for benchmarks and logs)."""
    if cfg.num_categories < 1 or not 1 <= cfg.min_maps <= cfg.max_maps:
        raise ConfigError(f"data.fractal: need num_categories >= 1 and 1 <= min_maps <= max_maps, got "
                          f"{cfg.num_categories}, {cfg.min_maps}, {cfg.max_maps}")
    if cfg.search_canvas <= 2 * cfg.search_pad or cfg.search_points < 1 or cfg.max_tries < 1:
        raise ConfigError("data.fractal: need search_canvas > 2 * search_pad, search_points >= 1 and "
                          "max_tries >= 1")
    accepted: list[IFSSystem] = []
    rejected, t = 0, 0
    while True:
        batch = min(_SEARCH_BATCH, cfg.num_categories - len(accepted) + cfg.max_tries - rejected)
        rngs = [np.random.default_rng(np.random.SeedSequence([seed, _STREAM_SEARCH, t + j]))
                for j in range(batch)]
        params = [_draw_candidate(rng, cfg) for rng in rngs]
        probs = [map_probabilities(p) for p in params]
        rates = _filling_rates(params, probs, rngs, cfg)
        for j in range(batch):
            if rates[j] >= cfg.filling_rate and rates[j] > 0:
                accepted.append(IFSSystem(params[j], probs[j], float(rates[j])))
                if len(accepted) == cfg.num_categories:
                    return accepted, t + j + 1
            else:
                rejected += 1
                if rejected >= cfg.max_tries:
                    raise DataError(
                        f"fractal category search: only {len(accepted)} of {cfg.num_categories} IFS "
                        f"systems reached filling rate {cfg.filling_rate} in {t + j + 1} draws; lower "
                        f"data.fractal.filling_rate or raise data.fractal.search_points or max_tries")
        t += batch


class _RenderTable:
    """What every render of one (category, weight row) cloud shares: the last point over each pixel."""

    __slots__ = ("pixels", "point", "word", "cell", "hue", "nbytes")

    def __init__(self, pixels: np.ndarray, point: np.ndarray, cell: np.ndarray) -> None:
        self.pixels = pixels.astype(np.int32)  # flat indices (row 0 at the top) of the covered pixels
        self.point = point  # index of the last point whose patch covers each pixel
        self.word = (point.astype(np.uint64) + np.uint64(1)) * _GOLDEN  # its counter in the mask stream
        self.cell = cell.astype(np.uint64)  # which of the 9 patch cells lies on the pixel (4 without patches)
        self.hue = (point % _HUES).astype(np.int16)
        self.nbytes = sum(getattr(self, k).nbytes for k in ("pixels", "point", "word", "cell", "hue"))


def _render_tables(flat: np.ndarray, ok: np.ndarray, resolution: int,
                   patch: bool) -> list[_RenderTable | None]:
    """Render tables of S clouds (T, S, M) at once: a scatter-max of point ids, then a max over 9 shifts."""
    steps, n_sys, n_chains = flat.shape
    area = resolution * resolution
    base = flat + (np.arange(n_sys, dtype=np.int32) * (area + 1))[:, None]
    ids = np.arange(steps * n_chains, dtype=np.int32).reshape(steps, 1, n_chains)  # point j = t * M + m
    last = np.full(n_sys * (area + 1), -1, dtype=np.int32)
    np.maximum.at(last, base.reshape(-1), np.broadcast_to(ids, base.shape).reshape(-1))
    last = last.reshape(n_sys, area + 1)[:, :area].reshape(n_sys, resolution, resolution)
    if patch:
        # key = id * 16 + cell: one max over the 9 shifts finds the newest point and the cell it puts there
        wide = np.int32 if steps * n_chains < 1 << 27 else np.int64
        padded = np.full((n_sys, resolution + 2, resolution + 2), -16, dtype=wide)
        padded[:, 1:-1, 1:-1] = last.astype(wide) * 16
        key = np.full(last.shape, -1, dtype=wide)
        shifted = np.empty_like(key)
        for o in range(9):
            dy, dx = o // 3 - 1, o % 3 - 1
            # a point on pixel (r, c) puts its patch cell o on pixel (r + dy, c + dx)
            np.add(padded[:, 1 - dy: 1 - dy + resolution, 1 - dx: 1 - dx + resolution], o, out=shifted)
            np.maximum(key, shifted, out=key)
        key = key.reshape(n_sys, area)
        last, cell = np.where(key >= 0, key >> 4, -1), (key & 15).astype(np.uint8)
    else:
        last, cell = last.reshape(n_sys, area), np.full((n_sys, area), 4, dtype=np.uint8)
    tables: list[_RenderTable | None] = []
    for s in range(n_sys):
        if not ok[s]:
            tables.append(None)
            continue
        pixels = np.flatnonzero(last[s] >= 0).astype(np.int32)
        tables.append(_RenderTable(pixels, last[s, pixels].astype(np.int32), cell[s, pixels]))
    return tables


class _TableCache:
    """Bounded LRU of render tables, so shards rendered one after another share their clouds."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes, self.nbytes = max_bytes, 0
        self.items: OrderedDict[tuple, _RenderTable | None] = OrderedDict()

    def get(self, key: tuple) -> tuple[bool, _RenderTable | None]:
        if key in self.items:
            self.items.move_to_end(key)
            return True, self.items[key]
        return False, None

    def put(self, key: tuple, table: _RenderTable | None) -> None:
        if key in self.items:
            return
        self.items[key] = table
        self.nbytes += table.nbytes if table is not None else 0
        while self.nbytes > self.max_bytes and len(self.items) > 1:
            _, old = self.items.popitem(last=False)
            self.nbytes -= old.nbytes if old is not None else 0

    def clear(self) -> None:
        self.items.clear()
        self.nbytes = 0


_TABLES = _TableCache(_CACHE_BYTES)


def clear_render_cache() -> None:
    """Forget the cached per-cloud render tables (they only save time; results never depend on them)."""
    _TABLES.clear()


def _tables_for(keys: list[tuple[int, int]], systems: list[IFSSystem], rows: np.ndarray, cfg: FractalConfig,
                resolution: int, seed: int, n_points: int) -> dict[tuple[int, int], _RenderTable | None]:
    """Render tables of (category, row) clouds, from the cache or batched chaos games."""
    pad = render_pad(cfg, resolution)
    out: dict[tuple[int, int], _RenderTable | None] = {}
    todo: list[tuple[tuple[int, int], tuple]] = []
    for cat, row in keys:
        system = systems[cat]
        ckey = (system.params.tobytes(), system.probs.tobytes(), rows[row].tobytes(), cat, row, seed,
                n_points, resolution, pad, bool(cfg.patch))
        hit, table = _TABLES.get(ckey)
        if hit:
            out[(cat, row)] = table
        else:
            todo.append(((cat, row), ckey))
    per_batch = max(1, _CLOUD_BATCH_POINTS // n_points)
    for start in range(0, len(todo), per_batch):
        chunk = todo[start: start + per_batch]
        params = [systems[cat].params * rows[row] for (cat, row), _ in chunk]
        probs = [systems[cat].probs for (cat, _), _ in chunk]
        rngs = [np.random.default_rng(np.random.SeedSequence([seed, _STREAM_CLOUD, cat, row]))
                for (cat, row), _ in chunk]
        flat, ok = _to_pixels(*_chaos_game(params, probs, rngs, n_points), resolution, pad)
        for (key, ckey), table in zip(chunk, _render_tables(flat, ok, resolution, cfg.patch), strict=True):
            _TABLES.put(ckey, table)
            out[key] = table
    return out


def _palette() -> np.ndarray:
    """128-step HSV hue wheel at S = V = 0.75, RGB uint8 (128, 3)."""
    h = np.arange(_HUES) * (6.0 / _HUES)
    sector, frac = np.floor(h).astype(int), h - np.floor(h)
    v, s = 0.75, 0.75
    p, q, t = np.full(_HUES, v * (1 - s)), v * (1 - s * frac), v * (1 - s * (1 - frac))
    full = np.full(_HUES, v)
    by_sector = [(full, t, p), (q, full, p), (p, full, t), (p, q, full), (t, p, full), (full, p, q)]
    rgb = np.stack([np.stack(by_sector[k], axis=1)[i] for i, k in enumerate(sector)])
    return np.floor(rgb * 255.0).astype(np.uint8)


_PALETTE = _palette()
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_SALT_IMAGE = np.uint64(0xD1B54A32D192ED03)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (wrapping arithmetic)."""
    z = z ^ (z >> np.uint64(30))
    z *= _MIX1
    z ^= z >> np.uint64(27)
    z *= _MIX2
    z ^= z >> np.uint64(31)
    return z


def _image_keys(seed: int, renders: np.ndarray) -> np.ndarray:
    """One 64-bit key per render id: the start of that render's counter-based random stream."""
    base = np.random.SeedSequence([seed, _STREAM_IMAGE]).generate_state(1, dtype=np.uint64)
    return _mix64(base + renders.astype(np.uint64) * _GOLDEN)


def instance_layout(indices: np.ndarray, num_categories: int,
                    flips: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image index -> (category, weight row, flip code, render id), the reference's instance order.

    Image ``i`` is category ``i % C`` and instance ``j = i // C``; its weight row is ``j % 25`` and,
    with flips, its flip code ``(j // 25) % 4`` (0 none, 1 horizontal, 2 vertical, 3 both) and its
    repeat ``j // 100``: every weight row appears with each of the 4 flips, balanced, and the 4 flips
    are one render flipped (the reference writes each render 4 times). Without flips the repeat is
    ``j // 25``. The render id numbers the distinct renders: ``category + C * (row + 25 * repeat)``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    category, instance = indices % num_categories, indices // num_categories
    row = instance % 25
    if flips:
        flip, repeat = (instance // 25) % 4, instance // 100
    else:
        flip, repeat = np.zeros_like(instance), instance // 25
    return category, row, flip, category + num_categories * (row + 25 * repeat)


def area_weights(src: int, dst: int) -> np.ndarray:
    """(dst, src) integer box-filter weights: output pixel i's overlap with source pixel k, in 1/dst px.

    Output pixel i covers [i * src, (i + 1) * src) and source pixel k covers [k * dst, (k + 1) * dst)
    on a grid of 1/dst source pixels; each row sums to ``src``.
    """
    i, k = np.arange(dst)[:, None], np.arange(src)[None, :]
    overlap = np.minimum((i + 1) * src, (k + 1) * dst) - np.maximum(i * src, k * dst)
    return np.maximum(overlap, 0).astype(np.float64)


def area_downsample(images: np.ndarray, size: int) -> np.ndarray:
    """Box-filter (area) downsample of uint8 images (n, R, R, C) to (n, size, size, C), exactly rounded.

    The weighted sums are integers below 2^53, so float64 BLAS computes them exactly in any
    summation order: the bytes do not depend on the BLAS build or its threads.
    """
    src = images.shape[1]
    if src == size:
        return images
    n, channels = images.shape[0], images.shape[3]
    w = area_weights(src, size)
    # two plain GEMMs: columns of every (image, channel, row) at once, then the rows
    x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float64).reshape(-1, src)
    y = (x @ w.T).reshape(n * channels, src, size).transpose(1, 0, 2).reshape(src, -1)
    acc = (w @ y).reshape(size, n * channels, size).transpose(1, 0, 2)  # (n * C, size, size)
    total = src * src
    out = (acc.astype(np.int64) * 2 + total) // (2 * total)  # round half up
    return out.astype(np.uint8).reshape(n, channels, size, size).transpose(0, 2, 3, 1)


def render_resolution(cfg: FractalConfig, resolution: int) -> int:
    """The canvas (px) images are rendered on before the area downsample: cfg.render_resolution, 0 = resolution."""
    size = int(cfg.render_resolution) or resolution
    if size < resolution:
        raise ConfigError(f"data.fractal.render_resolution={size} is below data.resolution={resolution}; "
                          f"use at least {resolution}, or 0 to render at data.resolution")
    return size


def _downsample_matrix(table: _RenderTable, src: int, dst: int) -> Any:
    """Sparse (dst*dst, covered) integer box weights from the table's covered pixels to the output pixels.

    A source pixel overlaps at most 2 x 2 output pixels when dst <= src.
    """
    from scipy import sparse

    w = area_weights(src, dst)  # (dst, src)
    first = np.argmax(w > 0, axis=0)  # first output pixel each source pixel overlaps
    second = np.minimum(first + 1, dst - 1)
    w0 = w[first, np.arange(src)]
    w1 = np.where(second != first, w[second, np.arange(src)], 0.0)
    r, c = np.divmod(table.pixels.astype(np.int64), src)
    # column j (covered pixel j) holds its 4 (output pixel, weight) pairs: CSC without any sort
    rows = np.stack([ro * dst + co for ro in (first[r], second[r]) for co in (first[c], second[c])], axis=1)
    vals = np.stack([wr * wc for wr in (w0[r], w1[r]) for wc in (w0[c], w1[c])], axis=1)
    indptr = np.arange(0, 4 * len(table.pixels) + 1, 4)
    return sparse.csc_matrix((vals.reshape(-1), rows.reshape(-1), indptr), shape=(dst * dst, len(table.pixels)))


def _paint(table: _RenderTable, down: Any, keys: np.ndarray, cfg: FractalConfig, colour: bool, src: int,
           dst: int) -> np.ndarray:
    """Renders of one cloud on the src canvas, area-downsampled to dst -> uint8 (n, dst, dst, 3 or 1).

    The canvas is never built: a covered pixel shows its last point's mask bit (and colour), so the
    downsample is one sparse product of the per-pixel values with the box weights, exact in float64
    (integer weights and values, sums below 2^53).
    """
    n = len(keys)
    if cfg.patch:
        # mask of point p in render r: 1 + 511 * (high half of the p-th SplitMix64 output of key r) / 2^32
        word = _mix64(keys[:, None] + table.word[None, :])
        word >>= np.uint64(32)
        word *= np.uint64(511)
        word >>= np.uint64(32)
        word += np.uint64(1)
        word >>= table.cell[None, :]
        lit = (word & np.uint64(1)).astype(np.float64)  # (n, covered)
    else:
        lit = np.ones((n, len(table.pixels)))
    if colour:
        offset = ((_mix64(keys ^ _SALT_IMAGE) >> np.uint64(2)) & np.uint64(_HUES - 1)).astype(np.int16)
        rgb = _PALETTE[(table.hue[None, :] + offset[:, None]) & (_HUES - 1)].astype(np.float64)  # (n, cov, 3)
        values = (lit[:, :, None] * rgb).transpose(1, 0, 2).reshape(len(table.pixels), n * 3)
    else:
        values = (lit * _GRAY).T  # (covered, n)
    acc = down @ values  # (dst*dst, n*C) integers
    total = src * src
    out = (np.rint(acc).astype(np.int64) * 2 + total) // (2 * total)  # round half up
    channels = 3 if colour else 1
    return out.astype(np.uint8).reshape(dst, dst, n, channels).transpose(2, 0, 1, 3)


def _check_render_args(systems: list[IFSSystem], cfg: FractalConfig, resolution: int, channels: int) -> int:
    if channels not in (1, 3):
        raise ConfigError(f"data.channels={channels}: fractal images have 1 (gray) or 3 channels")
    if resolution < 4:
        raise ConfigError(f"data.resolution={resolution}: fractal images need at least 4 px")
    if not systems:
        raise ConfigError("render_fractals: no fractal categories given")
    size = render_resolution(cfg, resolution)
    if size - 2 * render_pad(cfg, size) < 2:
        raise ConfigError(f"data.fractal.search_pad={cfg.search_pad} leaves no room at {size} px; lower it")
    return size


def _render_serial(systems: list[IFSSystem], indices: np.ndarray, cfg: FractalConfig, resolution: int,
                   channels: int, seed: int) -> np.ndarray:
    """The images of ``indices`` in this process: each distinct render once, downsampled, then flipped."""
    size = _check_render_args(systems, cfg, resolution, channels)
    n_cat = len(systems)
    _, _, flip, render = instance_layout(indices, n_cat, cfg.flips)
    renders, inverse = np.unique(render, return_inverse=True)
    r_cat, r_row = renders % n_cat, (renders // n_cat) % 25
    colour = channels == 3 and cfg.color
    small = np.zeros((len(renders), resolution, resolution, 3 if colour else 1), dtype=np.uint8)
    n_points = num_render_points(cfg, size)
    group_key = r_cat * 25 + r_row
    order = np.argsort(group_key, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(group_key[order])) + 1) if len(order) else []
    pairs = [(int(r_cat[g[0]]), int(r_row[g[0]])) for g in groups]
    rows = weight_rows(cfg.weight_step)
    keys = _image_keys(seed, renders)
    per_call = _RENDERS_PER_CALL
    per_batch = max(1, _CLOUD_BATCH_POINTS // n_points)  # clouds alive at once: memory stays bounded
    for start in range(0, len(groups), per_batch):
        batch = pairs[start: start + per_batch]
        tables = _tables_for(batch, systems, rows, cfg, size, seed, n_points)
        for g, pair in zip(groups[start: start + per_batch], batch, strict=True):
            if tables[pair] is None:
                continue  # the weighted system diverged: a black image (the reference would fail)
            down = _downsample_matrix(tables[pair], size, resolution)
            for first in range(0, len(g), per_call):
                pos = g[first: first + per_call]
                small[pos] = _paint(tables[pair], down, keys[pos], cfg, colour, size, resolution)
    images = small[inverse]
    for code, axes in ((1, (2,)), (2, (1,)), (3, (1, 2))):
        sel = flip == code
        if sel.any():
            images[sel] = np.flip(images[sel], axis=axes)
    if images.shape[3] != channels:
        images = np.repeat(images, channels, axis=3)  # gray on 3 channels, as the reference's PNGs
    return images


def _render_task(args: tuple) -> np.ndarray:
    return _render_serial(*args)


def _init_render_worker() -> None:
    """Pool initializer: default signal handling and one BLAS thread per worker.

    A forked worker inherits the parent's signal handlers. Under submitit (a SLURM job) SIGTERM is
    "bypassed", so the pool's terminate() never ended the workers and the parent waited forever
    in join(); the parent alone handles SIGUSR2 (requeue) and SIGINT.
    """
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for sig in (signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # only a speed matter: oversubscribed BLAS threads
        return
    threadpool_limits(1)


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[Any]:
    """A fork pool: workers inherit the systems without pickling and never re-import ``__main__``.

    The workers run numpy only (no torch call after the fork), which is fork-safe.
    """
    import multiprocessing

    pool = multiprocessing.get_context("fork").Pool(workers, initializer=_init_render_worker)
    try:
        yield pool
    except BaseException:
        pool.terminate()
        pool.join()
        raise
    # Every task is done: the workers exit on their own (terminate() could catch one of them
    # holding the task queue's lock and leave the parent waiting in join()).
    pool.close()
    pool.join()


def default_workers() -> int:
    """Processes that render by default: one per core this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def render_fractals(systems: list[IFSSystem], indices: np.ndarray, cfg: FractalConfig, resolution: int,
                    channels: int, seed: int, workers: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Render images `indices` of the dataset -> (uint8 images (n, H, W, C), int64 category (n,)).

    ``workers`` > 1 splits the clouds over that many processes; every byte is the same as with 1.
    """
    _check_render_args(systems, cfg, resolution, channels)
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and indices.min() < 0:
        raise ValueError("render_fractals: image indices must be >= 0")
    n_cat = len(systems)
    category, row, _, _ = instance_layout(indices, n_cat, cfg.flips)
    cloud = category * 25 + row
    clouds = np.unique(cloud)
    if workers <= 1 or len(clouds) < 2 or not hasattr(os, "fork"):
        return _render_serial(systems, indices, cfg, resolution, channels, seed), category
    # whole clouds per task (a cloud is computed once), several tasks per worker to balance the load
    n_tasks = min(len(clouds), 4 * workers)
    task_of_cloud = np.empty(int(clouds.max()) + 1, dtype=np.int64)
    task_of_cloud[clouds] = np.arange(len(clouds)) % n_tasks
    task = task_of_cloud[cloud]
    parts = [np.flatnonzero(task == t) for t in range(n_tasks)]
    images = np.zeros((len(indices), resolution, resolution, channels), dtype=np.uint8)
    with _process_pool(min(workers, n_tasks)) as pool:
        jobs = [(systems, indices[p], cfg, resolution, channels, seed) for p in parts]
        for p, out in zip(parts, pool.imap(_render_task, jobs), strict=True):
            images[p] = out
    return images, category


class FractalBlocks:
    """Image blocks [a, b) of one RLGD dataset, rendered ahead in spans of whole clouds.

    A shard of FracDB-100 touches every cloud; rendering ``budget_bytes`` of images at once (the
    whole 32 px dataset) computes each cloud once instead of once per shard. Bytes never depend on
    the span, the shard size or the worker count.
    """

    def __init__(self, systems: list[IFSSystem], cfg: FractalConfig, num_images: int, resolution: int,
                 channels: int, seed: int, workers: int = 1, budget_bytes: int = 1 << 30) -> None:
        self.systems, self.cfg, self.n = systems, cfg, int(num_images)
        self.resolution, self.channels, self.seed, self.workers = resolution, channels, seed, max(1, workers)
        self.span = max(1, budget_bytes // (resolution * resolution * channels))
        self.start, self.images = 0, np.zeros((0, resolution, resolution, channels), dtype=np.uint8)

    def __call__(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Images and categories of [a, b)."""
        if not (self.start <= a and b <= self.start + len(self.images)):
            stop = min(self.n, max(b, a + self.span))
            self.images, _ = render_fractals(self.systems, np.arange(a, stop), self.cfg, self.resolution,
                                             self.channels, self.seed, self.workers)
            self.start = a
        images = self.images[a - self.start: b - self.start]
        return images, np.arange(a, b, dtype=np.int64) % len(self.systems)
