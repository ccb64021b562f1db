"""Exposure times from headers: every time stamp a header offers, the best one, and mid-exposure.

Keywords read (each becomes a `TimeStamp` with the moment it marks and how precisely):
- DATE-OBS, alone when it holds a time, else with TIME-OBS, UT, UTSTART, UT-START, TIME-BEG,
  UT-OBS, UTC-OBS (date-only DATE-OBS plus a time of day, as observatory CCD software writes);
  the old 'DD/MM/YY' form is read as 19YY.
- DATE-BEG, DATE-AVG (mid), DATE-END; JD, JD-OBS, JD_OBS (start), JD-MID, MID-JD (mid), JD-END;
  MJD-OBS, MJD_OBS, MJD-BEG (start), MJD-AVG, MJD-MID (mid), MJD-END.
- DATE-LOC (N.I.N.A.'s local time) only when the site's UTC offset is configured.

Conventions: a keyword whose name or comment says start, mid or end is *stated*; DATE-OBS, JD and
MJD-OBS that do not say are *assumed* to mark the start (the FITS and MaxIm DL convention), or
what the site's configured `time_reference` says. A time with an offset suffix ('-0700',
'+02:00') is local time and is converted; one whose comment or TIMESYS says local needs the site's
UTC offset. TIMESYS = TT, TAI or GPS is converted to UTC. Precision is read from how many digits the
value was written with (a JD with 4 decimals is good to 8.6 s; MJD-OBS = 56486.0, a date written
as a number, to a day).

Which stamp a frame's mid-exposure comes from, and what each keyword of a run marks, is
decided in engine.io.mid_exposure (its names are still importable from here).

Nothing here knows about files: functions take an astropy Header.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import erfa
import numpy as np

__all__ = ["TimeStamp", "add_seconds", "header_timestamps", "keyword_order"]

_DAY = 86400.0
_ISO = re.compile(
    r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})"
    r"(?:[T ](\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d*)?)?)?"
    r"\s*(Z|UTC|UT|[+\-]\d{2}(?::?\d{2})?)?\s*$", re.IGNORECASE)
_OLD_DATE = re.compile(r"^\s*(\d{1,2})/(\d{1,2})/(\d{2})\s*$")
_CLOCK = re.compile(
    r"^\s*(\d{1,2}):(\d{1,2})(?::(\d{1,2})(\.\d*)?)?\s*(Z|UTC|UT|[+\-]\d{2}(?::?\d{2})?)?\s*$",
    re.IGNORECASE)
_NUMBER = re.compile(r"^\s*[+\-]?(\d+)(?:\.(\d*))?(?:[EeDd]([+\-]?\d+))?\s*$")

_TIME_OF_DAY_KEYS = ("TIME-OBS", "UT", "UTSTART", "UT-START", "TIME-BEG", "UT-OBS", "UTC-OBS",
                     "UTC")
# (keyword, reference, stated)
_ISO_KEYS = (("DATE-AVG", "mid", True), ("DATE-BEG", "start", True), ("DATE-OBS", "start", False),
             ("DATE-END", "end", True))
_JD_KEYS = (("JD-MID", "mid", True), ("MID-JD", "mid", True), ("JD_MID", "mid", True),
            ("JD-OBS", "start", False), ("JD_OBS", "start", False), ("JD", "start", False),
            ("JD-START", "start", True), ("JD-END", "end", True))
_MJD_KEYS = (("MJD-AVG", "mid", True), ("MJD-MID", "mid", True), ("MJD-BEG", "start", True),
             ("MJD-OBS", "start", False), ("MJD_OBS", "start", False), ("MJD-END", "end", True))
_SCALES = {"UTC": "utc", "UT": "utc", "Z": "utc", "": "utc", "TT": "tt", "TAI": "tai",
           "TDT": "tt", "GPS": "tai"}  # GPS = TAI - 19 s, handled below


@dataclass(frozen=True)
class TimeStamp:
    """One moment a header gives: `jd` (UTC Julian date as a two-float pair, for precision)
    marks the exposure's `reference` (start, mid, end); `stated` says whether the header says
    which; `precision_s` is the resolution it was written with; `local` that it was a local-time
    stamp converted to UTC."""

    keyword: str
    jd: tuple[float, float]
    reference: str
    stated: bool
    precision_s: float
    kind: str  # 'iso' or 'jd'
    local: bool = False
    note: str = ""




def _comment(header, key: str) -> str:
    try:
        return str(header.comments[key] or "").lower()
    except (KeyError, AttributeError, IndexError):
        return ""


def _stated_reference(comment: str) -> str | None:
    # Whole words: ESO's 'MIDAS desc.' says nothing of the middle of the exposure.
    if re.search(r"\bmid(?:dle|point|exp\w*)?\b|\bmid-|\bcent(?:er|re)\b|\baverage\b", comment):
        return "mid"
    if re.search(r"\bend\b|\bstop", comment):
        return "end"
    if re.search(r"\bstart|\bbegin|beginning|\bopen", comment):
        return "start"
    return None


def _offset_hours(suffix: str | None) -> float | None:
    """Hours to add to a local stamp to get UTC; None for a UTC or absent suffix."""
    if not suffix or suffix.upper() in ("Z", "UTC", "UT"):
        return None
    sign = -1.0 if suffix[0] == "-" else 1.0
    digits = suffix[1:].replace(":", "")
    hours = int(digits[:2]) + (int(digits[2:4]) / 60.0 if len(digits) >= 4 else 0.0)
    return -sign * hours


def _fraction_precision(fraction: str | None, seconds: str | None, minutes: str | None) -> float:
    if minutes is None:
        return _DAY
    if seconds is None:
        return 60.0
    digits = len(fraction) - 1 if fraction else 0
    return 10.0 ** (-digits)


def add_seconds(jd: tuple[float, float], seconds: float) -> tuple[float, float]:
    """A two-float Julian date moved by `seconds`."""
    # UTC days are 86400 s except across a leap second; an exposure's half-length never spans one
    # that matters here.
    return jd[0], jd[1] + seconds / _DAY


def _to_utc(jd: tuple[float, float], scale: str) -> tuple[float, float]:
    if scale == "utc":
        return jd
    if scale == "tt":
        jd = erfa.tttai(*jd)
    elif scale == "gps":
        jd = (jd[0], jd[1] + 19.0 / _DAY)
    utc = erfa.taiutc(*jd)
    return float(utc[0]), float(utc[1])


def _time_from_parts(date: tuple[int, int, int],
                     clock: tuple[str, str, str | None, str | None] | None,
                     scale: str) -> tuple[float, float]:
    """(jd1, jd2) UTC of a calendar date and clock time written in `scale`."""
    year, month, day = date
    hour, minute, seconds = 0, 0, 0.0
    if clock is not None:
        hour, minute = int(clock[0]), int(clock[1])
        seconds = float((clock[2] or "0") + (clock[3] or ""))
    if not (1 <= month <= 12 and 1 <= day <= 31 and hour <= 23 and minute <= 59 and seconds < 61):
        raise ValueError(
            f"{year:04d}-{month:02d}-{day:02d} {hour}:{minute}:{seconds} is not a date")
    try:
        with np.errstate(all="ignore"):
            jd1, jd2 = erfa.dtf2d(scale.upper(), year, month, day, hour, minute, seconds)
    except erfa.ErfaError as exc:
        raise ValueError(f"{year:04d}-{month:02d}-{day:02d}: {exc}") from None
    return _to_utc((float(jd1), float(jd2)), scale)


def _date_part(text: str):
    """(date, clock or None, suffix) of an ISO or old-form date, or None."""
    match = _ISO.match(text)
    if match:
        year, month, day, hour, minute, second, fraction, suffix = match.groups()
        clock = (hour, minute, second, fraction) if hour is not None else None
        return (int(year), int(month), int(day)), clock, suffix
    match = _OLD_DATE.match(text)
    if match:
        day, month, year = (int(g) for g in match.groups())
        return (1900 + year, month, day), None, None
    return None


def _literal(header, key: str) -> str:
    """The value of a card as written (so that its digits tell its precision)."""
    try:
        image = header.cards[key].image
    except (KeyError, AttributeError, IndexError):
        return str(header.get(key, ""))
    value = image.split("=", 1)[1] if "=" in image[:10] else image[8:]
    value = value.strip()
    if value.startswith("'"):
        return value[1:].split("'", 1)[0].strip()
    return value.split("/", 1)[0].strip()


def _scale(header) -> str:
    timesys = str(header.get("TIMESYS", "")).strip().upper()
    if timesys in ("LOCAL", "LT"):
        return "local"
    return "gps" if timesys == "GPS" else _SCALES.get(timesys, "utc")


def header_timestamps(header, *, utc_offset_hours: float | None = None
                      ) -> tuple[list[TimeStamp], list[str]]:
    """Every usable time stamp in a header, and notes on those that were not usable."""
    stamps: list[TimeStamp] = []
    problems: list[str] = []
    scale = _scale(header)
    _iso_stamps(header, scale, utc_offset_hours, stamps, problems)
    _julian_stamps(header, scale, stamps, problems)
    if "DATE-LOC" in header and not any(s.kind == "iso" for s in stamps):
        _local_date_stamp(header, utc_offset_hours, stamps, problems)
    return stamps, problems


def _local_shift(key, comment, suffix_hours, scale, utc_offset_hours):
    """UTC-offset hours to apply to a stamp (None = it is UTC), or ValueError when it is local
    time and the offset is unknown."""
    if suffix_hours is not None:
        return suffix_hours
    if scale == "local" or re.search(r"\blocal\b", comment):
        if utc_offset_hours is None:
            raise ValueError(f"{key} is local time and the site's UTC offset is not configured")
        return -utc_offset_hours
    return None


def _iso_stamps(header, scale, utc_offset_hours, stamps, problems) -> None:
    """The ISO date keywords (DATE-OBS, with a separate time-of-day keyword when it has no
    clock), appended to stamps; unusable ones to problems."""
    for key, reference, stated in _ISO_KEYS:
        if key not in header:
            continue
        text = str(header.get(key, "")).strip()
        if not text:
            continue
        parsed = _date_part(text)
        if parsed is None:
            problems.append(f"{key} = {text!r} is not a date")
            continue
        date, clock, suffix = parsed
        label, comment = key, _comment(header, key)
        precision = _fraction_precision(clock[3], clock[2], clock[1]) if clock else _DAY
        if clock is None and key == "DATE-OBS":
            for time_key in _TIME_OF_DAY_KEYS:
                value = str(header.get(time_key, "")).strip() if time_key in header else ""
                match = _CLOCK.match(value) if value else None
                if match:
                    hour, minute, second, fraction, suffix = match.groups()
                    clock = (hour, minute, second, fraction)
                    precision = _fraction_precision(fraction, second, minute)
                    label = f"DATE-OBS+{time_key}"
                    comment = comment + " " + _comment(header, time_key)
                    break
        if clock is None:
            problems.append(f"{key} = {text!r} has no time of day")
            continue
        said = _stated_reference(comment)
        if said is not None:
            reference, stated = said, True
        try:
            shift_hours = _local_shift(label, comment, _offset_hours(suffix), scale,
                                       utc_offset_hours)
            time_scale = "utc" if scale == "local" else scale
            moment = _time_from_parts(date, clock, time_scale)
        except ValueError as exc:
            problems.append(f"{label}: {exc}")
            continue
        local = shift_hours is not None
        if local:
            moment = add_seconds(moment, shift_hours * 3600.0)
        note = ""
        if local:
            note = f"{label} is local time (UTC{-shift_hours:+g} h), converted to UTC"
        stamps.append(TimeStamp(label, moment, reference, stated, precision, "iso", local, note))


def _julian_stamps(header, scale, stamps, problems) -> None:
    """The JD and MJD keywords, appended to stamps with the precision their digits give."""
    for keys, fmt in ((_JD_KEYS, "jd"), (_MJD_KEYS, "mjd")):
        for key, reference, stated in keys:
            if key not in header:
                continue
            literal = _literal(header, key)
            match = _NUMBER.match(literal)
            if not match:
                problems.append(f"{key} = {literal!r} is not a number")
                continue
            whole, fraction, exponent = match.groups()
            if exponent:
                value = float(literal.replace("D", "E").replace("d", "e"))
                digits = max(0, len(fraction or "") - int(exponent))
                whole_part, frac_part = math.floor(value), value - math.floor(value)
            else:
                digits = len(fraction or "")
                whole_part = int(whole) * (-1 if literal.strip().startswith("-") else 1)
                frac_part = float("0." + (fraction or "0"))
            if fmt == "jd" and not 2.0e6 < whole_part < 3.0e6:
                problems.append(f"{key} = {literal} is not a Julian date of this era")
                continue
            if fmt == "mjd" and not 3.0e4 < whole_part < 1.0e5:
                problems.append(f"{key} = {literal} is not a modified Julian date of this era")
                continue
            said = _stated_reference(_comment(header, key))
            if said is not None:
                reference, stated = said, True
            time_scale = "utc" if scale == "local" else scale
            jd = (float(whole_part) + (2400000.5 if fmt == "mjd" else 0.0), frac_part)
            moment = _to_utc(jd, time_scale)
            precision = _DAY * 10.0 ** (-digits)
            if fraction is not None and set(fraction) <= {"0"}:
                precision = _DAY  # 56486.0: a date written as a float, not a time
            stamps.append(TimeStamp(key, moment, reference, stated, precision, "jd"))


def _local_date_stamp(header, utc_offset_hours, stamps, problems) -> None:
    """DATE-LOC, used only when no ISO stamp was found: local time, shifted to UTC."""
    text = str(header.get("DATE-LOC", "")).strip()
    parsed = _date_part(text)
    if parsed and parsed[1] is not None:
        date, clock, suffix = parsed
        shift = _offset_hours(suffix)
        if shift is None and utc_offset_hours is not None:
            shift = -utc_offset_hours
        if shift is None:
            problems.append(
                "DATE-LOC is local time and the site's UTC offset is not configured")
        else:
            moment = add_seconds(_time_from_parts(date, clock, "utc"), shift * 3600.0)
            precision = _fraction_precision(clock[3], clock[2], clock[1])
            stamps.append(TimeStamp("DATE-LOC", moment, "start", False, precision, "iso", True,
                                    f"DATE-LOC is local time (UTC{-shift:+g} h), converted"))


def keyword_order(keys: list[str]) -> list[str]:
    """Keys in the order `header_timestamps` makes them (ISO first, then JD, then MJD)."""
    rank = {key: n for n, (key, _, _) in enumerate(_ISO_KEYS + _JD_KEYS + _MJD_KEYS)}
    return sorted(keys, key=lambda k: rank.get(k.split("+")[0], len(rank)))

