"""Comparison and check stars: the automatic choice, and the user's override.

A candidate is any star but the target (and the user's `exclude_stars`) that is
- measured: finite, positive, unflagged flux on at least `min_coverage` of the frames;
- unsaturated: SATURATED on at most `max_saturated_fraction` of the frames;
- isolated: BLENDED on at most `max_blended_fraction` of the frames, and no star brighter than
  its magnitude + `isolation_delta_mag` within `isolation_radius` pixels in the star table;
- of a colour close to the target's when `max_colour_difference` is set and colours are known.
Candidates from `comparison_brighter_mag` brighter to `comparison_fainter_mag` fainter than the
target are ranked by their brightness difference; the closest `max_comparisons` become the
comparisons and the next `n_check` the check stars (only when 5 comparisons remain). When
fewer than 5 comparisons + n_check lie in the window, it is widened in 0.5 mag steps until
they do (or every candidate is in), and a note says so. Weighting
(engine.ensemble.weights) then decides how much each comparison counts; a variable one ends
near zero weight, so the choice here need not be perfect.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.ensemble.inputs import RunData, usable
from engine.ensemble.weights import row_nanmedian
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.settings.ensemble import EnsembleConfig

__all__ = ["Selection", "instrumental_magnitudes", "select_stars"]

#: Comparisons the automatic choice tries to have (widening the brightness window if needed):
#: with fewer, a variable one is hard to tell from the others (with two, impossible).
_WANTED = 5


@dataclass
class Selection:
    """Positions (into the run's star arrays) of the comparison and check stars, and why."""

    comparisons: np.ndarray
    checks: np.ndarray
    automatic: bool
    magnitude: np.ndarray          # median instrumental magnitude per star (NaN: never measured)
    coverage: np.ndarray           # fraction of frames with a usable measurement
    rejected: dict = field(default_factory=dict)   # star number -> reason (candidates only)
    notes: list = field(default_factory=list)


def instrumental_magnitudes(data: RunData, a: int, ok: np.ndarray) -> np.ndarray:
    """Median of -2.5 log10(flux / exptime) over each star's usable frames (NaN: none)."""
    rate = np.where(ok, data.matrix(a, "flux") / data.exptime[:, None], np.nan)
    median = row_nanmedian(rate, axis=0)
    with np.errstate(all="ignore"):
        return np.where(median > 0, -2.5 * np.log10(median), np.nan)


def _isolation(data: RunData, magnitude: np.ndarray, radius: float, delta: float) -> np.ndarray:
    """Per star: the number of a brighter-than-(mag + delta) neighbour within radius, or -1."""
    out = np.full(data.n_stars, -1, dtype=np.int64)
    x, y = data.star_x, data.star_y
    have = np.isfinite(x) & np.isfinite(y)
    if have.sum() < 2 or not radius > 0:
        return out
    from scipy.spatial import cKDTree

    index = np.flatnonzero(have)
    tree = cKDTree(np.column_stack([x[index], y[index]]))
    for a, b in sorted(tree.query_pairs(radius)):
        i, j = index[a], index[b]
        mi = magnitude[i] if np.isfinite(magnitude[i]) else np.inf
        mj = magnitude[j] if np.isfinite(magnitude[j]) else np.inf
        if mj < mi + delta and out[i] < 0:
            out[i] = j
        if mi < mj + delta and out[j] < 0:
            out[j] = i
    return out


def _positions(data: RunData, numbers, what: str) -> np.ndarray:
    lookup = {int(s): j for j, s in enumerate(data.star.tolist())}
    missing = [s for s in numbers if s not in lookup]
    if missing:
        raise EngineValueError(f"run {data.run_id!r}: {what} {missing} not in the star table")
    positions = np.array([lookup[s] for s in numbers], dtype=np.int64)
    if np.any(positions == data.target):
        raise EngineValueError(f"run {data.run_id!r}: the target cannot be one of the {what}")
    return positions


def _frame_fractions(data: RunData, a: int, ok: np.ndarray):
    """Per star: fractions of frames measured (usable), SATURATED and BLENDED."""
    flags = data.matrix(a, "flags", fill=0, dtype=np.uint32)
    n_frames = max(data.n_frames, 1)
    coverage = ok.sum(axis=0) / n_frames
    saturated = ((flags & np.uint32(MeasurementFlag.SATURATED)) != 0).sum(axis=0) / n_frames
    blended = ((flags & np.uint32(MeasurementFlag.BLENDED)) != 0).sum(axis=0) / n_frames
    return coverage, saturated, blended


def _isolation_radius(data: RunData, config: EnsembleConfig) -> float:
    if config.isolation_radius is not None:
        return config.isolation_radius
    finite = [ap.radius for ap in data.apertures if np.isfinite(ap.radius)]
    return max(finite) if finite else 10.0  # beyond it: annulus masking, BLENDED flags


def _screen(data: RunData, a: int, ok, magnitude, config: EnsembleConfig, rejected: dict):
    """Stars fit to compare with (positions); each other one's reason goes into `rejected`."""
    coverage, saturated, blended = _frame_fractions(data, a, ok)
    radius = _isolation_radius(data, config)
    neighbour = _isolation(data, magnitude, radius, config.isolation_delta_mag)
    target = data.target
    check_colour = (config.max_colour_difference is not None
                    and np.isfinite(data.colour[target]))
    excluded = set(config.exclude_stars)
    good = []
    for j in range(data.n_stars):
        number = int(data.star[j])
        if j == target:
            continue
        reason = None
        if number in excluded:
            reason = "excluded by the user"
        elif coverage[j] < config.min_coverage:
            reason = f"measured on {coverage[j]:.0%} of frames (< {config.min_coverage:.0%})"
        elif saturated[j] > config.max_saturated_fraction:
            reason = f"saturated on {saturated[j]:.0%} of frames"
        elif blended[j] > config.max_blended_fraction:
            reason = f"blended on {blended[j]:.0%} of frames"
        elif neighbour[j] >= 0:
            reason = (f"not isolated: star {int(data.star[neighbour[j]])} within "
                      f"{radius:g} px")
        elif check_colour and not (abs(data.colour[j] - data.colour[target])
                                   <= config.max_colour_difference):
            reason = "colour unknown or too far from the target's"
        if reason is None:
            good.append(j)
        else:
            rejected[number] = reason
    return np.array(good, dtype=np.int64), coverage


def _brightness_window(data: RunData, good, magnitude, config: EnsembleConfig, rejected: dict,
                       notes: list) -> np.ndarray:
    """The candidates within the brightness window around the target, closest first.

    An ensemble needs enough members to tell a variable one: the window widens in 0.5 mag
    steps (both ways) until it holds the wanted number of candidates, or every candidate.
    """
    reference = magnitude[data.target]
    if not np.isfinite(reference):
        reference = float(np.nanmedian(magnitude[good])) if good.size else 0.0
    delta = magnitude[good] - reference
    wanted = min(config.max_comparisons, max(config.min_comparisons, _WANTED)) + config.n_check
    brighter, fainter = config.comparison_brighter_mag, config.comparison_fainter_mag
    in_window = (delta >= -brighter) & (delta <= fainter)
    while in_window.sum() < wanted and not in_window.all() and good.size:
        brighter += 0.5
        fainter += 0.5
        in_window = (delta >= -brighter) & (delta <= fainter)
    if (brighter, fainter) != (config.comparison_brighter_mag, config.comparison_fainter_mag):
        notes.append(f"{int(in_window.sum())} candidate(s) within -{brighter:g}/+{fainter:g} mag "
                     f"of the target: the brightness window was widened from "
                     f"-{config.comparison_brighter_mag:g}/+{config.comparison_fainter_mag:g}")
    inside = np.flatnonzero(in_window)
    for j in good[~in_window]:
        rejected[int(data.star[j])] = "outside the brightness window"
    return good[inside[np.argsort(np.abs(delta[inside]), kind="stable")]]


def _comparisons(data: RunData, candidates, config: EnsembleConfig, rejected: dict,
                 notes: list):
    """(comparisons, the candidates left for check stars): the closest in brightness, keeping
    n_check back when enough remain, or the user's list."""
    if config.comparisons is None:
        reserve = config.n_check if config.check_stars is None else 0
        if candidates.size < max(config.min_comparisons, _WANTED) + reserve:
            reserve = 0
        n_comp = min(config.max_comparisons, candidates.size - reserve)
        return candidates[:n_comp], candidates[n_comp:]
    comparisons = _positions(data, config.comparisons, "comparisons")
    for j in comparisons:
        number = int(data.star[j])
        if number in rejected:
            notes.append(f"comparison {number} chosen by the user although "
                         f"{rejected.pop(number)}")
    chosen = set(comparisons.tolist())
    rest = np.array([j for j in candidates if j not in chosen], dtype=np.int64)
    return comparisons, rest


def _check_stars(data: RunData, comparisons, rest, config: EnsembleConfig) -> np.ndarray:
    if config.check_stars is None:
        return np.asarray(rest[:config.n_check], dtype=np.int64)
    checks = _positions(data, config.check_stars, "check stars")
    overlap = set(checks.tolist()) & set(comparisons.tolist())
    if overlap:
        raise EngineValueError(f"run {data.run_id!r}: stars "
                               f"{sorted(int(data.star[j]) for j in overlap)} are both "
                               "comparison and check stars")
    return checks


def select_stars(data: RunData, a: int, config: EnsembleConfig) -> Selection:
    """Choose (or take the user's) comparison and check stars, judged at aperture a."""
    ok = usable(data, a, config.exclude_flags)
    magnitude = instrumental_magnitudes(data, a, ok)
    notes: list = []
    if not np.isfinite(magnitude[data.target]):
        notes.append("the target has no usable measurement at the selection aperture")
    rejected: dict = {}
    good, coverage = _screen(data, a, ok, magnitude, config, rejected)
    candidates = _brightness_window(data, good, magnitude, config, rejected, notes)
    comparisons, rest = _comparisons(data, candidates, config, rejected, notes)
    checks = _check_stars(data, comparisons, rest, config)
    if comparisons.size < config.min_comparisons:
        raise EngineValueError(
            f"run {data.run_id!r}: {comparisons.size} usable comparison star(s), at least "
            f"{config.min_comparisons} needed (candidates rejected: "
            + "; ".join(f"{s}: {r}" for s, r in list(rejected.items())[:5]) + ")")
    return Selection(comparisons=np.asarray(comparisons, dtype=np.int64),
                     checks=np.asarray(checks, dtype=np.int64),
                     automatic=config.comparisons is None,
                     magnitude=magnitude, coverage=coverage, rejected=rejected, notes=notes)
