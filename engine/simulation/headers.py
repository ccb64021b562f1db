"""FITS headers and file names as three acquisition programs write them, and the atomic writer.

- N.I.N.A. (CMOS): IMAGETYP 'LIGHT' / 'DARK' / 'FLAT' / 'BIAS' / 'DARKFLAT', EXPOSURE and
  EXPTIME, GAIN (a gain *setting*) and EGAIN (e-/ADU), OFFSET, DATE-OBS (UTC) and DATE-LOC
  (local), OBJCTRA / OBJCTDEC as 'HH MM SS.s' / '+DD MM SS' strings, RA / DEC in degrees,
  SITELAT / SITELONG in degrees, PIERSIDE, ROWORDER 'TOP-DOWN'; no BAYERPAT (mono camera).
  Files: <site>/<night date>/<TYPE>/<local date_time>_<filter>_<temp>_<exp>s_<nnnn>.fits.
- MaxIm DL (CCD): IMAGETYP 'Light Frame' / 'Bias Frame' / 'Dark Frame' / 'Flat Field', JD of
  the exposure start, DATE-OBS, EGAIN, XBINNING / YBINNING with XPIXSZ after binning,
  SITELAT / SITELONG as 'DD MM SS' strings. Files: <site>/<night>/<target>-001V.fit,
  Bias-001.fit, Dark-001.fit, Flat-001V.fit.
  A camera whose `jd_reference` is 'mid' writes JD at mid-exposure (DATE-OBS stays the start,
  neither says which), as some observatory scripts do.
- Observatory (CCD): OBSTYPE / IMAGETYP (IRAF words), GAIN (e-/ADU), RDNOISE (e-), AIRMASS,
  DATE-OBS (date) + UT + MJD-OBS, BIASSEC / TRIMSEC / DATASEC in IRAF 1-based [x1:x2,y1:y2],
  a TAN WCS on light frames; written fpack-style (Rice tile compression, `.fits.fz`).
- Las Cumbres Observatory (CCD): OBSTYPE 'EXPOSE' / 'BIAS' / 'DARK' / 'SKYFLAT', DATE-OBS,
  UTSTART and MJD-OBS (each says start), DAY-OBS, RLEVEL (0 raw, 91 BANZAI-processed), an fpack'ed
  SCI extension; processed files add L1STATBI / L1STATDA / L1STATFL and BPM, ERR, CAT
  extensions. Files: <site>/<night>/<telescope>-<instrument>-<YYYYMMDD>-<nnnn>-e00|e91.fits.fz.

Every header time is the site's PC clock: true time + clock offset. A camera with
`header_gain` False gets no EGAIN / GAIN (e-/ADU) / RDNOISE; a colour camera gets BAYERPAT.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from astropy.io import fits

from engine.simulation.config import Site

__all__ = ["build_header", "file_name", "write_fits"]

_MJD_EPOCH = datetime(1858, 11, 17, tzinfo=timezone.utc)
_NINA_TYPES = {"light": "LIGHT", "bias": "BIAS", "dark": "DARK", "flat": "FLAT"}
_MAXIM_TYPES = {"light": "Light Frame", "bias": "Bias Frame", "dark": "Dark Frame",
                "flat": "Flat Field"}
_LCO_TYPES = {"light": "EXPOSE", "bias": "BIAS", "dark": "DARK", "flat": "SKYFLAT"}
_OBS_TYPES = {"light": ("OBJECT", "object"), "bias": ("ZERO", "zero"), "dark": ("DARK", "dark"),
              "flat": ("SKYFLAT", "flat")}


def _round_time(dt: datetime, decimals: int) -> datetime:
    step = 10 ** (6 - max(decimals, 0))
    micro = int(round(dt.microsecond / step)) * step
    return dt.replace(microsecond=0) + timedelta(microseconds=micro)


def _iso(dt: datetime, decimals: int) -> str:
    """ISO 8601 with `decimals` digits of seconds, rounded (a carry moves the whole time)."""
    dt = _round_time(dt, decimals)
    base = dt.strftime("%Y-%m-%dT%H:%M:%S")
    if decimals <= 0:
        return base
    return base + "." + f"{dt.microsecond:06d}"[:decimals]


def sexagesimal(value: float, sep: str = " ", decimals: int = 1, sign: bool = False) -> str:
    """'HH MM SS.s' style string of a value in hours or degrees."""
    neg = value < 0
    v = abs(value)
    d = int(v)
    m = int((v - d) * 60.0)
    s = (v - d - m / 60.0) * 3600.0
    s = round(s, decimals)
    if s >= 60.0:
        s -= 60.0
        m += 1
    if m >= 60:
        m -= 60
        d += 1
    width = 3 + decimals if decimals > 0 else 2
    sec = f"{s:0{width}.{decimals}f}"
    head = ("-" if neg else "+") if sign else ("-" if neg else "")
    return f"{head}{d:02d}{sep}{m:02d}{sep}{sec}"


def local_offset_hours(site: Site) -> int:
    """The site's civil time zone, approximated from its longitude."""
    return int(round(site.longitude_deg / 15.0))


