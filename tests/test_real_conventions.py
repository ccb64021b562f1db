"""Camera conventions: frame-type vocabularies, time keywords and their references, frames
calibrated before ingest, PEDESTAL and observatory bad-pixel masks. Checked on simulated nights
against truth.json and on real frames (../shared/data) against per-file expectations worked out
by hand from each header (mid-exposure = the start the header states + EXPTIME / 2)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time

from engine.calibration import calibrate
from engine.flags import PixelFlag
from engine.ingest import ingest
from engine.io.cube import open_cube
from engine.io.layout import bad_pixel_cube_path
from engine.io.mid_exposure import mid_from_stamps, run_convention
from engine.io.processing import calibrated_state
from engine.io.timestamps import header_timestamps
from engine.settings.ingest import IngestConfig, Site
from engine.simulation import simulate

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def _truth_mid(entry) -> float:
    return entry["start_jd_utc"] + 0.5 * entry["exptime_s"] / 86400.0


def _by_file(result, root):
    return {os.path.relpath(r["path"], root): r for r in result.frames.to_pylist()}


# --------------------------------------------------------------------------- simulated nights

@pytest.mark.parametrize("preset", ["lco", "lco_processed", "jd_mid"])
def test_simulated_conventions_give_true_types_and_mid_exposure_times(tmp_path, preset):
    raw = tmp_path / "raw"
    simulate(raw, preset=preset, seed=3)
    truth = json.loads((raw / "truth.json").read_text())
    rows = _by_file(ingest([raw], tmp_path / "out", workers=2), raw)
    assert len(rows) == len(truth["frames"])
    for entry in truth["frames"]:
        row = rows[entry["file"]]
        assert row["status"] == "ok", row["reason"]
        assert row["frame_type"] == entry["frame_type"], (entry["file"], row["frame_type_evidence"])
        assert abs(row["jd_utc_mid"] - _truth_mid(entry)) * 86400.0 < 0.1, row["time_source"]
        assert 0.0 < row["time_err_s"] < 0.01
    lights = [rows[e["file"]] for e in truth["frames"] if e["frame_type"] == "light"]
    if preset == "jd_mid":
        # JD sits EXPTIME/2 after DATE-OBS on every frame: JD is mid-exposure, for the whole run.
        assert {(r["time_keyword"], r["time_reference"], r["time_basis"]) for r in lights} == {
            ("JD", "mid", "inferred")}
        assert all("JD marks the exposure mid" in r["time_source"] for r in lights)
        assert not any("disagree" in (r["notes"] or "") for r in lights)
    else:
        assert all(r["frame_type_evidence"] == "OBSTYPE = 'EXPOSE'" for r in lights)
        assert {(r["time_reference"], r["time_basis"]) for r in lights} == {("start", "stated")}
    processed = preset == "lco_processed"
    assert {r["calibrated_state"] for r in lights} == {"bias,dark,flat" if processed else "raw"}
    assert all((r["bad_pixel_hdu"] is not None) == processed for r in lights)


def test_processed_lco_lights_pass_calibration_untouched_with_their_bad_pixels(tmp_path):
    raw = tmp_path / "raw"
    simulate(raw, preset="lco_processed", seed=5)
    truth = json.loads((raw / "truth.json").read_text())
    ingested = ingest([raw], tmp_path / "out", workers=2)
    result = calibrate(ingested)
    (run_id,) = result.runs
    assert not result.masters
    stored = open_cube(ingested.cubes[run_id])
    calibrated = open_cube(result.runs[run_id])
    mask = open_cube(result.runs[run_id].with_name(f"{run_id}_mask.zarr"))
    own = open_cube(bad_pixel_cube_path(ingested.cubes[run_id]))
    assert own.shape == stored.shape
    for k in range(stored.shape[0]):
        np.testing.assert_array_equal(np.asarray(calibrated[k]), np.asarray(stored[k]))
        bad = (np.asarray(mask[k]) & PixelFlag.BAD) != 0
        np.testing.assert_array_equal(bad, np.asarray(own[k]) != 0)
    # Every hot pixel of the detector (the BPM's content) is flagged.
    assert int(np.count_nonzero(np.asarray(own[0]))) == truth["runs"][0]["hot_pixels"] > 0
    assert any("already calibrated" in n for n in result.notes[run_id])


# --------------------------------------------------------------------------- one convention per run

def _maxim_header(date: Time, exptime: float, jd: Time) -> fits.Header:
    h = fits.Header()
    h["DATE-OBS"] = (date.isot[:22], "UT date and time")  # says nothing of start or mid
    h["JD"] = (float(f"{jd.jd:.8f}"), "Julian Date at time of exposure")
    h["EXPTIME"] = exptime
    return h


@pytest.mark.parametrize("sign, jd_reference, date_reference", [
    (+1, "mid", "start"),   # JD = DATE-OBS + EXPTIME/2: JD is mid, DATE-OBS the FITS start
    (-1, "start", "mid"),   # JD = DATE-OBS - EXPTIME/2: DATE-OBS is mid, JD the start
])
def test_run_convention_from_a_constant_half_exposure_difference(sign, jd_reference,
                                                                 date_reference):
    exptime = 80.0
    t0 = Time("2024-03-01T02:00:00", scale="utc")
    frames, starts = [], []
    for k in range(50):
        start = t0 + k * 95.0 * u.s
        glitch = 7.3 * u.s if k == 17 else 0.0 * u.s  # one frame whose keywords disagree otherwise
        if sign > 0:
            header = _maxim_header(start, exptime, start + exptime / 2 * u.s + glitch)
        else:  # DATE-OBS written at mid-exposure, JD at the start
            header = _maxim_header(start + exptime / 2 * u.s, exptime, start + glitch)
        frames.append(header_timestamps(header))
        starts.append(start)
    convention = run_convention([(stamps, exptime) for stamps, _ in frames])
    assert convention.references == {"DATE-OBS": date_reference, "JD": jd_reference}
    assert convention.keyword == "JD"
    mids = [mid_from_stamps(stamps, problems, exptime, convention=convention)
            for stamps, problems in frames]
    assert {m.keyword for m in mids} == {"JD"}
    for k, (mid, start) in enumerate(zip(mids, starts)):
        error = (mid.jd_utc - (start + exptime / 2 * u.s).jd) * 86400.0
        expected = 7.3 if k == 17 else 0.0  # the odd frame keeps the run's keyword
        assert abs(error - expected) < 0.01, (k, error)
    assert any("49 of 50" in text for text in convention.evidence)


def test_a_frame_at_midnight_keeps_its_time_when_the_run_keyword_reads_as_a_date():
    """MJD-OBS of a frame started at exactly 00:00:00 is a whole number: as written it looks
    like a bare date, and that frame takes its other stamp, with the run's reference."""
    exptime = 20.0
    t0 = Time("2024-12-15T00:00:00", scale="utc")
    frames = []
    for k in range(6):
        start = t0 + k * 60.0 * u.s + (0.0 if k == 0 else 0.4) * u.s
        h = fits.Header()
        h["DATE-OBS"] = start.isot[:19]  # to the second: MJD-OBS is the finer stamp
        h["MJD-OBS"] = float(f"{start.mjd:.8f}")  # 60659.0 for the first frame
        h["EXPTIME"] = exptime
        frames.append(header_timestamps(h))
    convention = run_convention([(stamps, exptime) for stamps, _ in frames])
    for k, (stamps, problems) in enumerate(frames):
        mid = mid_from_stamps(stamps, problems, exptime, convention=convention)
        want = (t0 + (k * 60.0 + (0.0 if k == 0 else 0.4) + exptime / 2) * u.s).jd
        assert abs(mid.jd_utc - want) * 86400.0 < 0.01
        assert mid.time_err_s < 1.0, (k, mid.keyword, mid.time_err_s)


