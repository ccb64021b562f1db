"""Reference catalogues: column names as Gaia DR3, Gaia synthetic photometry and plain tables
write them, in CSV and Parquet, and the typed errors of files that cannot be used; the Gaia DR3
query, its cache and the error without astroquery (no test touches the network)."""

import re
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from engine.errors import (CatalogueError, EngineFileError, EngineValueError,
                           InputNotFoundError, MissingToolError)
from engine.io.catalogue import (ReferenceCatalogue, combine_catalogues, fetch_gaia,
                                 gaia_cache_path, gaia_query, read_catalogue)

RNG = np.random.default_rng(7)
N = 25
RA = RNG.uniform(10.0, 11.0, N)
DEC = RNG.uniform(-5.0, -4.0, N)
G = RNG.uniform(10.0, 17.0, N)
BP, RP = G + 0.4, G - 0.6


def _write(table, path):
    if path.suffix == ".parquet":
        pq.write_table(table, path)
    else:
        pacsv.write_csv(table, path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_gaia_dr3_columns(tmp_path, suffix):
    ids = np.arange(N, dtype=np.int64) + 4_000_000_000_000_000
    table = pa.table({"source_id": ids, "ra": RA, "dec": DEC, "phot_g_mean_mag": G,
                      "phot_bp_mean_mag": BP, "phot_rp_mean_mag": RP, "bp_rp": BP - RP,
                      "phot_g_mean_flux": 10 ** (-0.4 * G)})
    catalogue = read_catalogue(_write(table, tmp_path / f"gaia{suffix}"))
    np.testing.assert_array_equal(catalogue.ids, ids)
    np.testing.assert_allclose(catalogue.ra, RA)
    np.testing.assert_allclose(catalogue.mag, G)
    np.testing.assert_allclose(catalogue.colour, BP - RP)
    assert set(catalogue.bands) == {"G", "BP", "RP"}
    assert catalogue.names is None and catalogue.notes == ()
    out = catalogue.to_table()
    assert out.column_names == ["id", "ra", "dec", "mag", "colour", "mag_G", "mag_BP", "mag_RP"]
    again = ReferenceCatalogue.from_table(out)
    np.testing.assert_array_equal(again.ids, ids)
    np.testing.assert_allclose(again.bands["BP"], BP)
    np.testing.assert_allclose(again.colour, BP - RP)


def test_gaia_synthetic_photometry_columns(tmp_path):
    v, b = G + 0.3, G + 1.0
    table = pa.table({"source_id": np.arange(N), "ra": RA, "dec": DEC,
                      "v_jkc_mag": v, "v_jkc_mag_error": np.full(N, 0.01),
                      "v_jkc_flux": 10 ** (-0.4 * v), "b_jkc_mag": b, "u_jkc_mag": b + 0.5,
                      "r_sdss_mag": G - 0.1, "g_sdss_mag": G + 0.5, "z_sdss_mag": G - 0.5})
    catalogue = read_catalogue(_write(table, tmp_path / "synthetic.csv"))
    assert set(catalogue.bands) == {"U", "B", "V", "r", "g", "z"}
    np.testing.assert_allclose(catalogue.mag, v)           # no G: V is the primary magnitude
    np.testing.assert_allclose(catalogue.colour, b - v)    # no BP-RP: B-V from the bands
    np.testing.assert_allclose(catalogue.bands["r"], G - 0.1)


def test_plain_columns_any_case_and_string_ids(tmp_path):
    names = [f"star {k}" for k in range(N)]
    table = pa.table({"ID": names, "RA": RA, "Dec": DEC, "Mag": G, "Color": BP - RP,
                      "V": G + 0.2, "R": G - 0.3, "r": G - 0.2, "g": G + 0.4, "G": G})
    catalogue = read_catalogue(_write(table, tmp_path / "plain.parquet"))
    np.testing.assert_array_equal(catalogue.ids, np.arange(N))
    assert list(catalogue.names) == names
    np.testing.assert_allclose(catalogue.mag, G)
    np.testing.assert_allclose(catalogue.colour, BP - RP)
    # Single letters keep their case: Johnson R and Sloan r, Gaia G and Sloan g.
    np.testing.assert_allclose(catalogue.bands["R"], G - 0.3)
    np.testing.assert_allclose(catalogue.bands["r"], G - 0.2)
    np.testing.assert_allclose(catalogue.bands["g"], G + 0.4)
    np.testing.assert_allclose(catalogue.bands["G"], G)
    assert catalogue.to_table().column("name").to_pylist() == names


def test_plain_table_without_id_or_colour(tmp_path):
    path = tmp_path / "bare.csv"
    path.write_text("ra,dec,B-V,Vmag\n10.5,-4.5,0.6,12.0\n10.6,-4.4,,13.5\n")
    catalogue = read_catalogue(path)
    np.testing.assert_array_equal(catalogue.ids, [0, 1])
    np.testing.assert_allclose(catalogue.mag, [12.0, 13.5])
    assert catalogue.colour[0] == 0.6 and np.isnan(catalogue.colour[1])
    path.write_text("ra,dec,mag\n10.5,-4.5,12.0\n")
    assert np.isnan(read_catalogue(path).colour).all()


def test_nan_coordinates_are_dropped_and_counted(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("id,ra,dec,mag\n1,10.5,-4.5,12\n2,,-4.4,13\n3,10.7,nan,14\n4,10.8,-4.2,15\n")
    catalogue = read_catalogue(path)
    np.testing.assert_array_equal(catalogue.ids, [1, 4])
    np.testing.assert_allclose(catalogue.mag, [12, 15])
    assert catalogue.notes == ("2 rows with NaN coordinates dropped",)


@pytest.mark.parametrize("text, error, match", [
    ("id,ra,mag\n1,10,12\n", CatalogueError, "no dec column"),
    ("id,x,y,mag\n1,10,12,3\n", CatalogueError, "no ra column"),
    ("id,ra,dec,flux\n1,10,12,3\n", CatalogueError, "no magnitude"),
    ("ra,dec,mag\n10,12,3\n370,12,3\n", CatalogueError, "RA values outside 0-360"),
    ("ra,dec,mag\n10,95,3\n", CatalogueError, "Dec values outside"),
    ("ra,dec,mag\n", CatalogueError, "no rows"),
    ("ra,dec,mag\nnan,nan,3\n", CatalogueError, "no star with coordinates"),
    ("ra,dec,mag\nten,12,3\n", CatalogueError, "not numeric"),
])
def test_bad_catalogues_are_typed_errors(tmp_path, text, error, match):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(error, match=match) as info:
        read_catalogue(path)
    assert str(path) in str(info.value)


def test_missing_and_unreadable_files(tmp_path):
    with pytest.raises(InputNotFoundError, match="not found"):
        read_catalogue(tmp_path / "none.csv")
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not a parquet file")
    with pytest.raises(EngineFileError, match="cannot read"):
        read_catalogue(path)


def _selected_columns(query: str) -> list[str]:
    """The column names a query's answer has (SELECT g.a, s.b ... -> a, b)."""
    select = re.search(r"SELECT (.*?)\nFROM", query, re.DOTALL).group(1)
    return [item.strip().split(".")[-1] for item in select.split(",")]


def test_gaia_query_text():
    query = gaia_query(94.5933, 24.7867, 0.25, mag_limit=17.5)
    assert "FROM gaiadr3.gaia_source AS g" in query
    assert ("LEFT OUTER JOIN gaiadr3.synthetic_photometry_gspc AS s ON s.source_id = "
            "g.source_id") in query
    assert ("WHERE 1 = CONTAINS(POINT('ICRS', g.ra, g.dec), "
            "CIRCLE('ICRS', 94.5933000, 24.7867000, 0.250000))") in query
    assert "AND g.phot_g_mean_mag <= 17.500" in query
    assert query.endswith("ORDER BY g.phot_g_mean_mag")
    plain = gaia_query(94.5933, 24.7867, 0.25, synthetic=False)
    assert "JOIN" not in plain and "jkc" not in plain
    # RA wraps; the same field is the same query (and the same cache file).
    assert gaia_query(-0.5, 10, 0.1) == gaia_query(359.5, 10, 0.1)
    for bad in [{"dec_deg": 91.0}, {"radius_deg": 0.0}, {"radius_deg": 20.0},
                {"ra_deg": float("nan")}]:
        args = {"ra_deg": 10.0, "dec_deg": 10.0, "radius_deg": 0.1} | bad
        with pytest.raises(EngineValueError):
            gaia_query(**args)


def test_the_columns_gaia_query_asks_for_are_the_ones_read_catalogue_reads(tmp_path):
    names = _selected_columns(gaia_query(10.5, -4.5, 0.5))
    assert names[:3] == ["source_id", "ra", "dec"]
    table = pa.table({name: (np.arange(N, dtype=np.int64) if name == "source_id" else
                             RA if name == "ra" else DEC if name == "dec" else G + k * 0.01)
                      for k, name in enumerate(names)})
    catalogue = read_catalogue(_write(table, tmp_path / "answer.parquet"))
    assert set(catalogue.bands) == {"G", "BP", "RP", "U", "B", "V", "R", "I",
                                    "u", "g", "r", "i", "z"}
    np.testing.assert_allclose(catalogue.mag, table.column("phot_g_mean_mag").to_numpy())
    np.testing.assert_allclose(catalogue.colour, table.column("bp_rp").to_numpy())


def _cached_answer(cache, ra, dec, radius, **kwargs):
    """A Gaia answer for the field, written where fetch_gaia keeps it."""
    ids = np.arange(N, dtype=np.int64) + 5_000_000_000_000_000
    table = pa.table({"source_id": ids, "ra": RA, "dec": DEC, "phot_g_mean_mag": G,
                      "phot_bp_mean_mag": BP, "phot_rp_mean_mag": RP, "bp_rp": BP - RP,
                      "v_jkc_mag": G + 0.2, "r_jkc_mag": G - 0.2})
    path = gaia_cache_path(gaia_query(ra, dec, radius, **kwargs), cache)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    return path, ids


def test_fetch_gaia_reads_a_cached_answer_without_a_query(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "astroquery", None)  # any query would fail
    path, ids = _cached_answer(tmp_path / "cache", 10.5, -4.5, 0.6, mag_limit=17.0)
    catalogue = fetch_gaia(10.5, -4.5, 0.6, mag_limit=17.0, cache_dir=tmp_path / "cache")
    assert catalogue.path == path
    np.testing.assert_array_equal(catalogue.ids, ids)
    assert {"G", "BP", "RP", "V", "R"} <= set(catalogue.bands)
    np.testing.assert_allclose(catalogue.bands["V"], G + 0.2)
    # Another query (a fainter limit) is another file: not in the cache, so it must be fetched.
    with pytest.raises(MissingToolError):
        fetch_gaia(10.5, -4.5, 0.6, mag_limit=18.0, cache_dir=tmp_path / "cache")


def test_fetch_gaia_without_astroquery_says_which_extra_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "astroquery", None)
    with pytest.raises(MissingToolError, match=r"photometry-engine\[gaia\]") as info:
        fetch_gaia(10.5, -4.5, 0.6, cache_dir=tmp_path / "cache")
    assert isinstance(info.value, ImportError)
    assert "--catalogue FILE" in str(info.value)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_combined_catalogues_keep_each_star_once(tmp_path):
    path, ids = _cached_answer(tmp_path, 10.5, -4.5, 0.6)
    whole = read_catalogue(path)
    first, second = whole.take(np.arange(0, 15)), whole.take(np.arange(10, N))
    combined = combine_catalogues([first, second])
    np.testing.assert_array_equal(combined.ids, ids)
    np.testing.assert_allclose(combined.ra, RA)
    np.testing.assert_allclose(combined.bands["V"], G + 0.2)
    np.testing.assert_allclose(combined.colour, BP - RP)
    assert combine_catalogues([whole]) is whole