def night_date(site: Site, when: datetime) -> str:
    """The local date of the evening a night starts on (local time minus 12 h)."""
    local = when + timedelta(hours=local_offset_hours(site) - 12)
    return local.strftime("%Y-%m-%d")


def modified_julian_date(when: datetime) -> float:
    """MJD (UTC) of an aware datetime, exact to the microsecond before the float."""
    return (when - _MJD_EPOCH) / timedelta(days=1)


def build_header(site: Site, frame: dict) -> fits.Header:
    """Header of one frame. `frame` carries: frame_type, filter, exptime_s, header_start (an
    aware UTC datetime: the PC clock), airmass_start, pointing (ra, dec degrees), pier_side,
    ccd_temp, object, purpose, wcs."""
    software = site.camera.software
    if software == "nina":
        return _nina(site, frame)
    if software == "maxim":
        return _maxim(site, frame)
    if software == "lco":
        return _lco(site, frame)
    return _observatory(site, frame)


def _nina(site: Site, f: dict) -> fits.Header:
    cam = site.camera
    start = f["header_start"]
    local = start + timedelta(hours=local_offset_hours(site))
    ftype = f["frame_type"]
    imagetyp = "DARKFLAT" if f.get("purpose") == "flat-dark" else _NINA_TYPES[ftype]
    h = fits.Header()
    h["IMAGETYP"] = (imagetyp, "Type of exposure")
    h["EXPOSURE"] = (float(f["exptime_s"]), "[s] Exposure duration")
    h["EXPTIME"] = (float(f["exptime_s"]), "[s] Exposure duration")
    h["DATE-LOC"] = (_iso(local, 3), "Time of observation (local)")
    h["DATE-OBS"] = (_iso(start, 3), "Time of observation (UTC)")
    h["XBINNING"] = (cam.binning, "X axis binning factor")
    h["YBINNING"] = (cam.binning, "Y axis binning factor")
    h["GAIN"] = (int(cam.gain_setting or 0), "Sensor gain")
    h["OFFSET"] = (int(cam.offset_setting or 0), "Sensor gain offset")
    if cam.header_gain:
        h["EGAIN"] = (cam.gain_e_per_adu, "[e-/ADU] Electrons per A/D unit")
    if cam.bayer_pattern is not None:
        h["BAYERPAT"] = (cam.bayer_pattern, "Sensor Bayer pattern")
        h["XBAYROFF"] = (0, "Bayer pattern X axis offset")
        h["YBAYROFF"] = (0, "Bayer pattern Y axis offset")
    h["XPIXSZ"] = (cam.pixel_size_um * cam.binning, "[um] Pixel X axis size")
    h["YPIXSZ"] = (cam.pixel_size_um * cam.binning, "[um] Pixel Y axis size")
    h["INSTRUME"] = (cam.model, "Imaging instrument name")
    h["SET-TEMP"] = (cam.set_temp_c, "[degC] CCD temperature setpoint")
    h["CCD-TEMP"] = (round(f["ccd_temp"], 1), "[degC] CCD temperature")
    h["READOUTM"] = ("Normal", "Sensor readout mode")
    h["USBLIMIT"] = (40, "Camera-specific USB setting")
    h["TELESCOP"] = (site.telescope, "Name of telescope")
    h["FOCALLEN"] = (site.focal_length_mm, "[mm] Focal length")
    h["FOCRATIO"] = (round(site.focal_length_mm / (site.aperture_m * 1000.0), 2), "Focal ratio")
    ra, dec = f["pointing"]
    h["RA"] = (round(ra, 6), "[deg] RA of telescope")
    h["DEC"] = (round(dec, 6), "[deg] Declination of telescope")
    if ftype == "light":
        h["AIRMASS"] = (round(float(f["airmass_start"]), 4), "Airmass at frame center")
        h["PIERSIDE"] = (f["pier_side"], "Telescope pointing state")
    h["SITEELEV"] = (site.elevation_m, "[m] Observation site elevation")
    h["SITELAT"] = (site.latitude_deg, "[deg] Observation site latitude")
    h["SITELONG"] = (site.longitude_deg, "[deg] Observation site longitude")
    if ftype == "light":
        h["OBJECT"] = (f["object"], "Name of the object of interest")
        h["OBJCTRA"] = (sexagesimal(ra / 15.0), "[H M S] RA of imaged object")
        h["OBJCTDEC"] = (sexagesimal(dec, decimals=0, sign=True),
                         "[D M S] Declination of imaged object")
    elif ftype == "flat":
        h["OBJECT"] = ("FlatWizard", "Name of the object of interest")
    h["FILTER"] = (f["filter"], "Active filter name")
    h["FOCNAME"] = ("ZWO EAF", "Focusing equipment name")
    h["FOCPOS"] = (int(f.get("focus", 14250)), "[step] Focuser position")
    h["FOCUSPOS"] = (int(f.get("focus", 14250)), "[step] Focuser position")
    h["ROWORDER"] = ("TOP-DOWN", "FITS Image Orientation")
    h["EQUINOX"] = (2000.0, "Equinox of celestial coordinate system")
    h["SWCREATE"] = ("N.I.N.A. 3.1.2.9001 (x64)", "Software that created this file")
    _plate_solution(h, f)
    return h


