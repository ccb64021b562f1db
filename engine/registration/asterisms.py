"""Matching two star lists by asterisms, whatever the telescope did between them.

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
   until the pairs stop changing. A match is accepted when at least `min_matches` stars pair up
   and their number passes the same coincidence test.

Before matching, star tables lose the detections whose windowed centroid failed or that touch
the edge (flags CENTROID_FAILED, NEAR_EDGE), and every list loses each star with a brighter one
within `min_separation` (fragments of saturated stars, close pairs).
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
from engine.registration.transform import Transform, _apply_many, _fit_similarity

__all__ = ["match_transform"]


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



def _chance_probability(extra: int, expected: float) -> float:
    """P(at least `extra` chance coincidences) when `expected` are expected (Poisson)."""
    if extra <= 0:
        return 1.0
    if expected <= 0.0:
        return 0.0
    return float(gammainc(extra, expected))



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


