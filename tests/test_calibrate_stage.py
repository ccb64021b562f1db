"""The calibrate stage and its CLI verb: masters alone from the real AST443 set, and a simulated
night (ingest -> masters -> calibrated cubes) whose calibrated frames match the truth."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from engine.calibration import calibrate
from engine.io.cube import open_cube

AST443 = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "ast443_stl1001e"


@pytest.mark.skipif(not AST443.is_dir(), reason=f"real data not found at {AST443}")
@pytest.mark.slow
def test_cli_builds_masters_alone_without_lights(tmp_path):
    out = tmp_path / "out"
    result = subprocess.run([sys.executable, "-m", "engine", "calibrate", str(AST443), "--out",
                             str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    masters = sorted(p.name for p in (out / "masters").iterdir())
    prefix = "SBIG-STL-1001-3-CCD-Camera_2017-09-08_"
    assert masters == [prefix + "bias_master_bias.fits", prefix + "dark_master_dark_rate.fits",
                       prefix + "flat_Visible_bad_pixels.fits",
                       prefix + "flat_Visible_master_flat_Visible.fits"]
    assert "0 calibrated runs" in result.stdout
    dark = fits.getheader(out / "masters" / (prefix + "dark_master_dark_rate.fits"))
    assert dark["IMAGETYP"] == "MASTER DARK" and dark["DARKMODE"] == "RATE"
    assert 0.68 < dark["DCRATEE"] < 0.76  # e-/s/pixel, EGAIN 2.06
    flat = fits.getheader(out / "masters" / (prefix + "flat_Visible_master_flat_Visible.fits"))
    assert flat["FILTER"] == "Visible" and flat["NCOMBINE"] == 8
    report = json.loads((out / "calibration.json").read_text())
    assert report["runs"] == {} and len(report["masters"]) == 4
    assert report["masters_only"][prefix + "dark"]["dark"]["mode"] == "rate"


def test_simulated_night_is_calibrated_and_reruns_skip(tmp_path):
    from engine.ingest import ingest
    from engine.simulation import simulate

    sim = simulate(tmp_path / "raw", preset="tiny", seed=3)
    ingested = ingest([tmp_path / "raw"], tmp_path / "out")
    result = calibrate(ingested, tmp_path / "out", threads=1)
    lights = {run["run_id"] for run in sim.truth["runs"]}
    assert len(result.runs) == len(lights) == 3
    for run_id, path in result.runs.items():
        data = open_cube(path)
        mask = open_cube(path.with_name(path.name[:-5] + "_mask.zarr"))
        assert data.dtype == np.float32 and mask.dtype == np.uint8
        assert data.shape == mask.shape and data.shape[0] == 10
        notes = result.notes.get(run_id, [])
        assert not any("calibrated without" in n for n in notes), notes
        # The sky is flat after calibration: the vignetting and the pedestal are gone.
        frame = np.asarray(data[0], dtype=np.float64)
        good = np.asarray(mask[0]) == 0
        sky = np.median(frame[good])
        rows = [np.median(frame[i:i + 16][good[i:i + 16]])
                for i in range(0, frame.shape[0] - 15, 16)]
        assert 0 < sky and np.ptp(rows) < 0.05 * sky + 5.0, (run_id, sky, rows)
    report = json.loads(result.report_path.read_text())
    assert set(report["runs"]) == set(result.runs)
    again = calibrate(tmp_path / "out", threads=1)
    assert sorted(again.skipped_runs) == sorted(result.runs)


@pytest.mark.slow
@pytest.mark.skipif(not AST443.is_dir(), reason=f"real data not found at {AST443}")
def test_calibration_sets_that_do_not_fit_the_lights_are_left_out_with_reasons(tmp_path):
    from engine.ingest import ingest

    raw = tmp_path / "raw"
    raw.mkdir()
    for path in AST443.iterdir():  # the real set, linked in place (never written)
        (raw / path.name).symlink_to(path)
    with fits.open(AST443 / "flat-expos23s-Neg5-Vis.00000003.FIT") as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data.astype(np.float64)
    header["DATE-OBS"] = "2017-09-08T23:30:00.000"
    fits.writeto(raw / "light-Vis.00000000.FIT", (data / 4).astype(np.uint16), header)
    with fits.open(AST443 / "biases-Neg5-Vis.00000000.BIAS.FIT") as hdul:
        header, data = hdul[0].header.copy(), hdul[0].data
    header["XBINNING"] = header["YBINNING"] = 2
    for k in range(3):
        header["DATE-OBS"] = f"2017-09-08T20:5{k}:00.000"
        fits.writeto(raw / f"binned-bias.0000000{k}.BIAS.FIT", data[::2, ::2] + k, header)

    ingested = ingest([raw], tmp_path / "out")
    result = calibrate(ingested, tmp_path / "out", threads=1)
    assert len(result.runs) == 1
    (run_id,) = result.runs
    reasons = dict(result.rejected)
    binned = [key for key in reasons if "bias_bin2x2" in key]
    assert binned and reasons[binned[0]] == (f"not used for {run_id}: shape 512x512 differs "
                                             f"from 1024x1024; binning 2x2 differs from 1x1")
    report = json.loads(result.report_path.read_text())
    used = report["runs"][run_id]["masters"]
    assert used["bias"].endswith("_bias") and used["dark"].endswith("_dark")
    assert used["flat"].endswith("_flat_Visible")
    assert report["runs"][run_id]["dark"]["mode"] == "rate"
    # The light is a flat (over 4): calibrated by the flat it is nearly uniform.
    frame = np.asarray(open_cube(result.runs[run_id])[0])  # NaN where the flat is not > 0
    assert np.nanstd(frame[100:-100, 100:-100]) < 0.05 * np.nanmedian(frame)


def test_integer_lights_without_a_saturation_keyword_flag_their_measured_adc_top(tmp_path):
    from engine.flags import PixelFlag
    from engine.ingest import ingest

    rng = np.random.default_rng(5)
    raw = tmp_path / "raw"
    raw.mkdir()
    hot = [(5, 7), (20, 31)]
    for k, kind in enumerate(["Bias Frame"] * 3 + ["Light Frame"] * 3):
        data = rng.normal(1000.0, 5.0, (40, 48))
        if kind == "Light Frame":
            for y, x in hot:
                data[y, x] = 65535.0  # at the 16-bit ADC's top
            data[30, 10] = 63000.0  # bright but below it
        header = fits.Header({"IMAGETYP": kind, "EXPTIME": 0.0 if "Bias" in kind else 10.0,
                              "DATE-OBS": f"2024-05-01T03:{k:02d}:00", "TELESCOP": "T1"})
        fits.PrimaryHDU(np.round(data).astype(np.uint16), header).writeto(raw / f"f{k}.fits")
    result = calibrate(ingest([raw], tmp_path / "out"), tmp_path / "out", threads=1)
    (run_id, path), = result.runs.items()
    mask = np.asarray(open_cube(path.with_name(path.name[:-5] + "_mask.zarr")))
    saturated = (mask & PixelFlag.SATURATED) != 0
    assert saturated.sum() == 3 * len(hot)
    assert all(saturated[:, y, x].all() for y, x in hot)
    assert not saturated[:, 30, 10].any()
    camera = json.loads(result.report_path.read_text())["runs"][run_id]["camera"]
    assert camera["saturation"] == 65535 and "ADC full scale, 16-bit" in \
        camera["saturation_source"]
