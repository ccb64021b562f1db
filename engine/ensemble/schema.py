"""Building the ensemble's tables from NumPy columns: `table_from_columns` and the `role` values.

The schemas themselves (LIGHTCURVES_SCHEMA, STAR_SUMMARY_SCHEMA) live with every other
product's in engine.io.schemas.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

__all__ = ["ROLES", "Repeated", "table_from_columns"]

#: Values of the `role` column.
ROLES = ("target", "comparison", "check", "field")


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