def _maxim(site: Site, f: dict) -> fits.Header:
    cam = site.camera
    start = f["header_start"]
    ftype = f["frame_type"]
    h = fits.Header()
    if ftype == "light":
        h["OBJECT"] = (f["object"], "")
    h["TELESCOP"] = (site.telescope, "telescope used to acquire this image")
    h["INSTRUME"] = (cam.model + " CCD Camera", "instrument or camera used")
    h["OBSERVER"] = (site.observer, "")
    h["DATE-OBS"] = (_iso(start, 2), "YYYY-MM-DDThh:mm:ss observation start, UT")
    h["EXPTIME"] = (float(f["exptime_s"]), "Exposure time in seconds")
    h["EXPOSURE"] = (float(f["exptime_s"]), "Exposure time in seconds")
    h["SET-TEMP"] = (cam.set_temp_c, "CCD temperature setpoint in C")
    h["CCD-TEMP"] = (round(f["ccd_temp"], 2), "CCD temperature at start of exposure in C")
    h["XPIXSZ"] = (cam.pixel_size_um * cam.binning, "Pixel Width in microns (after binning)")
    h["YPIXSZ"] = (cam.pixel_size_um * cam.binning, "Pixel Height in microns (after binning)")
    h["XBINNING"] = (cam.binning, "Binning factor in width")
    h["YBINNING"] = (cam.binning, "Binning factor in height")
    h["XORGSUBF"] = (0, "Subframe X position in binned pixels")
    h["YORGSUBF"] = (0, "Subframe Y position in binned pixels")
    h["READOUTM"] = ("Raw", "Readout mode of image")
    h["FILTER"] = (f["filter"], "Filter used when taking image")
    h["IMAGETYP"] = (_MAXIM_TYPES[ftype], "Type of image")
    h["SITELAT"] = (sexagesimal(site.latitude_deg, decimals=0, sign=True),
                    "Latitude of the imaging location")
    h["SITELONG"] = (sexagesimal(site.longitude_deg, decimals=0, sign=True),
                     "Longitude of the imaging location")
    jd_at = start + timedelta(seconds=float(f["exptime_s"]) * {"start": 0.0, "mid": 0.5,
                                                                "end": 1.0}[cam.jd_reference])
    h["JD"] = (round(modified_julian_date(_round_time(jd_at, 2)) + 2400000.5, 8),
               "Julian Date at time of exposure")
    h["FOCALLEN"] = (site.focal_length_mm, "Focal length of telescope in mm")
    h["APTDIA"] = (site.aperture_m * 1000.0, "Aperture diameter of telescope in mm")
    h["APTAREA"] = (round(site.collecting_area_m2 * 1e6, 1), "Aperture area of telescope in mm^2")
    if cam.header_gain:
        h["EGAIN"] = (cam.gain_e_per_adu, "Electronic gain in e-/ADU")
    h["PEDESTAL"] = (0, "Correction to add for zero-based ADU")
    h["SWCREATE"] = ("MaxIm DL Version 6.40 200130 23VR5", "Software that created the image")
    if ftype == "light":
        ra, dec = f["pointing"]
        h["OBJCTRA"] = (sexagesimal(ra / 15.0, decimals=0),
                        "Nominal Right Ascension of center of image")
        h["OBJCTDEC"] = (sexagesimal(dec, decimals=0, sign=True),
                         "Nominal Declination of center of image")
    _plate_solution(h, f)
    return h


