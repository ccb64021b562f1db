"""Header normalisation: one frame record from whatever keywords a camera program wrote.

`normalise_header(header, shape)` reads exposure, gain, read noise, binning, temperatures, filter,
object and pointing, site, overscan and trim sections, WCS, Bayer pattern and saturation level,
each with the keyword it came from and notes on anything doubtful. Times are read by
`engine.io.timestamps`, frame types by `engine.io.frame_type`. The conventions handled here,
each seen in real files:

- Gain: EGAIN / E-GAIN are e-/ADU. GAIN is e-/ADU in observatory and MaxIm DL headers but a
  camera *setting* (a number like 100 or 139) in N.I.N.A., SharpCap and other CMOS capture
  programs: a GAIN is taken as e-/ADU only if its comment says so, or if no capture program that
  writes settings made the file and the value is not an integer above 20. A setting is kept as
  `gain_setting`.
- Pointing: OBJCTRA/OBJCTDEC (sexagesimal strings, RA in hours), RA/DEC (degrees when numbers,
  hours and degrees when sexagesimal strings, hours when the comment says so), RA_OBJ, RA_OBS,
  OBJRA, TELRA, CAT-RA alike; else the centre of a celestial WCS.
- Site longitude: SITELONG and OBSGEO-L are east-positive (MaxIm DL, N.I.N.A., ACP) unless the
  comment says west; LONGITUD is west-positive (IRAF's and the ING's convention) unless the comment
  says east. OBSGEO-X/Y/Z are geocentric metres.
- Sections (BIASSEC, TRIMSEC, else DATASEC) are IRAF 1-based inclusive '[x1:x2,y1:y2]'; they
  become 0-based half-open (row_start, row_stop, column_start, column_stop), reversed ranges
  put in order, checked against the image shape.
- Saturation: SATURATE, SATLEVEL, MAXADU, else DATAMAX unless it is just the file format's
  largest value (65535 for BITPIX 16 with BZERO 32768), which programs write by default.
- Temperatures above 150 are taken to be kelvin (some observatory CCDs write the cold block's).
- WCS: a celestial WCS is kept only when it can be true: not when the observatory's solver says
  it failed (WCSERR / WCS_ERR non-zero, as LCO writes), not with a zero or singular CD (or
  PC x CDELT) matrix (astropy would silently replace a zero CD by the unit matrix), and not with
  a pixel scale outside 0.01-100 arcsec/px. A refused WCS leaves a note saying why.
- Pixel scale (arcsec/px): PIXSCALE, SECPIX, SCALE, IM_SCALE, PIXSCAL1; else a kept WCS's
  sqrt|det CD|; else 206.265 XPIXSZ / FOCALLEN (um, mm). MaxIm DL and N.I.N.A. write XPIXSZ
  after binning; a comment saying 'unbinned' (or 'before binning') multiplies it by the binning.
- Bayer pattern (BAYERPAT, COLORTYP) is moved to the pattern at array index [0, 0] using
  XBAYROFF/YBAYROFF (BAYOFFX/BAYOFFY) and ROWORDER: a pattern is given for top-down row order, so
  with ROWORDER = 'BOTTOM-UP' and an even number of rows its two rows swap.

Nothing here reads pixels or files; functions take an astropy Header (or anything with `get`,
`__contains__` and `comments`). Keyword access and the text parsers live in
engine.io.header_values (parse_ra, parse_dec, parse_section and parse_sexagesimal are re-exported
here), the WCS and pixel scale in engine.io.header_wcs.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from engine.io.header_values import (first_header_number, first_header_text, header_comment,
                                     header_number, is_sexagesimal, parse_dec, parse_ra,
                                     parse_section, parse_sexagesimal)
from engine.io.header_wcs import pixel_scale, read_wcs

__all__ = [
    "SITE_POSITION_DEGREES",
    "HeaderRecord",
    "camera_identity",
    "describe_camera",
    "identity_values",
    "normalise_header",
    "parse_dec",
    "parse_ra",
    "parse_section",
    "parse_sexagesimal",
]

# Programs whose GAIN keyword is the camera's gain setting, not e-/ADU (matched in lower case).
_SETTING_GAIN_SOFTWARE = ("n.i.n.a", "nina", "sharpcap", "firecapture", "asiair", "asistudio",
                          "astro photography tool", "apt ", "ekos", "kstars", "indi", "voyager",
                          "sequence generator", "sgpro")
_SOFTWARE_KEYS = ("SWCREATE", "CREATOR", "PROGRAM", "SOFTWARE", "SWOWNER", "ORIGIN")
_EXPTIME_KEYS = ("EXPTIME", "EXPOSURE", "EXP_TIME", "EXPTIM", "EXPOSED", "ITIME", "TELAPSE")
_READ_NOISE_KEYS = ("RDNOISE", "READNOIS", "READNOISE", "RON", "RDNOIS", "READ_NOI")
_TEMPERATURE_KEYS = ("CCD-TEMP", "CCDTEMP", "CCD_TEMP", "DET-TEMP", "DETTEMP", "SENSTEMP",
                     "TEMPERAT", "TEMPERATURE")
_SET_TEMPERATURE_KEYS = ("SET-TEMP", "SETTEMP", "SET_TEMP", "CCD-TSET", "TEMPSET")
_FILTER_KEYS = ("FILTER", "FILTNAME", "FILTER1", "FILTERS", "FILTNAM", "FILT")
_OBJECT_KEYS = ("OBJECT", "OBJNAME", "TARGET")
_POINTING_KEYS = (("OBJCTRA", "OBJCTDEC"), ("RA", "DEC"), ("RA_OBJ", "DEC_OBJ"),
                  ("OBJRA", "OBJDEC"), ("CAT-RA", "CAT-DEC"), ("RA_OBS", "DEC_OBS"),
                  ("TELRA", "TELDEC"), ("RA-TEL", "DEC-TEL"))
_SATURATION_KEYS = ("SATURATE", "SATLEVEL", "MAXADU", "DATAMAX")
_AIRMASS_KEYS = ("AIRMASS", "SECZ", "AIRM")
_IDENTITY_KEYS = ("TELESCOP", "OBSERVAT", "SITENAME", "SITE", "INSTRUME")
#: Readout mode names: N.I.N.A.'s READOUTM, MaxIm DL's READMODE.
_READOUT_MODE_KEYS = ("READOUTM", "READMODE")
_BAYER_KEYS = ("BAYERPAT", "COLORTYP", "BAYERPATTERN", "CFA-PAT", "CFAPATT")
_BAYER_PATTERNS = ("RGGB", "BGGR", "GRBG", "GBRG")

@dataclass
class HeaderRecord:
    """What a header says about a frame, normalised to the engine's units; None where silent.

    Units: seconds, e-/ADU, electrons, degrees Celsius, degrees (angles), metres. Sections are
    0-based half-open (row_start, row_stop, column_start, column_stop). `sources` maps a field to
    the keyword it came from; `notes` are doubts worth logging.
    """

    telescope: str | None = None
    instrument: str | None = None
    observatory: str | None = None
    software: str | None = None
    object: str | None = None
    filter: str | None = None
    exptime: float | None = None
    gain: float | None = None
    gain_setting: float | None = None
    readout_mode: str | None = None
    read_noise: float | None = None
    binning: tuple[int, int] = (1, 1)
    temperature: float | None = None
    set_temperature: float | None = None
    ra_deg: float | None = None
    dec_deg: float | None = None
    site_longitude_deg: float | None = None
    site_latitude_deg: float | None = None
    site_height_m: float | None = None
    overscan_section: tuple[int, int, int, int] | None = None
    trim_section: tuple[int, int, int, int] | None = None
    wcs: str | None = None
    pixel_scale_arcsec: float | None = None
    bayer_pattern: str | None = None
    saturation: float | None = None
    airmass: float | None = None
    aperture_diameter_m: float | None = None
    sources: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def identity_values(header) -> dict[str, str]:
    """The header values that say which telescope and site took a frame (TELESCOP, OBSERVAT,
    SITENAME, SITE, INSTRUME), for matching configured sites."""
    values = {}
    for key in _IDENTITY_KEYS:
        text, _ = first_header_text(header, (key,))
        if text:
            values[key] = text
    return values


#: Frames whose site positions differ by more than this (degrees of latitude or longitude,
#: ~1 km) come from different places, whatever their TELESCOP says.
SITE_POSITION_DEGREES = 0.01


def camera_identity(row, *, shape: bool = True) -> tuple:
    """The identity of the camera that took a frame, from its frames-table row: site (name and
    position), telescope, instrument, gain setting, readout mode, then binning and frame shape
    (the last three entries; shape=False leaves the shape out). Frames of two identities never
    share a light run (ingest, without the shape: a frame of another shape in a run is skipped
    there) or a calibration set (calibration)."""
    position = tuple(None if row.get(name) is None else
                     round(float(row[name]) / SITE_POSITION_DEGREES)
                     for name in ("site_latitude_deg", "site_longitude_deg"))
    gain_setting = row.get("gain_setting")
    if gain_setting is not None and not math.isfinite(float(gain_setting)):
        gain_setting = None
    return (row.get("site"), position, row.get("telescope"), row.get("instrument"),
            gain_setting, row.get("readout_mode"), int(row.get("binning_x") or 1),
            int(row.get("binning_y") or 1)) + ((tuple(row.get("shape") or ()),) if shape else ())


def describe_camera(camera: tuple) -> str:
    """A `camera_identity` in words (binning and shape left out)."""
    site, position, telescope, instrument, gain_setting, readout_mode = camera[:6]
    parts = [f"site {site}" if site else None,
             f"at {position[0] * SITE_POSITION_DEGREES:.2f}, "
             f"{position[1] * SITE_POSITION_DEGREES:.2f} deg" if None not in position else None,
             telescope, instrument,
             f"gain setting {gain_setting:g}" if gain_setting is not None else None,
             f"readout mode {readout_mode}" if readout_mode else None]
    return " ".join(p for p in parts if p)


def _software(header) -> str:
    return " ".join(str(header.get(k, "")) for k in _SOFTWARE_KEYS if k in header).lower()


# ----------------------------------------------------------------------------------------------
# The parts of a record

def _exposure(header, record: HeaderRecord) -> None:
    found = []
    for key in _EXPTIME_KEYS:
        value = header_number(header, key, record)
        if value is None:
            continue
        comment = header_comment(header, key).lower()
        if re.search(r"\bms\b|millisec", comment):
            value /= 1000.0
        found.append((key, value))
    if not found:
        return
    key, value = found[0]
    record.exptime, record.sources["exptime"] = value, key
    for other, other_value in found[1:]:
        if abs(other_value - value) > 1e-3 * max(1.0, abs(value)):
            record.notes.append(f"{key} = {value:g} s but {other} = {other_value:g} s; used {key}")
            break


def _gain(header, record: HeaderRecord) -> None:
    for key in ("EGAIN", "E-GAIN", "GAIN_E", "GAINE"):
        value = header_number(header, key, record)
        if value is not None and value > 0:
            record.gain, record.sources["gain"] = value, key
            break
    value = header_number(header, "GAIN", record)
    if value is None:
        return
    comment = header_comment(header, "GAIN").lower()
    software = _software(header)
    says_electrons = bool(re.search(r"e-?\s*/\s*(adu|dn|count)|electrons?\s*(per|/)", comment))
    says_setting = "setting" in comment or "sensor gain" in comment or "camera gain" in comment
    setting_software = any(name in software for name in _SETTING_GAIN_SOFTWARE)
    if says_electrons and value > 0:
        electrons, why = True, "GAIN (comment says e-/ADU)"
    elif says_setting or setting_software:
        electrons, why = False, "GAIN (a camera setting)"
    elif value > 20 and float(value).is_integer():
        electrons, why = False, "GAIN (an integer above 20: taken as a camera setting)"
    else:
        electrons, why = value > 0, "GAIN (assumed e-/ADU)"
    if not electrons:
        record.gain_setting = value
        record.sources["gain_setting"] = why
        return
    if record.gain is None:
        record.gain, record.sources["gain"] = value, why
    elif abs(record.gain - value) > 0.02 * record.gain:
        record.notes.append(f"{record.sources['gain']} = {record.gain:g} e-/ADU but GAIN = "
                            f"{value:g}; used {record.sources['gain']}")


def _binning(header, record: HeaderRecord) -> None:
    for xkey, ykey in (("XBINNING", "YBINNING"), ("CCDXBIN", "CCDYBIN"), ("BINX", "BINY"),
                       ("XBIN", "YBIN"), ("HBIN", "VBIN")):
        x, y = header_number(header, xkey), header_number(header, ykey)
        if x is not None or y is not None:
            x = x if x is not None else y
            y = y if y is not None else x
            if x >= 1 and y >= 1:
                record.binning = (int(round(x)), int(round(y)))
                record.sources["binning"] = f"{xkey}/{ykey}"
                return
    for key in ("CCDSUM", "BINNING"):
        text, _ = first_header_text(header, (key,))
        if text:
            parts = re.split(r"[\sx,*]+", text.lower().strip())
            try:
                numbers = [int(p) for p in parts if p]
            except ValueError:
                continue
            if len(numbers) == 1:
                numbers *= 2
            if len(numbers) == 2 and min(numbers) >= 1:
                record.binning = (numbers[0], numbers[1])
                record.sources["binning"] = key
                return


def _temperatures(header, record: HeaderRecord) -> None:
    value, key = first_header_number(header, _TEMPERATURE_KEYS, record)
    if value is not None:
        if value > 150.0:
            record.notes.append(f"{key} = {value:g} taken as kelvin ({value - 273.15:.1f} C)")
            value -= 273.15
        record.temperature, record.sources["temperature"] = value, key
    value, key = first_header_number(header, _SET_TEMPERATURE_KEYS, record)
    if value is not None:
        record.set_temperature, record.sources["set_temperature"] = value, key


def _pointing(header, record: HeaderRecord) -> None:
    for ra_key, dec_key in _POINTING_KEYS:
        if ra_key not in header or dec_key not in header:
            continue
        ra_value, dec_value = header.get(ra_key), header.get(dec_key)
        if ra_value in (None, "") or dec_value in (None, "") or isinstance(ra_value, bool):
            continue
        comment = header_comment(header, ra_key).lower()
        hours = True if re.search(r"\bhours?\b|\bhrs?\b|\[h\]", comment) else None
        try:
            ra = parse_ra(ra_value, hours=hours)
            dec = parse_dec(dec_value)
        except (TypeError, ValueError) as exc:
            record.notes.append(f"{ra_key}/{dec_key} not understood ({exc}); ignored")
            continue
        record.ra_deg, record.dec_deg = ra, dec
        record.sources["pointing"] = f"{ra_key}/{dec_key}"
        return


def _angle_degrees(value) -> float:
    if isinstance(value, str) and is_sexagesimal(value):
        return parse_sexagesimal(value)
    return float(str(value).strip() if isinstance(value, str) else value)


def _west_positive(comment: str, default: bool) -> bool:
    """Whether a longitude keyword's comment says its values grow westward ('degrees west of
    zero', 'W positive', 'east longitude', 'E positive', 'west is negative' ...)."""
    comment = comment.lower()
    positive = r"\s*(?:long\w*\s*)?(?:is\s+)?(?:pos\w*|\+)"
    negative = r"\s*(?:long\w*\s*)?(?:is\s+)?(?:neg\w*|-)"
    toward = r"positive\s+(?:to\s+(?:the\s+)?)?"
    if re.search(rf"\b(?:west|w){positive}|\b(?:east|e){negative}|{toward}west", comment):
        return True
    if re.search(rf"\b(?:east|e){positive}|\b(?:west|w){negative}|{toward}east", comment):
        return False
    east, west = "east" in comment, "west" in comment
    if west and not east:
        return True
    if east and not west:
        return False
    return default


