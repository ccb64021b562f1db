"""The ensemble stage's settings: one frozen dataclass with documented, safe defaults.

A later TOML loader fills `EnsembleConfig` (every field is a plain number, string, bool or
tuple); until then callers build it in Python and copy it with `dataclasses.replace`. It is
validated on construction (EngineValueError) and immutable, so one config can be shared.

Times are BJD_TDB (days), magnitudes are magnitudes, radii and distances are pixels unless a
name says otherwise. Star numbers are the `star` indices of the run's star table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from engine.checks import integer
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag

__all__ = ["DEFAULT_EXCLUDE_FLAGS", "EnsembleConfig", "REGRESSORS"]

#: Measurement flags that keep a measurement out of the ensemble and of every fit.
DEFAULT_EXCLUDE_FLAGS = int(
    MeasurementFlag.SATURATED | MeasurementFlag.BAD_PIXEL | MeasurementFlag.NEAR_EDGE
    | MeasurementFlag.OFF_FRAME | MeasurementFlag.BACKGROUND_FAILED
    | MeasurementFlag.NOT_REGISTERED | MeasurementFlag.CENTROID_FAILED
    | getattr(MeasurementFlag, "FIT_FAILED", 0))

#: Per-frame regressors the target's detrending may use besides airmass and SysRem vectors:
#: the target's centroid (x, y, from the photometry), the seeing (frames' `fwhm`) and the sky
#: (frames' `sky`, else the target's local background).
REGRESSORS = ("x", "y", "fwhm", "sky")


def _windows(name, value):
    out = []
    for window in value or ():
        try:
            lo, hi = (float(v) for v in window)
        except (TypeError, ValueError):
            raise EngineValueError(f"{name}: each window must be a (start, end) pair of BJD_TDB, "
                                   f"got {window!r}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
            raise EngineValueError(f"{name}: window {window!r} must be finite with end > start")
        out.append((lo, hi))
    return tuple(out)


def _stars(name, value):
    if value is None:
        return None
    out = []
    for star in value:
        if isinstance(star, bool) or not float(star).is_integer():
            raise EngineValueError(f"{name} must hold star indices (integers), got {star!r}")
        out.append(int(star))
    if len(set(out)) != len(out):
        raise EngineValueError(f"{name} lists a star twice: {out}")
    return tuple(out)


@dataclass(frozen=True)
class EnsembleConfig:
    """Settings of `build_run_lightcurve` and `merge_runs`. Defaults are safe for an unknown night.

    The settings come in groups, in this order: comparison and check stars; weighting and zero
    points; cloud / cirrus flags; aperture; detrending (which never fits the target's curve
    inside its event); noise; output; merging runs.

    Parameters
    ----------
    comparisons
        the comparison stars (star indices) to use instead of the automatic choice.
    check_stars
        the check stars to use instead of the automatic choice.
    exclude_stars
        stars never to use as comparison or check (known variables, blends).
    max_comparisons
        how many comparisons the automatic choice keeps at most (30).
    min_comparisons
        fewer usable comparisons than this is an error (2).
    n_check
        check stars the automatic choice reserves when there are enough candidates (3).
    comparison_brighter_mag, comparison_fainter_mag
        candidates lie from this much brighter to
        this much fainter than the target (2.5, 1.5 mag); when too few do, the window is dropped.
    max_colour_difference
        candidates' colour (BP-RP) within this of the target's (None: any).
    min_coverage
        a candidate is measured (finite, positive, unflagged) on this fraction of the
        frames (0.9).
    max_saturated_fraction
        a candidate is saturated on at most this fraction of frames (0).
    isolation_radius
        no star brighter than the candidate's magnitude + isolation_delta_mag
        within this many pixels (None: the largest aperture radius), and the candidate is
        flagged BLENDED on at most max_blended_fraction of frames (0.1).
    exclude_flags
        measurement flags that keep a measurement out of the ensemble and the fits: names of
        engine.flags.MeasurementFlag (["SATURATED", "BAD_PIXEL", ...]) or their bitmask as an
        int; held as the int (SATURATED, BAD_PIXEL, NEAR_EDGE, OFF_FRAME, BACKGROUND_FAILED,
        NOT_REGISTERED, CENTROID_FAILED, FIT_FAILED).
    clip_sigma
        comparison measurements this many sigma from the others leave the fit (5).
    weight_timescale_min
        the ensemble is weighted for the least noise on this timescale
        (minutes; about an ingress): the time-correlated part of a comparison's excess scatter
        counts (timescale / cadence) times in its weight, so a slowly varying comparison weighs
        almost nothing (30; 0: weights from the frame-to-frame scatter alone).
    max_iterations
        iterations of the weighted ensemble at most (50).
    min_stars_per_frame
        a frame needs this many comparisons for a zero point (2); frames with
        fewer get NO_ENSEMBLE and no relative flux.
    cloud_sigma, cloud_min_loss
        a frame is flagged CLOUD when its zero point lies below the
        clear-sky baseline (a robust, upper-envelope fit of zero point against airmass and a
        polynomial of `transparency_time_degree` in time) by more than cloud_sigma times the
        zero point's expected error *and* by more than cloud_min_loss of the light (4, 0.01).
    scatter_sigma, scatter_min_ratio
        a frame is flagged NOISE_MODEL_EXCEEDED when the
        comparisons' scatter about its zero point exceeds the noise model by more than
        scatter_sigma standard errors of that ratio *and* by the factor scatter_min_ratio
        (5, 1.5). Flagged frames stay in the light curve, with their reasons in the report.
    aperture
        a radius (pixels) or 'psf' to use instead of choosing the one whose light curve
        scatters least (the target's out-of-event curve when event or baseline windows are
        given, else the check stars', else the comparisons').
    event_windows
        BJD_TDB (start, end) ranges that hold the event (transit, flare, eclipse);
        the target's detrending fits and its normalisation use only frames outside them.
    baseline_windows
        alternatively, BJD_TDB ranges known free of any event; only they are used.
        With neither, the target's own curve is never fitted: it gets only the corrections
        learnt from the *other* stars (differential colour extinction). This is the safe default.
    colour_extinction
        learn the differential extinction's colour term from the field stars'
        airmass slopes against their colours and correct every star of known colour (True).
    airmass_term
        fit the target's own airmass slope (out-of-event frames only) (True).
    sysrem_components
        systematics shared by the field stars (SysRem), removed from the field
        stars and fitted to the target out of event (2; 0 turns SysRem off).
    regressors
        extra per-frame regressors of the target fit, from REGRESSORS (none).
    min_baseline_frames
        the target fit needs this many usable frames and 3 per parameter (10).
    aperture_diameter_m, site_altitude_m, scintillation_cy
        when the photometry has no
        `var_scintillation` and the frames no `scintillation`, Young's scintillation (Osborn et
        al. 2015, engine.noise.scintillation_sigma) from these (None: unknown).
    estimate_scintillation
        else estimate a scintillation term X^1.5 / sqrt(t) from the
        comparisons' excess scatter and add it to the noise model (True).
    include_field_stars
        also write every well-measured field star, with role 'field' (False).
    match_radius_arcsec
        stars of different runs (and catalogue entries) within this are one (2).
    colour_degree
        degree of each run's colour transformation polynomial in BP-RP (3; lowered
        automatically for runs with few stars of known colour).
    merge_floor_mag
        systematic floor added to each run-mean magnitude in the joint fit (0.002).
    catalogue_error_mag
        weight of the reference catalogue's magnitudes in the joint fit (0.02).
    merge_clip_sigma
        stars this far from the joint fit (variables) are down-weighted (4).
    """

    comparisons: tuple[int, ...] | None = None
    check_stars: tuple[int, ...] | None = None
    exclude_stars: tuple[int, ...] = ()
    max_comparisons: int = 30
    min_comparisons: int = 2
    n_check: int = 3
    comparison_brighter_mag: float = 2.5
    comparison_fainter_mag: float = 1.5
    max_colour_difference: float | None = None
    min_coverage: float = 0.9
    max_saturated_fraction: float = 0.0
    isolation_radius: float | None = None
    isolation_delta_mag: float = 3.0
    max_blended_fraction: float = 0.1
    exclude_flags: int = DEFAULT_EXCLUDE_FLAGS

    clip_sigma: float = 5.0
    weight_timescale_min: float = 30.0
    max_iterations: int = 50
    min_stars_per_frame: int = 2

    cloud_sigma: float = 4.0
    cloud_min_loss: float = 0.01
    transparency_time_degree: int = 1
    scatter_sigma: float = 5.0
    scatter_min_ratio: float = 1.5

    aperture: float | str | None = None

    event_windows: tuple[tuple[float, float], ...] = ()
    baseline_windows: tuple[tuple[float, float], ...] = ()
    colour_extinction: bool = True
    airmass_term: bool = True
    sysrem_components: int = 2
    regressors: tuple[str, ...] = ()
    min_baseline_frames: int = 10

    aperture_diameter_m: float | None = None
    site_altitude_m: float | None = None
    scintillation_cy: float = 1.5
    estimate_scintillation: bool = True

    include_field_stars: bool = False

    match_radius_arcsec: float = 2.0
    colour_degree: int = 3
    merge_floor_mag: float = 0.002
    catalogue_error_mag: float = 0.02
    merge_clip_sigma: float = 4.0

    def __post_init__(self):
        self._check_stars_and_windows()
        self._check_counts()
        self._check_numbers()
        if self.aperture is not None and not isinstance(self.aperture, str):
            self._number("aperture", positive=True)
        elif self.aperture not in (None, "psf"):
            raise EngineValueError(f"aperture must be a radius or 'psf', got {self.aperture!r}")
        object.__setattr__(self, "exclude_flags",
                           _flag_mask("exclude_flags", self.exclude_flags))
        for name in ("colour_extinction", "airmass_term", "estimate_scintillation",
                     "include_field_stars"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    def _check_stars_and_windows(self):
        """Star lists, time windows and regressors, as tuples."""
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        set_("comparisons", _stars("comparisons", self.comparisons))
        set_("check_stars", _stars("check_stars", self.check_stars))
        set_("exclude_stars", _stars("exclude_stars", self.exclude_stars) or ())
        set_("event_windows", _windows("event_windows", self.event_windows))
        set_("baseline_windows", _windows("baseline_windows", self.baseline_windows))
        regressors = tuple(str(r) for r in (self.regressors or ()))
        unknown = [r for r in regressors if r not in REGRESSORS]
        if unknown:
            raise EngineValueError(f"unknown regressors {unknown}; known: {list(REGRESSORS)}")
        set_("regressors", regressors)

    def _check_counts(self):
        for name in ("max_comparisons", "min_comparisons", "max_iterations",
                     "min_stars_per_frame", "min_baseline_frames"):
            self._integer(name, 1)
        for name in ("n_check", "sysrem_components", "transparency_time_degree", "colour_degree"):
            self._integer(name, 0)
        if self.min_comparisons > self.max_comparisons:
            raise EngineValueError("min_comparisons must not exceed max_comparisons")

    def _check_numbers(self):
        """Sigmas, magnitudes, fractions and lengths, as finite floats in their ranges."""
        for name in ("clip_sigma", "cloud_sigma", "scatter_sigma", "scatter_min_ratio",
                     "match_radius_arcsec", "merge_clip_sigma", "scintillation_cy",
                     "catalogue_error_mag"):
            self._number(name, positive=True)
        for name in ("comparison_brighter_mag", "comparison_fainter_mag", "isolation_delta_mag",
                     "cloud_min_loss", "merge_floor_mag", "weight_timescale_min"):
            self._number(name, positive=False)
        for name in ("min_coverage", "max_saturated_fraction", "max_blended_fraction"):
            value = self._number(name, positive=False)
            if value > 1.0:
                raise EngineValueError(f"{name} must lie in [0, 1], got {value!r}")
        if self.cloud_min_loss >= 1.0:
            raise EngineValueError("cloud_min_loss must be below 1")
        for name in ("max_colour_difference", "isolation_radius", "aperture_diameter_m"):
            if getattr(self, name) is not None:
                self._number(name, positive=True)
        if self.site_altitude_m is not None:
            value = float(self.site_altitude_m)
            if not math.isfinite(value):
                raise EngineValueError("site_altitude_m must be finite")
            object.__setattr__(self, "site_altitude_m", value)

    def _integer(self, name, minimum):
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise EngineValueError(f"{name} must be an integer >= {minimum}, got {value!r}")

    def _number(self, name, *, positive):
        value = getattr(self, name)
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise EngineValueError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(value) or value < 0.0 or (positive and value == 0.0):
            raise EngineValueError(
                f"{name} must be finite and {'> 0' if positive else '>= 0'}, got {value!r}")
        object.__setattr__(self, name, value)
        return value

    @property
    def has_windows(self) -> bool:
        """Whether the user said where the event is (or is not)."""
        return bool(self.event_windows or self.baseline_windows)

    def as_dict(self) -> dict:
        """Plain values, for report.json."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[f.name] = value
        return out


def _flag_mask(name: str, value) -> int:
    """A MeasurementFlag bitmask from names (a list of strings) or from an int."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        mask = integer(name, value, least=0)
        unknown = mask & ~sum(int(flag) for flag in MeasurementFlag)
        if unknown:
            raise EngineValueError(f"{name}: bits {unknown:#x} are no MeasurementFlag")
        return mask
    mask = 0
    for flag in value:
        if flag not in MeasurementFlag.__members__:
            raise EngineValueError(f"{name}: unknown flag {flag!r}; known: "
                                   + ", ".join(MeasurementFlag.__members__))
        mask |= int(MeasurementFlag[flag])
    return mask
