"""The Arrow schema of every table the engine writes as Parquet: one home for each column's
name, type, unit and description.

Each field's metadata holds its `description` and, where the column has one, its `unit` (an
astropy unit string). `write_parquet` (engine.io.tables) casts a table to its schema and writes
these into the file twice: in the fields (pyarrow, pandas) and as astropy's `table_meta_yaml`,
so that `astropy.table.QTable.read("photometry.parquet")` gives Quantity columns with units.

    frames.parquet                                   FRAMES_SCHEMA
    photometry.parquet (and photometry/RUN.parquet)  PHOTOMETRY_SCHEMA
    stars.parquet (and photometry/RUN.stars.parquet) STARS_SCHEMA
    photometry/RUN.registration.parquet              REGISTRATION_SCHEMA
    lightcurves.parquet                              LIGHTCURVES_SCHEMA

STAR_SUMMARY_SCHEMA is the ensemble's per-run star summary (RunLightCurve.stars), kept in memory.

Times are mid-exposure; sections are 0-based half-open (row_start, row_stop, column_start,
column_stop) in the stored frame's pixels, as variable-length lists (null when the header has
none: astropy cannot read a fixed-size list holding nulls). `flags` columns keep that name in
every product: other programs read them as `df["flags"]`.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["FRAMES_SCHEMA", "LIGHTCURVES_SCHEMA", "PHOTOMETRY_SCHEMA", "REGISTRATION_SCHEMA",
           "STARS_SCHEMA", "STAR_SUMMARY_SCHEMA", "column", "describe"]

_FLAGS = ("engine.flags.MeasurementFlag bits, 0 = good; the column is named flags in every "
          "product (other programs read it as df['flags'])")


def column(name: str, kind: pa.DataType, description: str, unit: str | None = None) -> pa.Field:
    """A nullable field with its description and (astropy) unit in its metadata."""
    metadata = {"description": description}
    if unit is not None:
        metadata["unit"] = unit
    return pa.field(name, kind, nullable=True, metadata=metadata)


def describe(schema: pa.Schema) -> str:
    """One line per field: name, type, unit, description."""
    lines = []
    for field in schema:
        metadata = field.metadata or {}
        unit = metadata.get(b"unit", b"").decode()
        description = metadata.get(b"description", b"").decode()
        lines.append(f"{field.name:20s} {field.type!s:24s} {unit:14s} {description}")
    return "\n".join(lines)


PHOTOMETRY_SCHEMA = pa.schema([
    column("frame", pa.int64(), "frame number within the run (index into its cube)"),
    column("star", pa.int64(), "star number in the run's star table"),
    column("radius", pa.float64(),
           "aperture radius; for PSF rows the fitting box half-width", unit="pix"),
    column("x", pa.float64(), "star centre on the frame, 0-based column (pixel centres on "
           "integers)", unit="pix"),
    column("y", pa.float64(), "star centre on the frame, 0-based row", unit="pix"),
    column("flux", pa.float64(), "background-subtracted flux in the aperture (or PSF fit)",
           unit="electron"),
    column("flux_err", pa.float64(), "1-sigma error of flux: the noise model's terms in "
           "quadrature", unit="electron"),
    column("background", pa.float64(), "background level per pixel (annulus, clipped)",
           unit="electron"),
    column("background_std", pa.float64(), "per-pixel scatter of the background",
           unit="electron"),
    column("background_pixels", pa.int64(),
           "annulus pixels the background rests on (PSF rows: pixels of the fitted group)"),
    column("area", pa.float64(), "aperture area (exact pixel overlap; PSF rows: pixels fitted)",
           unit="pix2"),
    column("flags", pa.uint32(), _FLAGS),
    column("var_star", pa.float64(), "variance: Poisson noise of the star", unit="electron2"),
    column("var_background", pa.float64(), "variance: sky, dark and read noise over the "
           "aperture", unit="electron2"),
    column("var_background_error", pa.float64(), "variance: error of the background estimate",
           unit="electron2"),
    column("var_scintillation", pa.float64(), "variance: scintillation (Young / Osborn)",
           unit="electron2"),
    column("var_read", pa.float64(), "read-noise part of var_background", unit="electron2"),
    column("var_dark", pa.float64(), "dark-current part of var_background", unit="electron2"),
    column("method", pa.string(), "aperture or psf"),
    column("chi2_reduced", pa.float64(), "PSF fit: reduced chi-square (null for apertures)"),
    column("iterations", pa.int32(), "PSF fit: iterations used (null for apertures)"),
    column("run_id", pa.string(), "the run: telescope x night x filter"),
])

STARS_SCHEMA = pa.schema([
    column("star", pa.int64(), "star number in the run's star table"),
    column("x", pa.float64(), "position on the run's reference frame, 0-based column",
           unit="pix"),
    column("y", pa.float64(), "position on the run's reference frame, 0-based row", unit="pix"),
    column("flux", pa.float64(), "detection flux on the reference frame (image units)"),
    column("fwhm", pa.float64(), "full width at half maximum on the reference frame",
           unit="pix"),
    column("peak", pa.float64(), "highest background-subtracted pixel (image units)"),
    column("is_target", pa.bool_(), "the run's target"),
    column("run_id", pa.string(), "the run: telescope x night x filter"),
    column("ra", pa.float64(), "right ascension from the run's sky solution (ICRS)", unit="deg"),
    column("dec", pa.float64(), "declination from the run's sky solution (ICRS)", unit="deg"),
    column("star_id", pa.int64(), "network-wide id shared by every run that saw the star"),
    column("catalogue_id", pa.int64(), "the matched reference catalogue star's id (null: none)"),
    column("catalogue_mag", pa.float64(), "the matched catalogue star's magnitude", unit="mag"),
    column("colour", pa.float64(), "the matched catalogue star's colour", unit="mag"),
])

REGISTRATION_SCHEMA = pa.schema([
    column("frame", pa.int64(), "frame number within the run"),
    column("status", pa.string(), "ok when registered, else see reason"),
    column("reason", pa.string(), "why the frame could not be registered (null when ok)"),
    column("method", pa.string(), "how the transform was found (tracking, asterism matching)"),
    column("n_matches", pa.int32(), "stars matched between the frame and the reference"),
    column("rms", pa.float64(), "rms residual of the matched stars", unit="pix"),
    column("a", pa.float64(), "transform: scale x cos(rotation) (reference -> frame)"),
    column("b", pa.float64(), "transform: scale x sin(rotation)"),
    column("tx", pa.float64(), "transform: shift along x", unit="pix"),
    column("ty", pa.float64(), "transform: shift along y", unit="pix"),
    column("parity", pa.int8(), "+1, or -1 for a mirrored field (0 when failed)"),
    column("scale", pa.float64(), "transform scale (frame pixels per reference pixel)"),
    column("rotation_deg", pa.float64(), "transform rotation", unit="deg"),
])

FRAMES_SCHEMA = pa.schema([
    column("path", pa.string(), "absolute path of the input file"),
    column("file_size", pa.int64(), "file size in bytes when ingested", unit="byte"),
    column("file_mtime_ns", pa.int64(),
           "file modification time (ns since the epoch) when ingested", unit="ns"),
    column("content_hash", pa.string(),
           "SHA-256 (hex, 128 bits) of the decoded pixels with their dtype and shape: equal for "
           "copies of a frame however they are stored (plain, fpack'ed, gzipped)"),
    column("status", pa.string(), "ok, or skipped (see reason)"),
    column("reason", pa.string(), "why the file was skipped (null when ok)"),
    column("reason_code", pa.string(),
           "machine-readable reason: not_fits, empty_file, truncated, no_data, bad_naxis, "
           "unreadable, no_time, bad_exptime, unknown_type, all_nan, shape_mismatch, duplicate"),
    column("notes", pa.string(), "doubts resolved while reading the file, ' | '-separated"),
    column("frame_type", pa.string(), "bias, dark, flat or light"),
    column("frame_type_evidence", pa.string(), "what decided the frame type"),
    column("run_id", pa.string(),
           "the run (lights: one camera, engine.io.headers.camera_identity, x night x filter) or "
           "calibration set the frame belongs to; also the name of its cube"),
    column("cube_index", pa.int32(), "index of the frame in its run's cube (null when skipped)"),
    column("site", pa.string(), "configured site name, else OBSERVAT / SITENAME"),
    column("telescope", pa.string(), "TELESCOP, else INSTRUME, else the site"),
    column("instrument", pa.string(), "INSTRUME"),
    column("night", pa.string(), "local date (YYYY-MM-DD) of the evening the night began"),
    column("object", pa.string(), "OBJECT"),
    column("filter", pa.string(), "FILTER (as written, blanks stripped)"),
    column("exptime", pa.float64(), "exposure time, s", unit="s"),
    column("time_utc_mid", pa.timestamp("us", tz="UTC"), "mid-exposure UTC (clock-corrected)"),
    column("jd_utc_mid", pa.float64(), "mid-exposure UTC as a Julian date (clock-corrected)",
           unit="d"),
    column("time_bjd_tdb", pa.float64(),
           "mid-exposure barycentric Julian date (TDB) for the run's target; lights only",
           unit="d"),
    column("time_keyword", pa.string(), "the time stamp used (e.g. DATE-OBS, DATE-OBS+UT, JD)"),
    column("time_reference", pa.string(), "what that stamp marks: start, mid or end"),
    column("time_basis", pa.string(),
           "how that is known: stated (by the header), configured (for the site), inferred "
           "(from how the run's keywords agree; evidence in time_source) or assumed"),
    column("time_precision_s", pa.float64(), "resolution the stamp was written with, s", unit="s"),
    column("clock_offset_s", pa.float64(), "configured clock offset removed, s", unit="s"),
    column("time_err_s", pa.float64(),
           "timing error of the mid-exposure time, 1 sigma, s: the stamp's resolution "
           "(resolution / sqrt(3)) and the site's clock uncertainty in quadrature", unit="s"),
    column("time_source", pa.string(), "the time's provenance in words, including BJD inputs"),
    column("target_ra_deg", pa.float64(), "target right ascension used for BJD and airmass, deg",
           unit="deg"),
    column("target_dec_deg", pa.float64(), "target declination used for BJD and airmass, deg",
           unit="deg"),
    column("target_source", pa.string(), "argument, configuration, or the headers' pointing"),
    column("airmass", pa.float64(), "airmass at mid-exposure (Pickering 2002), else the header's"),
    column("airmass_source", pa.string(), "computed, or the header keyword"),
    column("gain", pa.float64(), "gain, e-/ADU of the stored frame", unit="electron / adu"),
    column("gain_source", pa.string(),
           "where the gain came from: header keyword (and how it was read), configuration, or "
           "measurement (photon transfer, the lights' sky)"),
    column("gain_setting", pa.float64(), "the camera's gain setting (CMOS), not e-/ADU"),
    column("readout_mode", pa.string(),
           "the camera's readout mode name (READOUTM, READMODE), null when the header has none"),
    column("read_noise", pa.float64(), "read noise, e-", unit="electron"),
    column("read_noise_source", pa.string(),
           "where the read noise came from: header keyword, configuration, or measurement"),
    column("temperature", pa.float64(), "sensor temperature, C", unit="deg_C"),
    column("set_temperature", pa.float64(), "sensor set point, C", unit="deg_C"),
    column("binning_x", pa.int16(), "binning along x (columns)"),
    column("binning_y", pa.int16(), "binning along y (rows)"),
    column("shape", pa.list_(pa.int32()), "stored frame (rows, columns), pixels"),
    column("dtype", pa.string(), "stored pixel dtype"),
    column("hdu", pa.int16(), "index of the HDU the image was read from"),
    column("hdu_name", pa.string(), "name of that HDU"),
    column("compression", pa.string(), "tile compression (RICE_1, ...), gzip, or null"),
    column("bayer_pattern", pa.string(),
           "colour filter pattern at pixel [0, 0] (RGGB ...); the stored frame is then the "
           "configured extraction (green or superpixel) at half resolution"),
    column("ra_deg", pa.float64(), "pointing right ascension from the header, deg", unit="deg"),
    column("dec_deg", pa.float64(), "pointing declination from the header, deg", unit="deg"),
    column("pointing_source", pa.string(), "keywords the pointing came from"),
    column("site_longitude_deg", pa.float64(), "site east longitude used, deg", unit="deg"),
    column("site_latitude_deg", pa.float64(), "site latitude used, deg", unit="deg"),
    column("site_height_m", pa.float64(), "site height used, m", unit="m"),
    column("site_source", pa.string(), "configuration or header keywords"),
    column("overscan_section", pa.list_(pa.int32()),
           "BIASSEC, 0-based half-open, stored pixels"),
    column("trim_section", pa.list_(pa.int32()),
           "TRIMSEC (else DATASEC), 0-based half-open, stored pixels"),
    column("wcs", pa.string(), "celestial WCS header cards when present"),
    column("pixel_scale_arcsec", pa.float64(), "pixel scale of the stored frame, arcsec/px",
           unit="arcsec / pix"),
    column("pixel_scale_source", pa.string(),
           "keyword(s) the pixel scale came from (PIXSCALE, CD matrix, XPIXSZ/FOCALLEN, ...)"),
    column("saturation", pa.float64(),
           "saturation level of the stored frame, ADU: header (SATURATE, DATAMAX), "
           "configuration, or measured on the raw pixels (ADC depth, pile-up)", unit="adu"),
    column("saturation_source", pa.string(), "where the saturation level came from"),
    column("aperture_diameter_m", pa.float64(),
           "telescope aperture diameter, m (site configuration, else APTDIA), for scintillation",
           unit="m"),
    column("median_adu", pa.float64(), "median pixel value of the stored frame (subsampled)",
           unit="adu"),
    column("calibrated_state", pa.string(),
           "calibration already applied before ingest: raw, or the steps ('bias,dark,flat'); "
           "the calibration stage does not apply them again"),
    column("calibrated_evidence", pa.string(),
           "the header evidence for calibrated_state (CALSTAT, RLEVEL, FLATCOR, HISTORY, ...)"),
    column("pedestal_adu", pa.float64(),
           "pedestal subtracted from every stored pixel on ingest (PEDESTAL or the site's), ADU",
           unit="adu"),
    column("bad_pixel_hdu", pa.int16(),
           "HDU of the file's own bad-pixel mask (e.g. LCO's BPM); its pixels go into the "
           "run's mask (cubes/RUN_ID_bpm.zarr, then the calibrated mask)"),
])

LIGHTCURVES_SCHEMA = pa.schema([
    column("run_id", pa.string(), "the run: telescope x night x filter"),
    column("time_bjd_tdb", pa.float64(), "mid-exposure barycentric Julian date (TDB)", unit="d"),
    column("star_id", pa.int64(),
           "the star: the star table's star_id (a global id) or its star number; after "
           "merge_runs, the id shared by every run that saw the star"),
    column("role", pa.string(), "target, comparison, check (or field)"),
    column("rel_flux", pa.float64(),
           "flux relative to the weighted comparison ensemble, detrended, normalised to 1 over "
           "the star's clear (and, for the target, out-of-event) frames; comparisons against "
           "the ensemble of the others"),
    column("rel_flux_err", pa.float64(),
           "1-sigma error of rel_flux: the noise model and the ensemble's zero-point error"),
    column("airmass", pa.float64(), "airmass at mid-exposure"),
    column("flags", pa.uint32(),
           "engine.flags.MeasurementFlag bits: the photometry's, the frame's (CLOUD, "
           "NOISE_MODEL_EXCEEDED, NO_ENSEMBLE) and the row's (NO_FLUX, ENSEMBLE_OUTLIER); "
           "0 = good; named flags in every product (read it as df['flags'])"),
    column("site", pa.string(), "observing site"),
    column("telescope", pa.string(), "telescope"),
    column("filter", pa.string(), "filter"),
    column("time_err_s", pa.float64(),
           "timing error of time_bjd_tdb, 1 sigma, s (stamp resolution and clock uncertainty; "
           "the frames table's time_err_s)", unit="s"),
    column("frame", pa.int64(), "frame number within the run"),
    column("star", pa.int64(), "star number in the run's star table"),
    column("aperture", pa.string(), "photometry used: 'r=<radius px>' or 'psf'"),
    column("rel_flux_raw", pa.float64(), "rel_flux before detrending (same normalisation rule)"),
    column("detrend_model", pa.float64(),
           "rel_flux_raw / rel_flux: the multiplicative trend removed"),
    column("mag", pa.float64(),
           "detrended instrumental magnitude on the run's ensemble system (zero points averaging "
           "0 over the run): -2.5 log10(flux / exptime) - zero point - trends", unit="mag"),
    column("mag_err", pa.float64(), "1-sigma error of mag", unit="mag"),
    column("zero_point", pa.float64(), "the frame's ensemble zero point (mag)", unit="mag"),
    column("transparency", pa.float64(),
           "the frame's transparency relative to the clear-sky baseline"),
    column("mag_std", pa.float64(),
           "standardised magnitude (merge_runs): mag minus the run's offset and colour terms, on "
           "the reference catalogue's system (else the reference run's); NaN before merging",
           unit="mag"),
    column("mag_std_err", pa.float64(), "1-sigma error of mag_std, transformation included",
           unit="mag"),
    column("mag_std_system", pa.string(),
           "the system of mag_std: 'catalogue <band>' (standard magnitudes in that band) or "
           "'run <run_id>' (relative to the reference run: not standard); null before merging"),
])

STAR_SUMMARY_SCHEMA = pa.schema([
    column("run_id", pa.string(), "the run"),
    column("star", pa.int64(), "star number in the run's star table"),
    column("star_id", pa.int64(), "global id from the star table, else the star number"),
    column("role", pa.string(), "target, comparison, check or field"),
    column("ra", pa.float64(), "right ascension (deg), when the star table has it", unit="deg"),
    column("dec", pa.float64(), "declination (deg)", unit="deg"),
    column("colour", pa.float64(), "BP-RP when known", unit="mag"),
    column("mag", pa.float64(), "weighted mean of the detrended mag over the clear frames",
           unit="mag"),
    column("mag_err", pa.float64(), "error of that mean", unit="mag"),
    column("scatter", pa.float64(), "rms of the detrended mag (mag)", unit="mag"),
    column("expected", pa.float64(), "median expected error of one measurement (mag)", unit="mag"),
    column("frames", pa.int64(), "frames the mean rests on"),
    column("excess", pa.float64(), "scatter beyond the noise model (mag), in quadrature",
           unit="mag"),
    column("weight_share", pa.float64(), "share of the ensemble's weight (comparisons), else 0"),
])