def _site(header, record: HeaderRecord) -> None:
    if all(k in header for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z")):
        try:
            from astropy import units as u
            from astropy.coordinates import EarthLocation

            x, y, z = (float(header[k]) for k in ("OBSGEO-X", "OBSGEO-Y", "OBSGEO-Z"))
            if math.sqrt(x * x + y * y + z * z) > 6.0e6:
                geodetic = EarthLocation.from_geocentric(x, y, z, unit=u.m).to_geodetic()
                record.site_longitude_deg = float(geodetic.lon.deg)
                record.site_latitude_deg = float(geodetic.lat.deg)
                record.site_height_m = float(geodetic.height.to_value(u.m))
                record.sources["site"] = "OBSGEO-X/Y/Z"
                return
            record.notes.append("OBSGEO-X/Y/Z is not on the Earth's surface; ignored")
        except (TypeError, ValueError):
            record.notes.append("OBSGEO-X/Y/Z not understood; ignored")
    for lat_key, lon_key, height_keys, west_default in (
            ("SITELAT", "SITELONG", ("SITEELEV", "SITEALT", "SITEHGHT"), False),
            ("OBSGEO-B", "OBSGEO-L", ("OBSGEO-H",), False),
            ("LAT-OBS", "LONG-OBS", ("ALT-OBS", "ELEV-OBS"), False),
            ("OBS-LAT", "OBS-LONG", ("OBS-ELEV", "OBS-ALT"), False),
            ("LATITUDE", "LONGITUD", ("ALTITUDE", "HEIGHT", "ELEVATIO"), True),
    ):
        if lat_key not in header or lon_key not in header:
            continue
        try:
            latitude = _angle_degrees(header[lat_key])
            longitude = _angle_degrees(header[lon_key])
        except (TypeError, ValueError):
            record.notes.append(f"{lat_key}/{lon_key} not understood; ignored")
            continue
        if not (-90.0 <= latitude <= 90.0 and -360.0 <= longitude <= 360.0):
            record.notes.append(
                f"{lat_key}/{lon_key} = {latitude}, {longitude} out of range; ignored")
            continue
        west = _west_positive(header_comment(header, lon_key), west_default)
        if west:
            longitude = -longitude
        longitude = (longitude + 180.0) % 360.0 - 180.0
        height = None
        for key in height_keys:
            height = header_number(header, key, record)
            if height is not None:
                break
        record.site_latitude_deg, record.site_longitude_deg = latitude, longitude
        record.site_height_m = height if height is not None else 0.0
        record.sources["site"] = (f"{lat_key}/{lon_key}" + (" (west-positive)" if west else "")
                                  + ("" if height is not None else ", height assumed 0 m"))
        return


def _sections(header, shape, record: HeaderRecord) -> None:
    for field_name, keys in (("overscan_section", ("BIASSEC",)),
                             ("trim_section", ("TRIMSEC", "DATASEC"))):
        for key in keys:
            text, _ = first_header_text(header, (key,))
            if not text:
                continue
            try:
                setattr(record, field_name, parse_section(text, shape))
                record.sources[field_name] = key
                break
            except ValueError as exc:
                record.notes.append(f"{key}: {exc}; ignored")


def _bayer(header, shape, record: HeaderRecord) -> None:
    text, key = first_header_text(header, _BAYER_KEYS)
    if not text:
        return
    pattern = text.upper().replace(" ", "")
    if pattern not in _BAYER_PATTERNS:
        if pattern not in ("MONO", "NONE", "GRAY", "GREY", "0"):
            record.notes.append(
                f"{key} = {text!r} is not a known Bayer pattern; image taken as mono")
        return
    grid = [[pattern[0], pattern[1]], [pattern[2], pattern[3]]]
    steps = []
    x_offset = header_number(header, "XBAYROFF") or header_number(header, "BAYOFFX") or 0.0
    y_offset = header_number(header, "YBAYROFF") or header_number(header, "BAYOFFY") or 0.0
    if int(x_offset) % 2:
        grid = [row[::-1] for row in grid]
        steps.append("x offset 1")
    if int(y_offset) % 2:
        grid = grid[::-1]
        steps.append("y offset 1")
    row_order = str(header.get("ROWORDER", "")).strip().upper()
    if row_order == "BOTTOM-UP" and shape[0] % 2 == 0:
        grid = grid[::-1]
        steps.append("ROWORDER BOTTOM-UP")
    record.bayer_pattern = "".join(grid[0] + grid[1])
    record.sources["bayer_pattern"] = key + (f" ({', '.join(steps)})" if steps else "")


def _format_maximum(header) -> float | None:
    """The largest value the file's BITPIX (with BZERO) can hold, for integer data."""
    bits = header_number(header, "BITPIX")
    if bits is None or bits <= 0:
        return None
    zero = header_number(header, "BZERO") or 0.0
    return float(2 ** (int(bits) - 1) - 1 + zero)


def _saturation(header, record: HeaderRecord) -> None:
    for key in _SATURATION_KEYS:
        value = header_number(header, key, record)
        if value is None or value <= 0:
            continue
        if key == "DATAMAX" and value == _format_maximum(header):
            # Programs write the format's largest value by default: it says nothing measured.
            record.notes.append(f"DATAMAX = {value:g} is only the file format's largest value; "
                                "not taken as the saturation level")
            continue
        record.saturation, record.sources["saturation"] = value, key
        return


def normalise_header(header, shape: tuple[int, int]) -> HeaderRecord:
    """The frame record of a header (see the module docstring); `shape` is (rows, columns)."""
    record = HeaderRecord()
    for attribute, keys in (("telescope", ("TELESCOP",)), ("instrument", ("INSTRUME", "CAMERA")),
                            ("observatory", ("OBSERVAT", "SITENAME", "SITE")),
                            ("object", _OBJECT_KEYS), ("filter", _FILTER_KEYS),
                            ("readout_mode", _READOUT_MODE_KEYS)):
        text, key = first_header_text(header, keys)
        if text:
            setattr(record, attribute, text)
            record.sources[attribute] = key
    software, key = first_header_text(header, _SOFTWARE_KEYS)
    record.software = software
    _exposure(header, record)
    _gain(header, record)
    value, key = first_header_number(header, _READ_NOISE_KEYS, record)
    if value is not None and value >= 0:
        record.read_noise, record.sources["read_noise"] = value, key
    _binning(header, record)
    _temperatures(header, record)
    _pointing(header, record)
    _site(header, record)
    _sections(header, shape, record)
    read_wcs(header, shape, record)
    pixel_scale(header, record)
    _bayer(header, shape, record)
    _saturation(header, record)
    value, key = first_header_number(header, _AIRMASS_KEYS, record)
    if value is not None and value >= 1.0:
        record.airmass, record.sources["airmass"] = value, key
    value, key = first_header_number(header, ("APTDIA",), record)
    if value is not None and value > 0:
        # MaxIm DL and ACP write APTDIA in mm; a value under 5 can only be metres.
        record.aperture_diameter_m = value if value < 5.0 else value / 1000.0
        record.sources["aperture_diameter"] = key
    else:
        _aperture_from_focal_ratio(header, record)
    return record


def _aperture_from_focal_ratio(header, record) -> None:
    """Aperture = FOCALLEN / FOCRATIO (mm), as N.I.N.A. writes them without APTDIA."""
    focal_mm, _ = first_header_number(header, ("FOCALLEN",), record)
    ratio, _ = first_header_number(header, ("FOCRATIO",), record)
    if focal_mm and ratio and focal_mm > 0 and ratio > 0:
        record.aperture_diameter_m = focal_mm / ratio / 1000.0
        record.sources["aperture_diameter"] = "FOCALLEN/FOCRATIO"
