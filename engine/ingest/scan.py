"""Pass 1 of ingest: one file's headers into one frames-table row.

The header is normalised (engine.io.headers), the site found, the stored frame described (the
image or its Bayer extraction), the frame type decided (engine.io.frame_type), the exposure
time checked and the frame's own mid-exposure time found (settled per run later, in
engine.ingest.times). Pixels stay unread, except for the rare frame whose type only its level
can tell. A file that cannot be used becomes a skipped row with its reason."""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import EngineFileError, HeaderError
from engine.ingest.pixels import median
from engine.ingest.table import new_row, note, skip
from engine.ingest.times import frame_time, night
from engine.io import bayer as _bayer
from engine.io.fits import FitsImage, open_image, read_image
from engine.io.frame_type import classify_frame
from engine.io.headers import identity_values, normalise_header
from engine.io.processing import bad_pixel_hdu, calibrated_state, pedestal
from engine.io.timestamps import header_timestamps
from engine.settings.ingest import IngestConfig, Site

log = logging.getLogger(__name__)

#: The longest single exposure believed: half a day. No night is longer, so a larger EXPTIME is
#: a garbled header (1e6 s would move mid-exposure six days on and start a run of its own; 1e30
#: overflows the time arithmetic) and the frame is skipped.
MAX_EXPTIME_S = 43200.0


@dataclass
class Scanned:
    row: dict
    image: FitsImage | None = None
    bayer: str | None = None  # pattern when the frame is extracted
    site: Site | None = None
    stamps: list = dataclasses.field(default_factory=list)  # the header's time stamps
    time_problems: list = dataclasses.field(default_factory=list)
    raw_saturation: float | None = None  # the raw pixels' level, when header or site gives it


def _file_stat(row: dict, path: Path) -> None:
    stat = path.stat()
    row["file_size"], row["file_mtime_ns"] = stat.st_size, stat.st_mtime_ns


def scan_safely(path: Path, config: IngestConfig) -> Scanned:
    """`scan`, with any unexpected failure turned into a skipped row: one broken file must not
    stop the night."""
    try:
        return scan(path, config)
    except Exception as exc:
        log.debug("scanning %s failed", path, exc_info=True)
        row = new_row(path)
        try:
            _file_stat(row, path)
        except OSError:
            pass
        return Scanned(skip(row, "unreadable", f"{path}: cannot be read ({exc})"))


def scan(path: Path, config: IngestConfig) -> Scanned:
    """Everything the header says about one file, as a frames-table row (pixels unread, except
    for the rare frame whose type only its level can tell)."""
    row = new_row(path)
    try:
        _file_stat(row, path)
    except OSError as exc:
        return Scanned(skip(row, "unreadable", f"{path}: cannot be read ({exc})"))
    try:
        image = open_image(path)
    except EngineFileError as exc:
        return Scanned(skip(row, getattr(exc, "reason_code", "unreadable"), str(exc)))
    header = image.header
    record = normalise_header(header, image.shape)
    for text in ([image.note] if image.note else []) + record.notes:
        note(row, text)
    row.update(hdu=image.hdu_index, hdu_name=image.hdu_name, compression=image.compression)

    site = config.site_for(str(path), identity_values(header))
    raw_saturation = _describe(row, record, site)
    _stored_frame(row, image, record, config.bayer)
    problem = _frame_type(row, image, record, site, config) or _exposure(row, record)
    if problem is not None:
        return Scanned(skip(row, *problem), image)
    _processing(row, header, image, site, record.bayer_pattern)

    # Time (settled per run later: engine.ingest.times.run_times).
    stamps, problems = header_timestamps(
        header, utc_offset_hours=site.utc_offset_hours if site else None)
    scanned = Scanned(row, image, record.bayer_pattern, site, stamps, problems)
    try:
        frame_time(scanned, None)
    except HeaderError as exc:
        return Scanned(skip(row, "no_time", str(exc)), image)
    row["night"] = night(row["jd_utc_mid"], row["site_longitude_deg"])
    if record.airmass is not None:
        row["airmass"], row["airmass_source"] = record.airmass, (
            f"header {record.sources['airmass']} (not mid-exposure)")
    # Keep what reading the pixels needs, not the header (it can be large).
    scanned.image = dataclasses.replace(image, header=None)
    scanned.raw_saturation = raw_saturation
    return scanned


