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

Rendering (``render_fractals``): image ``i`` is category ``i % C``, instance ``i // C``, weight row
``instance % 25`` (row 0 = identity; then for each of the six parameters, that parameter of every
map scaled by 1-2k, 1-k, 1+k, 1+2k; the map probabilities stay those of the category, as in the
reference). Re-seeding, decided: like the reference, the point sequence is re-seeded identically
for every render of one (category, weight row), from ``SeedSequence([seed, _STREAM_CLOUD, category,
row])``. Instances of one row therefore differ only in their per-image randomness (the 3x3 patch
masks, the flips and the hue offset). This keeps the category signal strong and lets one cloud
serve all its instances (a per-process LRU caches what they share), which is what makes FracDB-100
at 32 px cheap. The per-image randomness is counter-based: image ``i`` has the key
``mix(s + i * g)`` (``s`` from ``SeedSequence([seed, _STREAM_IMAGE])``, ``mix`` the SplitMix64
finaliser, ``g`` its golden-ratio increment); its flips and hue offset come from ``mix(key ^ salt)``
and the mask of point ``p`` from ``mix(key + (p + 1) * g)``, the p-th SplitMix64 output. Any
point's mask is addressable without drawing the others or building a generator per image. Every
byte of image ``i`` is a pure function of (systems, cfg, resolution, channels, seed, i), whatever
chunk of indices it is rendered in and whatever the cache holds.

Patch filter, as in the reference: point ``j`` pastes a 3x3 patch with a random non-empty mask
(uniform over the 511 masks) centred on its pixel; the paste also writes the mask's zeros, so a
pixel shows the mask bit (and colour) of the LAST point whose patch covers it (about half the
covered pixels stay dark). Which point that is depends only on the cloud, so it is computed once per
cloud (a scatter-max of point ids on the base pixels, then a max over the 9 shifts) and each image
only evaluates its own mask bits there. Without the patch filter each point lights its one pixel.

Colour: point ``j`` gets hue ``(j + offset) mod 128`` on a 128-step HSV wheel with S = V = 0.75 (the
reference's wheel, indexed by point), where ``offset`` is random per image; gray (or
``color=False``) is 127 on every channel; ``channels == 1`` is always gray.

Points per rendered image (``render_points == 0``): the reference density of 200k points at
362 px (1.53 points per pixel), i.e. ``round(200_000 * (resolution / 362) ** 2)``, at least
``_MIN_RENDER_POINTS``: 1563 points at 32 px. There the 3x3 patches saturate the silhouette from
about 800 points on (measured on FracDB-100, 1000 images: 25% of the pixels lit with 300 points,
26% with 800, 27% with 1563, 28% with 20k), so the images are speckled shapes, not blobs, and the
rule needs no special case for small sizes. The border is ``search_pad`` scaled to the resolution
(at least 1 px with the patch filter so that patches stay inside).
"""

from __future__ import annotations

import math
from collections import OrderedDict
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
_GROUP_PIXELS = 2_000_000  # image pixels painted per vectorised call (bounds memory)
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
    """What every instance of one (category, weight row) cloud shares: the last point over each pixel."""

    __slots__ = ("pixels", "point", "word", "cell", "hue", "nbytes")

    def __init__(self, pixels: np.ndarray, point: np.ndarray, cell: np.ndarray, resolution: int) -> None:
        r, c = np.divmod(pixels, resolution)
        flip_r, flip_c = (resolution - 1 - r) * resolution, resolution - 1 - c
        # flat indices (row 0 at the top) of the covered pixels, for flip code hflip + 2 * vflip
        self.pixels = np.stack([pixels, r * resolution + flip_c, flip_r + c, flip_r + flip_c])
        self.pixels = self.pixels.astype(np.int32)
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
        tables.append(_RenderTable(pixels, last[s, pixels].astype(np.int32), cell[s, pixels], resolution))
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


def _image_keys(seed: int, indices: np.ndarray) -> np.ndarray:
    """One 64-bit key per image index: the start of that image's counter-based random stream."""
    base = np.random.SeedSequence([seed, _STREAM_IMAGE]).generate_state(1, dtype=np.uint64)
    return _mix64(base + indices.astype(np.uint64) * _GOLDEN)


