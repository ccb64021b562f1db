"""Real frames from real cameras (../shared/data, read in place) and astropy's compressed m13."""

import logging
import os
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from engine.ingest import ingest
from engine.io.fits import open_image, read_image
from engine.settings.ingest import IngestConfig, Site

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
AST443 = DATA / "ast443_stl1001e"
SAAO = DATA / "saao_overscan" / "a8280271.fits"
M13 = Path(fits.__file__).parent / "hdu" / "compressed" / "tests" / "data"

needs_data = pytest.mark.skipif(not AST443.is_dir(), reason="../shared/data is not present")


@pytest.fixture(scope="module")
def ast443(tmp_path_factory):
    out = tmp_path_factory.mktemp("ast443")
    handler = _Collect()
    logger = logging.getLogger("engine.ingest")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        result = ingest([AST443], out, workers=2)
    finally:
        logger.removeHandler(handler)
    return result, handler.messages


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@needs_data
def test_ast443_every_frame_classified(ast443):
    result, _ = ast443
    rows = result.frames.to_pylist()
    assert len(rows) == 28 and all(r["status"] == "ok" for r in rows)
    for row in rows:
        name = os.path.basename(row["path"])
        expected = ("bias" if name.startswith("biases") else
                    "dark" if name.startswith("darks") else "flat")
        assert row["frame_type"] == expected, (name, row["frame_type_evidence"])
    flats = [r for r in rows if r["frame_type"] == "flat"]
    assert all("IMAGETYP = 'Light Frame'" in r["frame_type_evidence"] for r in flats)
    counts = {kind: sum(r["frame_type"] == kind for r in rows) for kind in ("bias", "dark", "flat")}
    assert counts == {"bias": 8, "dark": 12, "flat": 8}
    assert len({r["run_id"] for r in rows}) == 3  # one calibration set per type


@needs_data
def test_ast443_disagreements_are_logged(ast443):
    result, messages = ast443
    named_1s = [r for r in result.frames.to_pylist() if "expos1-" in r["path"]]
    assert len(named_1s) == 6
    for row in named_1s:
        assert row["exptime"] == 60.0  # the header wins
        assert any(os.path.basename(row["path"]) in m and "file name says 1 s" in m
                   and "EXPTIME = 60 s" in m for m in messages)
    flat_logs = [m for m in messages if "'Light Frame' but the file name says flat" in m]
    assert len(flat_logs) == 8


@needs_data
def test_ast443_header_values_and_pixels(ast443):
    result, _ = ast443
    rows = {os.path.basename(r["path"]): r for r in result.frames.to_pylist()}
    bias = rows["biases-Neg5-Vis.00000003.BIAS.FIT"]
    assert bias["gain"] == pytest.approx(2.06) and bias["gain_source"] == "header EGAIN"
    assert bias["read_noise"] is None and bias["filter"] == "Visible"
    assert bias["set_temperature"] == -5.0
    assert bias["temperature"] == pytest.approx(-4.8178, abs=1e-3)
    assert bias["exptime"] == 0.0 and bias["dtype"] == "uint16" and bias["shape"] == [1024, 1024]
    assert bias["time_precision_s"] == pytest.approx(0.001)
    cube = result.cube(bias["run_id"])
    np.testing.assert_array_equal(cube[bias["cube_index"]],
                                  fits.getdata(AST443 / "biases-Neg5-Vis.00000003.BIAS.FIT"))
    assert 985 < bias["median_adu"] < 1000
    # Dark current grows with exposure: the 300 s dark sits above the 10 s one.
    dark10 = rows["darks-expos10s-Neg5-Vis.00000000.DARK.FIT"]["median_adu"]
    dark300 = rows["darks-expos300s-Neg5-Vis.00000000.DARK.FIT"]["median_adu"]
    assert dark300 - dark10 > 50
    flat = rows["flat-expos23s-Neg5-Vis.00000000.FIT"]
    assert 18000 < flat["median_adu"] < 21000 and flat["exptime"] == 23.0


@needs_data
def test_saao_sections_gain_time_and_airmass(tmp_path):
    site = Site("Sutherland", longitude_deg=20.8107, latitude_deg=-32.3792, height_m=1798.0,
                match=("SAAO 1.0m",))
    result = ingest([SAAO], tmp_path, config=IngestConfig(sites=(site,)), workers=1)
    row = result.frames.to_pylist()[0]
    assert row["status"] == "ok" and row["frame_type"] == "light"
    # BIASSEC '[4:13,1:520]' and TRIMSEC '[17:528,1:520]' (IRAF, 1-based inclusive).
    assert row["overscan_section"] == [0, 520, 3, 13]
    assert row["trim_section"] == [0, 520, 16, 528]
    assert row["shape"] == [520, 536]
    assert row["gain"] == 1.9 and row["read_noise"] == 5.0
    assert row["exptime"] == pytest.approx(150.04)
    # DATE-OBS is a date alone; UT holds the start ('UT at Exposure start'); MJD-OBS is a whole day.
    assert row["time_keyword"] == "DATE-OBS+UT"
    assert (row["time_reference"], row["time_basis"]) == ("start", "stated")
    assert row["jd_utc_mid"] == pytest.approx(2456486.5 + (57 * 60 + 33 + 75.02) / 86400, abs=1e-8)
    # The computed airmass agrees with the observatory's own SECZ (at the start): the time,
    # the site and the pointing all hold together.
    assert row["airmass"] == pytest.approx(1.176, abs=0.005)
    assert row["night"] == "2013-07-12" and row["site"] == "Sutherland"
    cube = result.cube(row["run_id"])
    np.testing.assert_array_equal(cube[0], fits.getdata(SAAO))


