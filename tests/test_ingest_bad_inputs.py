"""A corpus of bad inputs, built here: each is skipped with its reason, the rest proceeds;
what must stop the run raises a typed error; reruns and interruptions leave nothing half-trusted."""

import hashlib
import importlib
import logging
import os
import shutil

import numpy as np
import pytest
from astropy.io import fits

import engine
from engine.errors import EngineFileError, EngineValueError, InputNotFoundError
from engine.ingest import ingest
from engine.io import cube as cube_module
from engine.io import tables as tables_module

SHAPE = (32, 40)
# The modules whose names the tests replace (engine.ingest itself is the function).
STAGE = importlib.import_module("engine.ingest.stage")
SCAN = importlib.import_module("engine.ingest.scan")


def light_header(k: int, **cards) -> fits.Header:
    h = fits.Header()
    h["IMAGETYP"] = "Light Frame"
    h["DATE-OBS"] = f"2024-05-02T04:{10 + k:02d}:00.000"
    h["EXPTIME"] = 60.0
    h["FILTER"] = "V"
    h["TELESCOP"] = "T1"
    h["SITELAT"], h["SITELONG"] = 31.9583, -111.5967
    for key, value in cards.items():
        h[key] = value
    return h


def pixels(seed: int, shape=SHAPE, dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(seed).integers(900, 1100, shape).astype(dtype)


def write(path, data, header):
    fits.PrimaryHDU(data, header).writeto(path)
    return path


def build_corpus(folder):
    """Good lights, a bias set, and one file per kind of bad input. Returns the expected reason
    code per file name (None = ok)."""
    folder.mkdir()
    expected = {}
    for k in range(3):
        write(folder / f"good_{k}.fits", pixels(k), light_header(k))
        expected[f"good_{k}.fits"] = None
    bias = fits.Header()
    bias["IMAGETYP"], bias["DATE-OBS"], bias["EXPTIME"], bias["TELESCOP"] = \
        "Bias Frame", "2024-05-02T02:00:00", 0.0, "T1"
    write(folder / "bias_0.fits", pixels(50), bias)
    expected["bias_0.fits"] = None
    # A partly NaN float frame is fine; an all-NaN one is not.
    partly = pixels(3).astype(np.float32)
    partly[0, :5] = np.nan
    write(folder / "partly_nan.fits", partly, light_header(3))
    expected["partly_nan.fits"] = None
    write(folder / "all_nan.fits", np.full(SHAPE, np.nan, np.float32), light_header(4))
    expected["all_nan.fits"] = "all_nan"
    # A multi-extension file: the first image extension is read, and the table says which.
    mef = fits.HDUList([fits.PrimaryHDU(header=light_header(5)),
                        fits.ImageHDU(pixels(5), name="SCI"), fits.ImageHDU(pixels(6), name="AUX")])
    mef.writeto(folder / "mef.fits")
    expected["mef.fits"] = None

    good = (folder / "good_0.fits").read_bytes()
    (folder / "truncated.fits").write_bytes(good[: 2880 + 1000])
    expected["truncated.fits"] = "truncated"
    (folder / "truncated_header.fits").write_bytes(good[:1000])
    expected["truncated_header.fits"] = "truncated"
    (folder / "not_fits.fits").write_text("SIMPLE? no: this is a text file\n" * 100)
    expected["not_fits.fits"] = "not_fits"
    (folder / "._good_0.fits").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 4092)  # AppleDouble
    expected["._good_0.fits"] = "not_fits"
    (folder / "empty.fits").write_bytes(b"")
    expected["empty.fits"] = "empty_file"
    fits.PrimaryHDU(header=light_header(7)).writeto(folder / "no_data.fits")
    expected["no_data.fits"] = "no_data"
    write(folder / "cube3d.fits", np.stack([pixels(8)] * 3), light_header(8))
    expected["cube3d.fits"] = "bad_naxis"
    write(folder / "line1d.fits", pixels(9)[0], light_header(9))
    expected["line1d.fits"] = "bad_naxis"
    no_time = light_header(10)
    del no_time["DATE-OBS"]
    write(folder / "no_time.fits", pixels(10), no_time)
    expected["no_time.fits"] = "no_time"
    write(folder / "bad_time.fits", pixels(11), light_header(11, **{"DATE-OBS": "last night"}))
    expected["bad_time.fits"] = "no_time"
    write(folder / "exptime_is_0.fits", pixels(12), light_header(12, EXPTIME=0.0))
    expected["exptime_is_0.fits"] = "bad_exptime"
    write(folder / "negative_exptime.fits", pixels(13), light_header(13, EXPTIME=-5.0))
    expected["negative_exptime.fits"] = "bad_exptime"
    no_exptime = light_header(14)
    del no_exptime["EXPTIME"]
    write(folder / "no_exptime.fits", pixels(14), no_exptime)
    expected["no_exptime.fits"] = "bad_exptime"
    write(folder / "focus.fits", pixels(15), light_header(15, IMAGETYP="FOCUS"))
    expected["focus.fits"] = "unknown_type"
    write(folder / "wrong_shape.fits", pixels(16, (30, 40)), light_header(16))
    expected["wrong_shape.fits"] = "shape_mismatch"
    # Duplicates: a byte copy, and an fpack'ed copy of another frame.
    shutil.copyfile(folder / "good_0.fits", folder / "good_0_copy.fits")
    expected["good_0_copy.fits"] = "duplicate"
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(pixels(1), light_header(1),
                                                       compression_type="RICE_1")]
                 ).writeto(folder / "good_1.fits.fz")
    expected["good_1.fits.fz"] = "duplicate"
    # A tile-compressed file cut short.
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(pixels(17, (64, 64)), light_header(17),
                                                       compression_type="GZIP_1")]
                 ).writeto(folder / "cut.fits.fz")
    data = (folder / "cut.fits.fz").read_bytes()
    (folder / "cut.fits.fz").write_bytes(data[: len(data) - 2880 - 500])
    expected["cut.fits.fz"] = "truncated"
    return expected


