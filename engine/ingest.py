"""The ingest stage: FITS files from any camera into run cubes and a frames table, with exact times.

`ingest(paths, out_dir, target=None, config=None)` finds the FITS files under `paths`, reads
each header into one normalised frame record (engine.io.headers, .timestamps, .frame_type),
groups the frames into runs (lights: site x telescope x night x filter x binning) and calibration
sets (bias; dark; flat per filter), and writes

- `out_dir/cubes/RUN_ID.zarr`: each run's (and calibration set's) frames, in time order, as a Zarr
  v3 cube (frame, y, x), one frame per chunk (engine.io.cube says why LZ4 + bit-shuffle);
- `out_dir/frames.parquet`: one row per input file (engine.io.schemas.FRAMES_SCHEMA), skipped
  files included with their reason.

Times: mid-exposure UTC from the header's best time stamp, corrected by the site's configured
clock offset, then BJD_TDB (engine.timing, offline) for the target: `target` if given, else the
configuration's, else the median of the run's header pointing (logged as a warning: half a degree
of pointing error moves BJD_TDB by ~4 s). Without a site location BJD_TDB is geocentric (up to
21 ms off; the provenance says so) and the airmass is the header's, if any.

Bad input never stops the night: unreadable, truncated or non-FITS files, empty or all-NaN
data, unexpected NAXIS, missing or unparseable times, EXPTIME <= 0 (0 is fine for a bias),
unknown frame types, frames whose shape differs from their run's, and duplicates (identical
pixels, whatever the container) are skipped, each with a reason in the table and a warning in the
log ("engine.ingest"). What stops the run is typed: InputNotFoundError (a missing input path or a
folder without FITS files), EngineValueError (a bad target or configuration), EngineFileError
(an output folder that cannot be used).

Camera values: gain, read noise and saturation level come from the header, else the site's
configuration, each with its source in the table; a saturation level neither gives is measured
on each frame's raw pixels (engine.io.adc.saturation_level: the ADC's depth or a
pile-up) before any dtype promotion or Bayer extraction, and shared across the camera's frames
where one frame cannot tell. Gain and read noise that neither gives are measured later, by
calibration (photon transfer, else the lights' sky).

Reruns: a cube is rebuilt only when its frames (path, size, modification time), the
configuration or the target changed, or the output folder's manifest finds its bytes changed
(engine.io.manifest); the table is rewritten only when its content changed. So
ingesting the same files again writes nothing, and a killed ingest leaves only temporary names
that the next run clears and never trusts. Inputs are opened read-only.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import os
import re
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import pyarrow as pa

from engine.cext import default_threads
from engine.errors import EngineFileError, EngineValueError, HeaderError
from engine.io import bayer as _bayer
from engine.io.adc import saturation_level
from engine.io.cube import CubeWriter, open_cube, remove_stale_temporaries
from engine.io.fits import FitsImage, find_fits_files, open_image, read_image
from engine.io.frame_type import classify_frame
from engine.io.headers import (camera_identity, identity_values, normalise_header, parse_dec,
                               parse_ra)
from engine.io.layout import CUBES_FOLDER, FRAMES_TABLE, PRODUCT_FOLDERS, bad_pixel_cube_path
from engine.io.manifest import Manifest
from engine.io.processing import bad_pixel_hdu, calibrated_state, pedestal
from engine.io.schemas import FRAMES_SCHEMA
from engine.io.tables import read_parquet, write_parquet
from engine.io.timestamps import header_timestamps, mid_from_stamps, run_convention
from engine.progress import progress
from engine.settings.ingest import IngestConfig, Site

__all__ = ["IngestResult", "ingest", "parse_target"]

log = logging.getLogger("engine.ingest")

_FORMAT_VERSION = "ingest-2"
_LATER_CODES = {"all_nan", "shape_mismatch", "duplicate"}
#: The longest single exposure believed: half a day. No night is longer, so a larger EXPTIME is
#: a garbled header (1e6 s would move mid-exposure six days on and start a run of its own; 1e30
#: overflows the time arithmetic) and the frame is skipped.
MAX_EXPTIME_S = 43200.0
_GEOCENTRE_NOTE = "site unknown: geocentric BJD_TDB (up to 0.021 s off)"


@dataclass(frozen=True)
class IngestResult:
    """What ingest produced.

    Attributes
    ----------
    frames
        the frames table (pyarrow Table, FRAMES_SCHEMA), one row per input file.
    cubes
        run id -> path of its cube (read it with `cube(run_id)`).
    out_dir, frames_path
        where the products are.
    written, table_written
        run ids whose cubes this call (re)wrote, and whether it wrote the table.
    """

    frames: pa.Table
    cubes: dict[str, Path]
    out_dir: Path
    frames_path: Path
    written: tuple[str, ...]
    table_written: bool

    @property
    def n_ok(self) -> int:
        return sum(1 for s in self.frames.column("status").to_pylist() if s == "ok")

    @property
    def n_skipped(self) -> int:
        return self.frames.num_rows - self.n_ok

    def cube(self, run_id: str):
        """The run's cube, read-only (a zarr Array: cube[k] is frame k)."""
        if run_id not in self.cubes:
            raise EngineValueError(f"no run {run_id!r}; runs: {', '.join(sorted(self.cubes))}")
        return open_cube(self.cubes[run_id])

    def summary(self) -> str:
        rows = self.frames.to_pylist()
        lines = [f"{self.frames.num_rows} files: {self.n_ok} ok, {self.n_skipped} skipped; "
                 f"{len(self.cubes)} cubes in {self.out_dir / CUBES_FOLDER} "
                 f"({len(self.written)} written now)"]
        counts = collections.Counter((r["run_id"], r["frame_type"]) for r in rows
                                     if r["status"] == "ok")
        for (run_id, frame_type), n in sorted(counts.items()):
            lines.append(f"  {run_id:48s} {frame_type:6s} {n:5d} frames")
        reasons = collections.Counter(r["reason_code"] for r in rows if r["status"] != "ok")
        for code, n in sorted(reasons.items()):
            lines.append(f"  skipped ({code}): {n}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Arguments

def parse_target(target) -> tuple[float, float] | None:
    """(ra_deg, dec_deg) from None, a (ra, dec) pair of degrees or of strings ('HH:MM:SS',
    '±DD:MM:SS'; a plain number string is degrees). Raises EngineValueError."""
    if target is None:
        return None
    try:
        ra, dec = target
    except (TypeError, ValueError):
        raise EngineValueError(f"target must be (ra, dec), got {target!r}") from None
    try:
        return parse_ra(ra), parse_dec(dec)
    except (TypeError, ValueError) as exc:
        raise EngineValueError(f"target ({ra!r}, {dec!r}) is not a sky position: {exc}") from None


# ----------------------------------------------------------------------------------------------
# Pass 1: one file's header into one row

def _new_row(path: Path) -> dict:
    row = {name: None for name in FRAMES_SCHEMA.names}
    row["path"] = str(path)
    row["status"] = "ok"
    return row


def _skip(row: dict, code: str, reason: str) -> dict:
    row["status"], row["reason_code"], row["reason"] = "skipped", code, reason
    row["cube_index"] = None
    return row


def _sanitise(text: str, limit: int = 40) -> str:
    """A header string made safe as part of a file name."""
    cleaned = re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-.")
    return cleaned[:limit].strip("-.") or "x"


def _night(jd_utc: float, longitude_deg: float | None) -> str:
    """Local date of the evening a night began (local mean solar time minus 12 h)."""
    mjd = jd_utc - 2400000.5 + (longitude_deg or 0.0) / 360.0 - 0.5
    return (_dt.date(1858, 11, 17) + _dt.timedelta(days=math.floor(mjd))).isoformat()


def _timestamp(jd_utc: tuple[float, float]) -> _dt.datetime:
    days = (jd_utc[0] - 2440587.5) + jd_utc[1]
    micro = round(days * 86400e6)
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=micro)