def _observatory(site: Site, f: dict) -> fits.Header:
    cam = site.camera
    start = f["header_start"]
    ftype = f["frame_type"]
    obstype, imagetyp = _OBS_TYPES[ftype]
    h = fits.Header()
    h["OBSERVAT"] = (site.name.upper(), "Observatory")
    h["TELESCOP"] = (site.telescope, "Telescope")
    h["INSTRUME"] = (cam.model, "Instrument")
    h["DETECTOR"] = (cam.model.split()[1] if " " in cam.model else cam.model, "Detector")
    h["OBSTYPE"] = (obstype, "Observation type")
    h["IMAGETYP"] = (imagetyp, "Image type")
    objects = {"light": f.get("object", ""), "bias": "bias", "dark": "dark",
               "flat": f"skyflat {f['filter']}"}
    h["OBJECT"] = (objects[ftype], "Object name")
    h["FILTER"] = (f["filter"], "Filter")
    h["EXPTIME"] = (float(f["exptime_s"]), "Exposure time (s)")
    h["DARKTIME"] = (float(f["exptime_s"]) + cam.readout_s, "Dark time (s)")
    stamp = _iso(start, 3)
    h["DATE-OBS"] = (stamp[:10], "UTC date of exposure start")
    h["UT"] = (stamp[11:], "UTC of exposure start")
    h["MJD-OBS"] = (round(modified_julian_date(_round_time(start, 3)), 9),
                    "MJD of exposure start (UTC)")
    if ftype == "light":
        ra, dec = f["pointing"]
        h["RA"] = (sexagesimal(ra / 15.0, sep=":", decimals=2), "Telescope RA (J2000)")
        h["DEC"] = (sexagesimal(dec, sep=":", decimals=1, sign=True), "Telescope Dec (J2000)")
        h["EQUINOX"] = (2000.0, "Equinox of RA, Dec")
        h["AIRMASS"] = (round(float(f["airmass_start"]), 4), "Airmass at exposure start")
    h["LATITUDE"] = (site.latitude_deg, "Site latitude (deg, N positive)")
    h["LONGITUD"] = (site.longitude_deg, "Site longitude (deg, E positive)")
    h["HEIGHT"] = (site.elevation_m, "Site height (m)")
    if cam.header_gain:
        h["GAIN"] = (cam.gain_e_per_adu, "Gain (e-/ADU)")
        h["RDNOISE"] = (cam.read_noise_e, "Read noise (e-)")
    h["CCDTEMP"] = (round(f["ccd_temp"], 1), "Detector temperature (C)")
    h["CCDSUM"] = (f"{cam.binning} {cam.binning}", "Binning")
    nx, ny, no = cam.width, cam.height, cam.overscan_columns
    h["DETSIZE"] = (f"[1:{nx * cam.binning},1:{ny * cam.binning}]", "Detector size")
    if no:
        if cam.overscan_side == "left":
            bias = f"[1:{no},1:{ny}]"
            trim = f"[{no + 1}:{no + nx},1:{ny}]"
        else:
            bias = f"[{nx + 1}:{nx + no},1:{ny}]"
            trim = f"[1:{nx},1:{ny}]"
        h["BIASSEC"] = (bias, "Overscan section")
        h["TRIMSEC"] = (trim, "Section of useful data")
        h["DATASEC"] = (trim, "Image data section")
    _plate_solution(h, f)
    return h


