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


def _copy_frames(names, folder, *, offset=0, cards=None, zero=False, stem="frame"):
    """Copies of real AST443 frames written with astropy (raw uint16 with BZERO as the camera
    wrote them), shifted by `offset` ADU, with header `cards` set; `zero`: an empty readout."""
    folder.mkdir(exist_ok=True)
    written = []
    for k, name in enumerate(names):
        with fits.open(AST443 / name) as hdul:
            header, data = hdul[0].header.copy(), hdul[0].data.astype(np.int64)
        for key, value in (cards or {}).items():
            header[key] = value
        data = np.zeros_like(data) if zero else np.clip(data + offset, 0, 65535)
        path = folder / f"{stem}{k}.fits"
        hdu = fits.PrimaryHDU(header=header)
        hdu.data = data.astype(np.uint16)  # astropy stores it as BITPIX 16 + BZERO 32768
        hdu.writeto(path)
        written.append(path)
    return written


BIASES = [f"biases-Neg5-Vis.0000000{k}.BIAS.FIT" for k in range(8)]
FLATS = [f"flat-expos23s-Neg5-Vis.0000000{k}.FIT" for k in range(8)]


@pytest.mark.skipif(not AST443.is_dir(), reason=f"real data not found at {AST443}")
def test_two_cameras_with_one_telescope_name_at_two_sites_get_their_own_masters(tmp_path):
    from engine.ingest import ingest

    raw = tmp_path / "raw"
    site_a = {"TELESCOP": "C14", "SITELAT": 40.0, "SITELONG": 10.0}
    site_b = {"TELESCOP": "C14", "SITELAT": 45.5, "SITELONG": 11.0}
    _copy_frames(BIASES[:4], raw, cards=site_a, stem="a-bias")
    _copy_frames(BIASES[4:], raw, offset=400, cards=site_b, stem="b-bias")
    ingested = ingest([raw], tmp_path / "out")
    assert len({r["run_id"] for r in ingested.frames.to_pylist()}) == 1  # one ingest run
    result = calibrate(ingested, tmp_path / "out", threads=1)
    masters = sorted(p for p in result.masters if p.endswith("master_bias.fits"))
    assert len(masters) == 2 and masters[0].endswith("camera1_master_bias.fits"), masters
    levels = []
    for name in masters:
        with fits.open(result.masters[name]) as hdul:
            assert hdul[0].header["NCOMBINE"] == 4
            levels.append(float(np.median(hdul[0].data)))
    real = np.median([np.median(fits.getdata(AST443 / n).astype(float)) for n in BIASES])
    assert sorted(levels) == pytest.approx([real, real + 400.0], abs=3.0)
    (run_id,) = {r["run_id"] for r in ingested.frames.to_pylist()}
    assert any("2 cameras" in note for note in result.notes[run_id])


@pytest.mark.skipif(not AST443.is_dir(), reason=f"real data not found at {AST443}")
def test_an_empty_bias_readout_is_rejected_and_the_master_keeps_its_level(tmp_path, caplog):
    from engine.ingest import ingest

    raw = tmp_path / "raw"
    _copy_frames(BIASES, raw, stem="bias")
    (empty,) = _copy_frames(BIASES[:1], raw, zero=True, stem="empty-bias")
    with caplog.at_level("WARNING", logger="engine.calibration"):
        result = calibrate(ingest([raw], tmp_path / "out"), tmp_path / "out", threads=1)
    reasons = dict(result.rejected)
    assert "empty" in reasons[str(empty)] and str(empty) in caplog.text
    report = json.loads(result.report_path.read_text())
    assert [str(empty), reasons[str(empty)]] in report["rejected"]
    (name,) = [p for p in result.masters if p.endswith("master_bias.fits")]
    with fits.open(result.masters[name]) as hdul:
        assert hdul[0].header["NCOMBINE"] == 8
        level = float(np.median(hdul[0].data))
    real = np.median([np.median(fits.getdata(AST443 / n).astype(float)) for n in BIASES])
    assert level == pytest.approx(real, abs=2.0)  # averaged with the zeros it would be 7/8


@pytest.mark.skipif(not AST443.is_dir(), reason=f"real data not found at {AST443}")
def test_a_saturated_flat_is_rejected(tmp_path):
    from engine.ingest import ingest

    raw = tmp_path / "raw"
    _copy_frames(BIASES[:3], raw, stem="bias")
    _copy_frames(FLATS[:4], raw, stem="flat")
    (saturated,) = _copy_frames(FLATS[4:5], raw, offset=65535, stem="bright-flat")
    result = calibrate(ingest([raw], tmp_path / "out"), tmp_path / "out", threads=1)
    reasons = dict(result.rejected)
    assert "saturation" in reasons[str(saturated)], reasons
    (name,) = [p for p in result.masters if "master_flat" in p]
    assert fits.getheader(result.masters[name])["NCOMBINE"] == 4