def file_states(folder):
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("corpus")
    expected = build_corpus(base / "raw")
    return base, expected


def test_every_bad_input_is_skipped_with_its_reason_and_the_rest_proceeds(corpus, caplog):
    base, expected = corpus
    before = file_states(base / "raw")
    with caplog.at_level(logging.WARNING, logger="engine.ingest"):
        result = ingest([base / "raw"], base / "out", workers=2)
    rows = {os.path.basename(r["path"]): r for r in result.frames.to_pylist()}
    assert set(rows) == set(expected), "one row per input file"
    for name, code in expected.items():
        row = rows[name]
        if code is None:
            assert row["status"] == "ok", (name, row["reason"])
            assert row["reason"] is None and row["cube_index"] is not None
        else:
            assert row["status"] == "skipped", name
            assert row["reason_code"] == code, (name, row["reason"])
            assert name in row["reason"], "the reason names the file"
            assert row["cube_index"] is None
            assert any(r.message.startswith("skipped") and name in r.message
                       for r in caplog.records), f"{name} is not in the log"
    assert "good_0.fits" in rows["good_0_copy.fits"]["reason"]
    assert "good_1.fits" in rows["good_1.fits.fz"]["reason"]
    assert "differs from its run" in rows["wrong_shape.fits"]["reason"]
    assert rows["mef.fits"]["hdu"] == 1 and rows["mef.fits"]["hdu_name"] == "SCI"
    assert "2 image HDUs; read HDU 1 (SCI)" in rows["mef.fits"]["notes"]
    assert file_states(base / "raw") == before, "inputs must never be modified"

    lights = [r for r in rows.values() if r["status"] == "ok" and r["frame_type"] == "light"]
    run_ids = {r["run_id"] for r in lights}
    assert len(run_ids) == 1
    cube = result.cube(run_ids.pop())
    assert cube.shape == (len(lights),) + SHAPE
    by_index = sorted(lights, key=lambda r: r["cube_index"])
    assert [r["cube_index"] for r in by_index] == list(range(len(lights)))
    assert [r["jd_utc_mid"] for r in by_index] == sorted(r["jd_utc_mid"] for r in by_index)
    np.testing.assert_array_equal(cube[rows["good_2.fits"]["cube_index"]], pixels(2))
    np.testing.assert_array_equal(cube[rows["mef.fits"]["cube_index"]], pixels(5))
    partly = cube[rows["partly_nan.fits"]["cube_index"]]
    assert cube.dtype == np.float32 and np.isnan(partly[0, :5]).all()
    bias = rows["bias_0.fits"]
    assert bias["frame_type"] == "bias" and bias["run_id"] != lights[0]["run_id"]
    assert bias["time_bjd_tdb"] is None  # BJD is for lights