def _full_scale(image: FitsImage, saturation: float | None) -> float:
    if saturation:
        return float(saturation)
    if image.dtype.kind in "ui":
        return float(np.iinfo(image.dtype).max)
    return 65535.0


def _median(data: np.ndarray) -> float:
    sample = data[::8, ::8]  # 1/64 of the pixels: 65k for a 2048² frame, plenty for a median
    if sample.dtype.kind == "f":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = np.nanmedian(sample)
    else:
        value = np.median(sample)
    return float(value)


def _site_location(row: dict, site: Site | None, record) -> None:
    header_location = record.site_latitude_deg is not None
    if site is not None and site.has_location:
        row["site_longitude_deg"] = site.longitude_deg
        row["site_latitude_deg"] = site.latitude_deg
        row["site_height_m"] = site.height_m if site.height_m is not None else 0.0
        row["site_source"] = f"configuration (site {site.name!r})"
        if header_location:
            dlat = record.site_latitude_deg - site.latitude_deg
            dlon = ((record.site_longitude_deg - site.longitude_deg + 180.0) % 360.0) - 180.0
            dlon *= math.cos(math.radians(site.latitude_deg))
            if math.hypot(dlat, dlon) > 0.02:  # ~2 km
                _note(row, f"header site ({record.sources.get('site')}: "
                           f"{record.site_latitude_deg:.4f}, {record.site_longitude_deg:.4f}) "
                           f"disagrees with the configured site {site.name!r}; using the "
                           "configuration")
    elif header_location:
        row["site_longitude_deg"] = record.site_longitude_deg
        row["site_latitude_deg"] = record.site_latitude_deg
        row["site_height_m"] = record.site_height_m
        row["site_source"] = record.sources.get("site")


_NOTE_SEPARATOR = " | "


def _note(row: dict, text: str) -> None:
    row["notes"] = text if not row["notes"] else f"{row['notes']}{_NOTE_SEPARATOR}{text}"


def _log_notes(rows: list[dict], per_file_limit: int = 10) -> None:
    """Each note once per file; a note that more than `per_file_limit` files share (numbers
    aside) is logged once with their count: a 1,000-frame night must not bury the log."""
    by_kind: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    numbers = re.compile(r"\d+(?:\.\d*)?(?:e[-+]?\d+)?")
    for row in rows:
        for text in (row["notes"] or "").split(_NOTE_SEPARATOR):
            if text:
                by_kind[numbers.sub("#", text)].append((row["path"], text))
    for items in by_kind.values():
        if len(items) <= per_file_limit:
            for path, text in items:
                log.warning("%s: %s", path, text)
        else:
            varies = " (numbers vary)" if len({text for _, text in items}) > 1 else ""
            log.warning("%d files (%s ... %s): %s%s", len(items), items[0][0], items[-1][0],
                        items[0][1], varies)


