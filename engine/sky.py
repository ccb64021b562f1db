"""The sky stage: every run's reference frame on the sky, its target found by RA/Dec, and one
identity for each star across the runs of a network.

For each run (after its photometry has fixed the reference frame and its star table), the sky
solution is, in order of preference:

1. the reference frame's header WCS, when ingest found it valid (observatory failure markers and
   degenerate matrices are refused there) and, with a catalogue, when the detected stars land on
   catalogue stars (`check_wcs`);
2. with a catalogue, a solve from the header pointing and pixel scale (`solve_field`: a pointing
   off by a good part of the field, any rotation, a mirror image, the scale within +-10 % or
   searched when the header gives none);
3. without one, a match of the run's stars to a solved run's (`solve_from_reference`, the scale
   ratio from the two header pixel scales): one site with a WCS anchors the others.

Without a catalogue, the header WCS of two or more runs are checked against each other: each
pair whose fields overlap is judged by whether their stars land on each other's on the sky
(`header_agreement_arcsec`). A header WCS that disagrees with more runs than it agrees with, one
of them a run in good standing (agreeing with at least as many as it disagrees with), is refused
and the run is solved from another run as in 3. Two runs that only disagree with each other are
both kept, with a note: nothing says which is right.

`--catalogue gaia` fetches Gaia DR3 for the runs' fields instead of reading a file:
`catalogue_fields` gives each run's cone (header pointing, field size plus a margin for the
pointing error) and `fetch_field_catalogue` fetches or reads from the cache.

The target is then the star nearest its RA/Dec, or a pixel position given per run or site, within
a tolerance that follows the run's FWHM. One `--target-xy` belongs to the night's first run; a
run whose target is still unknown finds it by matching its stars to a run whose target is known
(pixels to pixels: a multi-night series from one telescope needs no sky solution). Stars of all
runs that fall within `match_radius_arcsec` of each other share one `star_id` (the catalogue's id
when the catalogue has them). A run that cannot be solved or whose target cannot be found is
reported and skipped; the others go on.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from engine.errors import EngineError
from engine.settings.sky import SkyConfig

__all__ = ["RunSky", "RunStars", "catalogue_fields", "fetch_field_catalogue", "locate_runs",
           "sky_star_columns"]

log = logging.getLogger("engine.sky")


@dataclass
class RunSky:
    """One run's place on the sky."""

    run_id: str
    solution: object | None = None     # engine.registration.solve.SkySolution
    target: int | None = None          # row of the star table
    skipped: str | None = None         # why the run cannot go on (None when it can)
    notes: list[str] = field(default_factory=list)

    def report(self) -> dict:
        out = {"solution": self.solution.report() if self.solution is not None else None,
               "target": self.target, "notes": list(self.notes)}
        if self.skipped:
            out["skipped"] = self.skipped
        return out


@dataclass
class RunStars:
    """What the sky stage needs of one measured run."""

    run_id: str
    stars: pa.Table              # star, x, y (reference frame of the calibrated cube), flux, fwhm
    frames: pa.Table             # the run's light frames in cube order (frames.parquet rows)
    reference_frame: int
    fwhm: float
    first_transform: object | None  # reference -> first frame Transform, None if unregistered

    def xy(self) -> np.ndarray:
        return np.column_stack([self.stars.column("x").to_numpy(zero_copy_only=False),
                                self.stars.column("y").to_numpy(zero_copy_only=False)])

    def flux(self) -> np.ndarray:
        return np.asarray(self.stars.column("flux").to_numpy(zero_copy_only=False), dtype=float)

    def value(self, name: str, row: int | None = None):
        if name not in self.frames.column_names or self.frames.num_rows == 0:
            return None
        row = self.reference_frame if row is None else row
        return self.frames.column(name)[min(row, self.frames.num_rows - 1)].as_py()

    def shape(self) -> tuple[int, int]:
        shape = self.value("shape")
        trim = self.value("trim_section")
        if trim:
            return (int(trim[1] - trim[0]), int(trim[3] - trim[2]))
        return (int(shape[0]), int(shape[1])) if shape else (0, 0)


