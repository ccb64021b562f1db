"""Gain, read noise and saturation: measured against analytic frames, and end to end on the
simulator's camera profiles (a 12-bit CMOS without gain, a night with one float32 frame, a
saturating Bayer CMOS)."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from astropy.io import fits

from engine.calibration import calibrate_cube
from engine.calibration.camera import (gain_from_lights, measure_noise, photon_transfer,
                                       read_noise_from_bias)
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag, PixelFlag
from engine.ingest import ingest
from engine.io import bayer
from engine.io.adc import saturation_level
from engine.io.headers import normalise_header
from engine.pipeline import reduce
from engine.settings.file import default_config_toml, parse_config
from engine.settings.ingest import Site
from engine.simulation import PRESETS, simulate, target_positions

GAIN, READ_NOISE, BIAS = 2.5, 6.0, 400.0  # e-/ADU, e-, ADU


def _exposure(rng, electrons, shape=(200, 200), response=None):
    """One frame as a camera stores it: Poisson electrons, read noise, bias, rounded."""
    signal = np.full(shape, float(electrons)) * (1.0 if response is None else response)
    value = (rng.poisson(signal) + rng.normal(0.0, READ_NOISE, shape)) / GAIN + BIAS
    return np.round(value).astype(np.uint16)


# ----------------------------------------------------------------------------------------------
# Saturation level of one frame

def test_adc_depth_of_a_12_bit_camera_as_counted_and_scaled():
    rng = np.random.default_rng(1)
    frame = rng.integers(100, 3000, (64, 64)).astype(np.uint16)
    frame[10, 10:20] = 4095  # a saturated star at the ADC's top
    assert saturation_level(frame)[0] == 4095
    assert saturation_level(frame * np.uint16(16))[0] == 4095 * 16
    assert "stored x16" in saturation_level(frame * np.uint16(16))[1]
    assert saturation_level(frame * np.uint16(4))[0] == 4095 * 4
    frame[0, 0] = 16383  # a 14-bit ADC's top
    assert saturation_level(frame)[0] == 2 ** 14 - 1


def test_a_frame_below_every_adc_ceiling_does_not_tell_its_depth():
    """A faint frame of a 16-bit camera (SAAO's STE3, brightest pixel 1715) is no 12-bit
    one: nothing reaches a ceiling, so the frame says nothing and its camera's level rules."""
    rng = np.random.default_rng(4)
    frame = rng.integers(100, 1715, (64, 64)).astype(np.uint16)
    assert saturation_level(frame) is None
    frame[0, 0] = 9000  # fits 14 bits, but reaches no ceiling either
    assert saturation_level(frame) is None


def test_pile_up_below_the_adc_top_wins_and_runs_down_its_noise():
    rng = np.random.default_rng(2)
    frame = rng.normal(1000, 30, (128, 128)).round().astype(np.uint16)
    frame[:4, :10] = rng.normal(60000, 1.0, (4, 10)).round()  # a clip spread by read noise
    level, how = saturation_level(frame)
    assert "pile-up" in how and level <= frame[:4, :10].min() and level > 59990


def test_a_bias_or_a_flat_is_not_a_pile_up():
    rng = np.random.default_rng(3)
    bias = rng.normal(1000, 8, (128, 128)).round().astype(np.uint16)
    assert saturation_level(bias) is None  # no pile-up, and no ceiling reached
    flat = rng.normal(30000, 170, (128, 128)).round().astype(np.uint16)
    assert "full scale, 16-bit" in saturation_level(flat)[1]


def test_float_frames_are_measured_only_when_they_hold_counts():
    rng = np.random.default_rng(4)
    counts = rng.integers(0, 60000, (32, 32)).astype(np.float32)
    counts[0, :8] = 65535
    assert saturation_level(counts)[0] == 65535
    assert saturation_level(counts * np.float32(1.37)) is None


def test_datamax_that_is_only_the_format_maximum_is_ignored():
    header = fits.Header({"BITPIX": 16, "BZERO": 32768, "DATAMAX": 65535})
    record = normalise_header(header, (10, 10))
    assert record.saturation is None and any("DATAMAX" in n for n in record.notes)
    header["DATAMAX"] = 60000
    assert normalise_header(header, (10, 10)).saturation == 60000
    header["SATURATE"] = 50000
    assert normalise_header(header, (10, 10)).sources["saturation"] == "SATURATE"


# ----------------------------------------------------------------------------------------------
# Gain and read noise

def test_photon_transfer_recovers_gain_and_read_noise():
    rng = np.random.default_rng(5)
    response = 1.0 + 0.01 * rng.standard_normal((200, 200))  # a flat field's structure
    flats = [_exposure(rng, e, response=response) for e in (40000, 40000, 30000, 28000)]
    biases = [_exposure(rng, 0) for _ in range(4)]
    result = photon_transfer(flats, biases)
    assert result.gain == pytest.approx(GAIN, rel=0.03)
    assert result.read_noise == pytest.approx(READ_NOISE, rel=0.05)
    assert result.flat_pairs == 2 and result.bias_pairs == 2
    single = photon_transfer(flats, biases[:1], read_noise_adu=read_noise_from_bias(biases[0]))
    assert single.gain == pytest.approx(GAIN, rel=0.03)
    with pytest.raises(EngineValueError):
        photon_transfer(flats[:1], biases)


def test_gain_from_the_lights_sky_with_stars():
    rng = np.random.default_rng(6)
    lights = []
    for k in range(3):
        frame = _exposure(rng, 3000 + 50 * k, shape=(256, 256)).astype(np.float64)
        frame[rng.integers(0, 256, 40), rng.integers(0, 256, 40)] += 5000  # stars, cosmics
        lights.append(frame)
    gain, pairs = gain_from_lights(lights, BIAS, READ_NOISE / GAIN)
    assert pairs == 2 and gain == pytest.approx(GAIN, rel=0.05)


def test_measure_noise_says_what_it_did():
    rng = np.random.default_rng(7)
    lights = [_exposure(rng, 2000) for _ in range(3)]
    biases = [_exposure(rng, 0)]
    flats = [_exposure(rng, 30000)]
    noise = measure_noise(lights, biases, flats)
    assert "lights' sky" in noise.gain_source and noise.gain == pytest.approx(GAIN, rel=0.06)
    assert any("1 flat(s) and 1 bias" in n for n in noise.notes)
    kept = measure_noise(lights, gain=1.7, gain_source="header EGAIN")
    assert kept.gain == 1.7 and kept.gain_source == "header EGAIN"
    assert "assumed 0" in kept.read_noise_source
    unknown = measure_noise(lights[:1])
    assert unknown.gain == 1.0 and "assumed" in unknown.gain_source


def test_site_configuration_holds_gain_read_noise_and_saturation():
    config = parse_config('[[ingest.sites]]\nname = "x"\ngain_e_per_adu = 1.5\n'
                          'read_noise_e = 7.0\nsaturation_adu = 4095\n')
    site = config.ingest.sites[0]
    assert (site.gain_e_per_adu, site.read_noise_e, site.saturation_adu) == (1.5, 7.0, 4095)
    assert "gain_e_per_adu" in default_config_toml()
    with pytest.raises(EngineValueError):
        Site("y", gain_e_per_adu=0.0)


# ----------------------------------------------------------------------------------------------
# Bayer and per-frame levels

def test_bayer_cell_with_one_saturated_pixel_is_saturated():
    raw = np.full((4, 4), 1000, np.uint16)
    raw[0, 1] = 4095  # one green pixel of the first RGGB cell
    green = bayer.extract(raw, "RGGB", "green", saturation=4095)
    assert green[0, 0] >= 4095 and green[1, 1] == 1000
    plain = bayer.extract(raw, "RGGB", "green")
    assert plain[0, 0] < 4095  # the average hides it
    superpixel = bayer.extract(raw, "RGGB", "superpixel", saturation=4095)
    assert superpixel[0, 0] >= bayer.extracted_saturation(4095, "superpixel")
    assert bayer.extracted_gain(1.0, "green") == 2.0


def test_calibrate_cube_flags_each_frame_against_its_own_level():
    cube = np.full((3, 8, 8), 1000.0, np.float32)
    cube[:, 2, 2] = 4095.0
    run = calibrate_cube(cube, [10.0] * 3, saturation=[4095.0, np.nan, 5000.0])
    flagged = [bool(run.mask[k, 2, 2] & PixelFlag.SATURATED) for k in range(3)]
    assert flagged == [True, False, False]


# ----------------------------------------------------------------------------------------------
# End to end on the camera profiles

def _reduce(preset, tmp_path_factory, seed=2, scale=1.0):
    raw = tmp_path_factory.mktemp(preset)
    truth = simulate(raw, preset=preset, seed=seed).truth
    out = tmp_path_factory.mktemp(preset + "_out")
    target = (truth["target"]["ra_deg"], truth["target"]["dec_deg"])
    positions = target_positions(truth, ingest([raw], out, target=target).frames)
    positions = {k: (x / scale, y / scale) for k, (x, y) in positions.items()}
    reduce([raw], out, target=target, target_xy=positions)
    return truth, out


def _saturated_stars(truth, out, scale=1.0):
    """(engine star id, SATURATED on every frame, is a comparison) of each star the truth says
    reaches the ADC's top or the full well."""
    run = truth["runs"][0]
    stars = pq.read_table(out / "stars.parquet").to_pylist()
    photometry = pq.read_table(out / "photometry.parquet", columns=["star", "flags"]).to_pylist()
    lightcurves = pq.read_table(out / "lightcurves.parquet").to_pylist()
    comparisons = {r["star_id"] for r in lightcurves if r["role"] == "comparison"}
    found = []
    for star in run["star_positions"]:
        if star["peak_e_first_frame"] < 1.5 * run["saturation_e"]:
            continue
        nearest = min(stars, key=lambda s: (s["x"] - star["x"] / scale) ** 2
                      + (s["y"] - star["y"] / scale) ** 2)
        flags = [r["flags"] for r in photometry if r["star"] == nearest["star"]]
        found.append((nearest["star"], all(f & MeasurementFlag.SATURATED for f in flags),
                      nearest["star"] in comparisons))
    return found


@pytest.fixture(scope="module")
def cmos12(tmp_path_factory):
    return _reduce("cmos12", tmp_path_factory)


def test_12_bit_camera_without_gain(cmos12):
    truth, out = cmos12
    report = json.loads((out / "report.json").read_text())
    (run,) = report["runs"].values()
    camera = run["camera"]
    assert camera["gain"] == pytest.approx(truth["runs"][0]["gain_e_per_adu"], rel=0.05)
    assert camera["gain_source"].startswith("measured: photon transfer")
    assert camera["read_noise_source"].startswith("measured")
    assert camera["saturation"] == 4095 and "12-bit" in camera["saturation_source"]
    assert 0.8 <= run["noise"]["ratio"] <= 1.25
    frames = pq.read_table(out / "frames.parquet").to_pylist()
    lights = [f for f in frames if f["frame_type"] == "light"]
    assert all(f["gain_source"] == camera["gain_source"] for f in lights)
    saturated = _saturated_stars(truth, out)
    assert saturated and all(flagged and not comparison for _, flagged, comparison in saturated)


def test_one_float_frame_keeps_saturation_flagging(tmp_path_factory):
    truth, out = _reduce("mixed_bitpix", tmp_path_factory)
    frames = pq.read_table(out / "frames.parquet").to_pylist()
    lights = [f for f in frames if f["frame_type"] == "light"]
    assert {f["dtype"] for f in lights} == {"uint16", "float32"}
    assert all(f["saturation"] == 65535 for f in lights)
    saturated = _saturated_stars(truth, out)
    assert saturated and all(flagged and not comparison for _, flagged, comparison in saturated)


def test_bayer_saturation_is_masked(tmp_path_factory):
    truth, out = _reduce("bayer", tmp_path_factory, scale=2.0)
    from engine.calibration.recipe import CalibratedFrames, load_recipe
    from engine.io.cube import open_cube

    (recipe_path,) = (out / "calibrated").glob("*.recipe.npz")
    run_id = recipe_path.name.removesuffix(".recipe.npz")
    mask = CalibratedFrames(open_cube(out / "cubes" / f"{run_id}.zarr"),
                            load_recipe(recipe_path)).mask
    assert all(np.any(mask[k] & PixelFlag.SATURATED) for k in range(mask.shape[0]))
    saturated = _saturated_stars(truth, out, scale=2.0)
    assert saturated and all(flagged and not comparison for _, flagged, comparison in saturated)
    frames = pq.read_table(out / "frames.parquet").to_pylist()
    light = next(f for f in frames if f["frame_type"] == "light")
    assert light["gain"] == pytest.approx(2 * truth["runs"][0]["gain_e_per_adu"])
    assert "raw Bayer pixels" in light["saturation_source"]


@pytest.mark.parametrize("preset", ["mixed_bitpix", "cmos12"])
def test_noise_model_holds_on_the_camera_profiles(preset, tmp_path_factory):
    """Achieved / expected scatter of the constant target (no planet on these nights), over
    three nights: a 40-frame ratio scatters by ~15% from night to night, so each night is held
    within 0.6-1.6 and their geometric mean within 0.8-1.25. The binned 16-bit CCD night
    (mixed_bitpix) read 0.63-0.78 while the background term counted the masters' fixed noise."""
    ratios = []
    for seed in (1, 3, 5):
        truth, out = _reduce(preset, tmp_path_factory, seed=seed)
        (run,) = json.loads((out / "report.json").read_text())["runs"].values()
        camera = truth["runs"][0]
        assert run["camera"]["gain"] == pytest.approx(camera["gain_e_per_adu"], rel=0.05)
        ratios.append(run["noise"]["ratio"])
        # The background term per pixel is the frame's own sky + dark + read noise (the
        # annulus scatter of these calibrated frames is 1.4-1.7 times more).
        lights = [f for f in truth["frames"] if f["frame_type"] == "light"]
        site = PRESETS[preset].sites[0]
        expected = (np.median([f["sky_e_per_px"] for f in lights])
                    + site.camera.dark_e_per_s * site.exptime_s + camera["read_noise_e"] ** 2)
        rows = pq.read_table(out / "photometry.parquet").to_pylist()
        per_pixel = [r["var_background"] / r["area"] for r in rows
                     if r["star"] == run["noise"]["target"]["star"] and r["method"] == "aperture"]
        assert np.median(per_pixel) == pytest.approx(expected, rel=0.15)
    assert all(0.6 <= r <= 1.6 for r in ratios), ratios
    assert 0.8 <= float(np.exp(np.mean(np.log(ratios)))) <= 1.25, ratios


def test_camera_presets_exist():
    assert {"cmos12", "mixed_bitpix", "bayer"} <= set(PRESETS)
    assert PRESETS["cmos12"].sites[0].camera.header_gain is False