@dataclass
class _Scanned:
    row: dict
    image: FitsImage | None = None
    bayer: str | None = None  # pattern when the frame is extracted
    site: Site | None = None
    stamps: list = dataclasses.field(default_factory=list)  # the header's time stamps
    time_problems: list = dataclasses.field(default_factory=list)
    raw_saturation: float | None = None  # the raw pixels' level, when header or site gives it


def _camera_values(row: dict, record, site: Site | None) -> float | None:
    """Gain, read noise and saturation from the header, else the site's configuration, each
    with its source (left empty for calibration to measure). Returns the raw saturation."""
    for column, value, key, configured in (
            ("gain", record.gain, "gain", site and site.gain_e_per_adu),
            ("read_noise", record.read_noise, "read_noise", site and site.read_noise_e),
            ("saturation", record.saturation, "saturation", site and site.saturation_adu)):
        if value is not None:
            row[column], row[f"{column}_source"] = value, f"header {record.sources[key]}"
        elif configured is not None:
            row[column] = configured
            row[f"{column}_source"] = f"configuration (site {site.name!r})"
    return row["saturation"]


def _bayer_units(row: dict, mode: str) -> None:
    """Gain, read noise and saturation of a Bayer frame moved to its extracted frame's units."""
    for column, convert in (("gain", _bayer.extracted_gain),
                            ("read_noise", _bayer.extracted_read_noise),
                            ("saturation", _bayer.extracted_saturation)):
        if row[column] is not None:
            factor = convert(1.0, mode)
            row[column] = convert(row[column], mode)
            if factor != 1.0:
                row[f"{column}_source"] += f" x {factor:.4g} for the {mode} Bayer extraction"


def _scan_safely(path: Path, config: IngestConfig) -> _Scanned:
    """`_scan`, with any unexpected failure turned into a skipped row: one broken file must not
    stop the night."""
    try:
        return _scan(path, config)
    except Exception as exc:
        log.debug("scanning %s failed", path, exc_info=True)
        row = _new_row(path)
        try:
            stat = path.stat()
            row["file_size"], row["file_mtime_ns"] = stat.st_size, stat.st_mtime_ns
        except OSError:
            pass
        return _Scanned(_skip(row, "unreadable", f"{path}: cannot be read ({exc})"))


