"""Product schemas (engine.io.schemas): every column described, units that astropy reads back,
and every Parquet product readable by astropy's Table.read and by pandas."""

from __future__ import annotations

from importlib.util import find_spec

import astropy.units as u
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import QTable

from engine.errors import EngineValueError
from engine.io import schemas
from engine.io.tables import concat_parquet, write_parquet
from engine.simulation import simulate, target_positions

#: astropy reads Parquet through pandas (an optional dependency of astropy, in the test extra).
needs_pandas = pytest.mark.skipif(find_spec("pandas") is None,
                                  reason="astropy's Parquet reader needs pandas")

SCHEMAS = [schemas.FRAMES_SCHEMA, schemas.PHOTOMETRY_SCHEMA, schemas.STARS_SCHEMA,
           schemas.REGISTRATION_SCHEMA, schemas.LIGHTCURVES_SCHEMA, schemas.STAR_SUMMARY_SCHEMA]

#: Products of a reduce and the units of some of their columns (None: a plain column).
PRODUCTS = {
    "frames.parquet": {"exptime": u.s, "gain": u.electron / u.adu, "ra_deg": u.deg,
                       "time_bjd_tdb": u.day, "path": None},
    "photometry.parquet": {"flux": u.electron, "flux_err": u.electron, "radius": u.pix,
                           "area": u.pix ** 2, "var_star": u.electron ** 2, "flags": None},
    "stars.parquet": {"x": u.pix, "ra": u.deg, "fwhm": u.pix, "star_id": None},
    "lightcurves.parquet": {"time_bjd_tdb": u.day, "mag": u.mag, "rel_flux": None,
                            "flags": None},
}


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: s.names[0] + "..." + s.names[-1])
def test_every_column_has_a_description_and_a_unit_astropy_knows(schema):
    for field in schema:
        metadata = field.metadata or {}
        assert metadata.get(b"description", b"").strip(), field.name
        if b"unit" in metadata:
            u.Unit(metadata[b"unit"].decode(), parse_strict="raise")
    assert len(set(schema.names)) == len(schema.names)


def test_contract_columns_keep_their_names():
    for name in ("run_id", "time_bjd_tdb", "star_id", "role", "rel_flux", "rel_flux_err",
                 "airmass", "flags", "site", "telescope", "filter"):
        assert name in schemas.LIGHTCURVES_SCHEMA.names, name
    assert schemas.LIGHTCURVES_SCHEMA.field("flags").type == pa.uint32()
    for name in ("path", "run_id", "frame_type", "exptime", "time_bjd_tdb", "status", "reason"):
        assert name in schemas.FRAMES_SCHEMA.names, name


def _frames_like_table() -> pa.Table:
    """Two frames rows as ingest writes them: a skipped one is mostly nulls."""
    rows = [{"path": "/data/a.fits", "status": "ok", "reason": None, "exptime": 30.0,
             "gain": 1.5, "shape": [4, 6], "overscan_section": None, "cube_index": 0},
            {"path": "/data/broken.fits", "status": "skipped", "reason": "truncated",
             "exptime": None, "gain": None, "shape": None, "overscan_section": None,
             "cube_index": None}]
    fields = [schemas.FRAMES_SCHEMA.field(name) for name in rows[0]]
    return pa.Table.from_pylist(rows, schema=pa.schema(fields))


@needs_pandas
def test_null_strings_and_lists_read_with_astropy_and_units_round_trip(tmp_path):
    path = write_parquet(_frames_like_table(), tmp_path / "frames.parquet",
                         schema=schemas.FRAMES_SCHEMA)
    table = QTable.read(path)
    assert table["exptime"].unit == u.s
    assert table["gain"].unit == u.electron / u.adu
    assert table["exptime"][0] == 30 * u.s and np.isnan(table["exptime"][1].value)
    assert list(table["status"]) == ["ok", "skipped"]
    assert table["reason"][1] == "truncated"
    assert list(table["shape"][0]) == [4, 6]
    assert table["status"].info.description == "ok, or skipped (see reason)"
    # pyarrow still sees the nulls as nulls.
    assert pq.read_table(path).column("reason").to_pylist() == [None, "truncated"]


