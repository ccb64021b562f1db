"""`reduce` over bad inputs and damaged products: the simulator's tiny night, broken on copies.

Each case asserts its exact outcome: the frame skipped with its reason code and a reason naming
the file, the good frames reduced to the clean night's light curves, a damaged product named in
the report's `rebuilt` and rebuilt, nothing half-written left behind. The ingest-level corpus
(tests/test_ingest_bad_inputs.py) holds the same kinds of file in isolation; here they go
through the whole reduction next to a real night.
"""

import csv
import json
import logging
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from engine.calibration import master_filename
from engine.calibration.masters import Master
from engine.calibration.recipe import load_recipe
from engine.errors import EngineFileError
from engine.ingest import MAX_EXPTIME_S
from engine.io.cube import open_cube
from engine.io.exports import write_aavso_extended, write_csv
from engine.io.tables import read_parquet
from engine.pipeline import reduce
from engine.simulation import simulate

#: Floats as in tests/test_faults.py: Numba's last bits may move, nothing more.
RTOL = 1e-12


def assert_same_lightcurves(a_dir, b_dir):
    a = pq.read_table(a_dir / "lightcurves.parquet")
    b = pq.read_table(b_dir / "lightcurves.parquet")
    assert a.schema.names == b.schema.names
    for name in a.column_names:
        x = a.column(name).to_numpy(zero_copy_only=False)
        y = b.column(name).to_numpy(zero_copy_only=False)
        if x.dtype.kind == "f":
            finite = np.isfinite(x)
            scale = np.abs(x[finite]).max() if finite.any() else 0.0
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=RTOL * scale, equal_nan=True,
                                       err_msg=name)
        else:
            assert x.tolist() == y.tolist(), name