def _scan(path: Path, config: IngestConfig) -> _Scanned:
    """Everything the header says about one file, as a frames-table row (pixels unread, except
    for the rare frame whose type only its level can tell)."""
    row = _new_row(path)
    try:
        stat = path.stat()
        row["file_size"], row["file_mtime_ns"] = stat.st_size, stat.st_mtime_ns
    except OSError as exc:
        return _Scanned(_skip(row, "unreadable", f"{path}: cannot be read ({exc})"))
    try:
        image = open_image(path)
    except EngineFileError as exc:
        return _Scanned(_skip(row, getattr(exc, "reason_code", "unreadable"), str(exc)))
    header = image.header
    record = normalise_header(header, image.shape)
    for text in ([image.note] if image.note else []) + record.notes:
        _note(row, text)
    row.update(hdu=image.hdu_index, hdu_name=image.hdu_name, compression=image.compression)

    site = config.site_for(str(path), identity_values(header))
    row["site"] = site.name if site is not None else record.observatory
    row["telescope"] = record.telescope or record.instrument or row["site"] or "unknown"
    row["instrument"] = record.instrument
    row["object"] = record.object
    row["filter"] = record.filter
    row["gain_setting"] = record.gain_setting
    row["readout_mode"] = record.readout_mode
    raw_saturation = _camera_values(row, record, site)
    row["temperature"], row["set_temperature"] = record.temperature, record.set_temperature
    row["binning_x"], row["binning_y"] = record.binning
    row["ra_deg"], row["dec_deg"] = record.ra_deg, record.dec_deg
    row["pointing_source"] = record.sources.get("pointing")
    row["wcs"] = record.wcs
    row["pixel_scale_arcsec"] = record.pixel_scale_arcsec
    row["pixel_scale_source"] = record.sources.get("pixel_scale")
    row["aperture_diameter_m"] = (site.aperture_diameter_m if site is not None and
                                  site.aperture_diameter_m is not None
                                  else record.aperture_diameter_m)
    row["bayer_pattern"] = record.bayer_pattern
    _site_location(row, site, record)

    # Stored frame: the image itself, or its Bayer extraction at half resolution.
    shape, dtype = image.shape, image.dtype
    overscan, trim = record.overscan_section, record.trim_section
    pattern = record.bayer_pattern
    if pattern is not None:
        shape, dtype = (image.shape[0] // 2, image.shape[1] // 2), np.dtype(np.float32)
        overscan = _bayer.extracted_section(overscan, image.shape)
        trim = _bayer.extracted_section(trim, image.shape)
        row["wcs"] = None  # the raw frame's WCS does not describe the extracted one
        if row["pixel_scale_arcsec"] is not None:  # half resolution: twice the angle
            row["pixel_scale_arcsec"] *= 2.0
            row["pixel_scale_source"] += " x 2 (Bayer extraction)"
        _bayer_units(row, config.bayer)
    row["shape"], row["dtype"] = list(shape), dtype.name
    row["overscan_section"] = list(overscan) if overscan else None
    row["trim_section"] = list(trim) if trim else None

    # Frame type.
    override = config.frame_type_override(str(path))

    def level():
        try:
            data = read_image(image)
        except EngineFileError:
            return None
        return _median(data) / _full_scale(image, record.saturation)

    kind = classify_frame(header, path, override=override, exptime=record.exptime, level=level,
                          rules=site.frame_types if site is not None else ())
    row["frame_type"], row["frame_type_evidence"] = kind.frame_type, kind.evidence
    for text in kind.notes:
        _note(row, text)
    if kind.frame_type is None:
        return _Scanned(_skip(row, "unknown_type", f"{path}: unknown frame type: {kind.evidence}"),
                        image)

    # Exposure time.
    exptime = record.exptime
    if exptime is None:
        if kind.frame_type != "bias":
            return _Scanned(_skip(row, "bad_exptime", f"{path}: no exposure time keyword "
                                  "(EXPTIME, EXPOSURE, ...)"), image)
        exptime = 0.0
        _note(row, "no exposure time keyword: 0 s assumed for a bias")
    row["exptime"] = exptime
    if not 0 <= exptime <= MAX_EXPTIME_S or (exptime == 0 and kind.frame_type != "bias"):
        row["exptime"] = exptime if math.isfinite(exptime) else None
        ceiling = f" (at most {MAX_EXPTIME_S:g} s is believed)" if exptime > 0 else ""
        return _Scanned(_skip(row, "bad_exptime", f"{path}: {record.sources.get('exptime')} = "
                              f"{exptime:g} s for a {kind.frame_type} frame{ceiling}"), image)

    _processing(row, header, image, site, pattern)

    # Time (settled per run later: `_run_times`).
    stamps, problems = header_timestamps(
        header, utc_offset_hours=site.utc_offset_hours if site else None)
    scanned = _Scanned(row, image, pattern, site, stamps, problems)
    try:
        _frame_time(scanned, None)
    except HeaderError as exc:
        return _Scanned(_skip(row, "no_time", str(exc)), image)
    row["night"] = _night(row["jd_utc_mid"], row["site_longitude_deg"])
    if record.airmass is not None:
        row["airmass"], row["airmass_source"] = record.airmass, (
            f"header {record.sources['airmass']} (not mid-exposure)")
    # Keep what reading the pixels needs, not the header (it can be large).
    scanned.image = dataclasses.replace(image, header=None)
    scanned.raw_saturation = raw_saturation
    return scanned


def _processing(row: dict, header, image: FitsImage, site: Site | None,
                bayer: str | None) -> None:
    """What was done to the frame before ingest: calibration, a pedestal, a bad-pixel map."""
    steps, evidence = calibrated_state(header)
    row["calibrated_state"] = ",".join(steps) if steps else "raw"
    row["calibrated_evidence"] = evidence or None
    if steps:
        _note(row, f"already calibrated ({', '.join(steps)}: {evidence}); not calibrated again")
    amount, source = pedestal(header, site.pedestal_adu if site is not None else None)
    row["pedestal_adu"] = amount
    if amount:
        row["dtype"] = "float32"  # a subtracted pedestal can leave values below 0
        _note(row, f"pedestal of {amount:g} ADU removed ({source})")
    if image.n_image_hdus > 1:
        index = bad_pixel_hdu(image.path, image.shape)
        if index is not None and bayer is not None:
            _note(row, f"bad-pixel HDU {index} ignored: it maps the raw Bayer frame")
        elif index is not None:
            row["bad_pixel_hdu"] = index


def _frame_time(scanned: _Scanned, convention) -> None:
    """The row's time columns from its stamps and the run's convention (None: the frame's own
    stamps alone); returns the MidExposure. Raises HeaderError when no stamp is usable."""
    row, site = scanned.row, scanned.site
    mid = mid_from_stamps(scanned.stamps, scanned.time_problems, row["exptime"],
                          clock_offset_s=site.clock_offset_s if site else 0.0,
                          clock_uncertainty_s=site.clock_uncertainty_s if site else 0.0,
                          time_reference=site.time_reference if site else None,
                          convention=convention, path=row["path"])
    row["jd_utc_mid"] = mid.jd_utc
    row["time_utc_mid"] = _timestamp(mid.jd)
    row["time_keyword"], row["time_reference"] = mid.keyword, mid.reference
    row["time_basis"], row["time_precision_s"] = mid.basis, mid.precision_s
    row["clock_offset_s"], row["time_err_s"] = mid.clock_offset_s, mid.time_err_s
    row["time_source"] = mid.provenance
    if site is not None and mid.clock_offset_s:
        row["time_source"] += f" (site {site.name!r})"
    return mid


def _run_times(members: list[_Scanned]) -> None:
    """One time convention for a run: what each keyword marks, read from how the run's
    keywords agree (engine.io.timestamps.run_convention), and one keyword for every frame."""
    site = members[0].site
    convention = run_convention([(m.stamps, m.row["exptime"]) for m in members],
                                time_reference=site.time_reference if site else None)
    for member in members:
        mid = _frame_time(member, convention)
        for text in mid.notes:
            _note(member.row, text)
        if convention.evidence:
            member.row["time_source"] += "; run: " + "; ".join(convention.evidence)


# ----------------------------------------------------------------------------------------------
# Grouping

def _group_key(row: dict) -> tuple:
    """(readable parts of the run id, camera): light runs are split by `camera_identity`, so
    two cameras never share one; calibration frames are split into sets per camera by the
    calibration stage (with the same identity), which names each set."""
    camera = camera_identity(row, shape=False) if row["frame_type"] == "light" else None
    return _readable_key(row), camera


def _readable_key(row: dict) -> tuple:
    frame_type = row["frame_type"]
    filter_name = row["filter"] or "nofilter"
    parts = []
    if row["site"] and row["site"] != row["telescope"]:
        parts.append(row["site"])
    parts += [row["telescope"], row["night"]]
    if frame_type != "light":
        parts.append(frame_type)
    if frame_type in ("light", "flat"):
        parts.append(filter_name)
    if (row["binning_x"], row["binning_y"]) != (1, 1):
        parts.append(f"bin{row['binning_x']}x{row['binning_y']}")
    return tuple(parts)


def _run_ids(keys: Iterable[tuple]) -> dict[tuple, str]:
    """Run id of each (readable parts, camera) key: the parts joined; a second key with the same
    id (another camera, or parts that sanitise alike) gets a suffix from its hash."""
    ids: dict[tuple, str] = {}
    taken: dict[str, tuple] = {}
    for key in sorted(set(keys), key=repr):
        run_id = "_".join(_sanitise(part) for part in key[0])
        if run_id in taken and taken[run_id] != key:
            run_id += "-" + hashlib.sha256(repr(key).encode()).hexdigest()[:6]
        taken[run_id] = key
        ids[key] = run_id
    return ids


def _fingerprint(run_id: str, members: list[dict], settings: str) -> str:
    items = [(r["path"], r["file_size"], r["file_mtime_ns"]) for r in members]
    text = json.dumps([_FORMAT_VERSION, run_id, settings, items])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------------------------
# Times for a run: target, BJD_TDB, airmass

def _run_target(run_id: str, lights: list[dict], target: tuple[float, float] | None,
                source: str | None) -> tuple[float | None, float | None, str | None]:
    if target is not None:
        return target[0], target[1], source
    pointed = [(r["ra_deg"], r["dec_deg"]) for r in lights if r["ra_deg"] is not None]
    if not pointed:
        return None, None, None
    ra = np.radians([p[0] for p in pointed])
    dec = np.radians([p[1] for p in pointed])
    # Median of unit vectors' components: robust, and right across RA = 0.
    x, y, z = (np.median(np.cos(dec) * np.cos(ra)), np.median(np.cos(dec) * np.sin(ra)),
               np.median(np.sin(dec)))
    ra_deg = float(np.degrees(np.arctan2(y, x)) % 360.0)
    dec_deg = float(np.degrees(np.arctan2(z, math.hypot(x, y))))
    keys = sorted({r["pointing_source"] for r in lights if r["pointing_source"]})
    log.warning("run %s: no target coordinates given; using the median header pointing (%s) "
                "RA %.5f, Dec %+.5f deg. Half a degree of pointing error moves BJD_TDB by ~4 s: "
                "give --target-ra/--target-dec", run_id, ", ".join(keys), ra_deg, dec_deg)
    return ra_deg, dec_deg, f"header pointing ({', '.join(keys)}), run median"


def _times(lights: list[dict], ra: float, dec: float) -> None:
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    from engine import timing

    by_site = collections.defaultdict(list)
    for row in lights:
        key = (row["site_longitude_deg"], row["site_latitude_deg"], row["site_height_m"])
        by_site[key if key[0] is not None else None].append(row)
    for key, rows in by_site.items():
        jd = np.array([r["jd_utc_mid"] for r in rows], dtype=np.float64)
        if key is None:
            location = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)
        else:
            location = timing.site_location(key[0], key[1], key[2] or 0.0)
        bjd = timing.utc_to_bjd_tdb(jd, ra, dec, location)
        airmass = None
        if key is not None:
            with np.errstate(invalid="ignore"):
                airmass = timing.airmass(jd, ra, dec, location)
        for k, row in enumerate(rows):
            row["time_bjd_tdb"] = float(bjd[k])
            row["time_source"] += (f"; BJD_TDB for RA {ra:.5f}, Dec {dec:+.5f} deg "
                                   f"({row['target_source']})")
            if key is None:
                row["time_source"] += f"; {_GEOCENTRE_NOTE}"
            if airmass is not None:
                value = float(airmass[k])
                row["airmass"] = value if math.isfinite(value) else None
                row["airmass_source"] = ("computed at mid-exposure" if math.isfinite(value)
                                         else "target below the horizon")