def test_a_configured_reference_outranks_inference():
    exptime = 60.0
    start = Time("2024-03-01T02:00:00", scale="utc")
    header = _maxim_header(start, exptime, start + 30 * u.s)
    stamps, problems = header_timestamps(header)
    convention = run_convention([(stamps, exptime)] * 3, time_reference="start")
    mid = mid_from_stamps(stamps, problems, exptime, convention=convention,
                          time_reference="start")
    assert convention.references["JD"] == "start" and mid.basis == "configured"


# --------------------------------------------------------------------------- pedestal, CALSTAT

def _write(path: Path, data: np.ndarray, **cards):
    header = fits.Header()
    header["IMAGETYP"] = "Light Frame"
    header["DATE-OBS"] = "2024-05-02T04:10:00.00"
    header["EXPTIME"] = 30.0
    for key, value in cards.items():
        header[key] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=data, header=header).writeto(path)


def test_pedestal_is_removed_and_calstat_marks_a_calibrated_light(tmp_path):
    rng = np.random.default_rng(1)
    data = rng.integers(900, 1100, (32, 32)).astype(np.uint16)
    _write(tmp_path / "raw" / "a.fits", data, PEDESTAL=(-100, "Correction to add for "
                                                               "zero-based ADU"), CALSTAT="BDF")
    result = ingest([tmp_path / "raw"], tmp_path / "out", workers=1)
    row = result.frames.to_pylist()[0]
    assert row["pedestal_adu"] == 100.0 and row["dtype"] == "float32"
    np.testing.assert_array_equal(result.cube(row["run_id"])[0], data.astype(np.float32) - 100)
    assert row["calibrated_state"] == "bias,dark,flat"
    assert "CALSTAT = 'BDF'" in row["calibrated_evidence"]


