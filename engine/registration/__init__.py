"""Registration: map the reference star table onto every frame, whatever the telescope did.

Frames from mounts without GoTo or good tracking drift by hundreds of pixels, jump when the
observer re-centres, and turn by 180 degrees at a meridian flip. Each frame is registered from its
own detections alone:

1. **Asterisms.** Triangles of bright stars (each star with pairs of its nearest neighbours, or
   every triangle when there are few stars) are described by two ratios of their sorted side
   lengths and their handedness, which do not change under translation, rotation and scale.
   Reference and frame triangles whose ratios agree (a `scipy.spatial.cKDTree` query) and whose
   sizes agree within `scale_range` each propose a similarity transform.
2. **Verification.** Each proposal maps the reference's bright stars into the frame; the one that
   lands the most of them on frame stars wins, provided that many hits are not a coincidence (a
   Poisson test against the frame's star density, corrected for the number of proposals tried).
3. **Refinement.** The winner's pairs (every star of both lists within `match_radius`,
   one-to-one) are refitted first by least median of squares over exact two-pair transforms,
   which a minority of wrong pairs cannot drag (a hot pixel or an edge artefact that stays put
   while the stars drift), then by least squares on the pairs within four times their scatter,
   until the pairs stop changing. A frame is accepted when at least `min_matches` stars pair up
   and their number passes the same coincidence test.

Before matching, star tables lose the detections whose windowed centroid failed or that touch
the edge (flags CENTROID_FAILED, NEAR_EDGE), and every list loses each star with a brighter one
within `min_separation` (fragments of saturated stars, close pairs).

`register_frames` first tries the previous frame's transform (stars rarely move far between two
frames) and falls back to asterisms when that does not verify or pairs far fewer stars than the
previous frame did, so slow drifts cost a nearest-neighbour search and jumps or flips cost one
asterism search. Frames that cannot be registered are flagged with a reason, never fatal.

`recentre` then measures each star's windowed centroid around its predicted position, bounded by
`max_shift` (the kernel in `engine.kernels.centroid`).

Conventions: positions are 0-based with pixel centres on integers, x = column, y = row. A
`Transform` maps reference coordinates to frame coordinates.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from scipy.spatial import cKDTree
from scipy.special import gammainc

from engine.detection import star_positions
from engine.errors import EngineValueError, RegistrationError
from engine.flags import MeasurementFlag
from engine.kernels import centroid as _centroid

__all__ = [
    "Registration",
    "Transform",
    "fit_transform",
    "identify_target",
    "match_catalogue",
    "match_transform",
    "recentre",
    "register_frames",
    "register_images",
    "registrations_table",
    "sky_to_pixels",
    "stack_reference",
]


_GAUSSIAN_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ------------------------------------------------------------------------------------------------
# Transform
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Transform:
    """A similarity transform from reference to frame coordinates.

        x' = a x - b (p y) + tx
        y' = b x + a (p y) + ty

    with parity p = +1 (a rotation, scale and shift: every telescope's own frames) or -1 (a
    mirror image first, for matching against a sky catalogue of unknown handedness). The scale is
    hypot(a, b) and the rotation atan2(b, a), counter-clockwise from +x in the (x, y) plane.
    """

    a: float = 1.0
    b: float = 0.0
    tx: float = 0.0
    ty: float = 0.0
    parity: int = 1

    def __post_init__(self):
        for name in ("a", "b", "tx", "ty"):
            value = getattr(self, name)
            if not math.isfinite(value):
                raise EngineValueError(f"Transform.{name} must be finite, got {value!r}")
        if self.parity not in (1, -1):
            raise EngineValueError(f"Transform.parity must be +1 or -1, got {self.parity!r}")
        if self.a == 0.0 and self.b == 0.0:
            raise EngineValueError("Transform scale must be > 0")

    @classmethod
    def from_parameters(cls, *, scale: float = 1.0, rotation_deg: float = 0.0, tx: float = 0.0,
                        ty: float = 0.0, parity: int = 1) -> "Transform":
        """The transform with this scale, rotation (degrees, counter-clockwise) and shift."""
        angle = math.radians(rotation_deg)
        return cls(scale * math.cos(angle), scale * math.sin(angle), tx, ty, parity)

    @property
    def scale(self) -> float:
        return math.hypot(self.a, self.b)

    @property
    def rotation_deg(self) -> float:
        return math.degrees(math.atan2(self.b, self.a))

    @property
    def matrix(self) -> np.ndarray:
        """3x3 homogeneous matrix M with [x', y', 1] = M @ [x, y, 1]."""
        p = self.parity
        return np.array([[self.a, -self.b * p, self.tx],
                         [self.b, self.a * p, self.ty],
                         [0.0, 0.0, 1.0]])

    def apply(self, xy) -> np.ndarray:
        """Map an (n, 2) array of reference positions into the frame."""
        xy = np.asarray(xy, dtype=np.float64)
        x, y = xy[..., 0], self.parity * xy[..., 1]
        return np.stack([self.a * x - self.b * y + self.tx,
                         self.b * x + self.a * y + self.ty], axis=-1)

    __call__ = apply

    def inverse(self) -> "Transform":
        """The transform from frame back to reference coordinates."""
        s2 = self.a * self.a + self.b * self.b
        p = self.parity
        # Inverse of M = [[a, -b p], [b, a p]]: (1 / (p s2)) [[a p, b p], [-b, a]].
        ia, ib = self.a / s2, -self.b * p / s2
        # With parity -1 the inverse is also a mirror: x = ia x' - ib (p y'), as apply computes.
        inverse = Transform(ia, ib, 0.0, 0.0, p)
        tx, ty = inverse.apply(np.array([self.tx, self.ty]))
        return Transform(ia, ib, -tx, -ty, p)

    def compose(self, first: "Transform") -> "Transform":
        """The transform that applies `first`, then this one."""
        m = self.matrix @ first.matrix
        p = self.parity * first.parity
        return Transform(m[0, 0], m[1, 0], m[0, 2], m[1, 2], p)


# ------------------------------------------------------------------------------------------------
# Prepared star lists: bright subset, triangles and their invariants
# ------------------------------------------------------------------------------------------------

@dataclass
class _Stars:
    xy: np.ndarray              # every star, brightest first
    tree: cKDTree | None        # over xy
    bright: np.ndarray          # the brightest `max_bright` stars
    bright_tree: cKDTree | None
    triangles: np.ndarray       # (T, 3) indices into bright, canonical vertex order
    invariants: np.ndarray      # (T, 2) side ratios
    handedness: np.ndarray      # (T,) +1 / -1
    size: np.ndarray            # (T,) longest side
    invariant_tree: cKDTree | None
    bounds: tuple[float, float, float, float]  # estimated field: xmin, xmax, ymin, ymax

    @property
    def area(self) -> float:
        xmin, xmax, ymin, ymax = self.bounds
        return max((xmax - xmin) * (ymax - ymin), 1.0)


def _field_bounds(xy: np.ndarray) -> tuple[float, float, float, float]:
    """The field the stars were drawn from, estimated from their range: n uniform points span
    (n - 1) / (n + 1) of their interval on average, so the range is widened by 1 / (n - 1) of
    itself on each side (few stars would otherwise make a small field and a high density)."""
    n = len(xy)
    if n == 0:
        return (0.0, 0.0, 0.0, 0.0)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    pad = (hi - lo) / max(n - 1, 1)
    return (float(lo[0] - pad[0]), float(hi[0] + pad[0]), float(lo[1] - pad[1]),
            float(hi[1] + pad[1]))


_ALL_TRIANGLES_BELOW = 13
_PAIRS_CACHE: dict[int, np.ndarray] = {}
_ALL_CACHE: dict[int, np.ndarray] = {}


def _neighbour_pairs(k: int) -> np.ndarray:
    if k not in _PAIRS_CACHE:
        _PAIRS_CACHE[k] = np.array(list(itertools.combinations(range(k), 2)),
                                   dtype=np.intp).reshape(-1, 2)
    return _PAIRS_CACHE[k]


def _all_triangles(m: int) -> np.ndarray:
    if m not in _ALL_CACHE:
        _ALL_CACHE[m] = np.array(list(itertools.combinations(range(m), 3)),
                                 dtype=np.intp).reshape(-1, 3)
    return _ALL_CACHE[m]


def _triangles(points: np.ndarray, neighbours: int, min_side: float):
    """Triangles of `points` in canonical vertex order, with their invariants."""
    m = len(points)
    if m < 3:
        empty = np.zeros((0, 3), dtype=np.intp)
        return empty, np.zeros((0, 2)), np.zeros(0), np.zeros(0)
    # Every triangle of the brightest few (a cloudy frame may show only those), plus each
    # bright star with pairs of its nearest neighbours (local asterisms survive partial overlap).
    tri = _all_triangles(min(m, _ALL_TRIANGLES_BELOW - 1))
    if m >= _ALL_TRIANGLES_BELOW:
        k = min(neighbours, m - 1)
        _, nearest = cKDTree(points).query(points, k=k + 1)
        pairs = _neighbour_pairs(k)
        others = nearest[:, 1:]
        local = np.empty((m, len(pairs), 3), dtype=np.intp)
        local[:, :, 0] = np.arange(m)[:, None]
        local[:, :, 1] = others[:, pairs[:, 0]]
        local[:, :, 2] = others[:, pairs[:, 1]]
        tri = np.unique(np.sort(np.vstack([tri, local.reshape(-1, 3)]), axis=1), axis=0)
    p = points[tri]                                              # (T, 3, 2)
    # side k is opposite vertex k
    sides = np.stack([np.hypot(*(p[:, 1] - p[:, 2]).T),
                      np.hypot(*(p[:, 0] - p[:, 2]).T),
                      np.hypot(*(p[:, 0] - p[:, 1]).T)], axis=1)
    order = np.argsort(-sides, axis=1, kind="stable")            # vertex opposite longest first
    tri = np.take_along_axis(tri, order, axis=1)
    sides = np.take_along_axis(sides, order, axis=1)
    keep = sides[:, 2] >= min_side
    tri, sides = tri[keep], sides[keep]
    invariants = np.stack([sides[:, 1] / sides[:, 0], sides[:, 2] / sides[:, 1]], axis=1)
    p = points[tri]
    u, v = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
    handedness = np.sign(u[:, 0] * v[:, 1] - u[:, 1] * v[:, 0])
    return tri, invariants, handedness, sides[:, 0]


def _isolated(xy: np.ndarray, separation: float) -> np.ndarray:
    """Keep a star (rows brightest first) only if no brighter star lies within `separation`:
    the fragments of a saturated star and close pairs can swap partners between frames."""
    if len(xy) < 2:
        return xy
    pairs = cKDTree(xy).query_pairs(separation, output_type="ndarray")
    if len(pairs) == 0:
        return xy
    keep = np.ones(len(xy), dtype=bool)
    keep[pairs.max(axis=1)] = False  # the fainter of each close pair
    return xy[keep]


def _prepare(xy, flux, *, max_bright: int, neighbours: int, min_side: float,
             min_separation: float, name: str) -> _Stars:
    xy = star_positions(xy)
    if flux is not None:
        flux = np.asarray(flux, dtype=np.float64)
        if flux.shape != (len(xy),):
            raise EngineValueError(f"{name}: flux must have one value per star ({len(xy)}), "
                                   f"got shape {flux.shape}")
        xy = xy[np.argsort(-np.nan_to_num(flux, nan=-np.inf), kind="stable")]
    xy = _isolated(xy[np.isfinite(xy).all(axis=1)], min_separation)
    bright = xy[:max_bright]
    tri, inv, hand, size = _triangles(bright, neighbours, min_side)
    bounds = _field_bounds(xy)
    return _Stars(xy=xy, tree=cKDTree(xy) if len(xy) else None, bright=bright,
                  bright_tree=cKDTree(bright) if len(bright) else None, triangles=tri,
                  invariants=inv, handedness=hand, size=size,
                  invariant_tree=cKDTree(inv) if len(inv) else None, bounds=bounds)


def _stars_of(value, flux, options: "_Options", name: str) -> _Stars:
    if isinstance(value, _Stars):
        return value
    if isinstance(value, pa.Table):
        if "flags" in value.column_names:
            # A detection whose windowed centroid failed is no position to match on (hot
            # pixels and cosmic rays, sharper than any star, end up here), nor one cut by the
            # image edge (a biased centroid, or an artefact of the edge itself).
            flags = value.column("flags").to_numpy(zero_copy_only=False)
            unusable = int(MeasurementFlag.CENTROID_FAILED | MeasurementFlag.NEAR_EDGE)
            value = value.filter(pa.array((flags & unusable) == 0))
        if flux is None and "flux" in value.column_names:
            flux = value.column("flux").to_numpy(zero_copy_only=False)
    return _prepare(value, flux, max_bright=options.max_bright, neighbours=options.neighbours,
                    min_side=options.min_side, min_separation=options.min_separation,
                    name=name)


# ------------------------------------------------------------------------------------------------
# Fitting
# ------------------------------------------------------------------------------------------------

def _fit_similarity(p: np.ndarray, q: np.ndarray, parity: np.ndarray | int = 1):
    """Least-squares similarity q ~ T(p) for stacks of point sets: p, q (..., m, 2).

    Returns a, b, tx, ty, each of shape (...). `parity` (scalar or (...,)) mirrors p first.
    """
    parity = np.asarray(parity, dtype=np.float64)
    px = p[..., 0]
    py = p[..., 1] * parity[..., None] if parity.ndim else p[..., 1] * parity
    qx, qy = q[..., 0], q[..., 1]
    mpx, mpy = px.mean(axis=-1), py.mean(axis=-1)
    mqx, mqy = qx.mean(axis=-1), qy.mean(axis=-1)
    cpx, cpy = px - mpx[..., None], py - mpy[..., None]
    cqx, cqy = qx - mqx[..., None], qy - mqy[..., None]
    denom = np.sum(cpx * cpx + cpy * cpy, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        a = np.sum(cpx * cqx + cpy * cqy, axis=-1) / denom
        b = np.sum(cpx * cqy - cpy * cqx, axis=-1) / denom
    tx = mqx - (a * mpx - b * mpy)
    ty = mqy - (b * mpx + a * mpy)
    return a, b, tx, ty


def _apply_many(a, b, tx, ty, parity, xy):
    """Map xy (m, 2) by K transforms given as arrays (K,): returns (K, m, 2)."""
    x = xy[None, :, 0]
    y = xy[None, :, 1] * parity[:, None]
    return np.stack([a[:, None] * x - b[:, None] * y + tx[:, None],
                     b[:, None] * x + a[:, None] * y + ty[:, None]], axis=-1)


def _chance_probability(extra: int, expected: float) -> float:
    """P(at least `extra` chance coincidences) when `expected` are expected (Poisson)."""
    if extra <= 0:
        return 1.0
    if expected <= 0.0:
        return 0.0
    return float(gammainc(extra, expected))


# ------------------------------------------------------------------------------------------------
# Matching
# ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Options:
    max_bright: int = 40
    neighbours: int = 6
    min_side: float = 5.0
    min_separation: float = 4.0
    invariant_tolerance: float = 0.015
    scale_range: tuple[float, float] = (0.95, 1.05)
    match_radius: float = 3.0
    min_radius: float = 0.2
    min_matches: int = 4
    false_alarm: float = 0.01
    allow_reflection: bool = False
    max_candidates: int = 4000
    guess_radius: float = 25.0


@dataclass(frozen=True)
class Registration:
    """How one frame was registered.

    index: the frame's position in the input sequence.
    status: "ok" or "failed"; reason says why a frame failed ("" when ok).
    transform: reference -> frame (None when failed).
    n_matches: stars paired by the final fit; rms: their residual RMS in pixels.
    method: "previous" (the previous frame's transform, refined), "triangles" (asterism
        search), or "" when failed.
    """

    index: int
    status: str
    reason: str = ""
    transform: Transform | None = None
    n_matches: int = 0
    rms: float = math.nan
    method: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass
class _Outcome:
    transform: Transform | None = None
    n_matches: int = 0
    rms: float = math.nan
    reason: str = ""
    pairs: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    radius: float = math.nan    # the final pairing radius


def _expected_chance(ref: _Stars, frame: _Stars, t: Transform, radius: float) -> tuple[int, float]:
    """Reference stars that land inside the frame's star field, and the number of frame stars
    expected within `radius` of them by chance."""
    mapped = t.apply(ref.xy)
    xmin, xmax, ymin, ymax = frame.bounds
    inside = int(np.count_nonzero((mapped[:, 0] >= xmin) & (mapped[:, 0] <= xmax)
                                  & (mapped[:, 1] >= ymin) & (mapped[:, 1] <= ymax)))
    density = len(frame.xy) / frame.area
    return inside, inside * density * math.pi * radius * radius


_CONSENSUS_SAMPLES = 400   # every two pairs up to this many samples (29 pairs)
_CONSENSUS_LARGE = 100
_CONSENSUS_JUDGES = 200


def _consensus(p: np.ndarray, q: np.ndarray, parity: int) -> tuple[Transform, float]:
    """Least-median-of-squares similarity q ~ T(p): the exact transform through two pairs that
    leaves the smallest median squared residual over all pairs (every two pairs when there are
    few, else a fixed pseudo-random sample). Unlike least squares it is not dragged by a
    minority of wrong pairs (a hot pixel or an edge artefact that stays put while the stars
    drift), however far they lie. Returns the transform and the residual sigma it implies."""
    m = len(p)
    if m * (m - 1) // 2 <= _CONSENSUS_SAMPLES:
        first, second = np.triu_indices(m, k=1)
    else:
        # With a third of the pairs wrong, 100 random two-pair samples all hold a wrong pair
        # with probability 0.56^100 ~ 1e-25.
        rng = np.random.default_rng(m)  # deterministic: the same inputs give the same answer
        first = rng.integers(0, m, _CONSENSUS_LARGE)
        second = (first + rng.integers(1, m, _CONSENSUS_LARGE)) % m
    sample = np.stack([first, second], axis=1)
    a, b, tx, ty = _fit_similarity(p[sample], q[sample], parity)
    ok = np.isfinite(a) & np.isfinite(b) & ((a != 0) | (b != 0))
    a, b, tx, ty = a[ok], b[ok], tx[ok], ty[ok]
    # The median is judged on at most _CONSENSUS_JUDGES pairs spread through the list.
    judges = np.unique(np.linspace(0, m - 1, min(m, _CONSENSUS_JUDGES)).astype(np.intp))
    mapped = _apply_many(a, b, tx, ty, np.full(len(a), float(parity)), p[judges])
    squared = np.sum((mapped - q[judges][None]) ** 2, axis=-1)
    k = (len(judges) - 1) // 2
    median = np.partition(squared, k, axis=1)[:, k]
    best = int(np.argmin(median))
    # For 2-D Gaussian residuals of sigma s per axis, the median squared length is 2 ln 2 s^2.
    sigma = math.sqrt(float(median[best]) / (2.0 * math.log(2.0)))
    return Transform(float(a[best]), float(b[best]), float(tx[best]), float(ty[best]),
                     parity), sigma


def _refine(ref: _Stars, frame: _Stars, t: Transform, options: _Options,
            radius: float) -> _Outcome:
    """Refit t on every star pair within a shrinking radius (one-to-one): a least-median-of-
    squares fit to the pairs within `radius` first, then least squares on the pairs within a
    few times their scatter, until the pairs stop changing."""
    pairs_ref = pairs_frame = None
    rms = math.nan
    previous = None
    mapped = t.apply(ref.xy)
    dist, j = frame.tree.query(mapped, distance_upper_bound=radius)
    hit = np.flatnonzero(np.isfinite(dist))
    if len(hit) >= 3:
        order = hit[np.argsort(dist[hit], kind="stable")]
        _, first = np.unique(j[order], return_index=True)
        hit = np.sort(order[first])
        if len(hit) >= 3:
            t, sigma = _consensus(ref.xy[hit], frame.xy[j[hit]], t.parity)
            radius = min(max(4.0 * sigma, options.min_radius), options.match_radius)
    for _ in range(6):
        mapped = t.apply(ref.xy)
        dist, j = frame.tree.query(mapped, distance_upper_bound=radius)
        hit = np.flatnonzero(np.isfinite(dist))
        if len(hit) < 3:
            return _Outcome(reason=f"only {len(hit)} stars within {radius:.2g} px of the "
                                   "predicted positions")
        # One-to-one: a frame star claimed by several reference stars goes to the closest.
        order = hit[np.argsort(dist[hit], kind="stable")]
        _, first = np.unique(j[order], return_index=True)
        hit = np.sort(order[first])
        key = hit.tobytes()
        pairs_ref, pairs_frame = ref.xy[hit], frame.xy[j[hit]]
        a, b, tx, ty = _fit_similarity(pairs_ref, pairs_frame, t.parity)
        if not np.isfinite([a, b, tx, ty]).all() or (a == 0.0 and b == 0.0):
            return _Outcome(reason="degenerate star pairs")
        t = Transform(float(a), float(b), float(tx), float(ty), t.parity)
        residual = np.hypot(*(t.apply(pairs_ref) - pairs_frame).T)
        rms = float(np.sqrt(np.mean(residual ** 2)))
        if key == previous:
            break
        previous = key
        # Shrink to a few times the robust scatter (from the median residual length), never
        # below min_radius nor above match_radius.
        sigma = float(np.median(residual)) / 1.1774  # a 2-D Gaussian's median radius
        radius = min(max(4.0 * sigma, options.min_radius), options.match_radius)
    return _Outcome(transform=t, n_matches=len(pairs_ref), rms=rms,
                    pairs=(pairs_ref, pairs_frame), radius=radius)


def _accept(ref: _Stars, frame: _Stars, outcome: _Outcome, options: _Options, trials: int,
            free: int) -> _Outcome:
    """Apply the acceptance rules to a refined outcome (reason set when it fails)."""
    if outcome.transform is None:
        return outcome
    t = outcome.transform
    lo, hi = options.scale_range
    if not lo <= t.scale <= hi:
        outcome.reason = f"fitted scale {t.scale:.4g} outside {lo:g}-{hi:g}"
        outcome.transform = None
        return outcome
    if outcome.n_matches < options.min_matches:
        outcome.reason = (f"only {outcome.n_matches} stars match "
                          f"(min_matches={options.min_matches})")
        outcome.transform = None
        return outcome
    # Chance pairs are counted within the final pairing radius: five times the pairs' scatter
    # (never below min_radius). Pairs that are chance coincidences scatter over the whole radius
    # they were found in, so this does not shrink for them; true pairs shrink it to their
    # centroid noise (the radius of the largest residual would flatter chance pairs instead).
    _, expected = _expected_chance(ref, frame, t, outcome.radius)
    p = _chance_probability(outcome.n_matches - free, expected) * max(trials, 1)
    if p > options.false_alarm:
        outcome.reason = (f"{outcome.n_matches} matched stars could be chance "
                          f"(false-alarm probability {min(p, 1.0):.2g} > {options.false_alarm:g})")
        outcome.transform = None
    return outcome


def _match_previous(ref: _Stars, frame: _Stars, guess: Transform, options: _Options) -> _Outcome:
    """Refine a guessed transform (the previous frame's): a robust shift of the bright stars
    first, then the full refinement."""
    if frame.bright_tree is None or len(ref.bright) < 3:
        return _Outcome(reason="too few stars")
    mapped = guess.apply(ref.bright)
    dist, j = frame.bright_tree.query(mapped, distance_upper_bound=options.guess_radius)
    hit = np.isfinite(dist)
    if np.count_nonzero(hit) < 3:
        return _Outcome(reason="the previous transform finds no stars")
    offset = frame.bright[j[hit]] - mapped[hit]
    shift = np.median(offset, axis=0)
    near = np.hypot(*(offset - shift).T) <= options.match_radius
    if np.count_nonzero(near) < 3:
        return _Outcome(reason="no consistent shift from the previous transform")
    t = Transform(guess.a, guess.b, guess.tx + shift[0], guess.ty + shift[1], guess.parity)
    outcome = _refine(ref, frame, t, options, options.match_radius)
    # The shift was read off the data: count two pairs as free, as the fit's own.
    return _accept(ref, frame, outcome, options, trials=1, free=2)


def _match_triangles(ref: _Stars, frame: _Stars, options: _Options) -> _Outcome:
    if ref.invariant_tree is None or frame.invariant_tree is None:
        return _Outcome(reason="too few stars for a triangle "
                               f"(reference {len(ref.bright)}, frame {len(frame.bright)})")
    pairs = ref.invariant_tree.sparse_distance_matrix(
        frame.invariant_tree, options.invariant_tolerance, output_type="ndarray")
    if len(pairs) == 0:
        return _Outcome(reason="no triangle of the frame matches one of the reference")
    i, k, d = pairs["i"], pairs["j"], pairs["v"]
    ratio = frame.size[k] / ref.size[i]
    lo, hi = options.scale_range
    parity = ref.handedness[i] * frame.handedness[k]
    keep = (ratio >= lo) & (ratio <= hi) & (parity != 0)  # 0: a degenerate (flat) triangle
    if not options.allow_reflection:
        keep &= parity > 0
    i, k, d, parity = i[keep], k[keep], d[keep], parity[keep]
    if len(i) == 0:
        return _Outcome(reason="no triangle of the frame matches one of the reference "
                               "at the allowed scale")
    order = np.argsort(d, kind="stable")[:options.max_candidates]
    i, k, parity = i[order], k[order], parity[order]
    p = ref.bright[ref.triangles[i]]                               # (K, 3, 2)
    q = frame.bright[frame.triangles[k]]
    a, b, tx, ty = _fit_similarity(p, q, parity)
    ok = np.isfinite(a) & np.isfinite(b) & ((a != 0) | (b != 0))
    a, b, tx, ty, parity = a[ok], b[ok], tx[ok], ty[ok], parity[ok]
    trials = len(a)
    if trials == 0:
        return _Outcome(reason="only degenerate triangles")

    # Verification: how many bright reference stars land on bright frame stars.
    best_count, best = -1, None
    chunk = 256
    for start in range(0, trials, chunk):
        sl = slice(start, start + chunk)
        mapped = _apply_many(a[sl], b[sl], tx[sl], ty[sl], parity[sl], ref.bright)
        dist, _ = frame.bright_tree.query(mapped.reshape(-1, 2),
                                          distance_upper_bound=options.match_radius)
        counts = np.isfinite(dist).reshape(mapped.shape[:2]).sum(axis=1)
        top = int(np.argmax(counts))
        if counts[top] > best_count:
            best_count, best = int(counts[top]), start + top
        if best_count >= max(options.min_matches, min(len(ref.bright), len(frame.bright)) // 2):
            break
    t = Transform(float(a[best]), float(b[best]), float(tx[best]), float(ty[best]),
                  int(parity[best]))
    outcome = _refine(ref, frame, t, options, options.match_radius)
    return _accept(ref, frame, outcome, options, trials=trials, free=3)


def _match(ref: _Stars, frame: _Stars, options: _Options, guess: Transform | None,
           expected_matches: int = 0):
    """(outcome, method): the guess first when given, then asterisms.

    A guess that pairs fewer than 60% of `expected_matches` (the previous frame's count) may
    have locked onto something that does not move with the sky (hot pixels, which also match a
    camera turned by 180 degrees), so the asterism search runs too and the better wins.
    """
    if len(frame.xy) == 0:
        return _Outcome(reason="no stars in the frame"), ""
    if len(frame.xy) < 3:
        return _Outcome(reason=f"only {len(frame.xy)} stars in the frame (3 needed)"), ""
    guessed = None
    if guess is not None:
        guessed = _match_previous(ref, frame, guess, options)
        if guessed.transform is not None:
            if guessed.n_matches >= 0.6 * expected_matches:
                return guessed, "previous"
        else:
            guessed = None
    searched = _match_triangles(ref, frame, options)
    if guessed is not None and (searched.transform is None
                                or guessed.n_matches >= searched.n_matches):
        return guessed, "previous"
    return searched, "triangles"


def _options(**kwargs) -> _Options:
    known = set(_Options.__dataclass_fields__)
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise EngineValueError(f"unknown matching option{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(unknown)}; known: {', '.join(sorted(known))}")
    options = _Options(**{k: v for k, v in kwargs.items() if v is not None})
    for name in ("min_side", "min_separation", "invariant_tolerance", "match_radius", "min_radius",
                 "false_alarm", "guess_radius"):
        value = getattr(options, name)
        if isinstance(value, bool) or not (isinstance(value, (int, float, np.floating))
                                           and math.isfinite(value) and value > 0):
            raise EngineValueError(f"{name} must be finite and > 0, got {value!r}")
    for name, least in (("max_bright", 3), ("neighbours", 2), ("min_matches", 3),
                        ("max_candidates", 1)):
        value = getattr(options, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise EngineValueError(f"{name} must be an integer >= {least}, got {value!r}")
    try:
        lo, hi = (float(v) for v in options.scale_range)
    except (TypeError, ValueError):
        raise EngineValueError(f"scale_range must be a pair of numbers, got "
                               f"{options.scale_range!r}") from None
    if not (0.0 < lo <= 1.0 <= hi and math.isfinite(hi)):
        raise EngineValueError(f"scale_range must satisfy 0 < low <= 1 <= high, got {(lo, hi)}")
    if options.min_radius > options.match_radius:
        raise EngineValueError("min_radius must not exceed match_radius")
    return _Options(**{**options.__dict__, "scale_range": (lo, hi)})


_OPTION_DOC = """
    Matching options (keyword-only; the defaults suit a telescope's own frames):

    max_bright : int (40)
        Brightest stars of each list used for asterisms and verification.
    neighbours : int (6)
        Each bright star forms triangles with pairs of its nearest neighbours (below 13 bright
        stars, every triangle is used).
    min_side : float (5 px)
        Triangles with a shorter side are ignored (their ratios are dominated by noise).
    min_separation : float (4 px)
        A star with a brighter one this close is left out (fragments of a saturated star,
        close pairs: they can swap partners between frames).
    invariant_tolerance : float (0.015)
        How closely two triangles' side ratios must agree.
    scale_range : (float, float) ((0.95, 1.05))
        Allowed frame / reference scale.
    match_radius : float (3 px)
        Largest distance between a predicted and a detected position for a pair.
    min_radius : float (0.2 px)
        Smallest radius the refinement shrinks to.
    min_matches : int (4)
        Fewest paired stars for an accepted transform (3 always fit a triangle).
    false_alarm : float (0.01)
        Largest accepted probability that the pairs beyond the proposing triangle are chance
        coincidences, times the number of proposals tried.
    allow_reflection : bool (False)
        Also accept mirror-image transforms (parity -1).
    max_candidates : int (4000)
        Most triangle proposals verified (closest ratios first).
    guess_radius : float (25 px)
        How far stars may have moved from a guessed (the previous frame's) transform.
"""


def match_transform(ref_xy, xy, *, ref_flux=None, flux=None, guess: Transform | None = None,
                    **options) -> Transform:
    """The similarity transform that maps reference star positions onto a frame's.

    Parameters
    ----------
    ref_xy, xy : (n, 2) arrays or star tables
        Reference and frame star positions (x, y). Arrays are taken as ordered brightest first
        unless `ref_flux` / `flux` are given; tables are sorted by their `flux` column and use
        their windowed positions. Rows with non-finite positions are ignored.
    ref_flux, flux : 1-D arrays, optional
        Brightness of each star, to choose the bright stars that form asterisms.
    guess : Transform, optional
        A transform to try first (e.g. a neighbouring frame's); the asterism search runs only
        when it does not verify.
    {options}
    Returns
    -------
    Transform from reference to frame coordinates.

    Raises
    ------
    RegistrationError (a ValueError) when the lists cannot be matched, saying why;
    EngineValueError for malformed inputs or options.
    """
    options = _options(**options)
    ref = _stars_of(ref_xy, ref_flux, options, "reference")
    frame = _stars_of(xy, flux, options, "frame")
    if len(ref.xy) < 3:
        raise RegistrationError(f"the reference has {len(ref.xy)} stars (3 needed)")
    outcome, _ = _match(ref, frame, options, guess)
    if outcome.transform is None:
        raise RegistrationError(f"cannot register: {outcome.reason}")
    return outcome.transform


match_transform.__doc__ = match_transform.__doc__.format(options=_OPTION_DOC)


def fit_transform(ref_xy, xy, *, parity: int = 1) -> tuple[Transform, float]:
    """Least-squares similarity from matched star pairs: ref_xy[i] maps to xy[i].

    For stars already paired (e.g. re-centred at their predicted positions). Returns the
    transform and the rms residual in pixels; at least 2 pairs are needed (3 for a residual).
    """
    p = np.asarray(ref_xy, dtype=np.float64)
    q = np.asarray(xy, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or q.shape != p.shape:
        raise EngineValueError(f"need two (n, 2) arrays of matched positions, got {p.shape} "
                               f"and {q.shape}")
    if len(p) < 2:
        raise RegistrationError(f"{len(p)} matched stars: at least 2 are needed")
    a, b, tx, ty = _fit_similarity(p, q, parity)
    transform = Transform(float(a), float(b), float(tx), float(ty), parity)
    residual = transform.apply(p) - q
    rms = float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1)))) if len(p) > 2 else 0.0
    return transform, rms


def register_frames(reference, frames, *, reference_flux=None, use_previous: bool = True,
                    **options) -> list[Registration]:
    """Register every frame's detections to the reference; failures are flagged, not raised.

    Parameters
    ----------
    reference : (n, 2) array or star table
        The reference stars (brightest first for arrays, or give `reference_flux`).
    frames : sequence of (m, 2) arrays or star tables
        Each frame's detections (brightest first for arrays); an empty one is flagged.
    use_previous : bool
        Try the last registered frame's transform first (fast for slow drifts; a jump or a flip
        falls back to the asterism search).
    {options}
    Returns
    -------
    One `Registration` per frame, in order.
    """
    options = _options(**options)
    ref = _stars_of(reference, reference_flux, options, "reference")
    if len(ref.xy) < 3:
        raise EngineValueError(f"the reference has {len(ref.xy)} stars (3 needed)")
    results = []
    previous, previous_matches = None, 0
    for index, detections in enumerate(frames):
        frame = _stars_of(detections, None, options, f"frame {index}")
        outcome, method = _match(ref, frame, options, previous if use_previous else None,
                                 previous_matches)
        if outcome.transform is None:
            results.append(Registration(index, "failed", outcome.reason or "no match"))
            continue
        previous, previous_matches = outcome.transform, outcome.n_matches
        results.append(Registration(index, "ok", "", outcome.transform, outcome.n_matches,
                                    outcome.rms, method))
    return results


register_frames.__doc__ = register_frames.__doc__.format(options=_OPTION_DOC)


def registrations_table(registrations) -> pa.Table:
    """The per-frame registrations as an Arrow table (transform parameters NaN where failed)."""
    rows = list(registrations)

    def column(getter, kind):
        return pa.array([getter(r) for r in rows], kind)

    def param(name):
        return column(lambda r: getattr(r.transform, name) if r.transform else math.nan,
                      pa.float64())

    return pa.table({
        "frame": column(lambda r: r.index, pa.int64()),
        "status": column(lambda r: r.status, pa.string()),
        "reason": column(lambda r: r.reason, pa.string()),
        "method": column(lambda r: r.method, pa.string()),
        "n_matches": column(lambda r: r.n_matches, pa.int32()),
        "rms": column(lambda r: r.rms, pa.float64()),
        "a": param("a"), "b": param("b"), "tx": param("tx"), "ty": param("ty"),
        "parity": column(lambda r: r.transform.parity if r.transform else 0, pa.int8()),
        "scale": param("scale"), "rotation_deg": param("rotation_deg"),
    })


# ------------------------------------------------------------------------------------------------
# Re-centring
# ------------------------------------------------------------------------------------------------

_OFF_FRAME = np.uint32(MeasurementFlag.OFF_FRAME)
_NEAR_EDGE = np.uint32(MeasurementFlag.NEAR_EDGE)
_CENTROID_FAILED = np.uint32(MeasurementFlag.CENTROID_FAILED)


def _local_background(image: np.ndarray, x: np.ndarray, y: np.ndarray, inner: float,
                      outer: float) -> np.ndarray:
    """Median of the pixels whose centres lie in the annulus [inner, outer] around each star
    (rounded centre); NaN where none is finite."""
    r = int(math.ceil(outer))
    dy, dx = np.mgrid[-r:r + 1, -r:r + 1]
    rr = np.hypot(dx, dy)
    ring = (rr >= inner) & (rr <= outer)
    dx, dy = dx[ring], dy[ring]
    ny, nx = image.shape
    ix = np.rint(x).astype(np.intp)[:, None] + dx[None, :]
    iy = np.rint(y).astype(np.intp)[:, None] + dy[None, :]
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    values = image[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)].astype(np.float64)
    values[~inside] = np.nan
    out = np.full(len(x), np.nan)
    usable = np.isfinite(values).any(axis=1)
    if usable.any():
        out[usable] = np.nanmedian(values[usable], axis=1)
    return out


def recentre(image, x, y, fwhm, *, max_shift: float = 2.0, background=None,
             threads: int | None = None):
    """Re-centre stars near their predicted positions: windowed centroids, bounded.

    Parameters
    ----------
    image : 2-D array
        The frame (calibrated or bias-subtracted). Non-finite pixels are ignored.
    x, y : 1-D arrays
        Predicted positions (e.g. ``transform.apply(reference_xy)``), 0-based.
    fwhm : float or 1-D array
        Star FWHM in pixels (> 0); the Gaussian window has sigma = fwhm / 2.3548.
    max_shift : float
        A star whose centroid moves further than this from its prediction keeps the prediction
        and is flagged CENTROID_FAILED.
    background : None, float, 1-D array (per star) or 2-D array (a map like the image)
        Level under each star. None: the median of the pixels between 2.5 fwhm + 2 and
        2.5 fwhm + 6 px from each prediction (the largest fwhm when it varies).
    threads : int, optional
        Threads for the centroid kernel.

    Returns
    -------
    (x, y, flags): the re-centred positions (the predictions where re-centring failed) and
    uint32 `engine.flags.MeasurementFlag` bits: OFF_FRAME (prediction off the image),
    NEAR_EDGE (window cut by the edge), CENTROID_FAILED (no flux, moved beyond max_shift, or
    did not converge).
    """
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype.kind not in "uif":
        raise EngineValueError(f"image must be a 2-D real array, got shape {image.shape} "
                               f"and dtype {image.dtype}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape:
        raise EngineValueError(f"x and y must be 1-D arrays of one length, got shapes "
                               f"{x.shape} and {y.shape}")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise EngineValueError("predicted positions must be finite")
    fwhm_arr = np.asarray(fwhm, dtype=np.float64)
    if fwhm_arr.ndim > 1 or (fwhm_arr.ndim == 1 and fwhm_arr.shape != x.shape):
        raise EngineValueError("fwhm must be a scalar or one value per star")
    if not (np.isfinite(fwhm_arr).all() and (fwhm_arr > 0).all()):
        raise EngineValueError("fwhm must be finite and > 0")
    n = len(x)
    if background is None:
        width = float(fwhm_arr.max()) if n else 1.0
        inner = 2.5 * width + 2.0
        level = _local_background(image, x, y, inner, inner + 4.0)
        level = np.where(np.isfinite(level), level, 0.0)
    else:
        level = np.asarray(background, dtype=np.float64)
        if level.ndim == 2:
            if level.shape != image.shape:
                raise EngineValueError(f"background map shape {level.shape} differs from the "
                                       f"image's {image.shape}")
            ny, nx = image.shape
            level = level[np.clip(np.rint(y).astype(np.intp), 0, ny - 1),
                          np.clip(np.rint(x).astype(np.intp), 0, nx - 1)]
    xs, ys, status = _centroid.windowed_centroid(
        image, x, y, fwhm_arr / _GAUSSIAN_FWHM_PER_SIGMA, background=level,
        max_shift=max_shift, threads=threads)
    flags = np.zeros(n, dtype=np.uint32)
    flags[(status & _centroid.OFF_IMAGE) != 0] |= _OFF_FRAME
    flags[(status & _centroid.TRUNCATED) != 0] |= _NEAR_EDGE
    failed = (status & (_centroid.NO_FLUX | _centroid.TOO_FAR | _centroid.NOT_CONVERGED)) != 0
    flags[failed] |= _CENTROID_FAILED
    return xs, ys, flags


# ------------------------------------------------------------------------------------------------
# Reference image and target identification
# ------------------------------------------------------------------------------------------------

def stack_reference(images, transforms, shape=None, *, order: int = 1) -> np.ndarray:
    """Median of frames resampled onto the reference grid: a deep, sharp reference image.

    images: sequence of 2-D arrays; transforms: their reference -> frame `Transform`s (None
    entries are skipped); shape: the reference grid (default: the first image's). Pixels that
    no frame covers are NaN. `order` is the spline order of the resampling (1 = bilinear).
    """
    from scipy.ndimage import affine_transform

    images = list(images)
    transforms = list(transforms)
    if len(images) != len(transforms):
        raise EngineValueError(f"{len(images)} images but {len(transforms)} transforms")
    used = [(np.asarray(im, dtype=np.float64), t) for im, t in zip(images, transforms)
            if t is not None]
    if not used:
        raise EngineValueError("no registered frame to stack")
    for im, t in used:
        if im.ndim != 2:
            raise EngineValueError(f"images must be 2-D, got shape {im.shape}")
        if not isinstance(t, Transform):
            raise EngineValueError(f"transforms must be Transform or None, got {type(t)}")
    shape = tuple(int(s) for s in (shape or used[0][0].shape))
    stack = np.empty((len(used),) + shape)
    for k, (im, t) in enumerate(used):
        m = t.matrix
        # affine_transform maps output (row, col) to input (row, col): swap x and y.
        matrix = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]])
        offset = np.array([m[1, 2], m[0, 2]])
        stack[k] = affine_transform(im, matrix, offset, output_shape=shape, order=order,
                                    mode="constant", cval=np.nan)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return np.nanmedian(stack, axis=0)


def identify_target(stars, *, xy=None, radec=None, wcs=None, transform: Transform | None = None,
                    max_distance: float = 5.0) -> int:
    """The star_id (row) of the target in a star table.

    Give either `xy` (a position in some frame, e.g. `--target-xy` in the run's first frame,
    with `transform` that frame's reference -> frame transform; without it, reference
    coordinates) or `radec` (degrees) with the reference's `wcs` (astropy WCS). The nearest
    star within `max_distance` pixels is returned; none raises RegistrationError.
    """
    positions = star_positions(stars)
    if (xy is None) == (radec is None):
        raise EngineValueError("give exactly one of xy and radec")
    if radec is not None:
        if wcs is None:
            raise EngineValueError("radec needs the reference's wcs")
        ra, dec = (float(v) for v in radec)
        px, py = wcs.celestial.all_world2pix([[ra, dec]], 0)[0]
        point = np.array([px, py], dtype=np.float64)
    else:
        point = np.asarray(xy, dtype=np.float64).reshape(2)
        if transform is not None:
            point = transform.inverse().apply(point)
    if not np.isfinite(point).all():
        raise EngineValueError(f"target position is not finite: {point}")
    if len(positions) == 0:
        raise RegistrationError("the star table is empty")
    distance = np.hypot(*(positions - point).T)
    best = int(np.argmin(distance))
    if distance[best] > max_distance:
        raise RegistrationError(f"no star within {max_distance:g} px of the target at "
                                f"({point[0]:.2f}, {point[1]:.2f}); nearest is "
                                f"{distance[best]:.1f} px away")
    if isinstance(stars, pa.Table) and "star_id" in stars.column_names:
        return int(stars.column("star_id")[best].as_py())
    return best


def _tangent_plane(ra, dec, ra0, dec0):
    """Gnomonic projection (standard coordinates xi east, eta north), radians."""
    ra, dec = np.radians(ra), np.radians(dec)
    ra0, dec0 = math.radians(ra0), math.radians(dec0)
    cos_c = math.sin(dec0) * np.sin(dec) + math.cos(dec0) * np.cos(dec) * np.cos(ra - ra0)
    xi = np.cos(dec) * np.sin(ra - ra0) / cos_c
    eta = (math.cos(dec0) * np.sin(dec) - math.sin(dec0) * np.cos(dec) * np.cos(ra - ra0)) / cos_c
    return xi, eta, cos_c


def match_catalogue(stars, ra, dec, *, pointing, pixel_scale: float, catalogue_flux=None,
                    **options):
    """Match a star table to a reference catalogue given the pointing and the pixel scale.

    The catalogue (ra, dec in degrees, brightest first unless `catalogue_flux` is given) is
    projected onto the tangent plane at `pointing` (ra0, dec0 degrees) in pixels of
    `pixel_scale` arcsec, and matched to the stars by asterisms with any rotation, either
    handedness and any offset (the pointing may be off by many pixels).

    Returns (transform, index): the transform from tangent-plane pixels to image pixels, and for
    each star the row of its catalogue counterpart (-1 when none lies within `match_radius`).
    `sky_to_pixels` locates any sky position (the target's) through that transform.
    """
    ra = np.asarray(ra, dtype=np.float64)
    dec = np.asarray(dec, dtype=np.float64)
    if ra.ndim != 1 or ra.shape != dec.shape:
        raise EngineValueError("ra and dec must be 1-D arrays of one length")
    ra0, dec0 = (float(v) for v in pointing)
    scale = float(pixel_scale)
    if not (math.isfinite(scale) and scale > 0):
        raise EngineValueError(f"pixel_scale must be finite and > 0, got {pixel_scale!r}")
    plane = _catalogue_plane(ra, dec, ra0, dec0, scale)
    options.setdefault("allow_reflection", True)
    options.setdefault("scale_range", (0.9, 1.1))
    transform = match_transform(plane, stars, ref_flux=catalogue_flux, **options)
    radius = _options(**options).match_radius
    mapped = transform.apply(plane)
    finite = np.isfinite(mapped).all(axis=1)
    positions = star_positions(stars)
    index = np.full(len(positions), -1, dtype=np.int64)
    if finite.any() and len(positions):
        rows = np.flatnonzero(finite)
        dist, j = cKDTree(mapped[rows]).query(positions, distance_upper_bound=radius)
        hit = np.isfinite(dist)
        index[hit] = rows[j[hit]]
    return transform, index


def _catalogue_plane(ra, dec, ra0, dec0, pixel_scale):
    xi, eta, cos_c = _tangent_plane(ra, dec, ra0, dec0)
    per_pixel = math.radians(pixel_scale / 3600.0)
    plane = np.column_stack([xi / per_pixel, eta / per_pixel])
    plane[cos_c <= 0] = np.nan  # the far hemisphere does not project
    return plane


def sky_to_pixels(transform: Transform, ra, dec, *, pointing, pixel_scale: float) -> np.ndarray:
    """Pixel positions of sky positions through a `match_catalogue` transform."""
    ra0, dec0 = (float(v) for v in pointing)
    plane = _catalogue_plane(np.atleast_1d(np.asarray(ra, dtype=np.float64)),
                             np.atleast_1d(np.asarray(dec, dtype=np.float64)), ra0, dec0,
                             float(pixel_scale))
    return transform.apply(plane)


def register_images(images, reference, *, threshold: float = 5.0, max_stars: int = 300,
                    detect_options: dict | None = None, **options) -> list[Registration]:
    """Detect the stars of each image (`engine.detection.detect_stars`) and register them.

    images: a sequence (or a 3-D cube) of 2-D frames; reference: the reference star table or
    positions. Detection keeps the `max_stars` brightest stars above `threshold` sigma (the
    asterisms use the brightest few dozen; the refinement all of them). An image that detection
    refuses (no usable pixel, no measurable noise) is flagged with the reason, like a frame that
    does not match. Other keywords are `register_frames`' options.
    """
    from engine.detection import detect_stars

    detect_options = dict(detect_options or {})
    detect_options.setdefault("threshold", threshold)
    detect_options.setdefault("max_stars", max_stars)
    detections, refused = [], {}
    for index, image in enumerate(images):
        try:
            detections.append(detect_stars(image, **detect_options))
        except EngineValueError as exc:
            refused[index] = f"detection failed: {exc}"
            detections.append(np.zeros((0, 2)))
    results = register_frames(reference, detections, **options)
    return [Registration(r.index, "failed", refused[r.index]) if r.index in refused else r
            for r in results]