# ----------------------------------------------------------------------------------------------
# Pass 2: pixels into cubes

@dataclass
class _Loaded:
    data: np.ndarray | None = None
    content_hash: str | None = None
    median: float | None = None
    code: str | None = None  # why the frame is skipped, when it is
    reason: str | None = None
    bad_pixels: np.ndarray | None = None  # the file's own bad-pixel mask (uint8, 1 = bad)
    saturation: tuple[float, str] | None = None  # measured on the raw pixels: (level, how)


def _load(scanned: _Scanned, mode: str) -> _Loaded:
    """One frame's stored pixels, content hash and median, or why it must be skipped."""
    row = scanned.row
    try:
        image = scanned.image or open_image(row["path"])
        data = read_image(image)
    except EngineFileError as exc:
        return _Loaded(code=getattr(exc, "reason_code", "unreadable"), reason=str(exc))
    except Exception as exc:  # one broken file must not stop the night
        log.debug("reading %s failed", row["path"], exc_info=True)
        return _Loaded(code="unreadable", reason=f"{row['path']}: cannot be read ({exc})")
    if data.size == 0:
        return _Loaded(code="no_data", reason=f"{row['path']}: the image has no pixels")
    if data.dtype.kind == "f" and not np.isfinite(data).any():
        return _Loaded(code="all_nan", reason=f"{row['path']}: every pixel is NaN or infinite")
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    # Saturation is measured on the pixels as the camera stored them: before a Bayer extraction
    # averages it away and before the run's cube promotes the dtype.
    raw_level, measured = scanned.raw_saturation, None
    if raw_level is None:
        measured = saturation_level(data)
        raw_level = measured[0] if measured else None
    if scanned.bayer is not None:
        data = _bayer.extract(data, scanned.bayer, mode, saturation=raw_level)
        if measured:
            measured = (_bayer.extracted_saturation(measured[0], mode), measured[1] +
                        "; on the raw Bayer pixels: a 2x2 cell with one saturated is saturated")
    if row["pedestal_adu"]:
        data = data.astype(np.float32) - np.float32(row["pedestal_adu"])
        if measured:  # the level moves with the pixels
            measured = (measured[0] - row["pedestal_adu"], measured[1] + ", less the pedestal")
    bad = None
    if row["bad_pixel_hdu"] is not None:
        try:
            from astropy.io import fits

            with fits.open(row["path"], memmap=False) as hdul:
                bad = (np.asarray(hdul[row["bad_pixel_hdu"]].data) != 0).astype(np.uint8)
        except Exception as exc:  # a broken mask loses the mask, not the frame
            log.warning("%s: bad-pixel HDU %s unreadable (%s): not used", row["path"],
                        row["bad_pixel_hdu"], exc)
    return _Loaded(data=data, content_hash=digest.hexdigest()[:32], median=_median(data),
                   bad_pixels=bad, saturation=measured)


