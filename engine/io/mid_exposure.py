"""Mid-exposure time of a frame: which of its header's time stamps to use, what each stamp marks,
and how the run's frames settle that together. The stamps themselves are read and dated in
engine.io.timestamps (`header_timestamps`).

Runs: what an unstated keyword marks is read from how a run's keywords agree (`run_convention`):
a constant difference of EXPTIME/2 (or EXPTIME) between two keywords on (nearly) every frame is
decisive. Of the assignments that explain every such difference, the one that keeps the most
keywords at their standard meaning wins, DATE-OBS counting double (the FITS standard says it is
the start): JD - DATE-OBS = +EXPTIME/2 makes JD mid-exposure, -EXPTIME/2 makes DATE-OBS mid.
One convention and one keyword then serve the whole run (basis 'inferred'), so a frame whose
keywords disagree otherwise does not switch to another convention.

Choosing: the most precise stamps (within a factor of two of the best) win, then the order above.
Stamps that disagree are reported: by a whole number of quarter hours, the ISO one is taken to be
local time and the JD/MJD one is used; otherwise beyond their precision, with the difference.

Timing error (`MidExposure.time_err_s`, 1 sigma): the stamp's resolution as a uniform error of
± one resolution step (software rounds or truncates, and rarely says which: resolution/sqrt(3))
and the site's clock uncertainty, in quadrature.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
from astropy.time import Time

from engine.errors import HeaderError
from engine.io.timestamps import TimeStamp, add_seconds, header_timestamps, keyword_order

__all__ = ["MidExposure", "RunConvention", "exposure_mid", "mid_from_stamps", "run_convention"]

_DAY = 86400.0


@dataclass(frozen=True)
class MidExposure:
    """Mid-exposure UTC of a frame and how it was found.

    jd: mid-exposure UTC Julian date (two floats) after the clock correction.
    keyword: the stamp used. reference: what that stamp marks. basis: how that is known
    ('stated' by the header, 'configured' for the site, 'inferred' from how the run's keywords
    agree, or 'assumed').
    precision_s: the stamp's resolution. clock_offset_s: the correction subtracted.
    time_err_s: the timing error, 1 sigma (resolution and clock uncertainty, see the module).
    local: the stamp was local time. notes: disagreements and assumptions to log.
    """

    jd: tuple[float, float]
    keyword: str
    reference: str
    basis: str
    precision_s: float
    clock_offset_s: float
    local: bool
    notes: tuple[str, ...] = field(default=())
    time_err_s: float = 0.0

    @property
    def time(self) -> Time:
        """The mid-exposure moment as an astropy Time (UTC)."""
        return Time(self.jd[0], self.jd[1], format="jd", scale="utc")

    @property
    def jd_utc(self) -> float:
        return self.jd[0] + self.jd[1]

    @property
    def provenance(self) -> str:
        how = self.basis
        shift = {"start": " + EXPTIME/2", "mid": "", "end": " - EXPTIME/2"}[self.reference]
        text = (f"{self.keyword} ({self.reference}, {how}; resolution {self.precision_s:.3g} s)"
                f"{shift}")
        if self.local:
            text += ", local time converted to UTC"
        if self.clock_offset_s:
            text += f", clock offset {self.clock_offset_s:+.3f} s removed"
        return text


def _mid(stamp: TimeStamp, reference: str, exptime: float) -> tuple[float, float]:
    shift = {"start": 0.5, "mid": 0.0, "end": -0.5}[reference] * exptime
    return add_seconds(stamp.jd, shift)


def _difference_s(a: tuple[float, float], b: tuple[float, float]) -> float:
    return ((a[0] - b[0]) + (a[1] - b[1])) * _DAY


_POSITION = {"start": 0.0, "mid": 0.5, "end": 1.0}
_REFERENCE = {v: k for k, v in _POSITION.items()}


@dataclass(frozen=True)
class RunConvention:
    """What each time keyword of a run marks, and the keyword the run's times come from.

    references: keyword -> 'start', 'mid' or 'end' for every unstated keyword of the run.
    inferred: the keywords whose reference the run's agreement settled (not the default).
    keyword: the stamp every frame that has it uses (None: each frame chooses).
    evidence: the agreements found, in words.
    """

    references: dict[str, str]
    inferred: frozenset[str] = frozenset()
    keyword: str | None = None
    evidence: tuple[str, ...] = ()


def _decisive_offsets(frames, keys) -> list[tuple[str, str, float, int, int]]:
    """(a, b, k, agreeing, decidable): stamp a - stamp b = k * EXPTIME on `agreeing` of the
    `decidable` frames (those whose resolution can tell k from k +- 1/2) that have both."""
    found = []
    for i, a in enumerate(keys):
        for b in keys[i + 1:]:
            votes: dict[float, int] = {}
            decidable = 0
            for stamps, exptime in frames:
                sa, sb = stamps.get(a), stamps.get(b)
                tolerance = (sa.precision_s + sb.precision_s + 0.5) if sa and sb else math.inf
                if not exptime or exptime <= 0 or tolerance >= exptime / 4.0:
                    continue
                decidable += 1
                delta = _difference_s(sa.jd, sb.jd)
                for k in (-1.0, -0.5, 0.0, 0.5, 1.0):
                    if abs(delta - k * exptime) <= tolerance:
                        votes[k] = votes.get(k, 0) + 1
            if votes:
                k, agreeing = max(votes.items(), key=lambda item: item[1])
                if agreeing >= 0.75 * decidable:
                    found.append((a, b, k, agreeing, decidable))
    return found


def _assign(keys, fixed: dict[str, float], default: dict[str, float], offsets):
    """Positions (0 start, 0.5 mid, 1 end) for `keys` that satisfy every offset, keeping the
    most keywords at their default (DATE-OBS counts double); None when none satisfies them."""
    free = [k for k in keys if k not in fixed]
    best, best_score = None, -1.0
    for combo in itertools.product((0.0, 0.5, 1.0), repeat=len(free)):
        position = dict(fixed, **dict(zip(free, combo)))
        if any(abs(position[a] - position[b] - k) > 1e-9 for a, b, k, _, _ in offsets):
            continue
        score = sum((2.0 if k.startswith("DATE-OBS") else 1.0)
                    for k in free if position[k] == default[k])
        if score > best_score:
            best, best_score = position, score
    return best


def run_convention(frames, time_reference: str | None = None) -> RunConvention:
    """The convention of a run from its frames: a list of (stamps, exptime) pairs, stamps as
    `header_timestamps` returns them. time_reference: the site's configured meaning of unstated
    keywords (then nothing is inferred for them)."""
    frames = [({s.keyword: s for s in stamps if s.precision_s < 3600.0 and not s.local},
               exptime) for stamps, exptime in frames]
    keys, stated = _keys_and_stated(frames)
    if not keys:
        return RunConvention({})
    position, offsets, explained = _positions(frames, keys, stated, time_reference)
    evidence = [] if explained else [
        "the run's time keywords disagree in a way no convention explains"]
    for a, b, k, agreeing, decidable in offsets:
        how = "agree" if k == 0 else f"differ by {k:+g} x EXPTIME"
        evidence.append(f"{a} and {b} {how} on {agreeing} of {decidable} frames")
    default = _POSITION[time_reference or "start"]
    inferred = frozenset(k for k in keys if k not in stated and position[k] != default)
    for key in sorted(inferred):
        evidence.append(f"{key} marks the exposure {_REFERENCE[position[key]]}")
    return RunConvention({k: _REFERENCE[position[k]] for k in keys}, inferred,
                         _run_keyword(frames, keys), tuple(evidence))


def _positions(frames, keys: list[str], stated: dict[str, float], time_reference: str | None):
    """(position of each keyword, the decisive offsets, whether a convention explains them):
    stated keywords keep their position, the others the configured or standard one unless the
    run's offsets settle another (`_assign`)."""
    default = {k: _POSITION[time_reference or "start"] for k in keys}
    fixed = dict(stated)
    if time_reference is not None:
        fixed.update({k: default[k] for k in keys if k not in stated})
    offsets = _decisive_offsets(frames, keys) if 1 < len(keys) <= 8 else []
    position = _assign(keys, fixed, default, offsets) if offsets else None
    return position or dict(default, **fixed), offsets, not offsets or position is not None


