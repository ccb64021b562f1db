"""The sky solution: a celestial WCS for a run's reference stars.

Three ways to a solution, each returning a `SkySolution`:

- `check_wcs`: the header's WCS, kept only when the catalogue's stars land on detected stars
  (a WCS written by a failed or stale solve does not).
- `solve_field`: detected stars against a `ReferenceCatalogue` when the header's pointing is
  rough (off by a field or so), the rotation and handedness unknown, the pixel scale known to
  ~10 % or not at all. The catalogue is projected onto the tangent plane at the pointing in
  pixels of a trial scale and cut into field-sized tiles around the pointing (nearest first);
  each tile's brightest stars are matched to the detections by asterisms
  (`match_transform`, either handedness). The first tile that matches beyond chance seeds the
  refinement: cross-match every detection with the catalogue, fit a TAN WCS by linear least
  squares (CRPIX at the image centre, CRVAL moved to the fitted centre, the CD matrix), shrink
  the pairing radius to a few times the scatter, repeat until the pairs stop changing; then SIP
  terms (order 2-3) when an F-test says the residuals hold distortion (the refinement is
  engine.registration.wcs_fit).
- `solve_from_reference`: no catalogue, but another run already solved: this run's stars are
  matched to that run's (scale ratio from the two pixel scales, any rotation or mirror image) and
  a fresh TAN WCS is fitted to the matched stars' sky positions.

Conventions: xy are 0-based (x = column, y = row), as the star tables give them; WCS pixel
coordinates follow FITS (CRPIX 1-based) and astropy's origin-0 calls are used throughout.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import special
from scipy.spatial import cKDTree

from engine.errors import EngineValueError, RegistrationError, SolveError
from engine.registration.asterisms import match_transform
from engine.registration.transform import Transform
from engine.registration.wcs_fit import (in_field, pair_nearest, refine_wcs, sky_to_pixels,
                                         tangent_degrees)

__all__ = ["SkySolution", "check_wcs", "header_solution", "solve_field",
           "solve_from_reference"]

log = logging.getLogger(__name__)

_ARCSEC_PER_RADIAN = 3600.0 * 180.0 / math.pi
_SCALE_STEP = 1.6            # trial pixel scales when none is known, each covering +-30 %
_MIN_TILE_STARS = 5


@dataclass(frozen=True)
class SkySolution:
    """Where a run's stars lie on the sky.

    wcs: celestial astropy WCS (TAN, TAN-SIP when distortion was fitted), pixel origin 0 for
        the engine's xy. method: 'header', 'catalogue' or 'run <id>'. n_matched: stars paired
        in the final fit; rms_arcsec: their residual. pixel_scale_arcsec: sqrt|det CD|.
    rotation_deg: the angle of north on the image, counter-clockwise from +y. mirrored: True
        when east is counter-clockwise from north on the image (x, y) plane, i.e. the image is
        the sky's mirror image as seen from the ground (det CD > 0).
    catalogue_index: per input star, its row in the catalogue (or the reference run's star
        list), -1 when unmatched. notes: what was tried or assumed.
    """

    wcs: object
    method: str
    n_matched: int
    rms_arcsec: float
    pixel_scale_arcsec: float
    rotation_deg: float
    mirrored: bool
    catalogue_index: np.ndarray = field(repr=False)
    notes: tuple = ()

    def to_header(self):
        """The WCS as FITS header cards (SIP included) that astropy reads back identically."""
        return self.wcs.to_header(relax=True)

    def report(self) -> dict:
        """Plain values for report.json."""
        ra, dec = (float(v) for v in self.wcs.wcs.crval)
        return {"method": self.method, "n_matched": int(self.n_matched),
                "rms_arcsec": float(self.rms_arcsec),
                "pixel_scale_arcsec": float(self.pixel_scale_arcsec),
                "rotation_deg": float(self.rotation_deg), "mirrored": bool(self.mirrored),
                "crval_deg": [ra, dec], "sip_order": _sip_order(self.wcs),
                "notes": list(self.notes)}


def _sip_order(wcs) -> int:
    return int(wcs.sip.a_order) if wcs.sip is not None else 0


def _orientation(wcs) -> tuple[float, float, bool]:
    """(pixel scale arcsec, rotation of north from +y counter-clockwise deg, mirrored)."""
    cd = wcs.celestial.pixel_scale_matrix
    determinant = float(np.linalg.det(cd))
    north = np.linalg.solve(cd, [0.0, 1.0])           # pixel step toward increasing eta
    rotation = math.degrees(math.atan2(-north[0], north[1]))
    return math.sqrt(abs(determinant)) * 3600.0, rotation, determinant > 0


def _solution(wcs, method, n_stars, star, cat, residual, notes) -> SkySolution:
    scale, rotation, mirrored = _orientation(wcs)
    index = np.full(n_stars, -1, dtype=np.int64)
    index[star] = cat
    rms = float(np.sqrt(np.mean(np.sum(residual ** 2, axis=1)))) * scale if len(star) else math.nan
    return SkySolution(wcs=wcs, method=method, n_matched=len(star), rms_arcsec=rms,
                       pixel_scale_arcsec=scale, rotation_deg=rotation, mirrored=mirrored,
                       catalogue_index=index, notes=tuple(notes))


# ------------------------------------------------------------------------------------------------
# Inputs
# ------------------------------------------------------------------------------------------------

def _stars(xy, flux, shape) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    xy = np.asarray(xy, dtype=np.float64)
    if xy.ndim != 2 or xy.shape[1] != 2:
        raise EngineValueError(f"xy must be an (n, 2) array of star positions, got {xy.shape}")
    if flux is None:
        flux = -np.arange(len(xy), dtype=np.float64)   # given brightest first
    flux = np.asarray(flux, dtype=np.float64)
    if flux.shape != (len(xy),):
        raise EngineValueError(f"flux must have one value per star ({len(xy)}), got "
                               f"shape {flux.shape}")
    try:
        rows, columns = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise EngineValueError(f"shape must be (rows, columns), got {shape!r}") from None
    if rows < 1 or columns < 1:
        raise EngineValueError(f"shape must be positive, got {shape!r}")
    return xy, flux, (rows, columns)


def _brightest(xy, flux, count: int) -> np.ndarray:
    """Rows of the `count` brightest stars with finite positions, brightest first."""
    usable = np.flatnonzero(np.isfinite(xy).all(axis=1))
    order = usable[np.argsort(-np.nan_to_num(flux[usable], nan=-np.inf), kind="stable")]
    return order[:count]


def _field_radius_deg(shape, scale_arcsec: float) -> float:
    return 0.5 * math.hypot(*shape) * scale_arcsec / 3600.0


# ------------------------------------------------------------------------------------------------
# Catalogue solve
# ------------------------------------------------------------------------------------------------

def _trial_scales(pixel_scale, scale_tolerance, scale_limits):
    """(scale, scale_range) pairs to try: the known scale, or geometric steps over the limits."""
    if pixel_scale is not None:
        scale = float(pixel_scale)
        if not (math.isfinite(scale) and scale > 0):
            raise EngineValueError(f"pixel_scale must be finite and > 0, got {pixel_scale!r}")
        tolerance = float(scale_tolerance)
        if not 0 < tolerance < 1:
            raise EngineValueError(f"scale_tolerance must be in (0, 1), got {scale_tolerance!r}")
        return [(scale, (1.0 / (1.0 + tolerance), 1.0 + tolerance))]
    low, high = (float(v) for v in scale_limits)
    if not 0 < low < high:
        raise EngineValueError(f"scale_limits must be 0 < low < high, got {scale_limits!r}")
    steps = max(int(math.ceil(math.log(high / low) / math.log(_SCALE_STEP))), 0)
    half = math.sqrt(_SCALE_STEP) * 1.03   # neighbouring ranges overlap by 3 %
    return [(low * _SCALE_STEP ** k, (1.0 / half, half)) for k in range(steps + 1)]


def _tiles(centre_tree, shape, scale, search_arcsec):
    """Tile centres (arcsec on the tangent plane) a half field apart within the search radius,
    nearest the pointing first, keeping those with enough catalogue stars nearby."""
    step = 0.5 * min(shape) * scale
    count = int(math.ceil(search_arcsec / step))
    grid = np.arange(-count, count + 1) * step
    centres = np.stack(np.meshgrid(grid, grid), axis=-1).reshape(-1, 2)
    distance = np.hypot(*centres.T)
    centres = centres[distance <= search_arcsec + 1e-9]
    centres = centres[np.argsort(np.hypot(*centres.T), kind="stable")]
    radius = 0.5 * math.hypot(*shape) * scale
    counts = np.array([len(r) for r in centre_tree.query_ball_point(centres, radius)])
    return centres[counts >= _MIN_TILE_STARS], radius


def _default_search(shape, scale: float) -> float:
    """Search radius (arcsec): three fields or 12 arcmin, whichever is less, but at least one
    field width."""
    width = max(shape) * scale
    return max(width, min(12.0 * 60.0, 3.0 * width))


def solve_field(xy, flux, catalogue, *, pointing=None, pixel_scale=None, shape,
                scale_tolerance: float = 0.1, scale_limits=(0.1, 10.0),
                search_radius_arcmin: float | None = None, sip_order: int | None = None,
                max_stars: int = 200, max_catalogue: int = 60, min_matches: int = 6,
                match_radius: float = 3.0) -> SkySolution:
    """Place detected stars on the sky by matching them to a reference catalogue.

    Parameters
    ----------
    xy : (n, 2) array
        Detected star positions, 0-based (x = column, y = row).
    flux : (n,) array or None
        Their brightness (None: xy is brightest first).
    catalogue : engine.io.catalogue.ReferenceCatalogue
    pointing : (ra, dec) degrees, optional
        The header's pointing; None: the catalogue's centre, searching all of it.
    pixel_scale : float, optional
        Arcsec per pixel from the header, good to `scale_tolerance` (relative); None searches
        `scale_limits` in steps of x1.6.
    shape : (rows, columns)
        The image's shape (the field's extent and the tangent point's pixel).
    search_radius_arcmin : float, optional
        How far the true field centre may lie from the pointing; default three field widths,
        at most 12 arcmin, at least one field width.
    sip_order : int, optional
        0: TAN only; 2 or 3: SIP terms of that order; None: SIP when the residuals ask for it.
    max_stars, max_catalogue : int
        Brightest detections used for the asterism search, and brightest catalogue stars per
        field-sized tile (the refinement uses every star).
    min_matches : int
        Fewest stars paired in the final fit.
    match_radius : float
        Pairing radius (px) of the asterism match and the first cross-match.

    Raises
    ------
    SolveError when no tile of the catalogue matches the stars beyond chance, saying what was
    searched.
    """
    from engine.io.catalogue import ReferenceCatalogue

    if not isinstance(catalogue, ReferenceCatalogue):
        raise EngineValueError(f"catalogue must be a ReferenceCatalogue, got "
                               f"{type(catalogue).__name__}")
    xy, flux, shape = _stars(xy, flux, shape)
    bright = _brightest(xy, flux, max_stars)
    if len(bright) < max(min_matches, 3):
        raise SolveError(f"only {len(bright)} usable stars detected (need {min_matches})")
    pointing, search_default = _pointing(catalogue, pointing)
    plane = tangent_degrees(catalogue.ra, catalogue.dec, pointing) * 3600.0   # arcsec
    on_plane = np.flatnonzero(np.isfinite(plane).all(axis=1))
    if len(on_plane) < min_matches:
        raise SolveError("the catalogue has no stars on the pointing's side of the sky")
    brightness = -np.nan_to_num(catalogue.mag[on_plane], nan=np.inf)
    by_brightness = on_plane[np.argsort(-brightness, kind="stable")]
    tree = cKDTree(plane[by_brightness])
    trials = []
    for scale, scale_range in _trial_scales(pixel_scale, scale_tolerance, scale_limits):
        if search_radius_arcmin is not None:
            search = float(search_radius_arcmin) * 60.0
        else:
            search = search_default if search_default is not None else _default_search(shape, scale)
        centres, radius = _tiles(tree, shape, scale, search)
        trials.extend((math.hypot(*c) / (max(shape) * scale), scale, scale_range, c, radius)
                      for c in centres)
    if not trials:
        raise SolveError(f"no part of the catalogue ({len(catalogue)} stars) lies within the "
                         f"search radius of the pointing ({pointing[0]:.4f}, {pointing[1]:.4f})")
    trials.sort(key=lambda t: (round(t[0], 6), t[1]))  # nearest (in fields) first
    solution = _search(xy, flux, bright, plane, by_brightness, tree, trials, catalogue,
                       shape=shape, max_catalogue=max_catalogue, min_matches=min_matches,
                       match_radius=match_radius, sip_order=sip_order)
    if solution is None:
        scales = sorted({t[1] for t in trials})
        raise SolveError(f"no match between {len(bright)} stars and the catalogue in "
                         f"{len(trials)} tiles around ({pointing[0]:.4f}, {pointing[1]:.4f}) "
                         f"at pixel scales {scales[0]:.3g}-{scales[-1]:.3g} arcsec/px")
    return solution


def _pointing(catalogue, pointing):
    """(pointing, search radius arcsec or None): the given pointing, or the catalogue's centre
    and its extent."""
    if pointing is not None:
        ra, dec = (float(v) for v in pointing)
        if not (math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90):
            raise EngineValueError(f"pointing must be finite (ra, dec) degrees, got {pointing!r}")
        return (ra % 360.0, dec), None
    vectors = np.column_stack([np.cos(np.radians(catalogue.dec)) * np.cos(np.radians(catalogue.ra)),
                               np.cos(np.radians(catalogue.dec)) * np.sin(np.radians(catalogue.ra)),
                               np.sin(np.radians(catalogue.dec))])
    mean = vectors.mean(axis=0)
    mean /= np.linalg.norm(mean)
    ra = math.degrees(math.atan2(mean[1], mean[0])) % 360.0
    dec = math.degrees(math.asin(mean[2]))
    extent = math.degrees(math.acos(float(np.clip((vectors @ mean).min(), -1, 1))))
    return (ra, dec), extent * 3600.0


def _search(xy, flux, bright, plane, by_brightness, tree, trials, catalogue, *, shape,
            max_catalogue, min_matches, match_radius, sip_order):
    """The first trial tile whose asterisms match and whose refinement holds, as a solution."""
    # Every tile is a chance to be fooled: share the false-alarm budget among them.
    false_alarm = 0.01 / len(trials)
    for _, scale, scale_range, centre, radius in trials:
        rows = np.sort(tree.query_ball_point(centre, radius))[:max_catalogue]
        if len(rows) < _MIN_TILE_STARS:
            continue
        tile = by_brightness[rows]
        tile_xy = plane[tile] / scale
        try:
            transform = match_transform(tile_xy, xy[bright], flux=flux[bright],
                                        allow_reflection=True, scale_range=scale_range,
                                        match_radius=match_radius, min_matches=min_matches,
                                        false_alarm=false_alarm, max_bright=50)
        except RegistrationError:
            continue
        predicted = np.full((len(catalogue), 2), np.nan)
        predicted[by_brightness] = transform.apply(plane[by_brightness] / scale)
        try:
            wcs, star, cat, residual, notes = refine_wcs(
                xy, catalogue.ra, catalogue.dec, shape, predicted, radius=match_radius,
                sip_order=sip_order, min_matches=min_matches)
        except SolveError as exc:
            log.debug("tile at %s matched but did not refine: %s", centre, exc)
            continue
        notes.insert(0, f"matched a catalogue tile {math.hypot(*centre) / 60:.1f} arcmin from "
                        f"the pointing at a trial scale of {scale:.3g} arcsec/px")
        return _solution(wcs, "catalogue", len(xy), star, cat, residual, notes)
    return None


# ------------------------------------------------------------------------------------------------
# Header WCS check
# ------------------------------------------------------------------------------------------------

def check_wcs(wcs, xy, flux, catalogue, *, shape, match_radius: float = 3.0,
              min_matches: int = 6, max_stars: int = 200, reasons: list | None = None):
    """The header's WCS as a `SkySolution` when the catalogue agrees with it, else None.

    The catalogue stars the WCS puts inside the image are paired with the `max_stars`
    brightest detections within `match_radius` px. The WCS is accepted when at least
    `min_matches` pair up and that many are not a chance coincidence (Poisson, at the
    detections' density). When it is refused, the reason is appended to `reasons` (if given)
    and logged.
    """
    xy, flux, shape = _stars(xy, flux, shape)

    def refuse(reason: str):
        log.info("header WCS refused: %s", reason)
        if reasons is not None:
            reasons.append(reason)
        return None

    if wcs is None or not getattr(wcs, "has_celestial", False):
        return refuse("no celestial WCS")
    wcs = wcs.celestial
    rows, columns = shape
    centre = wcs.all_pix2world([[(columns - 1) / 2.0, (rows - 1) / 2.0]], 0)[0]
    scale = math.sqrt(abs(np.linalg.det(wcs.pixel_scale_matrix))) * 3600.0
    near = np.flatnonzero(np.isfinite(tangent_degrees(catalogue.ra, catalogue.dec, centre))
                          .all(axis=1) & (_separation_deg(catalogue, centre)
                                          <= 1.5 * _field_radius_deg(shape, scale)))
    predicted = np.full((len(catalogue), 2), np.nan)
    if len(near):
        predicted[near] = sky_to_pixels(wcs, catalogue.ra[near], catalogue.dec[near])
    inside = np.flatnonzero(in_field(predicted, shape, 0.0))
    bright = _brightest(xy, flux, max_stars)
    if len(inside) == 0:
        return refuse("no catalogue star falls inside the image")
    if len(bright) < min_matches:
        return refuse(f"only {len(bright)} usable stars detected")
    sub = np.full((len(catalogue), 2), np.nan)
    sub[inside] = predicted[inside]
    star, cat = pair_nearest(cKDTree(xy[bright]), sub, match_radius)
    expected = len(inside) * len(bright) / (rows * columns) * math.pi * match_radius ** 2
    # P(at least len(star) chance pairs): scipy.stats.poisson.sf, without scipy.stats.
    chance = float(special.pdtrc(len(star) - 1, expected)) if len(star) else 1.0
    if len(star) < min_matches or chance > 1e-3:
        return refuse(f"{len(star)} of {len(bright)} stars lie within {match_radius:g} px of a "
                      f"catalogue star ({expected:.1f} expected by chance)")
    residual = xy[bright][star] - predicted[cat]
    return _solution(wcs, "header", len(xy), bright[star], cat, residual,
                     [f"{len(star)} stars within {match_radius:g} px of the catalogue"])


def header_solution(wcs, n_stars: int) -> SkySolution:
    """The header's WCS taken as it is, for runs with nothing to check it against (no
    catalogue, no other run): no stars matched, rms unknown."""
    empty = np.zeros(0, dtype=np.intp)
    return _solution(wcs.celestial, "header", n_stars, empty, empty, np.zeros((0, 2)),
                     ["header WCS, not checked (no catalogue)"])


def _separation_deg(catalogue, centre) -> np.ndarray:
    ra, dec = np.radians(catalogue.ra), np.radians(catalogue.dec)
    ra0, dec0 = np.radians(centre)
    cos_d = np.sin(dec) * math.sin(dec0) + np.cos(dec) * math.cos(dec0) * np.cos(ra - ra0)
    return np.degrees(np.arccos(np.clip(cos_d, -1.0, 1.0)))


# ------------------------------------------------------------------------------------------------
# Solve from another run
# ------------------------------------------------------------------------------------------------

def solve_from_reference(xy, flux, reference_xy, reference_flux, reference_wcs, *,
                         scale_ratio: float | None = None, shape, reference_run: str = "",
                         scale_tolerance: float = 0.1, min_matches: int = 6,
                         match_radius: float = 3.0, sip_order: int | None = 0) -> SkySolution:
    """A solution from an already solved run: match its stars to this run's, then fit a TAN WCS
    to this run's positions of the matched stars and their sky positions in that run's WCS.

    scale_ratio: this run's pixels per reference pixel (the reference's pixel scale over this
    run's), known to `scale_tolerance`; None allows 0.5-2. Any rotation and mirror image are
    allowed. reference_run names the run in `method` ('run <id>'). catalogue_index holds, per
    star, the row of its reference star (-1 when unmatched).
    """
    xy, flux, shape = _stars(xy, flux, shape)
    reference_xy, reference_flux, _ = _stars(reference_xy, reference_flux, shape)
    if scale_ratio is None:
        ratio, scale_range = 1.0, (0.5, 2.0)
    else:
        ratio = float(scale_ratio)
        if not (math.isfinite(ratio) and ratio > 0):
            raise EngineValueError(f"scale_ratio must be finite and > 0, got {scale_ratio!r}")
        scale_range = (1.0 / (1.0 + scale_tolerance), 1.0 + scale_tolerance)
    try:
        transform = match_transform(reference_xy * ratio, xy, ref_flux=reference_flux,
                                    flux=flux, allow_reflection=True, scale_range=scale_range,
                                    match_radius=match_radius, min_matches=min_matches)
    except RegistrationError as exc:
        raise SolveError(f"this run's stars do not match run {reference_run or '(reference)'}'s: "
                         f"{exc}") from None
    transform = transform.compose(Transform(ratio, 0.0, 0.0, 0.0))
    sky = reference_wcs.celestial.all_pix2world(reference_xy, 0)
    wcs, star, cat, residual, notes = refine_wcs(
        xy, sky[:, 0], sky[:, 1], shape, transform.apply(reference_xy), radius=match_radius,
        sip_order=sip_order, min_matches=min_matches)
    method = f"run {reference_run}" if reference_run else "run"
    notes.insert(0, f"matched {len(star)} stars of run {reference_run or '(reference)'} "
                    f"(scale {transform.scale:.4g}, rotation {transform.rotation_deg:.2f} deg, "
                    f"{'mirrored' if transform.parity < 0 else 'not mirrored'})")
    return _solution(wcs, method, len(xy), star, cat, residual, notes)