def test_calibrated_state_joins_every_convention_in_order():
    header = fits.Header()
    header["CALSTAT"] = "B"
    header["SUBDARK"] = "ccd=<CCDData>, master=dark.fits"
    header["RLEVEL"] = 0
    header["HISTORY"] = "Bias=/data/Bias.fits"           # bias already known: not evidence
    header["HISTORY"] = "divided by the flat"
    header["HISTORY"] = "Flat=/data/Flat58.fits"         # a second line for the flat: not either
    steps, evidence = calibrated_state(header)
    assert steps == ("bias", "dark", "flat")
    assert evidence == "CALSTAT = 'B'; SUBDARK; HISTORY 'divided by the flat'"
    # An observatory pipeline product names its steps; without them it is flat-fielded.
    lco = fits.Header({"RLEVEL": 91, "L1STATBI": 1, "L1STATDA": 0})
    assert calibrated_state(lco) == (("bias",), "RLEVEL = 91 (observatory pipeline product)")
    assert calibrated_state(fits.Header({"RLEVEL": 91}))[0] == ("bias", "dark", "flat")
    assert calibrated_state(fits.Header({"CALSTAT": "XYZ", "ZEROCOR": 0})) == ((), "")


def test_site_pedestal_and_frame_type_words_are_configurable(tmp_path):
    data = np.full((32, 32), 1200, np.uint16)
    _write(tmp_path / "raw" / "b.fits", data, IMAGETYP="Focus", TELESCOP="T9")
    site = Site("t9", match=("T9",), pedestal_adu=200.0, clock_uncertainty_s=0.5,
                frame_types=(("focus", "light"),))
    row = ingest([tmp_path / "raw"], tmp_path / "out", config=IngestConfig(sites=(site,)),
                 workers=1).frames.to_pylist()[0]
    assert row["frame_type"] == "light" and "site rule" in row["frame_type_evidence"]
    assert row["pedestal_adu"] == 200.0 and row["median_adu"] == 1000.0
    # 0.01 s stamp resolution (/sqrt 3) and 0.5 s of clock in quadrature.
    assert row["time_err_s"] == pytest.approx(np.hypot(0.01 / np.sqrt(3), 0.5))


# --------------------------------------------------------------------------- real frames
# (file, frame type, EXPTIME, mid-exposure UTC): from each header by hand.