def _plate_solution(h: fits.Header, f: dict) -> None:
    """A light frame's TAN WCS, as a plate solver writes it into the header (cameras with
    wcs=True: an observatory pipeline, or N.I.N.A. / MaxIm DL after a plate solve)."""
    if f["frame_type"] != "light" or f.get("wcs") is None:
        return
    w = f["wcs"].wcs
    h["WCSAXES"] = (2, "Number of WCS axes")
    h["CTYPE1"] = ("RA---TAN", "Gnomonic projection")
    h["CTYPE2"] = ("DEC--TAN", "Gnomonic projection")
    h["CRVAL1"] = (float(w.crval[0]), "[deg] RA at the reference pixel")
    h["CRVAL2"] = (float(w.crval[1]), "[deg] Dec at the reference pixel")
    h["CRPIX1"] = (float(w.crpix[0]), "Reference pixel (1-based)")
    h["CRPIX2"] = (float(w.crpix[1]), "Reference pixel (1-based)")
    cd = w.cd
    for i in range(2):
        for j in range(2):
            h[f"CD{i + 1}_{j + 1}"] = (float(cd[i, j]), "[deg/pixel]")
    h["RADESYS"] = ("ICRS", "Reference frame")


def _lco(site: Site, f: dict) -> fits.Header:
    cam = site.camera
    start = f["header_start"]
    ftype = f["frame_type"]
    stamp = _iso(start, 3)
    h = fits.Header()
    h["SITEID"] = (site.name[:3].lower(), "ID code of the Observatory site")
    h["TELESCOP"] = (site.telescope, "Telescope used to acquire data")
    h["INSTRUME"] = (cam.name, "Instrument used")
    h["OBSTYPE"] = (_LCO_TYPES[ftype], "Observation type")
    h["OBJECT"] = (f.get("object", "") if ftype == "light" else "N/A", "Object name")
    h["FILTER"] = (f["filter"], "Filter used")
    h["EXPTIME"] = (float(f["exptime_s"]), "[s] Exposure length")
    h["DATE-OBS"] = (stamp, "[UTC] Start date and time of observation")
    h["DAY-OBS"] = (night_date(site, start).replace("-", ""),
                    "[UTC] Date at start of local observing night")
    h["UTSTART"] = (stamp[11:], "[UTC] The start time of the observation")
    h["MJD-OBS"] = (round(modified_julian_date(_round_time(start, 3)), 8),
                    "[UTC days] Start date/time (MJD)")
    h["RLEVEL"] = (91 if cam.processed else 0, "Reduction level")
    h["GAIN"] = (cam.gain_e_per_adu, "[electrons/count] Pixel gain")
    h["RDNOISE"] = (cam.read_noise_e, "[electrons/pixel] Read noise")
    h["CCDSUM"] = (f"{cam.binning} {cam.binning}", "[ccd pixels] CCD on-chip summing/binning")
    h["LATITUDE"] = (site.latitude_deg, "[deg North] Telescope Latitude")
    h["LONGITUD"] = (site.longitude_deg, "[deg East] Telescope Longitude")
    h["HEIGHT"] = (site.elevation_m, "[m] Altitude of Telescope above sea level")
    if ftype == "light":
        ra, dec = f["pointing"]
        h["RA"] = (sexagesimal(ra / 15.0, sep=":", decimals=3), "[HH:MM:SS.sss] Telescope RA")
        h["DEC"] = (sexagesimal(dec, sep=":", decimals=2, sign=True),
                    "[sDD:MM:SS.ss] Telescope declination")
        h["AIRMASS"] = (round(float(f["airmass_start"]), 4), "Effective mean airmass")
    if cam.processed:
        for key, what in (("L1STATBI", "bias"), ("L1STATDA", "dark"), ("L1STATFL", "flat")):
            h[key] = (1, f"Status flag for {what} frame correction")
        h["L1IDFLAT"] = (f"flat-{f['filter']}.fits", "ID of flat frame")
        h["PIPEVER"] = ("1.9.3", "Pipeline version")
    return h