def _describe(row: dict, record, site: Site | None) -> float | None:
    """The row's columns that the normalised header and the site give directly: telescope,
    filter, camera values, pointing, WCS, site location. Returns the raw saturation level."""
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
    return raw_saturation


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
                note(row, f"header site ({record.sources.get('site')}: "
                          f"{record.site_latitude_deg:.4f}, {record.site_longitude_deg:.4f}) "
                          f"disagrees with the configured site {site.name!r}; using the "
                          "configuration")
    elif header_location:
        row["site_longitude_deg"] = record.site_longitude_deg
        row["site_latitude_deg"] = record.site_latitude_deg
        row["site_height_m"] = record.site_height_m
        row["site_source"] = record.sources.get("site")


def _stored_frame(row: dict, image: FitsImage, record, mode: str) -> None:
    """Shape, dtype and sections of the frame as stored: the image itself, or its Bayer
    extraction at half resolution (camera values and pixel scale moved to its units)."""
    shape, dtype = image.shape, image.dtype
    overscan, trim = record.overscan_section, record.trim_section
    if record.bayer_pattern is not None:
        shape, dtype = (image.shape[0] // 2, image.shape[1] // 2), np.dtype(np.float32)
        overscan = _bayer.extracted_section(overscan, image.shape)
        trim = _bayer.extracted_section(trim, image.shape)
        row["wcs"] = None  # the raw frame's WCS does not describe the extracted one
        if row["pixel_scale_arcsec"] is not None:  # half resolution: twice the angle
            row["pixel_scale_arcsec"] *= 2.0
            row["pixel_scale_source"] += " x 2 (Bayer extraction)"
        _bayer_units(row, mode)
    row["shape"], row["dtype"] = list(shape), dtype.name
    row["overscan_section"] = list(overscan) if overscan else None
    row["trim_section"] = list(trim) if trim else None


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


def _full_scale(image: FitsImage, saturation: float | None) -> float:
    if saturation:
        return float(saturation)
    if image.dtype.kind in "ui":
        return float(np.iinfo(image.dtype).max)
    return 65535.0


def _frame_type(row: dict, image: FitsImage, record, site: Site | None,
                config: IngestConfig) -> tuple[str, str] | None:
    """The row's frame type and its evidence; (code, reason) to skip a frame of unknown type."""
    path = image.path

    def level():
        try:
            data = read_image(image)
        except EngineFileError:
            return None
        return median(data) / _full_scale(image, record.saturation)

    kind = classify_frame(image.header, path, override=config.frame_type_override(str(path)),
                          exptime=record.exptime, level=level,
                          rules=site.frame_types if site is not None else ())
    row["frame_type"], row["frame_type_evidence"] = kind.frame_type, kind.evidence
    for text in kind.notes:
        note(row, text)
    if kind.frame_type is None:
        return "unknown_type", f"{path}: unknown frame type: {kind.evidence}"
    return None


def _exposure(row: dict, record) -> tuple[str, str] | None:
    """The row's exposure time; (code, reason) to skip a frame without a believable one (a
    bias may have none: 0 s)."""
    path, frame_type, exptime = row["path"], row["frame_type"], record.exptime
    if exptime is None:
        if frame_type != "bias":
            return "bad_exptime", f"{path}: no exposure time keyword (EXPTIME, EXPOSURE, ...)"
        exptime = 0.0
        note(row, "no exposure time keyword: 0 s assumed for a bias")
    row["exptime"] = exptime
    if not 0 <= exptime <= MAX_EXPTIME_S or (exptime == 0 and frame_type != "bias"):
        row["exptime"] = exptime if math.isfinite(exptime) else None
        ceiling = f" (at most {MAX_EXPTIME_S:g} s is believed)" if exptime > 0 else ""
        return "bad_exptime", (f"{path}: {record.sources.get('exptime')} = {exptime:g} s for a "
                               f"{frame_type} frame{ceiling}")
    return None


def _processing(row: dict, header, image: FitsImage, site: Site | None,
                bayer: str | None) -> None:
    """What was done to the frame before ingest: calibration, a pedestal, a bad-pixel map."""
    steps, evidence = calibrated_state(header)
    row["calibrated_state"] = ",".join(steps) if steps else "raw"
    row["calibrated_evidence"] = evidence or None
    if steps:
        note(row, f"already calibrated ({', '.join(steps)}: {evidence}); not calibrated again")
    amount, source = pedestal(header, site.pedestal_adu if site is not None else None)
    row["pedestal_adu"] = amount
    if amount:
        row["dtype"] = "float32"  # a subtracted pedestal can leave values below 0
        note(row, f"pedestal of {amount:g} ADU removed ({source})")
    if image.n_image_hdus > 1:
        index = bad_pixel_hdu(image.path, image.shape)
        if index is not None and bayer is not None:
            note(row, f"bad-pixel HDU {index} ignored: it maps the raw Bayer frame")
        elif index is not None:
            row["bad_pixel_hdu"] = index