SARA = [
    ('calib/bias.fits', 'bias', 0.0, '2014-01-06T08:28:56.475624'),
    ('calib/dark.fits', 'dark', 200.0, '2014-01-06T08:33:47.480647'),
    ('calib/flat.fits', 'flat', 1.0, '2014-01-06T00:10:33.977311'),
    ('raw/wasp19-000.fits', 'light', 25.0, '2014-01-06T05:36:52.732899'),
    ('raw/wasp19-001.fits', 'light', 25.0, '2014-01-06T05:37:05.977044'),
    ('raw/wasp19-002.fits', 'light', 25.0, '2014-01-06T05:37:39.968791'),
    ('raw/wasp19-003.fits', 'light', 25.0, '2014-01-06T05:38:13.976137'),
    ('raw/wasp19-004.fits', 'light', 25.0, '2014-01-06T05:38:47.983483'),
    ('raw/wasp19-005.fits', 'light', 25.0, '2014-01-06T05:39:21.980770'),
    ('raw/wasp19-006.fits', 'light', 25.0, '2014-01-06T05:39:55.972516'),
    ('raw/wasp19-007.fits', 'light', 25.0, '2014-01-06T05:40:30.978243'),
    ('raw/wasp19-008.fits', 'light', 25.0, '2014-01-06T05:41:04.969989'),
    ('raw/wasp19-009.fits', 'light', 25.0, '2014-01-06T05:41:38.977335'),
]
BULGE = [
    ('AKB13475I0001.fits', 300.045, '2013-06-27T23:15:42.022500', 2456471.475097689),
    ('AKB13475I0002.fits', 300.045, '2013-06-28T00:42:26.022500', 2456471.535328896),
    ('AKB13475I0010.fits', 300.042, '2013-06-29T00:53:42.021000', 2456472.5431474736),
    ('AKB13475I0014.fits', 300.041, '2013-07-01T19:55:23.020500', 2456475.3359591886),
    ('AKB13475I0017.fits', 300.039, '2013-07-06T19:07:42.019500', 2456480.3027716097),
    ('AKB13475I0019.fits', 300.043, '2013-07-07T02:37:35.021500', 2456480.615184608),
    ('AKB13475I0023.fits', 300.041, '2013-07-08T00:41:23.020500', 2456481.534471561),
    ('AKB13475I0029.fits', 300.041, '2013-07-09T01:28:44.020500', 2456482.5673309905),
    ('AKB13475I0035.fits', 400.042, '2013-07-10T00:13:21.021000', 2456483.514959307),
    ('AKB13475I0037.fits', 400.039, '2013-07-17T18:16:27.019500', 2456491.2668773066),
    ('AKB13475I0042.fits', 300.038, '2013-07-22T17:45:42.019000', 2456496.2453233814),
    ('AKB13475I0043.fits', 500.04, '2013-07-24T17:55:20.020000', 2456498.251922289),
    ('AKB13475I0046.fits', 400.038, '2013-07-25T17:43:09.019000', 2456499.243414479),
    ('AKB13475I0050.fits', 500.039, '2013-07-26T18:49:37.019500', 2456500.2895206623),
    ('AKB13475I0051.fits', 400.039, '2013-07-29T18:37:15.019500', 2456503.2807775154),
    ('AKB13475I0054.fits', 300.039, '2013-07-30T19:19:56.019500', 2456504.3103623893),
    ('AKB13475I0056.fits', 300.038, '2013-07-31T17:58:03.019000', 2456505.253446112),
    ('AKB13475I0059.fits', 300.042, '2013-08-01T00:21:30.021000', 2456505.5197157175),
    ('AKB13475I0069.fits', 300.042, '2013-08-02T00:32:50.021000', 2456506.527527918),
    ('AKB13475I0070.fits', 250.037, '2013-08-02T16:43:05.018500', 2456507.2012729472),
    ('AKB13475I0071.fits', 300.035, '2013-08-02T16:48:19.017500', 2456507.204906997),
    ('AKB13475I0072.fits', 300.035, '2013-08-02T16:54:04.017500', 2456507.208899815),
    ('AKB13475I0073.fits', 300.037, '2013-08-02T17:58:29.018500', 2456507.253630969),
    ('AKB13475I0074.fits', 300.039, '2013-08-02T18:39:22.019500', 2456507.2820204985),
    ('AKB13475I0075.fits', 300.04, '2013-08-02T19:18:24.020000', 2456507.3091253755),
    ('AKB13475I0076.fits', 300.041, '2013-08-02T19:58:37.020500', 2456507.3370519616),
    ('AKB13475I0077.fits', 300.041, '2013-08-02T20:46:09.020500', 2456507.3700592574),
    ('AKB13475I0078.fits', 300.041, '2013-08-02T21:36:04.020500', 2456507.4047215455),
    ('AKB13475I0079.fits', 300.042, '2013-08-02T22:13:12.021000', 2456507.4305070513),
    ('AKB13475I0080.fits', 300.041, '2013-08-02T23:01:16.020500', 2456507.4638846857),
    ('AKB13475I0081.fits', 300.041, '2013-08-02T23:42:40.020500', 2456507.4926329707),
    ('AKB13475I0082.fits', 300.041, '2013-08-03T00:21:14.020500', 2456507.519413779),
    ('AKB13475I0084.fits', 300.04, '2013-08-03T00:32:16.020000', 2456507.5270753526),
    ('AKB13475I0086.fits', 300.04, '2013-08-03T00:43:07.020000', 2456507.5346096247),
    ('AKB13475I0088.fits', 300.04, '2013-08-03T00:54:14.020000', 2456507.5423290706),
    ('AKB13475I0090.fits', 300.04, '2013-08-03T01:05:01.020000', 2456507.5498170494),
    ('AKB13475I0092.fits', 300.038, '2013-08-03T16:51:51.019000', 2456508.2073006127),
    ('AKB13475I0094.fits', 300.037, '2013-08-03T17:20:26.018500', 2456508.227148941),
    ('AKB13475I0097.fits', 300.038, '2013-08-03T18:11:55.019000', 2456508.262899092),
    ('AKB13475I0099.fits', 200.039, '2013-08-03T19:01:16.019500', 2456508.2971678153),
    ('AKB13475I0101.fits', 200.04, '2013-08-03T19:26:44.020000', 2456508.314851932),
    ('AKB13475I0105.fits', 200.041, '2013-08-03T19:41:38.020500', 2456508.325198531),
    ('AKB13475I0109.fits', 200.04, '2013-08-03T20:07:11.020000', 2456508.342940503),
    ('AKB13475I0113.fits', 200.04, '2013-08-03T20:31:09.020000', 2456508.359583009),
    ('AKB13475I0117.fits', 200.041, '2013-08-03T20:55:51.020500', 2456508.3767347494),
    ('AKB13475I0121.fits', 200.04, '2013-08-03T21:32:47.020000', 2456508.402381331),
    ('AKB13475I0125.fits', 300.04, '2013-08-03T22:05:19.020000', 2456508.4249725826),
    ('AKB13475I0129.fits', 200.04, '2013-08-03T22:38:52.020000', 2456508.4482697397),
    ('AKB13475I0133.fits', 300.039, '2013-08-03T23:10:21.019500', 2456508.4701318624),
    ('AKB13475I0137.fits', 150.039, '2013-08-03T23:24:05.019500', 2456508.479668265),
    ('AKB13475I0141.fits', 150.038, '2013-08-03T23:35:43.019000', 2456508.4877464706),
    ('AKB13475I0145.fits', 150.039, '2013-08-03T23:47:12.019500', 2456508.4957205267),
    ('AKB13475I0149.fits', 150.04, '2013-08-04T00:00:07.020000', 2456508.5046898928),
    ('AKB13475I0151.fits', 150.039, '2013-08-04T00:05:47.019500', 2456508.5086248326),
    ('AKB13475I0174.fits', 400.04, '2013-08-05T20:10:57.020000', 2456510.345431965),
    ('AKB13475I0175.fits', 300.04, '2013-08-09T17:34:25.020000', 2456514.236472116),
    ('AKB13475I0180.fits', 400.042, '2013-08-10T21:16:02.021000', 2456515.3902931334),
]
AST443 = [
    ('biases-Neg5-Vis.00000000.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:08.464000'),
    ('biases-Neg5-Vis.00000001.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:13.328000'),
    ('biases-Neg5-Vis.00000002.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:18.211000'),
    ('biases-Neg5-Vis.00000003.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:23.256000'),
    ('biases-Neg5-Vis.00000004.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:28.136000'),
    ('biases-Neg5-Vis.00000005.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:32.995000'),
    ('biases-Neg5-Vis.00000006.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:37.874000'),
    ('biases-Neg5-Vis.00000007.BIAS.FIT', 'bias', 0.0, '2017-09-08T20:45:42.808000'),
    ('darks-expos1-Neg5-Vis.00000000.DARK.FIT', 'dark', 60.0, '2017-09-08T20:49:11.901000'),
    ('darks-expos1-Neg5-Vis.00000001.DARK.FIT', 'dark', 60.0, '2017-09-08T20:50:17.074000'),
    ('darks-expos1-Neg5-Vis.00000002.DARK.FIT', 'dark', 60.0, '2017-09-08T20:51:22.194000'),
    ('darks-expos1-Neg5-Vis.00000003.DARK.FIT', 'dark', 60.0, '2017-09-08T20:52:27.324000'),
    ('darks-expos1-Neg5-Vis.00000004.DARK.FIT', 'dark', 60.0, '2017-09-08T20:53:32.461000'),
    ('darks-expos1-Neg5-Vis.00000005.DARK.FIT', 'dark', 60.0, '2017-09-08T20:54:37.595000'),
    ('darks-expos10s-Neg5-Vis.00000000.DARK.FIT', 'dark', 10.0, '2017-09-08T21:01:51.731000'),
    ('darks-expos150s-Neg5-Vis.00000000.DARK.FIT', 'dark', 150.0, '2017-09-08T21:08:12.405000'),
    ('darks-expos20s-Neg5-Vis.00000000.DARK.FIT', 'dark', 20.0, '2017-09-08T21:03:21.534000'),
    ('darks-expos300s-Neg5-Vis.00000000.DARK.FIT', 'dark', 300.0, '2017-09-08T21:12:54.195000'),
    ('darks-expos30s-Neg5-Vis.00000000.DARK.FIT', 'dark', 30.0, '2017-09-08T21:04:15.082000'),
    ('darks-expos60s-Neg5-Vis.00000000.DARK.FIT', 'dark', 60.0, '2017-09-08T21:05:35.501000'),
    ('flat-expos23s-Neg5-Vis.00000000.FIT', 'flat', 23.0, '2017-09-08T22:48:13.484000'),
    ('flat-expos23s-Neg5-Vis.00000001.FIT', 'flat', 23.0, '2017-09-08T22:48:41.659000'),
    ('flat-expos23s-Neg5-Vis.00000002.FIT', 'flat', 23.0, '2017-09-08T22:49:09.790000'),
    ('flat-expos23s-Neg5-Vis.00000003.FIT', 'flat', 23.0, '2017-09-08T22:49:37.916000'),
    ('flat-expos23s-Neg5-Vis.00000004.FIT', 'flat', 23.0, '2017-09-08T22:50:06.048000'),
    ('flat-expos23s-Neg5-Vis.00000005.FIT', 'flat', 23.0, '2017-09-08T22:50:34.218000'),
    ('flat-expos23s-Neg5-Vis.00000006.FIT', 'flat', 23.0, '2017-09-08T22:51:02.359000'),
    ('flat-expos23s-Neg5-Vis.00000007.FIT', 'flat', 23.0, '2017-09-08T22:51:30.499000'),
]