def _keys_and_stated(frames) -> tuple[list[str], dict[str, float]]:
    """The run's time keywords in order of appearance, and the position (0 start, 0.5 mid,
    1 end) of those a header states."""
    keys: list[str] = []
    stated: dict[str, float] = {}
    for stamps, _ in frames:
        for key, stamp in stamps.items():
            if key not in keys:
                keys.append(key)
            if stamp.stated:
                stated.setdefault(key, _POSITION[stamp.reference])
    return keys, stated


def _run_keyword(frames, keys: list[str]) -> str | None:
    """The run's keyword: among those most frames have, the most precise, then the usual
    order."""
    counts = {k: sum(k in stamps for stamps, _ in frames) for k in keys}
    common = [k for k in keys if counts[k] >= 0.5 * len(frames)]
    precision = {k: float(np.median([st[k].precision_s for st, _ in frames if k in st]))
                 for k in common}
    best = min(precision.values()) if precision else None
    return next((k for k in keyword_order(common) if precision[k] <= 2.0 * best), None)


def exposure_mid(header, exptime: float, *, clock_offset_s: float = 0.0,
                 clock_uncertainty_s: float = 0.0, utc_offset_hours: float | None = None,
                 time_reference: str | None = None, convention: RunConvention | None = None,
                 path=None) -> MidExposure:
    """Mid-exposure UTC of a frame from its header's best time stamp.

    exptime: the exposure time in seconds (>= 0). clock_offset_s: how far the site's clock runs
    ahead of UTC (subtracted); clock_uncertainty_s: how well that is known (1 sigma).
    utc_offset_hours: the site's local time minus UTC, for local stamps that do not carry an
    offset. time_reference: what unstated stamps mark ('start', 'mid', 'end'; default start).
    convention: the run's (see `run_convention`), which outranks time_reference. Raises
    HeaderError naming the file when no stamp is usable.
    """
    stamps, problems = header_timestamps(header, utc_offset_hours=utc_offset_hours)
    return mid_from_stamps(stamps, problems, exptime, clock_offset_s=clock_offset_s,
                           clock_uncertainty_s=clock_uncertainty_s,
                           time_reference=time_reference, convention=convention, path=path)