@needs_pandas
def test_an_empty_product_reads_with_astropy(tmp_path):
    empty = schemas.LIGHTCURVES_SCHEMA.empty_table()
    table = QTable.read(write_parquet(empty, tmp_path / "lc.parquet",
                                      schema=schemas.LIGHTCURVES_SCHEMA))
    assert len(table) == 0 and table.colnames == schemas.LIGHTCURVES_SCHEMA.names
    assert table["mag"].unit == u.mag


def test_writing_casts_to_the_schema_and_refuses_unknown_columns(tmp_path):
    table = pa.table({"star": pa.array([0, 1], pa.int32()), "flux": [1.0, 2.0]})
    path = write_parquet(table, tmp_path / "p.parquet", schema=schemas.PHOTOMETRY_SCHEMA)
    assert pq.read_schema(path).field("star").type == pa.int64()
    with pytest.raises(EngineValueError, match="fluxx"):
        write_parquet(pa.table({"fluxx": [1.0]}), tmp_path / "q.parquet",
                      schema=schemas.PHOTOMETRY_SCHEMA)
    with pytest.raises(EngineValueError, match="star"):
        write_parquet(pa.table({"star": ["one"]}), tmp_path / "q.parquet",
                      schema=schemas.PHOTOMETRY_SCHEMA)
    assert not (tmp_path / "q.parquet").exists()


@needs_pandas
def test_concatenated_runs_keep_units_and_the_longest_string(tmp_path):
    parts = []
    for run_id, method in (("a", "aperture"), ("a-much-longer-run-name", None)):
        table = pa.table({"frame": [0], "flux": [10.0], "method": pa.array([method], pa.string()),
                          "run_id": [run_id]})
        parts.append(write_parquet(table, tmp_path / f"{len(parts)}.parquet",
                                   schema=schemas.PHOTOMETRY_SCHEMA))
    # A source written without astropy's metadata still gives its string lengths.
    pq.write_table(pa.table({"frame": [1], "run_id": ["third-run-with-the-longest-name"]}),
                   tmp_path / "plain.parquet")
    parts.append(tmp_path / "plain.parquet")
    joined = QTable.read(concat_parquet(parts, tmp_path / "photometry.parquet",
                                        schema=schemas.PHOTOMETRY_SCHEMA))
    assert list(joined["run_id"]) == ["a", "a-much-longer-run-name",
                                      "third-run-with-the-longest-name"]
    assert joined["flux"].unit == u.electron and joined["flux"][0] == 10 * u.electron


@pytest.fixture(scope="module")
def reduced(tmp_path_factory):
    from engine.ingest import ingest
    from engine.pipeline import reduce

    raw = tmp_path_factory.mktemp("raw")
    out = tmp_path_factory.mktemp("out")
    truth = simulate(raw, preset="tiny", seed=1).truth
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    positions = target_positions(truth, ingest([raw], out, target=target).frames)
    reduce([raw], out, target=target, target_xy=positions)
    return out


@needs_pandas
@pytest.mark.slow
@pytest.mark.parametrize("product", sorted(PRODUCTS))
def test_every_product_of_a_reduce_reads_with_units_in_astropy_and_pandas(reduced, product):
    import pandas

    path = reduced / product
    table = QTable.read(path)
    assert len(table) > 0
    for name in table.colnames:
        assert table[name].info.description, f"{product}: {name} has no description"
    for name, unit in PRODUCTS[product].items():
        if unit is None:
            assert not isinstance(table[name], u.Quantity), name
        else:
            assert isinstance(table[name], u.Quantity) and table[name].unit == unit, name
    frame = pandas.read_parquet(path)
    assert list(frame.columns) == table.colnames and len(frame) == len(table)
    if "flags" in frame:
        assert frame["flags"].dtype == np.uint32


@pytest.mark.slow
@needs_pandas
def test_per_run_registration_tables_read_with_astropy(reduced):
    paths = sorted((reduced / "photometry").glob("*.registration.parquet"))
    assert paths
    for path in paths:
        table = QTable.read(path)
        assert table["rms"].unit == u.pix and table["rotation_deg"].unit == u.deg