def _render_group(images: np.ndarray, pos: np.ndarray, keys: np.ndarray, table: _RenderTable,
                  cfg: FractalConfig, colour: bool) -> None:
    """Paint the instances `pos` of one cloud into images (n, H*W, C), in place."""
    h = _mix64(keys ^ _SALT_IMAGE)
    flip = (h & np.uint64(3)).astype(np.intp) if cfg.flips else np.zeros(len(pos), dtype=np.intp)
    offset = ((h >> np.uint64(2)) & np.uint64(_HUES - 1)).astype(np.int16)
    area = images.shape[1]
    flat = table.pixels[flip] + (pos * area)[:, None]  # (G, covered)
    if cfg.patch:
        # mask of point p in image i: 1 + 511 * (high half of the p-th SplitMix64 output of key i) / 2^32
        word = _mix64(keys[:, None] + table.word[None, :])
        word >>= np.uint64(32)
        word *= np.uint64(511)
        word >>= np.uint64(32)
        word += np.uint64(1)
        word >>= table.cell[None, :]
        lit = (word & np.uint64(1)).astype(bool)
        flat = flat[lit]
    else:
        lit = None
        flat = flat.reshape(-1)
    out = images.reshape(-1, images.shape[2])
    if colour:
        hue = (table.hue[None, :] + offset[:, None]) & (_HUES - 1)
        out[flat] = _PALETTE[hue[lit] if lit is not None else hue.reshape(-1)]
    else:
        out[flat] = _GRAY


def render_fractals(systems: list[IFSSystem], indices: np.ndarray, cfg: FractalConfig, resolution: int,
                    channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Render images `indices` of the dataset -> (uint8 images (n, H, W, C), int64 category (n,))."""
    if channels not in (1, 3):
        raise ConfigError(f"data.channels={channels}: fractal images have 1 (gray) or 3 channels")
    if resolution < 4:
        raise ConfigError(f"data.resolution={resolution}: fractal images need at least 4 px")
    if not systems:
        raise ConfigError("render_fractals: no fractal categories given")
    if resolution - 2 * render_pad(cfg, resolution) < 2:
        raise ConfigError(f"data.fractal.search_pad={cfg.search_pad} leaves no room at {resolution} px; "
                          "lower it")
    indices = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(indices) and indices.min() < 0:
        raise ValueError("render_fractals: image indices must be >= 0")
    n_cat = len(systems)
    category = indices % n_cat
    weight_row = (indices // n_cat) % 25
    n_points = num_render_points(cfg, resolution)
    images = np.zeros((len(indices), resolution * resolution, channels), dtype=np.uint8)
    group_key = category * 25 + weight_row
    order = np.argsort(group_key, kind="stable")
    groups = np.split(order, np.flatnonzero(np.diff(group_key[order])) + 1) if len(order) else []
    pairs = [(int(category[g[0]]), int(weight_row[g[0]])) for g in groups]
    rows = weight_rows(cfg.weight_step)
    keys = _image_keys(seed, indices)
    colour = channels == 3 and cfg.color
    per_call = max(1, _GROUP_PIXELS // (resolution * resolution))
    per_batch = max(1, _CLOUD_BATCH_POINTS // n_points)  # clouds alive at once: memory stays bounded
    for start in range(0, len(groups), per_batch):
        batch = pairs[start: start + per_batch]
        tables = _tables_for(batch, systems, rows, cfg, resolution, seed, n_points)
        for g, pair in zip(groups[start: start + per_batch], batch, strict=True):
            if tables[pair] is None:
                continue  # the weighted system diverged: a black image (the reference would fail)
            for first in range(0, len(g), per_call):
                pos = g[first: first + per_call]
                _render_group(images, pos, keys[pos], tables[pair], cfg, colour)
    return images.reshape(len(indices), resolution, resolution, channels), category