def _cube_dtype(members: list[dict]) -> np.dtype:
    dtypes = {np.dtype(r["dtype"]) for r in members}
    if len(dtypes) == 1:
        return dtypes.pop()
    result = np.result_type(*dtypes)
    if result.kind == "f" and result.itemsize > 4 and np.dtype(np.float64) not in dtypes:
        return np.dtype(np.float32)
    return result


def _write_run(run_id: str, members: list[_Scanned], cube_path: Path, attributes: dict,
               seen: dict[str, str], mode: str, pool: ThreadPoolExecutor, depth: int) -> bool:
    """Read, check and store a run's frames; fills their pass-2 fields. Returns whether a cube
    was written (False when every frame was skipped)."""
    rows = [m.row for m in members]
    writer = None
    # The files' own bad-pixel masks, frame by frame beside the cube (RUN_ID_bpm.zarr).
    masks = None
    if any(r["bad_pixel_hdu"] is not None for r in rows):
        masks = CubeWriter(bad_pixel_cube_path(cube_path), tuple(rows[0]["shape"]), np.uint8,
                           capacity=len(members), attributes={"run_id": run_id,
                                                              "meaning": "1 = bad pixel"})
    writes = collections.deque()  # frames compressing and writing in the pool
    bar = progress(total=len(members), desc=f"ingest {run_id}")
    try:
        pending = collections.deque()
        iterator = iter(members)
        for scanned in iterator:
            pending.append((scanned, pool.submit(_load, scanned, mode)))
            if len(pending) >= depth:
                break
        while pending:
            scanned, future = pending.popleft()
            following = next(iterator, None)
            if following is not None:
                pending.append((following, pool.submit(_load, following, mode)))
            loaded = future.result()
            bar.update(1)
            row = scanned.row
            if loaded.data is None:
                _skip(row, loaded.code, loaded.reason)
                continue
            row["content_hash"], row["median_adu"] = loaded.content_hash, loaded.median
            if loaded.saturation is not None:
                row["saturation"] = loaded.saturation[0]
                row["saturation_source"] = f"measured: {loaded.saturation[1]}"
            if loaded.content_hash in seen:
                _skip(row, "duplicate", f"{row['path']}: duplicate of "
                                        f"{seen[loaded.content_hash]} (identical pixels)")
                continue
            seen[loaded.content_hash] = row["path"]
            if writer is None:
                writer = CubeWriter(cube_path, tuple(row["shape"]), _cube_dtype(rows),
                                    capacity=len(members), attributes=attributes)
            row["cube_index"] = writer.reserve()
            writes.append(pool.submit(writer.write, row["cube_index"], loaded.data))
            if masks is not None:
                bad = loaded.bad_pixels
                if bad is None or bad.shape != loaded.data.shape:
                    bad = np.zeros(loaded.data.shape, np.uint8)
                masks.write(masks.reserve(), bad)
            del loaded
            while len(writes) > depth:
                writes.popleft().result()
        while writes:
            writes.popleft().result()
        if writer is None:
            if masks is not None:
                masks.abort()
            return False
        ok = [r for r in rows if r["status"] == "ok"]
        writer.commit({"paths": [r["path"] for r in ok],
                       "content_hashes": [r["content_hash"] for r in ok]})
        if masks is not None:
            masks.commit()
        return True
    except BaseException:
        for future in writes:  # let running writes finish before the temporary goes
            future.cancel()
        for future in writes:
            if not future.cancelled():
                try:
                    future.result()
                except BaseException:
                    pass
        for partial in (writer, masks):
            if partial is not None:
                partial.abort()
        raise
    finally:
        bar.close()