def _mid_jd(iso: str) -> float:
    return Time(iso, scale="utc").jd


@needs_data
def test_sara_every_file_type_keyword_and_mid_exposure(tmp_path):
    root = DATA / "sara_raw_calibration"
    rows = _by_file(ingest([root], tmp_path, workers=2), root)
    assert sorted(rows) == sorted(name for name, *_ in SARA)
    for name, frame_type, exptime, mid in SARA:
        row = rows[name]
        assert (row["status"], row["frame_type"], row["exptime"]) == ("ok", frame_type, exptime)
        # DATE-OBS: 'UT Date/time of Observation (open shutter)': the start, stated; J_DATE
        # (5 decimals, text after the number) is not a time stamp to use.
        assert (row["time_keyword"], row["time_reference"], row["time_basis"]) == (
            "DATE-OBS", "start", "stated")
        assert abs(row["jd_utc_mid"] - _mid_jd(mid)) * 86400.0 < 1e-3
        assert row["time_err_s"] < 1e-5 and row["calibrated_state"] == "raw"


@needs_data
def test_bulge_every_file_is_an_already_flat_fielded_light_with_the_observatory_time(tmp_path):
    root = DATA / "saao_microlensing_bulge"
    site = Site("Sutherland", longitude_deg=20.8107, latitude_deg=-32.3792, height_m=1798.0,
                match=("SAAO 1.0m",))
    rows = _by_file(ingest([root], tmp_path, config=IngestConfig(sites=(site,)), workers=2), root)
    assert sorted(rows) == sorted(name for name, *_ in BULGE)
    location = EarthLocation.from_geodetic(20.8107 * u.deg, -32.3792 * u.deg, 1798.0 * u.m)
    target = SkyCoord("18:15:29", "-25:17:06", unit=(u.hourangle, u.deg))
    for name, exptime, mid, phjdmid in BULGE:
        row = rows[name]
        assert (row["status"], row["frame_type"]) == ("ok", "light")
        assert row["frame_type_evidence"] == "IMAGETYP = 'object'"
        # DATE-OBS holds the date only; UT 'at Exposure start' the time (1 s); MJD-OBS agrees.
        assert (row["time_keyword"], row["time_reference"], row["time_basis"]) == (
            "DATE-OBS+UT", "start", "stated")
        assert row["exptime"] == exptime
        assert abs(row["jd_utc_mid"] - _mid_jd(mid)) * 86400.0 < 1e-3
        assert row["time_err_s"] == pytest.approx(1.0 / np.sqrt(3.0))
        # The observatory's own heliocentric mid-exposure JD (UTC) agrees within the 1 s stamp.
        when = Time(row["jd_utc_mid"], format="jd", scale="utc")
        hjd = (when + when.light_travel_time(target, "heliocentric", location=location)).jd
        assert abs(hjd - phjdmid) * 86400.0 < 1.5, name
        # HISTORY 'Flat=/home/planet/...': flat-fielded by the observatory's pipeline.
        assert row["calibrated_state"] == "bias,dark,flat"
        assert "Flat=" in row["calibrated_evidence"]
    result = calibrate(tmp_path)  # one run a night, no calibration frames: each passes through
    assert set(result.runs) == {r["run_id"] for r in rows.values()} and not result.masters
    for run_id in result.runs:
        assert any("already calibrated" in n for n in result.notes[run_id])