def _header_wcs(run: RunStars):
    """The reference frame's header WCS moved onto the calibrated (trimmed) grid, or None."""
    text = run.value("wcs")
    if not text:
        return None
    from astropy.io.fits import Header
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        wcs = WCS(Header.fromstring(text)).celestial
    trim = run.value("trim_section")
    if trim:  # (y0, y1, x0, x1): the trimmed grid starts at (x0, y0) of the stored one
        wcs = wcs.deepcopy()
        wcs.wcs.crpix = [wcs.wcs.crpix[0] - trim[2], wcs.wcs.crpix[1] - trim[0]]
    return wcs


def _solve_run(run: RunStars, catalogue, config: SkyConfig, notes: list[str]):
    """A run's sky solution from its own header or the catalogue, or None (notes say why)."""
    from engine.registration.solve import check_wcs, header_solution, solve_field

    wcs = _header_wcs(run)
    xy, flux, shape = run.xy(), run.flux(), run.shape()
    if wcs is not None:
        if catalogue is None:
            return header_solution(wcs, len(xy))
        checked = check_wcs(wcs, xy, flux, catalogue, shape=shape, reasons=notes)
        if checked is not None:
            return checked
        notes.append("the header WCS does not put the detected stars on catalogue stars: "
                     "solved from the catalogue instead")
    if catalogue is None:
        return None
    ra, dec = run.value("ra_deg"), run.value("dec_deg")
    pointing = (ra, dec) if ra is not None and dec is not None else None
    if pointing is None and wcs is not None:
        centre = wcs.pixel_to_world_values((shape[1] - 1) / 2.0, (shape[0] - 1) / 2.0)
        pointing = (float(centre[0]), float(centre[1]))
    if pointing is None:
        notes.append("no header pointing (RA/DEC, OBJCTRA/OBJCTDEC, ...) to solve from")
        return None
    scale = run.value("pixel_scale_arcsec")
    try:
        return solve_field(xy, flux, catalogue, pointing=pointing, pixel_scale=scale,
                           shape=shape, scale_tolerance=config.scale_tolerance)
    except EngineError as exc:
        notes.append(f"no sky solution from the catalogue: {exc}")
        return None


#: Two runs' header WCS are judged only where each sees this many stars in the other's field.
_MIN_SHARED_STARS = 6
#: ... and agree when this fraction of the fewer stars has a partner within the distance.
_AGREEING_FRACTION = 0.3


def _sky_points(run: RunStars, wcs):
    """The run's stars as unit vectors on the sky through `wcs` (rows of non-finite ones NaN)."""
    xy = run.xy()
    ra, dec = wcs.pixel_to_world_values(xy[:, 0], xy[:, 1])
    return _unit_vectors(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))


def _inside(run: RunStars, wcs, points) -> np.ndarray:
    """Which sky points fall on the run's image through its WCS."""
    ra = np.degrees(np.arctan2(points[:, 1], points[:, 0])) % 360.0
    dec = np.degrees(np.arcsin(np.clip(points[:, 2], -1.0, 1.0)))
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # points behind the tangent plane
        x, y = (np.asarray(v, dtype=float) for v in wcs.world_to_pixel_values(ra, dec))
    rows, columns = run.shape()
    return (x >= -0.5) & (x <= columns - 0.5) & (y >= -0.5) & (y <= rows - 0.5)


def _headers_agree(first, second, config: SkyConfig):
    """(verdict, why) for two runs' header WCS: True when their stars land on each other's on
    the sky, False when not, None when their fields share too few stars to judge."""
    from scipy.spatial import cKDTree

    (run_a, solution_a), (run_b, solution_b) = first, second
    points_a, points_b = _sky_points(run_a, solution_a.wcs), _sky_points(run_b, solution_b.wcs)
    shared_a = points_a[_inside(run_b, solution_b.wcs, points_a)]
    shared_b = points_b[_inside(run_a, solution_a.wcs, points_b)]
    fewer = min(len(shared_a), len(shared_b))
    if fewer < _MIN_SHARED_STARS:
        return None, f"{fewer} stars in both fields"
    coarser = max(solution_a.pixel_scale_arcsec, solution_b.pixel_scale_arcsec)
    radius_arcsec = max(config.header_agreement_arcsec, 2.0 * coarser)
    chord = 2.0 * math.sin(math.radians(radius_arcsec / 3600.0) / 2.0)
    distance, _ = cKDTree(shared_b).query(shared_a, distance_upper_bound=chord)
    matched = int(np.isfinite(distance).sum())
    # Chance pairs at b's star density in the shared area (a's field times the fraction of
    # a's stars in it): crowded fields make many.
    rows, columns = run_a.shape()
    field_arcsec2 = rows * columns * solution_a.pixel_scale_arcsec ** 2
    chance = len(points_a) * len(shared_b) * math.pi * radius_arcsec ** 2 / field_arcsec2
    why = (f"{matched} of {len(shared_a)} stars within {radius_arcsec:.1f} arcsec "
           f"({chance:.1f} by chance)")
    agree = matched >= max(_MIN_SHARED_STARS, _AGREEING_FRACTION * fewer, 3.0 * chance)
    return agree, why