def mid_from_stamps(stamps: list[TimeStamp], problems: list[str], exptime: float, *,
                    clock_offset_s: float = 0.0, clock_uncertainty_s: float = 0.0,
                    time_reference: str | None = None,
                    convention: RunConvention | None = None, path=None) -> MidExposure:
    """`exposure_mid` from stamps already read (`header_timestamps`)."""
    if not stamps:
        where = f"{path}: " if path is not None else ""
        detail = "; ".join(problems) if problems else (
            "none of DATE-OBS, DATE-BEG, DATE-AVG, JD, MJD-OBS is present")
        raise HeaderError(f"{where}no usable exposure time stamp ({detail})")
    notes = [s.note for s in stamps if s.note]
    mids = {s.keyword: _mid(s, _reference(s, convention, time_reference), exptime)
            for s in stamps}
    usable = _without_local_iso(stamps, mids, notes)
    chosen = _choose(stamps, usable, convention, notes)
    _note_disagreements(usable, chosen, mids, notes)
    mid = add_seconds(mids[chosen.keyword], -float(clock_offset_s))
    error = math.hypot(chosen.precision_s / math.sqrt(3.0), float(clock_uncertainty_s))
    return MidExposure(jd=mid, keyword=chosen.keyword,
                       reference=_reference(chosen, convention, time_reference),
                       basis=_basis(chosen, convention, time_reference),
                       precision_s=chosen.precision_s, clock_offset_s=float(clock_offset_s),
                       local=chosen.local, notes=tuple(notes), time_err_s=error)


