"""Arrow schemas of the ensemble's products: `lightcurves.parquet` and the per-run star summary.

`LIGHTCURVES_SCHEMA` starts with the columns ../shared/DESIGN.md promises (run_id,
time_bjd_tdb, star_id, role, rel_flux, rel_flux_err, airmass, flags, site, telescope, filter)
and extends them; each field's metadata holds its description (`engine.io.tables.describe`
prints them). `STARS_SCHEMA` is what `merge_runs` reads from each run: one row per
well-measured star with its run-mean magnitude.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["LIGHTCURVES_SCHEMA", "ROLES", "Repeated", "STARS_SCHEMA", "table_from_columns"]

#: Values of the `role` column.
ROLES = ("target", "comparison", "check", "field")


def _field(name: str, kind: pa.DataType, description: str) -> pa.Field:
    return pa.field(name, kind, nullable=True, metadata={"description": description})


LIGHTCURVES_SCHEMA = pa.schema([
    _field("run_id", pa.string(), "the run: telescope x night x filter"),
    _field("time_bjd_tdb", pa.float64(), "mid-exposure barycentric Julian date (TDB)"),
    _field("star_id", pa.int64(),
           "the star: the star table's star_id (a global id) or its star number; after "
           "merge_runs, the id shared by every run that saw the star"),
    _field("role", pa.string(), "target, comparison, check (or field)"),
    _field("rel_flux", pa.float64(),
           "flux relative to the weighted comparison ensemble, detrended, normalised to 1 over "
           "the star's clear (and, for the target, out-of-event) frames; comparisons against "
           "the ensemble of the others"),
    _field("rel_flux_err", pa.float64(),
           "1-sigma error of rel_flux: the noise model and the ensemble's zero-point error"),
    _field("airmass", pa.float64(), "airmass at mid-exposure"),
    _field("flags", pa.uint32(),
           "engine.flags.MeasurementFlag bits: the photometry's, the frame's (CLOUD, "
           "NOISE_MODEL_EXCEEDED, NO_ENSEMBLE) and the row's (NO_FLUX, ENSEMBLE_OUTLIER); "
           "0 = good"),
    _field("site", pa.string(), "observing site"),
    _field("telescope", pa.string(), "telescope"),
    _field("filter", pa.string(), "filter"),
    _field("time_err_s", pa.float64(),
           "timing error of time_bjd_tdb, 1 sigma, s (stamp resolution and clock uncertainty; "
           "the frames table's time_err_s)"),
    _field("frame", pa.int64(), "frame number within the run"),
    _field("star", pa.int64(), "star number in the run's star table"),
    _field("aperture", pa.string(), "photometry used: 'r=<radius px>' or 'psf'"),
    _field("rel_flux_raw", pa.float64(), "rel_flux before detrending (same normalisation rule)"),
    _field("detrend_model", pa.float64(),
           "rel_flux_raw / rel_flux: the multiplicative trend removed"),
    _field("mag", pa.float64(),
           "detrended instrumental magnitude on the run's ensemble system (zero points averaging "
           "0 over the run): -2.5 log10(flux / exptime) - zero point - trends"),
    _field("mag_err", pa.float64(), "1-sigma error of mag"),
    _field("zero_point", pa.float64(), "the frame's ensemble zero point (mag)"),
    _field("transparency", pa.float64(),
           "the frame's transparency relative to the clear-sky baseline"),
    _field("mag_std", pa.float64(),
           "standardised magnitude (merge_runs): mag minus the run's offset and colour terms, on "
           "the reference catalogue's system (else the reference run's); NaN before merging"),
    _field("mag_std_err", pa.float64(), "1-sigma error of mag_std, transformation included"),
    _field("mag_std_system", pa.string(),
           "the system of mag_std: 'catalogue <band>' (standard magnitudes in that band) or "
           "'run <run_id>' (relative to the reference run: not standard); null before merging"),
])

STARS_SCHEMA = pa.schema([
    _field("run_id", pa.string(), "the run"),
    _field("star", pa.int64(), "star number in the run's star table"),
    _field("star_id", pa.int64(), "global id from the star table, else the star number"),
    _field("role", pa.string(), "target, comparison, check or field"),
    _field("ra", pa.float64(), "right ascension (deg), when the star table has it"),
    _field("dec", pa.float64(), "declination (deg)"),
    _field("colour", pa.float64(), "BP-RP when known"),
    _field("mag", pa.float64(), "weighted mean of the detrended mag over the clear frames"),
    _field("mag_err", pa.float64(), "error of that mean"),
    _field("scatter", pa.float64(), "rms of the detrended mag (mag)"),
    _field("expected", pa.float64(), "median expected error of one measurement (mag)"),
    _field("frames", pa.int64(), "frames the mean rests on"),
    _field("excess", pa.float64(), "scatter beyond the noise model (mag), in quadrature"),
    _field("weight_share", pa.float64(), "share of the ensemble's weight (comparisons), else 0"),
])


class Repeated:
    """A column given as labels and, per row, an index into them (fast for string columns)."""

    def __init__(self, labels, index):
        self.labels = list(labels)
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self):
        return self.index.shape[0]

    def array(self, kind: pa.DataType) -> pa.Array:
        import pyarrow.compute as pc

        return pc.take(pa.array(self.labels, type=kind), pa.array(self.index))


def table_from_columns(columns: dict, schema: pa.Schema) -> pa.Table:
    """An Arrow table of `schema` from NumPy arrays or lists. Missing float columns are NaN,
    other missing columns null; NaN stays NaN (not null) so NumPy readers see numbers."""
    n = None
    for value in columns.values():
        n = len(value)
        break
    arrays = []
    for f in schema:
        value = columns.get(f.name)
        if isinstance(value, Repeated):
            arrays.append(value.array(f.type))
            continue
        if value is None and pa.types.is_floating(f.type):
            arrays.append(pa.array(np.full(n or 0, np.nan), type=f.type))
        elif value is None:
            arrays.append(pa.nulls(n or 0, type=f.type))
        elif isinstance(value, np.ndarray) and pa.types.is_floating(f.type):
            arrays.append(pa.array(value.astype(np.float64), type=f.type))
        else:
            arrays.append(pa.array(value, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)