# ----------------------------------------------------------------------------------------------
# The stage

def _previous_rows(frames_path: Path, settings: str) -> dict[str, dict]:
    if not frames_path.is_file():
        return {}
    try:
        table = read_parquet(frames_path)
    except EngineFileError as exc:
        log.warning("ignoring the previous frames table: %s", exc)
        return {}
    metadata = table.schema.metadata or {}
    if metadata.get(b"engine_ingest_settings", b"").decode() != settings:
        return {}
    if table.schema.names != FRAMES_SCHEMA.names:
        return {}
    return {row["path"]: row for row in table.to_pylist()}


def _to_table(rows: list[dict]) -> pa.Table:
    rows = sorted(rows, key=lambda r: r["path"])
    return pa.Table.from_pylist(rows, schema=FRAMES_SCHEMA)


#: Folders under an output folder that hold the engine's products, never inputs.


def ingest(paths, out_dir, target=None, config: IngestConfig | None = None, *,
           workers: int | None = None, manifest: Manifest | None = None) -> IngestResult:
    """Ingest FITS files (or folders of them, searched recursively) into `out_dir`.

    Parameters
    ----------
    paths
        FITS files and folders (searched recursively).
    out_dir
        the output folder: cubes/ and frames.parquet are written there.
    target
        (ra, dec) of the target for BJD_TDB and airmass: degrees, or strings 'HH:MM:SS' and
        '±DD:MM:SS'; default: the configuration's, else each run's median header pointing.
    config
        engine.settings.IngestConfig (sites with locations and clock offsets, frame-type overrides,
        Bayer mode); default: IngestConfig().
    workers
        threads reading files (default: the cores this process may use).
    manifest
        the output folder's engine.io.manifest.Manifest (default: read from `out_dir`); a cube
        is reused only when it lists it as current.

    Returns
    -------
    IngestResult
        the frames table, the cubes. See the module docstring for what is skipped and what
        raises.
    """
    config = IngestConfig() if config is None else config
    if not isinstance(config, IngestConfig):
        raise EngineValueError(
            f"config must be an engine.settings.IngestConfig, got {type(config).__name__}")
    threads = default_threads(workers, "workers")
    parsed = parse_target(target)
    target_source = "argument" if parsed is not None else None
    if parsed is None and config.target_ra_deg is not None:
        parsed, target_source = (config.target_ra_deg, config.target_dec_deg), "configuration"

    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise EngineFileError(f"output folder {str(out_dir)!r} is a file")
    files = find_fits_files(paths if not isinstance(paths, (str, os.PathLike)) else [paths])
    # The engine's own products (masters are FITS) are never inputs; raw frames kept inside the
    # output folder (as the demo keeps them in raw/) are.
    products = [out_dir / name for name in PRODUCT_FOLDERS]
    files = [f for f in files if not any(folder in f.parents for folder in products)]
    cubes_dir = out_dir / CUBES_FOLDER
    frames_path = out_dir / FRAMES_TABLE
    try:
        cubes_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineFileError(
            f"cannot create the output folder {str(cubes_dir)!r}: {exc}") from None
    for stale in remove_stale_temporaries(cubes_dir) + remove_stale_temporaries(out_dir):
        log.info("removed %s, left by an interrupted ingest", stale)

    settings = json.dumps([_FORMAT_VERSION, config.fingerprint(), parsed])
    previous = _previous_rows(frames_path, settings)
    manifest = Manifest(out_dir) if manifest is None else manifest
    log.info("ingesting %d files into %s with %d threads", len(files), out_dir, threads)

    with warnings.catch_warnings(), ThreadPoolExecutor(threads) as pool:
        _quiet_astropy()
        scanned = list(progress(pool.map(lambda p: _scan_safely(p, config), files),
                                total=len(files), desc="ingest: headers", unit="file"))

        groups: dict[tuple, list[_Scanned]] = collections.defaultdict(list)
        for item in scanned:
            if item.row["status"] == "ok":
                groups[_group_key(item.row)].append(item)
        ids = _run_ids(groups)
        seen: dict[str, str] = {}
        cubes: dict[str, Path] = {}
        written: list[str] = []
        for key in sorted(groups, key=lambda k: ids[k]):
            run_id = ids[key]
            members = sorted(groups[key], key=lambda s: (s.row["jd_utc_mid"], s.row["path"]))
            rows = [m.row for m in members]
            for row in rows:
                row["run_id"] = row["run_id"] or run_id
            _run_times(members)
            fingerprint = _fingerprint(run_id, rows, settings)
            cube_path = cubes_dir / f"{run_id}.zarr"
            old = [previous.get(r["path"]) for r in rows]
            products = [cube_path] + [p for p in [bad_pixel_cube_path(cube_path)]
                                      if manifest.lists(p)]
            if (all(o is not None and o["run_id"] == run_id for o in old)
                    and manifest.is_current(products, fingerprint)):
                for row, before in zip(rows, old):
                    row.update(before)
                    if row["status"] == "ok":
                        seen.setdefault(row["content_hash"], row["path"])
                cubes[run_id] = cube_path
                continue

            _check_shapes(run_id, rows)
            candidates = [m for m in members if m.row["status"] == "ok"]
            lights = [m.row for m in candidates if m.row["frame_type"] == "light"]
            if lights:
                ra, dec, source = _run_target(run_id, lights, parsed, target_source)
                for row in lights:
                    row["target_ra_deg"], row["target_dec_deg"] = ra, dec
                    row["target_source"] = source
                if ra is not None:
                    _times(lights, ra, dec)
                else:
                    log.warning("run %s: no target coordinates and no pointing in the headers: "
                                "BJD_TDB not computed (give --target-ra/--target-dec)", run_id)
                    for row in lights:
                        row["time_source"] += "; BJD_TDB not computed: no target coordinates"
            if not candidates:
                continue
            first = candidates[0].row
            cube_attrs = {"run_id": run_id, "frame_type": first["frame_type"],
                          "site": first["site"], "telescope": first["telescope"],
                          "night": first["night"], "filter": first["filter"],
                          "fingerprint": fingerprint, "format": _FORMAT_VERSION,
                          "bayer_mode": config.bayer if first["bayer_pattern"] else None}
            if _write_run(run_id, candidates, cube_path, cube_attrs, seen, config.bayer, pool,
                          depth=2 * threads):
                cubes[run_id] = cube_path
                written.append(run_id)
                masks = bad_pixel_cube_path(cube_path)
                manifest.record([cube_path] + ([masks] if masks.is_dir() else []), fingerprint)

    rows = [item.row for item in scanned]
    _camera_saturation(rows)
    for row in rows:
        if row["status"] != "ok":
            row["run_id"] = row["run_id"] if row["reason_code"] in _LATER_CODES else None
            log.warning("skipped %s", row["reason"])
    _log_notes(rows)
    table = _to_table(rows)

    table_written = True
    if frames_path.is_file() and previous:
        try:
            table_written = not read_parquet(frames_path).equals(table, check_metadata=False)
        except EngineFileError:
            table_written = True
    if table_written:
        write_parquet(table, frames_path, metadata={"engine_ingest_settings": settings},
                      schema=FRAMES_SCHEMA)
    else:
        table = read_parquet(frames_path)
    result = IngestResult(frames=table, cubes=dict(sorted(cubes.items())), out_dir=out_dir,
                          frames_path=frames_path, written=tuple(written),
                          table_written=table_written)
    log.info("%s", result.summary().splitlines()[0])
    return result


