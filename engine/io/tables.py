"""Arrow schemas of the engine's tables, and atomic Parquet writing.

`FRAMES_SCHEMA` is the frames table (`frames.parquet`): one row per input file. Each field's
metadata holds its description (`describe(FRAMES_SCHEMA)` prints them). Times are mid-exposure;
sections are 0-based half-open (row_start, row_stop, column_start, column_stop) in the stored
frame's pixels.

`write_parquet` writes to a temporary name in the same folder and renames it into place, so a
reader never sees a half-written table.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from engine.errors import EngineFileError
from engine.io.atomic import atomic_path

__all__ = ["FRAMES_SCHEMA", "describe", "read_parquet", "write_parquet"]


def _field(name: str, kind: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, kind, nullable=True, metadata={"description": description})


FRAMES_SCHEMA = pa.schema([
    _field("path", pa.string(), "absolute path of the input file"),
    _field("file_size", pa.int64(), "file size in bytes when ingested"),
    _field("file_mtime_ns", pa.int64(),
           "file modification time (ns since the epoch) when ingested"),
    _field("content_hash", pa.string(),
           "SHA-256 (hex, 128 bits) of the decoded pixels with their dtype and shape: equal for "
           "copies of a frame however they are stored (plain, fpack'ed, gzipped)"),
    _field("status", pa.string(), "ok, or skipped (see reason)"),
    _field("reason", pa.string(), "why the file was skipped (null when ok)"),
    _field("reason_code", pa.string(),
           "machine-readable reason: not_fits, empty_file, truncated, no_data, bad_naxis, "
           "unreadable, no_time, bad_exptime, unknown_type, all_nan, shape_mismatch, duplicate"),
    _field("notes", pa.string(), "doubts resolved while reading the file, ' | '-separated"),
    _field("frame_type", pa.string(), "bias, dark, flat or light"),
    _field("frame_type_evidence", pa.string(), "what decided the frame type"),
    _field("run_id", pa.string(),
           "the run (lights: one camera, engine.io.headers.camera_identity, x night x filter) or "
           "calibration set the frame belongs to; also the name of its cube"),
    _field("cube_index", pa.int32(), "index of the frame in its run's cube (null when skipped)"),
    _field("site", pa.string(), "configured site name, else OBSERVAT / SITENAME"),
    _field("telescope", pa.string(), "TELESCOP, else INSTRUME, else the site"),
    _field("instrument", pa.string(), "INSTRUME"),
    _field("night", pa.string(), "local date (YYYY-MM-DD) of the evening the night began"),
    _field("object", pa.string(), "OBJECT"),
    _field("filter", pa.string(), "FILTER (as written, blanks stripped)"),
    _field("exptime", pa.float64(), "exposure time, s"),
    _field("time_utc_mid", pa.timestamp("us", tz="UTC"), "mid-exposure UTC (clock-corrected)"),
    _field("jd_utc_mid", pa.float64(), "mid-exposure UTC as a Julian date (clock-corrected)"),
    _field("time_bjd_tdb", pa.float64(),
           "mid-exposure barycentric Julian date (TDB) for the run's target; lights only"),
    _field("time_keyword", pa.string(), "the time stamp used (e.g. DATE-OBS, DATE-OBS+UT, JD)"),
    _field("time_reference", pa.string(), "what that stamp marks: start, mid or end"),
    _field("time_basis", pa.string(),
           "how that is known: stated (by the header), configured (for the site), inferred "
           "(from how the run's keywords agree; evidence in time_source) or assumed"),
    _field("time_precision_s", pa.float64(), "resolution the stamp was written with, s"),
    _field("clock_offset_s", pa.float64(), "configured clock offset removed, s"),
    _field("time_err_s", pa.float64(),
           "timing error of the mid-exposure time, 1 sigma, s: the stamp's resolution "
           "(resolution / sqrt(3)) and the site's clock uncertainty in quadrature"),
    _field("time_source", pa.string(), "the time's provenance in words, including BJD inputs"),
    _field("target_ra_deg", pa.float64(), "target right ascension used for BJD and airmass, deg"),
    _field("target_dec_deg", pa.float64(), "target declination used for BJD and airmass, deg"),
    _field("target_source", pa.string(), "argument, configuration, or the headers' pointing"),
    _field("airmass", pa.float64(), "airmass at mid-exposure (Pickering 2002), else the header's"),
    _field("airmass_source", pa.string(), "computed, or the header keyword"),
    _field("gain", pa.float64(), "gain, e-/ADU of the stored frame"),
    _field("gain_source", pa.string(),
           "where the gain came from: header keyword (and how it was read), configuration, or "
           "measurement (photon transfer, the lights' sky)"),
    _field("gain_setting", pa.float64(), "the camera's gain setting (CMOS), not e-/ADU"),
    _field("readout_mode", pa.string(),
           "the camera's readout mode name (READOUTM, READMODE), null when the header has none"),
    _field("read_noise", pa.float64(), "read noise, e-"),
    _field("read_noise_source", pa.string(),
           "where the read noise came from: header keyword, configuration, or measurement"),
    _field("temperature", pa.float64(), "sensor temperature, C"),
    _field("set_temperature", pa.float64(), "sensor set point, C"),
    _field("binning_x", pa.int16(), "binning along x (columns)"),
    _field("binning_y", pa.int16(), "binning along y (rows)"),
    _field("shape", pa.list_(pa.int32(), 2), "stored frame (rows, columns)"),
    _field("dtype", pa.string(), "stored pixel dtype"),
    _field("hdu", pa.int16(), "index of the HDU the image was read from"),
    _field("hdu_name", pa.string(), "name of that HDU"),
    _field("compression", pa.string(), "tile compression (RICE_1, ...), gzip, or null"),
    _field("bayer_pattern", pa.string(),
           "colour filter pattern at pixel [0, 0] (RGGB ...); the stored frame is then the "
           "configured extraction (green or superpixel) at half resolution"),
    _field("ra_deg", pa.float64(), "pointing right ascension from the header, deg"),
    _field("dec_deg", pa.float64(), "pointing declination from the header, deg"),
    _field("pointing_source", pa.string(), "keywords the pointing came from"),
    _field("site_longitude_deg", pa.float64(), "site east longitude used, deg"),
    _field("site_latitude_deg", pa.float64(), "site latitude used, deg"),
    _field("site_height_m", pa.float64(), "site height used, m"),
    _field("site_source", pa.string(), "configuration or header keywords"),
    _field("overscan_section", pa.list_(pa.int32(), 4),
           "BIASSEC, 0-based half-open, stored pixels"),
    _field("trim_section", pa.list_(pa.int32(), 4), "TRIMSEC (else DATASEC), 0-based half-open"),
    _field("wcs", pa.string(), "celestial WCS header cards when present"),
    _field("pixel_scale_arcsec", pa.float64(), "pixel scale of the stored frame, arcsec/px"),
    _field("pixel_scale_source", pa.string(),
           "keyword(s) the pixel scale came from (PIXSCALE, CD matrix, XPIXSZ/FOCALLEN, ...)"),
    _field("saturation", pa.float64(),
           "saturation level of the stored frame, ADU: header (SATURATE, DATAMAX), "
           "configuration, or measured on the raw pixels (ADC depth, pile-up)"),
    _field("saturation_source", pa.string(), "where the saturation level came from"),
    _field("aperture_diameter_m", pa.float64(),
           "telescope aperture diameter, m (site configuration, else APTDIA), for scintillation"),
    _field("median_adu", pa.float64(), "median pixel value of the stored frame (subsampled)"),
    _field("calibrated_state", pa.string(),
           "calibration already applied before ingest: raw, or the steps ('bias,dark,flat'); "
           "the calibration stage does not apply them again"),
    _field("calibrated_evidence", pa.string(),
           "the header evidence for calibrated_state (CALSTAT, RLEVEL, FLATCOR, HISTORY, ...)"),
    _field("pedestal_adu", pa.float64(),
           "pedestal subtracted from every stored pixel on ingest (PEDESTAL or the site's), ADU"),
    _field("bad_pixel_hdu", pa.int16(),
           "HDU of the file's own bad-pixel mask (e.g. LCO's BPM); its pixels go into the "
           "run's mask (cubes/RUN_ID_bpm.zarr, then the calibrated mask)"),
])


def describe(schema: pa.Schema) -> str:
    """One line per field: name, type, description."""
    lines = []
    for field in schema:
        description = (field.metadata or {}).get(b"description", b"").decode()
        lines.append(f"{field.name:20s} {str(field.type):28s} {description}")
    return "\n".join(lines)


def write_parquet(table: pa.Table, path: str | os.PathLike, metadata: dict | None = None) -> Path:
    """Write `table` to `path` atomically (temporary name, then rename); returns the path.
    `metadata` (str -> str) is added to the schema's metadata."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({str(k).encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")
    return Path(path)