def _cross_check_headers(header_runs, skies: dict, config: SkyConfig) -> set[str]:
    """Run ids whose header WCS is refused by the other runs' (see the module docstring); the
    runs' notes say what each comparison found."""
    agree = {run.run_id: [] for run, _ in header_runs}
    disagree = {run.run_id: [] for run, _ in header_runs}
    for i, first in enumerate(header_runs):
        for second in header_runs[i + 1:]:
            verdict, why = _headers_agree(first, second, config)
            a, b = first[0].run_id, second[0].run_id
            if verdict is None:
                continue
            (agree if verdict else disagree)[a].append(b)
            (agree if verdict else disagree)[b].append(a)
            word = "agrees" if verdict else "disagrees"
            skies[a].notes.append(f"header WCS {word} with run {b}'s: {why}")
            skies[b].notes.append(f"header WCS {word} with run {a}'s: {why}")
    good = {r for r in agree if agree[r] and len(agree[r]) >= len(disagree[r])}
    refused = {r for r in agree if len(disagree[r]) > len(agree[r])
               and any(other in good for other in disagree[r])}
    for run_id in sorted(refused):
        skies[run_id].notes.append(
            f"header WCS refused: it disagrees with runs {', '.join(disagree[run_id])} and "
            f"agrees with {len(agree[run_id])}; solved from another run instead")
        log.warning("run %s: header WCS refused (it disagrees with the other runs')", run_id)
    for run_id in sorted(set(agree) - refused - good):
        if disagree[run_id]:
            log.warning("run %s: header WCS disagrees with runs %s; kept, nothing says which "
                        "is right", run_id, ", ".join(disagree[run_id]))
    return refused


def _anchor(run: RunStars, anchors: list[tuple[RunStars, object]], notes: list[str]):
    """Solve a run by matching its stars to an already solved run's (best anchors first)."""
    from engine.registration.solve import solve_from_reference

    mine = run.value("pixel_scale_arcsec")
    for other, solution in anchors:
        theirs = solution.pixel_scale_arcsec
        # This run's pixels per pixel of the solved run.
        ratio = theirs / mine if mine and theirs else None
        try:
            solved = solve_from_reference(run.xy(), run.flux(), other.xy(), other.flux(),
                                          solution.wcs, scale_ratio=ratio, shape=run.shape(),
                                          reference_run=other.run_id)
        except EngineError as exc:
            notes.append(f"not matched to run {other.run_id}: {exc}")
            continue
        return solved
    return None


def _start_time(run: RunStars) -> float:
    value = run.value("jd_utc_mid", 0)
    return float(value) if value is not None else math.inf


def _target_from_runs(run: RunStars, found: list[RunStars], skies: dict, config: SkyConfig):
    """The target's row found by matching the run's stars to a run whose target is known
    (pixels to pixels, any rotation or mirror image, the scale from the header pixel scales):
    (row, why) or (None, why)."""
    from engine.registration import match_transform

    mine = run.value("pixel_scale_arcsec")
    why = []
    for other in found:
        theirs = other.value("pixel_scale_arcsec")
        ratio = theirs / mine if mine and theirs else 1.0
        try:
            transform = match_transform(other.xy() * ratio, run.xy(), ref_flux=other.flux(),
                                        flux=run.flux(), allow_reflection=True,
                                        scale_range=(0.9, 1.1) if mine and theirs else (0.5, 2.0),
                                        min_matches=6)
        except EngineError as exc:
            why.append(f"{other.run_id}: {exc}")
            continue
        point = transform.apply(other.xy()[skies[other.run_id].target] * ratio)
        distance = np.hypot(*(run.xy() - point).T)
        best = int(np.argmin(distance))
        fwhm = run.fwhm if math.isfinite(run.fwhm) and run.fwhm > 0 else 3.0
        tolerance = config.target_tolerance_fwhm * fwhm
        if distance[best] <= tolerance:
            return best, (f"target found by matching the stars of run {other.run_id} (whose "
                          f"target is known), {distance[best]:.2f} px from the prediction")
        why.append(f"{other.run_id}: no star within {tolerance:.1f} px of the target's "
                   f"matched position (nearest {distance[best]:.1f} px)")
    return None, "target not found from the other runs (" + "; ".join(why) + ")"