def leftovers(out):
    """Temporaries a killed or failed writer would leave."""
    return [p for p in out.rglob(".*") if "tmp" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    raw = tmp_path_factory.mktemp("night") / "raw"
    truth = simulate(raw, preset="tiny", seed=1).truth
    return raw, (truth["target"]["ra_deg"], truth["target"]["dec_deg"])


@pytest.fixture(scope="module")
def reference(night, tmp_path_factory):
    raw, target = night
    out = tmp_path_factory.mktemp("reference") / "out"
    result = reduce([raw], out, target=target)
    return out, result


# ----------------------------------------------------------------------------------------------
# Bad frames among a real night: skipped with their reason, the night reduced as without them

def _light(raw):
    return min((raw / "lapalma").rglob("LIGHT/*.fits"))


def _variant(raw, name, data=None, **cards):
    """A copy of a real light frame under `name`, with other pixels or header cards."""
    with fits.open(_light(raw)) as hdus:
        header, pixels = hdus[0].header.copy(), hdus[0].data.copy()
    for key, value in cards.items():
        if value is None:
            del header[key]
        else:
            header[key] = value
    path = raw / "bad" / name
    path.parent.mkdir(exist_ok=True)
    fits.PrimaryHDU(pixels if data is None else data, header).writeto(path)
    return path


def _patched(raw, name, card: bytes, **cards):
    """A copy whose header card is replaced byte for byte (values astropy would not write)."""
    path = _variant(raw, name, **cards)
    data = bytearray(path.read_bytes())
    start = data.find(card[:9])
    data[start:start + len(card)] = card
    path.write_bytes(bytes(data))
    return path


def _pixels(raw):
    with fits.open(_light(raw)) as hdus:
        return hdus[0].data.copy()


BAD_FRAMES = {
    # name: (how to make it, expected reason code)
    "exptime_1e6.fits": (lambda raw, n: _variant(raw, n, EXPTIME=1e6, EXPOSURE=None),
                         "bad_exptime"),
    "exptime_1e30.fits": (lambda raw, n: _variant(raw, n, EXPTIME=1e30, EXPOSURE=None),
                          "bad_exptime"),
    "exptime_13h.fits": (lambda raw, n: _variant(raw, n, EXPTIME=MAX_EXPTIME_S + 3600,
                                                 EXPOSURE=None), "bad_exptime"),
    "exptime_negative.fits": (lambda raw, n: _variant(raw, n, EXPTIME=-60.0, EXPOSURE=None),
                              "bad_exptime"),
    "exptime_nan.fits": (lambda raw, n: _patched(raw, n, b"EXPTIME =                  NAN",
                                                 EXPOSURE=None), "bad_exptime"),
    "exptime_inf.fits": (lambda raw, n: _patched(raw, n, b"EXPTIME =                  INF",
                                                 EXPOSURE=None), "bad_exptime"),
    "date_garbage.fits": (lambda raw, n: _variant(raw, n, **{"DATE-OBS": "2024-13-45T99:99:99",
                                                            "DATE-LOC": None}), "no_time"),
    "empty.fits": (lambda raw, n: _touch(raw, n, b""), "empty_file"),
    "not_fits.fits": (lambda raw, n: _touch(raw, n, b"<html>not a frame</html>\n" * 200),
                      "not_fits"),
    "zero_size.fits": (lambda raw, n: _variant(raw, n, data=np.zeros((0, 40), np.uint16)),
                       "bad_naxis"),
    "nan_filled.fits": (lambda raw, n: _variant(raw, n, data=np.full(_pixels(raw).shape, np.nan,
                                                                     np.float32)), "all_nan"),
    "cube_3d.fits": (lambda raw, n: _variant(raw, n, data=np.stack([_pixels(raw)] * 3)),
                     "bad_naxis"),
    "wrong_bitpix.fits": (lambda raw, n: _patched(raw, n, b"BITPIX  =                   32"),
                          "truncated"),
    "truncated.fits": (lambda raw, n: _touch(raw, n, _light(raw).read_bytes()[:2880 * 3]),
                       "truncated"),
    "duplicated.fits": (lambda raw, n: _touch(raw, n, _light(raw).read_bytes()), "duplicate"),
}


def _touch(raw, name, content: bytes):
    path = raw / "bad" / name
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(content)
    return path


@pytest.fixture(scope="module")
def bad_night(night, reference, tmp_path_factory):
    raw, target = night
    base = tmp_path_factory.mktemp("bad")
    bad_raw = shutil.copytree(raw, base / "raw")
    for name, (make, _) in BAD_FRAMES.items():
        make(bad_raw, name)
    out = base / "out"
    result = reduce([bad_raw], out, target=target)
    rows = {row["path"]: row for row in read_parquet(out / "frames.parquet").to_pylist()}
    return bad_raw, out, result, rows


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_a_bad_frame_is_skipped_with_its_reason_and_the_night_reduced_without_it(
        bad_night, reference, name):
    raw, out, result, rows = bad_night
    path = str((raw / "bad" / name).resolve())
    row = rows[path]
    if name == "duplicated.fits":  # of the two, the one a run meets first is kept
        original = str(_light(raw).resolve())
        row = next(r for r in (row, rows[original]) if r["status"] != "ok")
        assert original in row["reason"]
    assert (row["status"], row["reason_code"]) == ("skipped", BAD_FRAMES[name][1]), row["reason"]
    assert path in row["reason"]
    # Not a run of its own (an EXPTIME of 1e6 s would put it six days later): the same runs.
    assert result.runs == reference[1].runs
    ok = {r["path"] for r in rows.values() if r["status"] == "ok"}
    reference_ok = {r["path"] for r in read_parquet(reference[0] / "frames.parquet").to_pylist()
                    if r["status"] == "ok"}
    assert len(ok) == len(reference_ok)
    assert_same_lightcurves(reference[0], out)
    assert leftovers(out) == []


# ----------------------------------------------------------------------------------------------
# Damaged products: named when read, rebuilt on the rerun with what was made from them


def _chunk(cube, frame=0):
    return cube / "c" / str(frame) / "0" / "0"


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _flip(path):
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _read_cube(path, frame=0):
    open_cube(path)[frame]


def _damage_recipe_truncated(out, runs):
    recipe = out / "calibrated" / f"{runs[0]}.recipe.npz"
    _truncate(recipe)
    return f"calibrated/{runs[0]}.recipe.npz", lambda: load_recipe(recipe), str(recipe)


def _damage_photometry_truncated(out, runs):
    table = out / "photometry" / f"{runs[1]}.parquet"
    _truncate(table)
    return f"photometry/{runs[1]}.parquet", lambda: read_parquet(table), str(table)


def _damage_raw_chunk_truncated(out, runs):
    cube = out / "cubes" / f"{runs[2]}.zarr"
    _truncate(_chunk(cube, 0))
    return f"cubes/{runs[2]}.zarr", lambda: _read_cube(cube, 0), str(cube)


def _damage_recipe_bit_flipped(out, runs):
    _flip(out / "calibrated" / f"{runs[0]}.recipe.npz")
    return f"calibrated/{runs[0]}.recipe.npz", None, None


def _damage_stars_deleted(out, runs):
    (out / "photometry" / f"{runs[1]}.stars.parquet").unlink()
    return f"photometry/{runs[1]}.stars.parquet", None, None


def _damage_registration_truncated(out, runs):
    table = out / "photometry" / f"{runs[2]}.registration.parquet"
    _truncate(table)
    return f"photometry/{runs[2]}.registration.parquet", lambda: read_parquet(table), str(table)


def _damage_recipe_deleted(out, runs):
    (out / "calibrated" / f"{runs[2]}.recipe.npz").unlink()
    return f"calibrated/{runs[2]}.recipe.npz", None, None


# Two groups, one rerun each: in a group every damage hits another run or product.
DAMAGES = {
    "recipe_truncated": (1, _damage_recipe_truncated),
    "photometry_truncated": (1, _damage_photometry_truncated),
    "raw_chunk_truncated": (1, _damage_raw_chunk_truncated),
    "recipe_bit_flipped": (2, _damage_recipe_bit_flipped),
    "stars_table_deleted": (2, _damage_stars_deleted),
    "registration_truncated": (2, _damage_registration_truncated),
    "recipe_deleted": (2, _damage_recipe_deleted),
}


@pytest.fixture(scope="module")
def damaged(night, reference, tmp_path_factory):
    """Per group: what each damage's read said before the rerun, and the rerun's result."""
    raw, target = night
    ref_out, ref = reference
    groups = {}
    for group in sorted({g for g, _ in DAMAGES.values()}):
        out = shutil.copytree(ref_out, tmp_path_factory.mktemp(f"damaged{group}") / "out")
        seen = {}
        for name, (g, damage) in DAMAGES.items():
            if g != group:
                continue
            product, read, named = damage(out, ref.runs)
            error = None
            if read is not None:
                try:
                    read()
                except EngineFileError as exc:
                    error = str(exc)
                else:
                    pytest.fail(f"{name}: reading the damaged {product} raised nothing")
            seen[name] = (product, error, named)
        groups[group] = (out, seen, reduce([raw], out, target=target))
    return groups


@pytest.mark.parametrize("name", sorted(DAMAGES))
def test_a_damaged_product_is_named_and_rebuilt_with_what_depends_on_it(damaged, reference,
                                                                       name):
    out, seen, result = damaged[DAMAGES[name][0]]
    product, error, named = seen[name]
    if error is not None:
        assert named in error  # the reading error names the file
    assert product in result.report["rebuilt"]
    assert f"rebuilt {product}" in result.summary()
    assert product in (out / "reduce.log").read_text()
    assert_same_lightcurves(reference[0], out)
    assert leftovers(out) == []


def test_after_the_rebuild_a_rerun_trusts_everything_again(damaged, night):
    """A damaged product is not reported again on every rerun: the rebuilt one is trusted."""
    raw, target = night
    out = damaged[1][0]
    stamps = {p: p.stat().st_mtime_ns for p in (out / "calibrated").rglob("*") if p.is_file()}
    result = reduce([raw], out, target=target)
    assert result.report["rebuilt"] == []
    assert {p: p.stat().st_mtime_ns for p in (out / "calibrated").rglob("*")
            if p.is_file()} == stamps


@pytest.mark.parametrize("damage", ["manifest_garbage", "frames_table_truncated"])
def test_a_damaged_manifest_or_frames_table_rebuilds_everything_quietly(
        night, reference, tmp_path, damage, caplog):
    raw, target = night
    out = shutil.copytree(reference[0], tmp_path / "out")
    victim = out / ("manifest.json" if damage == "manifest_garbage" else "frames.parquet")
    if damage == "manifest_garbage":
        victim.write_text('{"format": 1, "products": [')
    else:
        _truncate(victim)
    with caplog.at_level(logging.WARNING, logger="engine"):
        result = reduce([raw], out, target=target)
    assert str(victim) in caplog.text  # said which file could not be used
    assert result.report["rebuilt"] == []  # nothing trusted, so nothing found damaged
    assert_same_lightcurves(reference[0], out)
    assert json.loads((out / "manifest.json").read_text())["products"]


# ----------------------------------------------------------------------------------------------
# Header text in exports, and master names


FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "@SUM(A1:A9)", "+V-1", "-2+3", "\tTAB", "\rCR"]