def _camera_saturation(rows: list[dict]) -> None:
    """One measured level per camera where a frame alone cannot tell: a frame keeps the pile-up
    it shows; any other measured frame (or one whose values are not counts, e.g. float) takes
    the camera's lowest pile-up, else its highest ADC full scale (a faint frame of a 16-bit
    camera fits in 12 bits; its flats do not)."""
    cameras: dict[tuple, list[dict]] = collections.defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and (row["saturation"] is None or
                                      row["saturation_source"].startswith("measured")):
            cameras[(row["site"], row["telescope"], row["instrument"], row["binning_x"],
                     row["binning_y"], tuple(row["shape"]), row["bayer_pattern"])].append(row)
    for members in cameras.values():
        measured = [r for r in members if r["saturation"] is not None]
        piled = [r for r in measured if "pile-up" in r["saturation_source"]]
        if not measured:
            continue
        best = (min(piled, key=lambda r: r["saturation"]) if piled
                else max(measured, key=lambda r: r["saturation"]))
        keep = {id(r) for r in piled}
        for row in members:
            if id(row) in keep or row["saturation"] == best["saturation"]:
                continue
            row["saturation"] = best["saturation"]
            row["saturation_source"] = (f"measured on the camera's frames ({best['path']}): "
                                        + best["saturation_source"].removeprefix("measured: "))


def _check_shapes(run_id: str, rows: list[dict]) -> None:
    """Skip frames whose stored shape differs from the run's (its most common; ties: the
    earliest frame's)."""
    shapes = [tuple(r["shape"]) for r in rows]
    counts = collections.Counter(shapes)
    best = max(counts.values())
    majority = next(s for s in shapes if counts[s] == best)
    for row, shape in zip(rows, shapes):
        if shape != majority:
            _skip(row, "shape_mismatch",
                  f"{row['path']}: shape {shape[0]} x {shape[1]} differs from its run's "
                  f"({run_id}: {majority[0]} x {majority[1]})")


def _quiet_astropy() -> None:
    """Inside a catch_warnings block: astropy's warnings about non-standard cards and truncated
    files are reported by ingest itself (as skip reasons and notes)."""
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning
    from astropy.wcs import FITSFixedWarning

    for category in (VerifyWarning, AstropyUserWarning, FITSFixedWarning):
        warnings.simplefilter("ignore", category)