def test_rerun_writes_nothing_new(corpus):
    base, _ = corpus
    out = base / "rerun"
    first = ingest([base / "raw"], out, workers=2)
    products = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    again = ingest([base / "raw"], out, workers=2)
    assert again.written == () and not again.table_written
    assert again.frames.equals(first.frames)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == products


def test_a_new_frame_rewrites_only_its_run(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(2):
        write(raw / f"light_{k}.fits", pixels(k), light_header(k))
    bias = fits.Header()
    bias["IMAGETYP"], bias["DATE-OBS"], bias["EXPTIME"] = "BIAS", "2024-05-02T02:00:00", 0.0
    bias["TELESCOP"] = "T1"
    write(raw / "bias_0.fits", pixels(40), bias)
    first = ingest([raw], tmp_path / "out", workers=1)
    assert len(first.written) == 2
    write(raw / "light_2.fits", pixels(2), light_header(2))
    second = ingest([raw], tmp_path / "out", workers=1)
    light_run = next(r["run_id"] for r in second.frames.to_pylist() if r["frame_type"] == "light")
    assert second.written == (light_run,) and second.table_written
    assert second.cube(light_run).shape[0] == 3


def test_interrupted_ingest_leaves_nothing_a_rerun_would_trust(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(4):
        write(raw / f"light_{k}.fits", pixels(k), light_header(k))
    out = tmp_path / "out"
    original_write = cube_module.CubeWriter.write
    calls = {"n": 0}

    def dying_write(self, index, frame):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # the user pressed ^C in the middle of a cube
        return original_write(self, index, frame)

    monkeypatch.setattr(cube_module.CubeWriter, "write", dying_write)
    with pytest.raises(KeyboardInterrupt):
        ingest([raw], out, workers=1)
    monkeypatch.setattr(cube_module.CubeWriter, "write", original_write)
    assert not (out / "frames.parquet").exists()
    assert [p.name for p in (out / "cubes").iterdir()] == []  # the temporary was removed

    # A kill -9 leaves a temporary behind: the rerun clears it and never lists it.
    stale = out / "cubes" / ".T1_2024-05-01_V.zarr.tmp-999-deadbeef"
    stale.mkdir()
    (stale / "zarr.json").write_text("{}")
    # A cube committed before the table was written is not trusted without its rows.
    def full_disk(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(STAGE, "write_parquet", full_disk)
    with pytest.raises(OSError):
        ingest([raw], out, workers=1)
    monkeypatch.setattr(STAGE, "write_parquet", tables_module.write_parquet)
    assert not stale.exists()
    result = ingest([raw], out, workers=1)
    assert len(result.written) == 1 and result.n_ok == 4
    assert not any(p.name.startswith(".") for p in (out / "cubes").iterdir())
    run_id = result.written[0]
    for row in result.frames.to_pylist():
        np.testing.assert_array_equal(result.cube(run_id)[row["cube_index"]],
                                      pixels(int(row["path"][-6])))


def test_what_must_stop_the_run_raises_typed_errors(tmp_path):
    with pytest.raises(InputNotFoundError) as info:
        ingest([tmp_path / "nowhere"], tmp_path / "out")
    assert isinstance(info.value, FileNotFoundError) and "nowhere" in str(info.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no frames here")
    with pytest.raises(FileNotFoundError):
        ingest([tmp_path / "empty"], tmp_path / "out")
    raw = tmp_path / "raw"
    raw.mkdir()
    write(raw / "a.fits", pixels(0), light_header(0))
    with pytest.raises(EngineValueError):
        ingest([raw], tmp_path / "out", target=("25:00:00", "+10:00:00"))
    with pytest.raises(ValueError):
        ingest([raw], tmp_path / "out", target=("10:00:00",))
    with pytest.raises(ValueError):
        ingest([raw], tmp_path / "out", workers=0)
    with pytest.raises(ValueError):
        ingest([raw], tmp_path / "out", config={"bayer": "green"})
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(EngineFileError) as info:
        ingest([raw], tmp_path / "file")
    assert isinstance(info.value, OSError)


def test_unexpected_failures_in_one_file_do_not_stop_the_night(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        write(raw / f"light_{k}.fits", pixels(k), light_header(k))
    real = SCAN.normalise_header

    def flaky(header, shape):
        if header.get("DATE-OBS", "").endswith("11:00.000"):
            raise RuntimeError("a bug in some header reader")
        return real(header, shape)

    monkeypatch.setattr(SCAN, "normalise_header", flaky)
    rows = {os.path.basename(r["path"]): r
            for r in ingest([raw], tmp_path / "out").frames.to_pylist()}
    assert rows["light_1.fits"]["status"] == "skipped"
    assert "a bug in some header reader" in rows["light_1.fits"]["reason"]
    assert rows["light_0.fits"]["status"] == rows["light_2.fits"]["status"] == "ok"


def test_bayer_frames_are_extracted_by_configuration(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    data = pixels(0, (32, 40))
    write(raw / "colour.fits", data, light_header(0, BAYERPAT="RGGB", BIASSEC="[1:4,1:32]"))
    from engine.settings.ingest import IngestConfig

    green = ingest([raw], tmp_path / "g", config=IngestConfig(bayer="green"))
    superpixel = ingest([raw], tmp_path / "s", config=IngestConfig(bayer="superpixel"))
    row = green.frames.to_pylist()[0]
    assert row["bayer_pattern"] == "RGGB" and row["shape"] == [16, 20]
    assert row["overscan_section"] == [0, 16, 0, 2]
    expected = (data[0::2, 1::2].astype(np.float32) + data[1::2, 0::2]) / 2
    np.testing.assert_array_equal(green.cube(row["run_id"])[0], expected)
    total = (data[0::2, 0::2].astype(np.float32) + data[0::2, 1::2] + data[1::2, 0::2]
             + data[1::2, 1::2])
    np.testing.assert_array_equal(superpixel.cube(row["run_id"])[0], total)


def test_public_api_and_cli(tmp_path, capsys):
    assert engine.ingest is ingest
    raw = tmp_path / "raw"
    raw.mkdir()
    write(raw / "a.fits", pixels(0), light_header(0))
    from engine.cli import main

    assert main(["ingest", str(raw), "--out", str(tmp_path / "out"),
                 "--target-ra", "19:50:47", "--target-dec", "+08:52:06"]) == 0
    printed = capsys.readouterr().out
    assert "1 files: 1 ok, 0 skipped" in printed
    assert (tmp_path / "out" / "frames.parquet").is_file()
    assert main(["ingest", str(raw), "--out", str(tmp_path / "out"),
                 "--target-ra", "19:50:47"]) == 2
    assert main(["ingest", str(tmp_path / "missing"), "--out", str(tmp_path / "out")]) == 2


def test_discovery_finds_fits_names_in_any_case_and_skips_hidden_folders(tmp_path):
    from engine.io.fits import find_fits_files

    names = ["a.fits", "b.FIT", "c.Fts", "d.fits.fz", "e.fz", "f.FITS.GZ", "g.txt", "h.fits.bak"]
    nested = tmp_path / "night" / "deeper"
    nested.mkdir(parents=True)
    for name in names:
        (nested / name).write_bytes(b"")
    (tmp_path / "night" / ".git").mkdir()
    (tmp_path / "night" / ".git" / "x.fits").write_bytes(b"")
    found = [p.name for p in find_fits_files([tmp_path / "night"])]
    assert found == ["a.fits", "b.FIT", "c.Fts", "d.fits.fz", "e.fz", "f.FITS.GZ"]
    # A file named explicitly is taken whatever its name, and only once.
    explicit = find_fits_files([nested / "g.txt", nested / "a.fits", nested])
    assert [p.name for p in explicit].count("a.fits") == 1 and "g.txt" in [p.name for p in explicit]


def test_a_note_shared_by_many_files_is_logged_once(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    from astropy.time import Time

    for k in range(12):  # MaxIm DL style: DATE-OBS to the second, a precise JD
        start = Time(f"2024-05-02T04:{10 + k:02d}:00.25", scale="utc")
        header = light_header(k, **{"DATE-OBS": start.isot[:19]})
        header["JD"] = float(f"{start.jd:.8f}")
        write(raw / f"maxim_{k:02d}.fits", pixels(k), header)
    with caplog.at_level(logging.WARNING, logger="engine.ingest"):
        rows = ingest([raw], tmp_path / "out", workers=1).frames.to_pylist()
    assert all(r["time_keyword"] == "JD" for r in rows)
    assert all("DATE-OBS is written to 1 s only" in r["notes"] for r in rows)
    shared = [r.message for r in caplog.records if "DATE-OBS is written to 1 s only" in r.message]
    assert len(shared) == 1 and shared[0].startswith("12 files")
