"""Values out of FITS headers: keywords read as numbers or text, and the text formats observatory
software writes (sexagesimal angles, RA / Dec, IRAF sections). engine.io.headers builds its
HeaderRecord from these; the CLI and the tests use the parsers too (re-exported there).
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from engine.io.headers import HeaderRecord

__all__ = ["first_header_number", "first_header_text", "header_comment", "header_number",
           "is_sexagesimal", "parse_dec", "parse_ra", "parse_section", "parse_sexagesimal"]

_SEXAGESIMAL = re.compile(
    r"^\s*([+\-\u2212]?)\s*(\d+(?:\.\d*)?)\s*[:hd\u00b0 ]\s*(\d+(?:\.\d*)?)"
    r"(?:\s*[:m' ]\s*(\d+(?:\.\d*)?))?\s*[s\"]?\s*$", re.IGNORECASE)
_SECTION = re.compile(
    r"^\s*\[\s*(\d+|\*)\s*(?::\s*(\d+))?\s*,\s*(\d+|\*)\s*(?::\s*(\d+))?\s*\]\s*$")


def parse_sexagesimal(text: str) -> float:
    """'+40 25 13.2', '-00:55:31', '22h04m08s', '12d30m' -> signed value in the first field's
    unit. Raises ValueError when the text is not sexagesimal."""
    match = _SEXAGESIMAL.match(str(text))
    if not match:
        raise ValueError(f"{text!r} is not a sexagesimal angle")
    sign, first, minutes, seconds = match.groups()
    value = float(first) + float(minutes) / 60.0 + (float(seconds) / 3600.0 if seconds else 0.0)
    # 60 is tolerated: programs that round seconds separately write '12 29 60.00'.
    if float(minutes) > 60.0 or (seconds and float(seconds) > 60.0):
        raise ValueError(f"{text!r}: minutes and seconds must not exceed 60")
    return -value if sign in ("-", "\u2212") else value


def is_sexagesimal(text: str) -> bool:
    """Whether text parses as a sexagesimal angle."""
    return bool(_SEXAGESIMAL.match(str(text)))


def parse_ra(value, *, hours: bool | None = None) -> float:
    """Right ascension in degrees from a header or command-line value.

    Numbers are degrees unless `hours` is True; sexagesimal strings ('22:04:08', '22 04 08.5',
    '22h04m08s') are hours unless `hours` is False. Raises ValueError outside [0, 360) deg.
    """
    if isinstance(value, str) and is_sexagesimal(value):
        degrees = parse_sexagesimal(value) * (1.0 if hours is False else 15.0)
    else:
        degrees = float(str(value).strip() if isinstance(value, str) else value)
        if hours:
            degrees *= 15.0
    if not (math.isfinite(degrees) and 0.0 <= degrees < 360.0 + 1e-9):
        raise ValueError(f"right ascension {value!r} is outside 0-24 h / 0-360 deg")
    return degrees % 360.0


def parse_dec(value) -> float:
    """Declination in degrees from a number or a sexagesimal string ('-00:55:31', '+40 25 13')."""
    if isinstance(value, str) and is_sexagesimal(value):
        degrees = parse_sexagesimal(value)
    else:
        degrees = float(str(value).strip() if isinstance(value, str) else value)
    if not (math.isfinite(degrees) and -90.0 <= degrees <= 90.0):
        raise ValueError(f"declination {value!r} is outside -90..+90 deg")
    return degrees


def parse_section(text: str, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """An IRAF section '[x1:x2,y1:y2]' (1-based, inclusive, '*' = whole axis) as 0-based
    half-open (row_start, row_stop, column_start, column_stop) within an image of `shape`
    (rows, columns). Reversed ranges are put in order. Raises ValueError when it does not parse
    or does not fit the image."""
    match = _SECTION.match(str(text))
    if not match:
        raise ValueError(f"section {text!r} is not of the form [x1:x2,y1:y2]")
    x1, x2, y1, y2 = match.groups()
    rows, columns = shape

    def axis(first, last, length):
        if first == "*":
            return 0, length
        first = int(first)
        last = first if last is None else int(last)
        low, high = min(first, last), max(first, last)
        if low < 1 or high > length:
            raise ValueError(f"section {text!r} reaches outside the {rows} x {columns} image")
        return low - 1, high

    c0, c1 = axis(x1, x2, columns)
    r0, r1 = axis(y1, y2, rows)
    return r0, r1, c0, c1


def header_comment(header, key: str) -> str:
    """The comment of a keyword ('' when there is none)."""
    try:
        return str(header.comments[key] or "")
    except (KeyError, AttributeError, IndexError):
        return ""


def first_header_text(header, keys) -> tuple[str | None, str | None]:
    """(text, key) of the first of `keys` with a non-empty text value, else (None, None)."""
    for key in keys:
        if key in header:
            value = header.get(key)
            if value is None or isinstance(value, bool):
                continue
            text = str(value).strip()
            if text:
                return text, key
    return None, None


def header_number(header, key: str, record: HeaderRecord | None = None) -> float | None:
    """A keyword's finite numeric value (numbers written as text too, Fortran 'D' exponents
    included), else None; text that is no number is noted in `record`."""
    if key not in header:
        return None
    value = header.get(key)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        value = float(value)
    else:
        try:
            value = float(str(value).strip().replace("D", "E"))
        except ValueError:
            if record is not None and str(value).strip():
                record.notes.append(f"{key} = {value!r} is not a number; ignored")
            return None
    if not math.isfinite(value):
        return None
    return value


def first_header_number(header, keys, record: HeaderRecord) -> tuple[float | None, str | None]:
    """(value, key) of the first of `keys` with a number, else (None, None)."""
    for key in keys:
        value = header_number(header, key, record)
        if value is not None:
            return value, key
    return None, None