def _target(run: RunStars, sky: RunSky, target_radec, given_xy, config: SkyConfig):
    """The target's row in the run's star table (sky.target), or the reason it is not found."""
    xy = run.xy()
    if len(xy) == 0:
        return None, "the run has no stars"
    if given_xy is not None:
        if run.first_transform is None:
            return None, "the first frame is not registered: its target position cannot be placed"
        x, y = (float(v) for v in given_xy)
        how = f"pixel ({x:.1f}, {y:.1f}) in the first frame"
        trim = run.value("trim_section", 0)
        if trim:  # given on the stored frame; the transforms live on the trimmed grid
            x, y = x - trim[2], y - trim[0]
        point = run.first_transform.inverse().apply(np.asarray([[x, y]]))[0]
        rms = 0.0
    elif target_radec is not None and sky.solution is not None:
        x, y = sky.solution.wcs.world_to_pixel_values(*target_radec)
        point = np.array([float(x), float(y)])
        how = f"RA {target_radec[0]:.5f}, Dec {target_radec[1]:+.5f} deg"
        rms_arcsec = sky.solution.rms_arcsec
        rms = (rms_arcsec / sky.solution.pixel_scale_arcsec
               if rms_arcsec is not None and math.isfinite(rms_arcsec) else 0.0)
    elif target_radec is None:
        return None, "no target: give --target-ra/--target-dec, or a pixel position"
    else:
        return None, "no sky solution, and no target pixel position for this run or its site"
    if not np.isfinite(point).all():
        return None, f"the target ({how}) does not project onto the frame"
    fwhm = run.fwhm if math.isfinite(run.fwhm) and run.fwhm > 0 else 3.0
    tolerance = config.target_tolerance_fwhm * fwhm + 3.0 * rms
    distance = np.hypot(xy[:, 0] - point[0], xy[:, 1] - point[1])
    best = int(np.argmin(distance))
    if distance[best] > tolerance:
        return None, (f"no star within {tolerance:.1f} px of the target ({how}) at "
                      f"({point[0]:.1f}, {point[1]:.1f}); the nearest is {distance[best]:.1f} px "
                      "away")
    return best, f"target found from {how}, {distance[best]:.2f} px from the prediction"


def locate_runs(runs: list[RunStars], *, catalogue=None, target_radec=None, target_xy=None,
                config: SkyConfig | None = None) -> dict[str, RunSky]:
    """Sky solutions and targets of a network's runs (see the module docstring).

    target_radec : (ra, dec) degrees, or None. target_xy : one (x, y) in the first run's first
    frame (`--target-xy`; the first run in time), a dict run_id -> (x, y), or None;
    `config.target_xy` adds positions per run or site. Pixel positions win over RA/Dec for the
    runs that have one; runs left without a target match their stars to a run that has one.
    """
    config = SkyConfig() if config is None else config
    skies = {run.run_id: RunSky(run.run_id) for run in runs}
    _solve_runs(runs, skies, catalogue, config)
    first = min(runs, key=_start_time) if runs else None
    for run in runs:
        sky = skies[run.run_id]
        sky.target, why = _target(run, sky, target_radec,
                                  _given_xy(run, first, target_xy, config), config)
        sky.notes.append(why)
    found = [run for run in runs if skies[run.run_id].target is not None]
    for run in runs:
        sky = skies[run.run_id]
        if sky.target is None and found:
            sky.target, why = _target_from_runs(run, found, skies, config)
            sky.notes.append(why)
        if sky.target is None:
            sky.skipped = sky.notes[-1]
            log.warning("run %s: target not found: %s", run.run_id, sky.skipped)
        if sky.solution is not None:
            log.info("run %s on the sky: %s, %d stars matched, rms %.2f arcsec", run.run_id,
                     sky.solution.method, sky.solution.n_matched, sky.solution.rms_arcsec)
    return skies