def write_lco(path: Path, data: np.ndarray, header: fits.Header, *,
              bad_pixels: np.ndarray | None = None) -> None:
    """An LCO file, atomically: an empty primary and the fpack'ed SCI image; with `bad_pixels`
    (a processed frame) also BPM (uint8), ERR (float32) and CAT (a small table)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    tiles = (min(16, data.shape[0]), data.shape[1])
    hdus = [fits.PrimaryHDU(),
            fits.CompImageHDU(data=data, header=header, name="SCI", compression_type="RICE_1",
                              tile_shape=tiles)]
    if bad_pixels is not None:
        error = np.sqrt(np.abs(data.astype(np.float32)) + 10.0).astype(np.float32)
        hdus += [fits.CompImageHDU(data=bad_pixels.astype(np.uint8), name="BPM",
                                   compression_type="RICE_1", tile_shape=tiles),
                 fits.CompImageHDU(data=error, name="ERR", compression_type="RICE_1",
                                   tile_shape=tiles),
                 fits.BinTableHDU.from_columns(
                     [fits.Column(name="x", format="E", array=np.zeros(1, np.float32)),
                      fits.Column(name="y", format="E", array=np.zeros(1, np.float32))],
                     name="CAT")]
    fits.HDUList(hdus).writeto(tmp, overwrite=True, output_verify="exception")
    os.replace(tmp, path)


def file_name(site: Site, frame: dict, counters: dict) -> str:
    """Relative path of a frame's file, as the site's program names it."""
    cam = site.camera
    ftype = frame["frame_type"]
    night = night_date(site, frame["header_start"])
    if cam.software == "nina":
        kind = "DARKFLAT" if frame.get("purpose") == "flat-dark" else _NINA_TYPES[ftype]
        counters[kind] = counters.get(kind, 0) + 1
        local = frame["header_start"] + timedelta(hours=local_offset_hours(site))
        stamp = local.strftime("%Y-%m-%d_%H-%M-%S")
        temp = f"{frame['ccd_temp']:.2f}"
        return (f"{_safe(site.name)}/{night}/{kind}/{stamp}_{_safe(frame['filter'])}_{temp}_"
                f"{frame['exptime_s']:.2f}s_{counters[kind] - 1:04d}.fits")
    if cam.software == "maxim":
        if ftype == "light":
            stem, suffix = _safe(frame["object"]), _safe(frame["filter"])
        elif ftype == "flat":
            stem, suffix = "Flat", _safe(frame["filter"])
        else:
            stem, suffix = ftype.capitalize(), ""
        key = (stem, suffix)
        counters[key] = counters.get(key, 0) + 1
        return f"{_safe(site.name)}/{night.replace('-', '')}/{stem}-{counters[key]:03d}{suffix}.fit"
    counters["seq"] = counters.get("seq", 0) + 1
    compact = night.replace("-", "")
    if cam.software == "lco":
        level = "e91" if cam.processed else "e00"
        return (f"{_safe(site.name)}/{compact}/{_safe(site.telescope)}-{_safe(cam.name)}-"
                f"{compact}-{counters['seq']:04d}-{level}.fits.fz")
    ext = ".fits.fz" if cam.compress else ".fits"
    return f"{_safe(site.name)}/{compact}/{_safe(cam.name)}.{compact}.{counters['seq']:04d}{ext}"


def _safe(text: str) -> str:
    """A name fit for one path component: letters, digits, '-', '_', '+' only."""
    return "".join(c if (c.isascii() and c.isalnum()) or c in "-_+" else "_"
                   for c in str(text)) or "unnamed"


def write_fits(path: Path, data: np.ndarray, header: fits.Header, *, compress: bool) -> None:
    """Write a uint16 frame (BITPIX 16, BZERO 32768), or a float32 one (BITPIX -32), atomically:
    temporary name, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    if compress:
        primary = fits.PrimaryHDU()
        # Rice tiles of 16 full rows (fpack's default is 1 row; 16 compresses as well and
        # is much faster through astropy).
        tiles = (min(16, data.shape[0]), data.shape[1])
        hdul = fits.HDUList([primary, fits.CompImageHDU(data=data, header=header,
                                                        compression_type="RICE_1",
                                                        tile_shape=tiles)])
    else:
        hdul = fits.HDUList([fits.PrimaryHDU(data=data, header=header)])
    hdul.writeto(tmp, overwrite=True, output_verify="exception")
    os.replace(tmp, path)