@pytest.mark.parametrize("name", ["m13_rice.fits", "m13_gzip.fits", "m13_hcomp.fits",
                                  "m13_plio.fits"])
def test_compressed_m13_reads_equal_to_the_plain_one(name):
    plain = read_image(open_image(M13 / "m13.fits"))
    image = open_image(M13 / name)
    assert image.hdu_index == 1 and image.compression.endswith("_1")
    data = read_image(image)
    assert data.dtype == plain.dtype and data.flags.c_contiguous
    np.testing.assert_array_equal(data, plain)
    np.testing.assert_array_equal(data, fits.getdata(M13 / "m13.fits"))


def test_m13_through_ingest(tmp_path):
    # As shipped, m13 has no exposure time or time stamp: every copy is skipped, none stops the run.
    shipped = ingest([M13 / f for f in ("m13.fits", "m13_rice.fits", "m13_plio.fits")],
                     tmp_path / "shipped", workers=1)
    assert {r["reason_code"] for r in shipped.frames.to_pylist()} == {"bad_exptime"}
    # The same pixels with a time, in every compression: one frame, the rest duplicates.
    raw = tmp_path / "raw"
    raw.mkdir()
    plain = fits.getdata(M13 / "m13.fits")
    header = fits.getheader(M13 / "m13.fits")
    header["DATE-OBS"], header["EXPTIME"], header["IMAGETYP"] = "2024-05-02T04:00:00", 10.0, "LIGHT"
    fits.PrimaryHDU(plain, header).writeto(raw / "m13.fits")
    for kind in ("RICE_1", "GZIP_1", "HCOMPRESS_1", "PLIO_1"):
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(plain, header, compression_type=kind)]
                     ).writeto(raw / f"m13_{kind.lower()}.fits.fz")
    result = ingest([raw], tmp_path / "out", workers=2)
    rows = {os.path.basename(r["path"]): r for r in result.frames.to_pylist()}
    ok = [name for name, r in rows.items() if r["status"] == "ok"]
    assert len(ok) == 1
    assert all(r["reason_code"] == "duplicate" for r in rows.values() if r["status"] != "ok")
    assert len({r["content_hash"] for r in rows.values()}) == 1
    row = rows[ok[0]]
    assert row["wcs"] is not None and "RA---TAN" in row["wcs"]
    assert row["ra_deg"] == pytest.approx(250.4226, abs=0.01)
    np.testing.assert_array_equal(result.cube(row["run_id"])[0], plain)


@pytest.mark.parametrize("dtype, bzero, bscale", [
    (np.uint8, None, None), (np.int8, None, None), (np.int16, None, None),
    (np.uint16, None, None), (np.int32, None, None), (np.uint32, None, None),
    (np.int64, None, None), (np.float32, None, None), (np.float64, None, None),
    (np.int16, 100.0, 2.5),
])
def test_every_pixel_type_decodes_like_astropy(tmp_path, dtype, bzero, bscale):
    values = np.arange(-40, 80).reshape(10, 12) * 7
    if np.dtype(dtype).kind == "u":
        values = values - values.min()
    hdu = fits.PrimaryHDU(values.astype(dtype))
    if bzero is not None:
        hdu.scale("int16", bzero=bzero, bscale=bscale)
    hdu.writeto(tmp_path / "frame.fits")
    image = open_image(tmp_path / "frame.fits")
    data = read_image(image)
    expected = fits.getdata(tmp_path / "frame.fits")
    assert data.dtype == image.dtype and data.dtype.isnative and data.flags.c_contiguous
    np.testing.assert_array_equal(data, expected)
    if bzero is None:
        assert data.dtype == np.dtype(dtype)
    # The same through gzip: astropy decodes it, with the same result.
    import gzip

    (tmp_path / "frame.fits.gz").write_bytes(gzip.compress((tmp_path / "frame.fits").read_bytes()))
    gzipped = open_image(tmp_path / "frame.fits.gz")
    assert gzipped.compression == "gzip"
    np.testing.assert_array_equal(read_image(gzipped), expected)