def _reference(stamp: TimeStamp, convention: RunConvention | None,
               time_reference: str | None) -> str:
    """What a stamp marks: as stated, else as the run's convention or the site says, else its
    keyword's standard meaning."""
    if stamp.stated:
        return stamp.reference
    known = convention.references if convention is not None else {}
    return known.get(stamp.keyword) or time_reference or stamp.reference


def _basis(chosen: TimeStamp, convention: RunConvention | None,
           time_reference: str | None) -> str:
    if chosen.stated:
        return "stated"
    if convention is not None and chosen.keyword in convention.inferred:
        return "inferred"
    return "configured" if time_reference else "assumed"


def _without_local_iso(stamps: list[TimeStamp], mids: dict, notes: list[str]) -> list[TimeStamp]:
    """The stamps less the ISO ones a whole number of quarter hours from the most precise
    JD/MJD one: local time written without its offset (JD is UTC by definition)."""
    usable = list(stamps)
    jd_stamps = [s for s in stamps if s.kind == "jd"]
    if not jd_stamps or min(s.precision_s for s in jd_stamps) > 60.0:
        return usable
    best_jd = min(jd_stamps, key=lambda s: s.precision_s)
    isos = [s for s in stamps if s.kind == "iso" and not s.local and s.precision_s <= 60.0]
    for stamp in isos:
        delta = _difference_s(mids[stamp.keyword], mids[best_jd.keyword])
        slack = stamp.precision_s + best_jd.precision_s + 1.0
        quarters = round(delta / 900.0)
        if quarters != 0 and abs(delta - quarters * 900.0) <= slack and abs(delta) < 15 * 3600:
            usable.remove(stamp)
            notes.append(f"{stamp.keyword} differs from {best_jd.keyword} by "
                         f"{delta / 3600.0:+.2f} h: a local-time stamp; used "
                         f"{best_jd.keyword}")
    return usable


def _choose(stamps: list[TimeStamp], usable: list[TimeStamp],
            convention: RunConvention | None, notes: list[str]) -> TimeStamp:
    """The stamp a frame's time comes from: the run's keyword, else the first (in
    `header_timestamps` order) of those within a factor of two of the best precision."""
    order = {s.keyword: k for k, s in enumerate(stamps)}
    best_precision = min(s.precision_s for s in usable)
    good = [s for s in usable if s.precision_s <= 2.0 * best_precision]
    # The run's keyword, unless this frame writes it as a bare date while another stamp has the
    # time (an MJD-OBS of exactly midnight reads as whole days): every keyword keeps the run's
    # reference anyway.
    chosen = next((s for s in usable if convention is not None
                   and s.keyword == convention.keyword
                   and (s.precision_s < 3600.0 or s in good)), None)
    chosen = chosen or min(good, key=lambda s: order[s.keyword])
    first = min(usable, key=lambda s: order[s.keyword])
    if chosen is not first and first.precision_s >= 0.1:
        notes.append(f"{first.keyword} is written to {first.precision_s:.3g} s only; used "
                     f"{chosen.keyword} ({chosen.precision_s:.3g} s)")
    return chosen


def _note_disagreements(usable: list[TimeStamp], chosen: TimeStamp, mids: dict,
                        notes: list[str]) -> None:
    """Notes on stamps that disagree with the chosen one beyond their resolutions, and on a
    chosen stamp written coarser than a second."""
    for stamp in usable:
        if stamp is chosen or stamp.precision_s >= 3600.0:  # a date, not a time: no comparison
            continue
        delta = _difference_s(mids[stamp.keyword], mids[chosen.keyword])
        if abs(delta) > stamp.precision_s + chosen.precision_s + 0.5:
            notes.append(f"{stamp.keyword} and {chosen.keyword} disagree by {delta:+.3f} s; "
                         f"used {chosen.keyword}")
    if chosen.precision_s > 1.0:
        notes.append(f"the best time stamp ({chosen.keyword}) is written to "
                     f"{chosen.precision_s:.3g} s only")
