"""Parquet helpers: streaming several run files into one product."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from engine.errors import EngineFileError
from engine.io.tables import concat_parquet, write_parquet


def test_concat_streams_rows_in_order_and_unifies_columns(tmp_path):
    first = pa.table({"frame": pa.array([0, 1, 2], pa.int64()), "flux": [1.0, 2.0, 3.0]})
    second = pa.table({"frame": pa.array([0, 1], pa.int64()), "flux": [4.0, 5.0],
                       "psf_chi2": [0.9, 1.1]})
    a = write_parquet(first, tmp_path / "a.parquet")
    b = tmp_path / "b.parquet"
    pq.write_table(second, b, row_group_size=1)  # several row groups
    combined = pq.read_table(concat_parquet([a, b], tmp_path / "all.parquet"))
    assert combined.column_names == ["frame", "flux", "psf_chi2"]
    assert combined.column("frame").to_pylist() == [0, 1, 2, 0, 1]
    assert combined.column("flux").to_pylist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert combined.column("psf_chi2").to_pylist() == [None, None, None, 0.9, 1.1]


def test_concat_of_an_unreadable_source_raises_and_writes_nothing(tmp_path):
    good = write_parquet(pa.table({"x": [1.0]}), tmp_path / "good.parquet")
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"not parquet")
    with pytest.raises(EngineFileError, match="bad.parquet"):
        concat_parquet([good, bad], tmp_path / "all.parquet")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "good.parquet"]


def test_atomic_path_keeps_the_old_file_when_the_writer_fails(tmp_path):
    from engine.io.atomic import atomic_path, write_text

    product = write_text(tmp_path / "report.json", "old\n")
    with pytest.raises(RuntimeError):
        with atomic_path(product) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert product.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
    write_text(product, "new\n")
    assert product.read_text() == "new\n" and len(list(tmp_path.iterdir())) == 1
