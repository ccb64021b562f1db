"""Atomic Parquet writing of the engine's tables, each cast to its schema (engine.io.schemas).

`write_parquet` writes to a temporary name in the same folder and renames it into place, so a
reader never sees a half-written table. Given a schema, it casts the table to it (refusing a
column the schema does not know) and writes astropy's Parquet metadata beside pyarrow's: the
`table_meta_yaml` key (each column's unit and description) and `table::len::NAME` (the longest
string of each string column, which astropy needs to read one holding nulls), so that
`astropy.table.QTable.read(path)` gives Quantity columns while pyarrow and pandas read the same
file as before.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.errors import EngineFileError, EngineValueError
from engine.io.atomic import atomic_path

__all__ = ["astropy_metadata", "concat_parquet", "conform", "read_parquet", "write_parquet"]


def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """`table`'s columns in `schema`'s order, cast to its types and carrying its field metadata
    (the table's own schema metadata kept). Columns the schema lacks are refused; columns the
    table lacks stay absent (a per-run table has no sky columns yet)."""
    unknown = [name for name in table.column_names if name not in schema.names]
    if unknown:
        raise EngineValueError(f"columns {unknown} are not in the schema of the table being "
                               f"written (engine.io.schemas)")
    fields = [field for field in schema if field.name in table.column_names]
    columns = []
    for field in fields:
        try:
            columns.append(table.column(field.name).cast(field.type))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise EngineValueError(f"column {field.name} cannot be {field.type}: {exc}") from None
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def _numpy_dtype(kind: pa.DataType):
    """The NumPy dtype astropy gives a column of this Arrow type (object where there is none)."""
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return np.dtype("U1")
    try:
        return np.dtype(kind.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return np.dtype(object)


def astropy_metadata(schema: pa.Schema, string_lengths: dict[str, int]) -> dict[str, str]:
    """astropy's Parquet metadata (astropy.io.misc.parquet) for a file of `schema`: every
    column's unit and description as `table_meta_yaml`, and each string column's longest value
    (characters, at least 1) as `table::len::NAME`."""
    from astropy.table import Column, Table
    from astropy.table.meta import get_yaml_from_table

    columns = []
    for field in schema:
        metadata = field.metadata or {}
        unit = metadata.get(b"unit")
        columns.append(Column(name=field.name, dtype=_numpy_dtype(field.type), length=0,
                              unit=None if unit is None else unit.decode(),
                              description=metadata.get(b"description", b"").decode() or None))
    result = {"table_meta_yaml": "\n".join(get_yaml_from_table(Table(columns)))}
    for name, length in string_lengths.items():
        result[f"table::len::{name}"] = str(max(int(length), 1))
    return result


def _string_lengths(table: pa.Table) -> dict[str, int]:
    lengths = {}
    for field in table.schema:
        if pa.types.is_string(field.type) or pa.types.is_large_string(field.type):
            longest = pc.max(pc.utf8_length(table.column(field.name))).as_py()
            lengths[field.name] = longest or 1
    return lengths


def _with_metadata(table: pa.Table, metadata: dict | None) -> pa.Table:
    if not metadata:
        return table
    merged = dict(table.schema.metadata or {})
    merged.update({str(k).encode(): str(v).encode() for k, v in metadata.items()})
    return table.replace_schema_metadata(merged)


def write_parquet(table: pa.Table, path: str | os.PathLike, metadata: dict | None = None,
                  schema: pa.Schema | None = None) -> Path:
    """Write `table` to `path` atomically (temporary name, then rename); returns the path.
    `metadata` (str -> str) is added to the schema's metadata. With `schema` (a product's, from
    engine.io.schemas) the table is first cast to it (`conform`) and the file gets astropy's
    metadata too (units and descriptions for `QTable.read`)."""
    if schema is not None:
        table = conform(table, schema)
        table = _with_metadata(table, astropy_metadata(table.schema, _string_lengths(table)))
    table = _with_metadata(table, metadata)
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, compression="zstd")
    return Path(path)


def concat_parquet(sources, path: str | os.PathLike, schema: pa.Schema | None = None) -> Path:
    """The rows of several Parquet files, in order, as one file written atomically; returns the
    path. Streams one row group at a time, so the tables never have to fit in memory together.
    Columns missing from some sources are null there (the schemas are unified). With `schema`,
    as `write_parquet`: columns cast to it, with its units and descriptions."""
    sources = [Path(s) for s in sources]
    try:
        files = [pq.ParquetFile(s) for s in sources]
        unified = pa.unify_schemas([f.schema_arrow.remove_metadata() for f in files],
                                   promote_options="default")
        if schema is not None:
            unified = conform(unified.empty_table(), schema).schema
            unified = unified.with_metadata(astropy_metadata(
                unified, _longest_strings(sources, files, unified)))
    except (OSError, pa.ArrowException) as exc:
        raise EngineFileError(f"cannot combine {[str(s) for s in sources]}: {exc}") from None
    with atomic_path(path) as temporary, pq.ParquetWriter(temporary, unified,
                                                          compression="zstd") as writer:
        for source in files:
            for group in range(source.num_row_groups):
                part = source.read_row_group(group)
                columns = [part.column(f.name).cast(f.type) if f.name in part.column_names
                           else pa.nulls(part.num_rows, f.type) for f in unified]
                writer.write_table(pa.Table.from_arrays(columns, schema=unified))
    return Path(path)


def _longest_strings(sources, files, schema: pa.Schema) -> dict[str, int]:
    """Longest value of each string column over the sources: from astropy's `table::len::NAME`
    where a source was written with it, else read."""
    lengths: dict[str, int] = {}
    for source, parquet in zip(sources, files):
        metadata = parquet.schema_arrow.metadata or {}
        present = set(parquet.schema_arrow.names)
        names = [f.name for f in schema if f.name in present
                 and (pa.types.is_string(f.type) or pa.types.is_large_string(f.type))]
        missing = [n for n in names if f"table::len::{n}".encode() not in metadata]
        found = _string_lengths(pq.read_table(source, columns=missing)) if missing else {}
        for name in names:
            key = f"table::len::{name}".encode()
            length = int(metadata[key]) if key in metadata else found[name]
            lengths[name] = max(lengths.get(name, 1), length)
    return lengths


def read_parquet(path: str | os.PathLike, columns=None) -> pa.Table:
    """A Parquet table (only `columns`, when given); EngineFileError naming the file when it
    cannot be read."""
    try:
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as exc:
        raise EngineFileError(f"{path}: not a readable Parquet table ({exc})") from None