def concat_parquet(sources, path: str | os.PathLike) -> Path:
    """The rows of several Parquet files, in order, as one file written atomically; returns the
    path. Streams one row group at a time, so the tables never have to fit in memory together.
    Columns missing from some sources are null there (the schemas are unified)."""
    sources = [Path(s) for s in sources]
    try:
        files = [pq.ParquetFile(s) for s in sources]
        schema = pa.unify_schemas([f.schema_arrow.remove_metadata() for f in files],
                                  promote_options="default")
    except (OSError, pa.ArrowException) as exc:
        raise EngineFileError(f"cannot combine {[str(s) for s in sources]}: {exc}") from None
    with atomic_path(path) as temporary, pq.ParquetWriter(temporary, schema,
                                                          compression="zstd") as writer:
        for source in files:
            for group in range(source.num_row_groups):
                part = source.read_row_group(group)
                columns = [part.column(f.name).cast(f.type) if f.name in part.column_names
                           else pa.nulls(part.num_rows, f.type) for f in schema]
                writer.write_table(pa.Table.from_arrays(columns, schema=schema))
    return Path(path)


def read_parquet(path: str | os.PathLike, columns=None) -> pa.Table:
    """A Parquet table (only `columns`, when given); EngineFileError naming the file when it
    cannot be read."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise EngineFileError(f"{path}: not a readable Parquet table ({exc})") from None
