"""Light curves for other programs: the AAVSO Extended File Format and plain CSV.

Both take the light-curve table (`lightcurves.parquet`, engine.io.schemas.LIGHTCURVES_SCHEMA)
and write atomically (temporary name in the same folder, then rename).

AAVSO Extended File Format (version 1.2; https://www.aavso.org/aavso-extended-file-format):
six `#` parameter lines, a `#`-commented column line, then one line per observation:

    STARID,DATE,MAGNITUDE,MAGERR,FILTER,TRANS,MTYPE,CNAME,CMAG,KNAME,KMAG,AMASS,GROUP,CHART,NOTES

Choices made here, and why:
- DATE. AAVSO takes JD or HJD (or an Excel date), not BJD_TDB. The engine's times are
  BJD_TDB at mid-exposure, so they are converted back: the barycentric light time for the
  target's direction is removed (giving TDB at the observer), the result is put on UTC, and for
  HJD the heliocentric light time is added. The observer is taken at the geocentre (the light
  curves do not carry the site's position): that moves the date by at most 0.021 s, below the
  6 decimals (0.086 s) written. The ephemeris is astropy's built-in one; nothing is downloaded.
  The target's coordinates are therefore required.
- MAGNITUDE and MTYPE. `mag_std` where it is finite and on a catalogue's system
  (`mag_std_system` 'catalogue <band>': MTYPE STD), else `mag` (MTYPE DIF, comparison ENSEMBLE).
  `mag` is the target's magnitude on its run's ensemble system: instrumental, with frame zero
  points that average 0 over the run, so its offset is arbitrary. `mag_std` is on the system
  merge_runs tied the runs to: a reference catalogue's band (the filter's own when the
  catalogue has it, else the band detected as fitting best), or the reference run's. TRANS is
  NO unless the caller says the magnitudes were transformed. MAGERR is the matching error column.
- CNAME is ENSEMBLE and CMAG na (the comparison is the weighted ensemble, as AAVSO asks).
  KNAME/KMAG is one check star per run (the one measured on most good frames), with its
  magnitude of the same kind as the target's on that frame; na where it is missing or flagged.
- FILTER names from headers become AAVSO codes where the meaning is plain (Rc -> R, g' -> SG,
  clear -> CV, ...); a name with no obvious code is written as it is (sanitised), and AAVSO's
  upload will then reject it: pass `filter_codes` to map it.
- Every string that came from a header (star name, run, aperture, filter) is cleaned before it
  is written: no delimiter, no line break or control character, no `#` that could open a
  parameter line, and AAVSO's field length limits. A text field (here and in the CSV) that
  starts like a spreadsheet formula (= + - @ tab CR) gets a leading single quote; numbers are
  written as numbers (a negative magnitude stays -1.2345).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.checks import table_columns
from engine.errors import EngineValueError
from engine.flags import describe
from engine.io.atomic import atomic_path, write_text

__all__ = ["aavso_filter", "defuse_formula", "write_aavso_extended", "write_csv"]

#: Columns write_aavso_extended reads (others are optional: mag_std, mag_std_err, airmass).
AAVSO_COLUMNS = ("run_id", "time_bjd_tdb", "star_id", "role", "flags", "filter", "mag", "mag_err")

#: Header filter names (lower case, blanks and punctuation removed) -> AAVSO filter code.
_FILTER_CODES = {
    "u": "U", "johnsonu": "U", "b": "B", "johnsonb": "B", "bessellb": "B",
    "v": "V", "johnsonv": "V", "bessellv": "V",
    "r": "R", "rc": "R", "cousinsr": "R", "bessellr": "R",
    "i": "I", "ic": "I", "cousinsi": "I", "besselli": "I",
    "j": "J", "h": "H", "k": "K",
    "sloanu": "SU", "sdssu": "SU", "up": "SU", "su": "SU",
    "sloang": "SG", "sdssg": "SG", "gp": "SG", "sg": "SG",
    "sloanr": "SR", "sdssr": "SR", "rp": "SR", "sr": "SR",
    "sloani": "SI", "sdssi": "SI", "ip": "SI", "si": "SI",
    "sloanz": "SZ", "sdssz": "SZ", "zp": "SZ", "sz": "SZ",
    # Unfiltered, clear and luminance: AAVSO's CV (reduced with V comparison magnitudes)
    "clear": "CV", "c": "CV", "cv": "CV", "none": "CV", "open": "CV", "unfiltered": "CV",
    "luminance": "CV", "lum": "CV", "l": "CV", "cr": "CR",
    "cbb": "CBB", "exo": "CBB", "exoplanet": "CBB", "bluebl": "CBB",
    "ha": "HA", "halpha": "HA", "tg": "TG", "tb": "TB", "tr": "TR",
}
# Single lower-case letters are the Sloan bands (i is not I); upper-case ones Johnson-Cousins.
_SLOAN_LETTERS = {"u": "SU", "g": "SG", "r": "SR", "i": "SI", "z": "SZ"}

_AAVSO_DATES = ("HJD", "JD")
_DELIMITERS = (",", ";", "!", "|")
# AAVSO field limits (characters).
_STARID_LIMIT, _MAG_LIMIT, _MAGERR_LIMIT, _DATE_LIMIT, _NAME_LIMIT = 30, 8, 6, 16, 20
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
#: What a spreadsheet reads as the start of a formula (OWASP's CSV injection list): a text field
#: that starts with one gets a leading single quote. Number columns are never touched.
_FORMULA_START = "=+-@\t\r"


def aavso_filter(name, codes: dict | None = None) -> str:
    """The AAVSO filter code of a header filter name (`codes` first, then the built-in table);
    the cleaned name itself when no code is obvious."""
    text = "" if name is None else str(name).strip()
    if codes and text in codes:
        return str(codes[text])
    if text in _SLOAN_LETTERS:
        return _SLOAN_LETTERS[text]
    key = re.sub(r"[^a-z0-9]", "", text.lower().replace("'", "p").replace("\u2032", "p"))
    return _FILTER_CODES.get(key, text)


def clean_field(value, delimiter: str = ",", limit: int | None = None) -> str:
    """A header-derived string safe for one field: control characters and the delimiter become
    blanks, '#' is dropped (it would open a parameter line), blanks are collapsed."""
    text = _CONTROL.sub(" ", "" if value is None else str(value))
    text = text.replace(delimiter, " ").replace("#", "")
    text = " ".join(text.split())
    text = defuse_formula(text)
    if limit is not None:
        text = text[:limit].rstrip()
    return text or "na"


def defuse_formula(text: str) -> str:
    """Header text that a spreadsheet would run as a formula (=HYPERLINK(...), @SUM(...),
    +V-1) made plain text by a leading single quote."""
    return "'" + text if text[:1] and text[0] in _FORMULA_START else text


def _defuse_column(column: pa.ChunkedArray) -> pa.ChunkedArray:
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        return column
    import pyarrow.compute as pc

    starts = pc.match_substring_regex(column, "^[" + re.escape(_FORMULA_START) + "]")
    return pc.if_else(starts, pc.binary_join_element_wise("'", column, ""), column)


def _number(value, decimals: int, limit: int) -> str:
    """value with at most `decimals` decimals, fewer if it must fit `limit` characters; 'na'
    for a missing value or one that does not fit at all."""
    if value is None or not math.isfinite(value):
        return "na"
    for places in range(decimals, 0, -1):  # AAVSO wants a dot in every magnitude
        text = f"{value:.{places}f}"
        if len(text) <= limit:
            return text
    return "na"


def _column(table: pa.Table, name: str, fill=np.nan) -> np.ndarray:
    """A column as NumPy: floats as float64 (null -> NaN), integers as int64 (null -> fill),
    strings as objects; `fill` everywhere when the table lacks it."""
    if name not in table.column_names:
        return np.full(table.num_rows, fill, dtype=object if fill is None else None)
    column = table.column(name)
    if pa.types.is_floating(column.type):
        return column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)
    if pa.types.is_integer(column.type):
        return column.cast(pa.int64()).fill_null(fill).to_numpy(zero_copy_only=False)
    return np.array(column.to_pylist(), dtype=object)


def aavso_dates(time_bjd_tdb, ra_deg: float, dec_deg: float, kind: str = "HJD") -> np.ndarray:
    """UTC Julian dates (kind 'JD') or heliocentric Julian dates on UTC (kind 'HJD') of
    mid-exposure BJD_TDB, for a target at (ra_deg, dec_deg), observer at the geocentre."""
    from astropy import units as u
    from astropy.coordinates import SkyCoord, get_body_barycentric
    from astropy.time import Time

    if kind not in _AAVSO_DATES:
        raise EngineValueError(f"date kind must be one of {_AAVSO_DATES}, got {kind!r}")
    direction = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs").cartesian.xyz.value
    bjd = Time(np.asarray(time_bjd_tdb, dtype=np.float64), format="jd", scale="tdb")

    def light_time_s(body: str, moment: Time) -> np.ndarray:
        position = get_body_barycentric(body, moment, ephemeris="builtin").xyz.to_value(u.m)
        return np.einsum("i,i...->...", direction, position) / 299_792_458.0

    # BJD = t + (earth . n) / c at the observing moment t: two fixed-point steps reach < 1 us
    # (the Earth's light time changes by ~0.1 ms per 1,000 s).
    moment = bjd
    for _ in range(2):
        moment = bjd - light_time_s("earth", moment) * u.s
    utc = moment.utc
    if kind == "JD":
        return utc.jd1 + utc.jd2
    heliocentric = light_time_s("earth", moment) - light_time_s("sun", moment)
    heliocentric_utc = utc + heliocentric * u.s
    return heliocentric_utc.jd1 + heliocentric_utc.jd2


def _target_coordinates(target) -> tuple[float, float]:
    try:
        ra, dec = (float(v) for v in target)
    except (TypeError, ValueError):
        raise EngineValueError(
            "target must be (ra_deg, dec_deg): the AAVSO format takes JD or HJD, and converting "
            "the light curves' BJD_TDB back needs the target's direction (frames.parquet "
            "target_ra_deg / target_dec_deg hold the ones used)") from None
    if not (math.isfinite(ra) and math.isfinite(dec) and -90.0 <= dec <= 90.0):
        raise EngineValueError(f"target coordinates out of range: ra {ra}, dec {dec} (degrees)")
    return ra % 360.0, dec


def write_aavso_extended(lightcurves: pa.Table, path, *, observer_code: str, target,
                         star_name: str | None = None, chart: str = "na", date: str = "HJD",
                         good_only: bool = True, transformed: bool = False,
                         filter_codes: dict | None = None, check_names: dict | None = None,
                         software: str | None = None, delimiter: str = ",") -> Path:
    """The target's light curve as an AAVSO Extended File Format report; returns the path.

    Parameters
    ----------
    lightcurves
        the light-curve table (LIGHTCURVES_SCHEMA); rows with role 'target' are the
        observations, 'check' rows give KNAME/KMAG.
    observer_code
        the observer's AAVSO code (letters and digits).
    target
        (ra_deg, dec_deg) of the target, to convert BJD_TDB to `date` ('HJD' or 'JD').
    star_name
        the STARID (AAVSO name or AUID); default: the table's `object` column if it has
        one value, else an error.
    chart
        the AAVSO chart id (sequence) the comparison magnitudes come from, else 'na'.
    good_only
        write only rows with flags == 0 (and a finite magnitude); with False, flagged
        rows too, their flags named in NOTES (FLAGS=CLOUD+...).
    transformed
        TRANS=YES for STD rows (only if mag_std was transformed onto the filter's band).
    filter_codes
        header filter name -> AAVSO code, before the built-in table.
    check_names
        star_id -> label (AUID or chart label) for KNAME; default the star_id.
    """
    table_columns("write_aavso_extended", lightcurves, AAVSO_COLUMNS)
    code, date = _aavso_arguments(observer_code, date, delimiter)
    ra, dec = _target_coordinates(target)
    star = _star_field(lightcurves, star_name, delimiter)

    role = _column(lightcurves, "role")
    run = _column(lightcurves, "run_id")
    flags = _column(lightcurves, "flags", 0)
    time = _column(lightcurves, "time_bjd_tdb")
    frame = (_column(lightcurves, "frame", -1) if "frame" in lightcurves.column_names
             else time)  # without frame numbers a check row matches on its time
    value, error, standard = _reported_magnitudes(lightcurves)
    good = (flags == 0) & np.isfinite(value)

    is_target = role == "target"
    if not is_target.any():
        raise EngineValueError("write_aavso_extended: the light-curve table has no target rows")
    rows = np.flatnonzero(is_target & good) if good_only else \
        np.flatnonzero(is_target & np.isfinite(value))
    if rows.size == 0:
        raise EngineValueError("write_aavso_extended: no target row with a good, finite "
                               "magnitude to write")
    rows = rows[np.argsort(time[rows], kind="stable")]

    check_of_run, check_at = _check_stars(lightcurves, (role == "check") & good, run[rows],
                                          run, frame)

    filters = _column(lightcurves, "filter")
    apertures = _column(lightcurves, "aperture", None)
    airmass = _column(lightcurves, "airmass")
    dates = aavso_dates(time[rows], ra, dec, date)
    if software is None:
        software = f"photometry-engine {_version()}"
    d = delimiter
    lines = _aavso_header(code, software, d, date, ra, dec, bool(standard[rows].all()))
    chart_text = clean_field(chart, d, _NAME_LIMIT)
    for date_value, i in zip(dates, rows):
        check = check_of_run.get(run[i])
        k = check_at.get((run[i], frame[i], check)) if check is not None else None
        if k is not None and standard[k] == standard[i]:
            label = (check_names or {}).get(check, str(check))
            kname, kmag = clean_field(label, d, _NAME_LIMIT), _number(value[k], 4, _MAG_LIMIT)
        else:  # a check magnitude of another kind than the target's would mislead
            kname, kmag = "na", "na"
        notes = f"RUN={clean_field(run[i], d).replace('|', ' ')}"
        if apertures[i] is not None:
            notes += f"|APER={clean_field(apertures[i], d).replace('|', ' ')}"
        if flags[i]:  # written only with good_only=False: say why the row is doubtful
            notes += f"|FLAGS={'+'.join(describe(int(flags[i])))}"
        lines.append(d.join((
            star,
            _number(date_value, 6, _DATE_LIMIT),
            _number(value[i], 4, _MAG_LIMIT),
            _number(error[i], 4, _MAGERR_LIMIT),
            clean_field(aavso_filter(filters[i], filter_codes), d, _NAME_LIMIT),
            "YES" if (transformed and standard[i]) else "NO",
            "STD" if standard[i] else "DIF",
            "ENSEMBLE", "na", kname, kmag,
            _number(airmass[i], 4, 8),
            "na", chart_text, notes,
        )))
    return write_text(path, "\n".join(lines) + "\n", encoding="ascii", errors="replace")


def _aavso_arguments(observer_code, date, delimiter) -> tuple[str, str]:
    """The observer code and date kind (JD or HJD), checked; EngineValueError otherwise."""
    if delimiter not in _DELIMITERS:
        raise EngineValueError(f"delimiter must be one of {_DELIMITERS}, got {delimiter!r}")
    code = str(observer_code).strip()
    if not re.fullmatch(r"[A-Za-z0-9]{1,10}", code):
        raise EngineValueError(f"observer_code must be 1-10 letters or digits, got {code!r}")
    date = str(date).upper()
    if date not in _AAVSO_DATES:
        raise EngineValueError(f"date must be one of {_AAVSO_DATES}, got {date!r}")
    return code, date


def _star_field(lightcurves: pa.Table, star_name: str | None, delimiter: str) -> str:
    """The STARID field: `star_name`, else the table's one `object` value."""
    if star_name is None:
        names = ({v for v in lightcurves.column("object").to_pylist() if v}
                 if "object" in lightcurves.column_names else set())
        if len(names) != 1:
            raise EngineValueError("write_aavso_extended: give star_name (the AAVSO name or "
                                   "AUID of the target)")
        star_name = names.pop()
    star = clean_field(star_name, delimiter, _STARID_LIMIT)
    if star == "na":
        raise EngineValueError(f"star_name {star_name!r} has nothing printable left")
    return star


def _reported_magnitudes(lightcurves: pa.Table):
    """(magnitude, error, standard) of each row: the standard magnitude where it is tied to a
    catalogue (a merge against a reference run is differential), else the instrumental one."""
    mag, mag_err = _column(lightcurves, "mag"), _column(lightcurves, "mag_err")
    mag_std, mag_std_err = _column(lightcurves, "mag_std"), _column(lightcurves, "mag_std_err")
    system = _column(lightcurves, "mag_std_system", None)
    standard = np.isfinite(mag_std) & np.array([str(v).startswith("catalogue") for v in system])
    return np.where(standard, mag_std, mag), np.where(standard, mag_std_err, mag_err), standard


def _check_stars(lightcurves: pa.Table, check_rows: np.ndarray, target_runs, run, frame):
    """One check star per run: the one with most good rows (ties: lowest star_id); and the row
    of each (run, frame, star_id) check observation."""
    star_id = _column(lightcurves, "star_id", -1)
    check_of_run = {}
    for name in set(target_runs):
        ids, counts = np.unique(star_id[check_rows & (run == name)], return_counts=True)
        if ids.size:
            check_of_run[name] = int(ids[np.argmax(counts)])
    check_at = {(run[i], frame[i], int(star_id[i])): i for i in np.flatnonzero(check_rows)}
    return check_of_run, check_at


def _aavso_header(code: str, software: str, d: str, date: str, ra: float, dec: float,
                  all_standard: bool) -> list[str]:
    lines = [
        "#TYPE=EXTENDED",
        f"#OBSCODE={code}",
        f"#SOFTWARE={clean_field(software, d, 255)}",
        f"#DELIM={d}",
        f"#DATE={date}",
        "#OBSTYPE=CCD",
        (f"#{date} from BJD_TDB (mid-exposure) for RA {ra:.6f} Dec {dec:+.6f} deg, observer "
         "at the geocentre (< 0.03 s)"),
        d.join(("#STARID", "DATE", "MAGNITUDE", "MAGERR", "FILTER", "TRANS", "MTYPE", "CNAME",
                "CMAG", "KNAME", "KMAG", "AMASS", "GROUP", "CHART", "NOTES")),
    ]
    if not all_standard:
        lines.insert(-1, "#DIF magnitudes are instrumental, on each run's ensemble zero point "
                         "(an arbitrary offset per run)")
    return lines


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("photometry-engine")
    except PackageNotFoundError:
        return "unknown"


def write_csv(lightcurves: pa.Table, path, columns=None) -> Path:
    """The light-curve table (all rows; `columns` to choose and order them) as CSV with a header
    line, written atomically; returns the path. Text that starts like a spreadsheet formula
    gets a leading single quote (`defuse_formula`)."""
    from pyarrow import csv

    if not isinstance(lightcurves, pa.Table):
        raise EngineValueError(f"write_csv: expected a pyarrow.Table, got "
                               f"{type(lightcurves).__name__}")
    if columns is not None:
        columns = [columns] if isinstance(columns, str) else list(columns)
        table_columns("write_csv", lightcurves, columns)
        if not columns:
            raise EngineValueError("write_csv: columns is empty")
        lightcurves = lightcurves.select(columns)
    lightcurves = pa.table([_defuse_column(c) for c in lightcurves.columns],
                           names=lightcurves.column_names)
    with atomic_path(path) as temporary:
        csv.write_csv(lightcurves, temporary)
    return Path(path)
