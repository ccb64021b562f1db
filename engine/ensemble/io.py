"""Writing the ensemble's products, and reading a reference catalogue.

- `write_lightcurves(table, path)`: `lightcurves.parquet`, atomically (temporary name, then
  rename; engine.io.tables.write_parquet), after checking the columns DESIGN.md promises.
- `write_report(report, path)`: `report.json`, atomically; NaN and inf become null, NumPy
  values plain numbers (`jsonable`).
- `read_reference_catalogue(path)`: a CSV or Parquet catalogue as an Arrow table, for
  `merge_runs(reference_catalogue=...)` (`engine.io.catalogue.read_catalogue` reads it).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.errors import EngineValueError
from engine.io.atomic import write_text
from engine.io.catalogue import read_catalogue
from engine.io.schemas import LIGHTCURVES_SCHEMA

__all__ = ["jsonable", "read_reference_catalogue", "write_lightcurves", "write_report"]

#: Columns lightcurves.parquet must have (../shared/DESIGN.md).
REQUIRED_COLUMNS = ("run_id", "time_bjd_tdb", "star_id", "role", "rel_flux", "rel_flux_err",
                    "airmass", "flags", "site", "telescope", "filter")


def jsonable(value):
    """A copy of value made of dicts, lists, str, int, float (finite), bool and None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str):
        return value
    return str(value)


def write_lightcurves(table: pa.Table, path, metadata: dict | None = None) -> Path:
    """Write light curves to `path` (Parquet) atomically; returns the path."""
    from engine.io.tables import write_parquet

    if not isinstance(table, pa.Table):
        raise EngineValueError(f"expected a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise EngineValueError(f"light curves lack column(s) {missing}")
    return write_parquet(table, path, metadata=metadata, schema=LIGHTCURVES_SCHEMA)


def write_report(report: dict, path) -> Path:
    """Write a report dict as JSON to `path` atomically; returns the path."""
    return write_text(path, json.dumps(jsonable(report), indent=1, allow_nan=False))


def read_reference_catalogue(path) -> pa.Table:
    """A reference catalogue file as an Arrow table for `merge_runs`: `engine.io.catalogue`'s
    columns (id, ra, dec, mag, colour, mag_<band>), read by `read_catalogue` (which names the
    column spellings it recognises and the typed errors it raises)."""
    return read_catalogue(path).to_table()