def _solve_runs(runs: list[RunStars], skies: dict, catalogue, config: SkyConfig) -> None:
    """Each run's own sky solution; header solutions that disagree with the others are refused
    (without a catalogue); runs left without one are matched to the solved runs."""
    solved: list[tuple[RunStars, object]] = []
    for run in runs:
        sky = skies[run.run_id]
        try:
            sky.solution = _solve_run(run, catalogue, config, sky.notes)
        except EngineError as exc:
            sky.notes.append(f"no sky solution: {exc}")
        if sky.solution is not None:
            solved.append((run, sky.solution))
    header_runs = [pair for pair in solved if pair[1].method == "header"]
    if catalogue is None and len(header_runs) > 1:
        refused = _cross_check_headers(header_runs, skies, config)
        for run_id in refused:
            skies[run_id].solution = None
        solved = [pair for pair in solved if pair[0].run_id not in refused]
    # The run with the most matched (or most) stars is the first anchor tried.
    solved.sort(key=lambda pair: (-pair[1].n_matched, -len(pair[0].xy())))
    for run in runs:
        sky = skies[run.run_id]
        if sky.solution is None and solved:
            sky.solution = _anchor(run, solved, sky.notes)


def _given_xy(run: RunStars, first: RunStars, target_xy, config: SkyConfig):
    """The target's pixel position given for this run, or None.

    One pixel position for several runs belongs to the first run (in time): the others find
    the target by matching their stars to that run's, as a multi-night series from one
    telescope must (its pointing moves by tens of pixels between nights, and in a crowded
    field the star nearest the same pixel is another star)."""
    if isinstance(target_xy, dict):
        given = target_xy.get(run.run_id)
    else:
        given = target_xy if run is first else None
    if given is None:
        given = config.target_xy_for(run.run_id, run.value("site"))
    return given


#: Added to a run's field radius for the Gaia fetch: solve_field searches up to 12 arcmin from
#: the header pointing.
POINTING_MARGIN_DEG = 0.2


def catalogue_fields(frames: pa.Table) -> dict[str, tuple[float, float, float]]:
    """The sky cone a reference catalogue must cover for each run: run_id -> (ra, dec, radius)
    in degrees, from the header pointing (the median of the run's good light frames) and the
    field's half-diagonal (shape x pixel scale) plus POINTING_MARGIN_DEG. Runs without a
    pointing or a pixel scale are left out (logged): another run's solution can anchor them."""
    lights = frames.filter(pc.and_(pc.equal(frames.column("frame_type"), "light"),
                                   pc.equal(frames.column("status"), "ok")))
    fields = {}
    columns = ("run_id", "ra_deg", "dec_deg", "pixel_scale_arcsec", "shape")
    by_run: dict[str, list] = {}
    for row in lights.select(list(columns)).to_pylist():
        by_run.setdefault(row["run_id"], []).append(row)
    for run_id, rows in sorted(by_run.items()):
        usable = [r for r in rows if r["ra_deg"] is not None and r["dec_deg"] is not None
                  and r["pixel_scale_arcsec"] and r["shape"]]
        if not usable:
            log.warning("run %s: no header pointing and pixel scale: no catalogue fetched for "
                        "its field", run_id)
            continue
        ra = np.array([r["ra_deg"] for r in usable])
        # Median RA about the first one, so that a field astride RA 0 stays whole.
        ra = (ra[0] + np.median((ra - ra[0] + 180.0) % 360.0 - 180.0)) % 360.0
        dec = float(np.median([r["dec_deg"] for r in usable]))
        half_diagonal = max(0.5 * math.hypot(*r["shape"]) * r["pixel_scale_arcsec"] / 3600.0
                            for r in usable)
        fields[run_id] = (float(ra), dec, half_diagonal + POINTING_MARGIN_DEG)
    return fields


def fetch_field_catalogue(frames: pa.Table, cache_dir, *, mag_limit: float = 18.0):
    """Gaia DR3 for every run's field (`catalogue_fields`), one ReferenceCatalogue; each field's
    answer is kept in `cache_dir` and read from there when present (no network then).

    Raises CatalogueError when no run has a pointing and pixel scale, MissingToolError /
    CatalogueFetchError from `engine.io.catalogue.fetch_gaia` when a field must be fetched and
    cannot be."""
    from engine.errors import CatalogueError
    from engine.io.catalogue import combine_catalogues, fetch_gaia

    fields = catalogue_fields(frames)
    if not fields:
        raise CatalogueError("no run has a header pointing and pixel scale to fetch Gaia DR3 "
                             "for: give a catalogue file with --catalogue FILE")
    catalogues = []
    for run_id, (ra, dec, radius) in fields.items():
        catalogue = fetch_gaia(ra, dec, radius, cache_dir=cache_dir, mag_limit=mag_limit)
        log.info("run %s: Gaia DR3, %d stars within %.3f deg of (%.5f, %+.5f) from %s", run_id,
                 len(catalogue), radius, ra, dec, catalogue.path)
        catalogues.append(catalogue)
    return combine_catalogues(catalogues)