def _with_header_text(reference):
    table = pq.read_table(reference[0] / "lightcurves.parquet")
    texts = [FORMULAS[i % len(FORMULAS)] for i in range(table.num_rows)]
    table = table.set_column(table.schema.get_field_index("telescope"), "telescope",
                             pa.array(texts))
    table = table.set_column(table.schema.get_field_index("filter"), "filter", pa.array(texts))
    return table, texts


def test_header_text_in_the_csv_cannot_become_a_formula(reference, tmp_path):
    table, texts = _with_header_text(reference)
    mag = table.column("mag").to_numpy(zero_copy_only=False)
    table = table.set_column(table.schema.get_field_index("mag"), "mag", pa.array(mag - 20.0))
    with open(write_csv(table, tmp_path / "lc.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["telescope"] for row in rows] == ["'" + text for text in texts]
    negative = [row["mag"] for row in rows if row["mag"] not in ("", "nan")]
    assert negative and all(float(value) < 0 and value.startswith("-") for value in negative)


def test_header_text_in_the_aavso_report_cannot_become_a_formula(reference, tmp_path):
    table, _ = _with_header_text(reference)
    lines = write_aavso_extended(table, tmp_path / "aavso.txt", observer_code="XYZ",
                                 target=(0.0, 0.0), star_name="@TARGET",
                                 good_only=False).read_text().splitlines()
    rows = [line.split(",") for line in lines if not line.startswith("#")]
    assert rows
    for row in rows:
        assert row[0] == "'@TARGET"
        assert row[4][0] not in "=+-@\t\r" or row[4].startswith("'")
        for field in row:
            assert field[:1] not in ("=", "+", "@") or field.startswith("'")
        float(row[2])  # the magnitude stays a number


def test_long_run_names_sharing_sixty_characters_get_different_masters():
    common = "Observatory-with-a-very-long-name_0.4-m-Ritchey-Chretien-f8_"
    assert len(common) >= 60
    master = Master(kind="bias", data=np.zeros((2, 2), np.float32), ncombine=1)
    first = master_filename(master, common + "2024-12-14_V")
    second = master_filename(master, common + "2024-12-15_V")
    assert first != second
    assert first.startswith(common[:50]) and len(first) <= len("_master_bias.fits") + 60
    assert master_filename(master, "short_run") == "short_run_master_bias.fits"