@needs_data
def test_ast443_every_file_type_and_time(tmp_path):
    root = DATA / "ast443_stl1001e"
    rows = _by_file(ingest([root], tmp_path, workers=2), root)
    assert sorted(rows) == sorted(name for name, *_ in AST443)
    for name, frame_type, exptime, mid in AST443:
        row = rows[name]
        assert (row["status"], row["frame_type"], row["exptime"]) == ("ok", frame_type, exptime)
        # CCDSoft's DATE-OBS says nothing of its reference: the FITS start, assumed.
        assert (row["time_keyword"], row["time_reference"], row["time_basis"]) == (
            "DATE-OBS", "start", "assumed")
        assert abs(row["jd_utc_mid"] - _mid_jd(mid)) * 86400.0 < 1e-3
        if frame_type == "flat":  # 'Light Frame' in the header; the name and the level agree
            assert "level 30% of full scale" in row["frame_type_evidence"]


@needs_data
def test_the_single_frame_sets_overscan_and_ntt(tmp_path):
    """saao_overscan: IMAGETYP 'object', DATE-OBS the date and UT 'at start' the time (MJD-OBS
    is the bare day, 56486.0), GAIN 1.9 e-/ADU and RDNOISE 5.0 e-; its brightest pixel (1715)
    reaches no ADC ceiling, so the frame does not tell its saturation. sep_ntt_emmi: no type
    keyword, DATE-OBS '26/10/92' a date only, MJD-OBS to 1e-5 d whose comment ('MIDAS desc.')
    says nothing of the middle; DATAMAX is the level."""
    overscan = ingest([DATA / "saao_overscan"], tmp_path / "overscan").frames.to_pylist()[0]
    assert (overscan["frame_type"], overscan["exptime"]) == ("light", 150.04)
    assert (overscan["time_keyword"], overscan["time_reference"], overscan["time_basis"]) == (
        "DATE-OBS+UT", "start", "stated")
    start = Time("2013-07-13T00:57:33", scale="utc")
    assert abs(overscan["jd_utc_mid"] - (start + 75.02 * u.s).jd) * 86400.0 < 1e-3
    assert (overscan["gain"], overscan["read_noise"]) == (1.9, 5.0)
    assert overscan["gain_source"].startswith("header GAIN")
    assert overscan["read_noise_source"] == "header RDNOISE"
    assert overscan["saturation"] is None
    ntt = ingest([DATA / "sep_ntt_emmi" / "image.fits"], tmp_path / "ntt").frames.to_pylist()[0]
    assert (ntt["frame_type"], ntt["exptime"]) == ("light", 1200.0)
    assert (ntt["time_keyword"], ntt["time_reference"], ntt["time_basis"]) == (
        "MJD-OBS", "start", "assumed")
    assert ntt["saturation_source"] == "header DATAMAX" and ntt["gain"] is None