def _unit_vectors(ra, dec) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.column_stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)])


def sky_star_columns(runs: list[RunStars], skies: dict[str, RunSky], catalogue=None, *,
                     match_radius_arcsec: float = 2.0) -> dict[str, pa.Table]:
    """Each run's star table with `ra`, `dec` (deg), a network-wide `star_id` and, where a
    catalogue star matches, `catalogue_id`, `catalogue_mag` and `colour` (the catalogue's).

    Stars within `match_radius_arcsec` of a star already seen (catalogue stars first, then the
    runs in order) take its id: the catalogue's id when it has one, else a number above them.
    Runs without a sky solution keep their tables unchanged (no star_id: their own numbers).
    The radius is the merge's (EnsembleConfig.match_radius_arcsec): one rule for one star.
    """
    from scipy.spatial import cKDTree

    radius = 2.0 * math.sin(math.radians(match_radius_arcsec / 3600.0) / 2.0)
    known_points = np.zeros((0, 3))
    known_ids = np.zeros(0, dtype=np.int64)
    n_catalogue = 0
    if catalogue is not None:
        known_points = _unit_vectors(catalogue.ra, catalogue.dec)
        known_ids = np.asarray(catalogue.ids, dtype=np.int64)
        n_catalogue = len(known_ids)
    next_id = int(known_ids.max()) + 1 if known_ids.size else 0
    out = {}
    for run in runs:
        sky = skies.get(run.run_id)
        if sky is None or sky.solution is None or sky.skipped:
            out[run.run_id] = run.stars
            continue
        xy = run.xy()
        ra, dec = sky.solution.wcs.pixel_to_world_values(xy[:, 0], xy[:, 1])
        ra, dec = np.asarray(ra, dtype=float) % 360.0, np.asarray(dec, dtype=float)
        points = _unit_vectors(ra, dec)
        ids = np.full(len(xy), -1, dtype=np.int64)
        row = np.full(len(xy), -1, dtype=np.int64)
        if len(known_ids):
            distance, nearest = cKDTree(known_points).query(points, distance_upper_bound=radius)
            hit = np.isfinite(distance)
            # One star of this run per known star: the closest keeps it.
            order = np.argsort(distance)
            taken = set()
            for i in order[hit[order]]:
                if nearest[i] not in taken:
                    taken.add(int(nearest[i]))
                    ids[i], row[i] = known_ids[nearest[i]], nearest[i]
        new = ids < 0
        ids[new] = next_id + np.arange(int(new.sum()))
        next_id += int(new.sum())
        known_points = np.vstack([known_points, points[new]])
        known_ids = np.concatenate([known_ids, ids[new]])
        in_catalogue = (row >= 0) & (row < n_catalogue)
        table = run.stars
        for name in ("ra", "dec", "star_id", "catalogue_id", "catalogue_mag", "colour"):
            if name in table.column_names:
                table = table.drop_columns([name])
        cat_mag = np.full(len(xy), np.nan)
        colour = np.full(len(xy), np.nan)
        cat_id = np.full(len(xy), -1, dtype=np.int64)
        if catalogue is not None and in_catalogue.any():
            cat_mag[in_catalogue] = np.asarray(catalogue.mag)[row[in_catalogue]]
            colour[in_catalogue] = np.asarray(catalogue.colour)[row[in_catalogue]]
            cat_id[in_catalogue] = ids[in_catalogue]
        out[run.run_id] = (table.append_column("ra", pa.array(ra))
                           .append_column("dec", pa.array(dec))
                           .append_column("star_id", pa.array(ids, pa.int64()))
                           .append_column("catalogue_id", pc.if_else(
                               pa.array(cat_id >= 0), pa.array(cat_id, pa.int64()), None))
                           .append_column("catalogue_mag", pa.array(cat_mag))
                           .append_column("colour", pa.array(colour)))
    return out
