"""Calibration of the simulator's camera frames against their truth, and the dark decision.

The frames come from the simulator's detector model (engine.simulation.detector: bias level
jitter and structure, overscan, dark current with hot pixels, CMOS amp glow, vignetting and
dust in the flat, read noise, ADC steps, cosmic rays), with a light image whose expected
electrons are known. Calibrated frames must give back that signal within the noise.
"""

import dataclasses

import numpy as np
import pytest

from engine.calibration import (DarkModel, bad_pixel_mask, calibrate_cube, check_frames,
                                master_bias, master_dark, master_flat)
from engine.simulation.detector import Detector
from engine.simulation.presets import CCD_OBSERVATORY, CMOS_NINA, NEGEV


def _detector(camera, seed=1, **changes):
    camera = dataclasses.replace(camera, width=160, height=128, **changes)
    return Detector(dataclasses.replace(NEGEV, camera=camera), np.random.default_rng(seed))


def _frames(detector, expected, exptime, n, rng):
    frames, hits = [], []
    for _ in range(n):
        data, info = detector.expose(expected, exptime, rng)
        frames.append(data)
        hits.append(info["cosmic_rays"])
    return np.stack(frames), hits


def _glow_left(run, detector, expected_adu):
    """Mean residual where the glow is strongest, less the mean residual where it is weakest (the
    12-bit ADC's 16-ADU steps make medians jump; means of many pixels do not)."""
    residual = run.data.astype(np.float64) - expected_adu
    residual[np.abs(residual) > 200] = np.nan  # cosmic rays, hot pixels
    glow = detector.glow_pattern
    strong = np.broadcast_to(glow > np.quantile(glow, 0.9), residual.shape)
    weak = np.broadcast_to(glow < np.quantile(glow, 0.3), residual.shape)
    return float(np.nanmean(residual[strong]) - np.nanmean(residual[weak]))


def _scene(detector, rng):
    """Sky plus stars (expected electrons before the flat)."""
    ny, nx = detector.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    scene = np.full((ny, nx), 600.0)
    for _ in range(12):
        x0, y0 = rng.uniform(8, nx - 8), rng.uniform(8, ny - 8)
        peak = rng.uniform(2e3, 4e4)
        scene += peak * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * 1.8 ** 2))
    return scene


def test_ccd_with_overscan_recovers_the_signal_within_the_noise():
    rng = np.random.default_rng(7)
    detector = _detector(CCD_OBSERVATORY)
    cam = detector.camera
    ny, nx = detector.shape
    x0 = cam.data_x0
    trim, overscan = (0, ny, x0, x0 + nx), (0, x0)  # the overscan strip is on the left
    zeros = np.zeros((ny, nx))
    biases, _ = _frames(detector, zeros, 0.0, 9, rng)
    darks = np.concatenate([_frames(detector, zeros, t, 2, rng)[0] for t in (60.0, 150.0, 300.0)])
    dark_times = [60.0] * 2 + [150.0] * 2 + [300.0] * 2
    level = 20000.0
    flats, _ = _frames(detector, level * detector.flat("R"), 5.0, 7, rng)
    scene = _scene(detector, rng)
    lights, hits = _frames(detector, scene * detector.flat("R"), 120.0, 4, rng)

    geometry = dict(trim=trim, overscan=overscan)
    bias = master_bias(biases, **geometry)
    dark = master_dark(darks, dark_times, bias=bias, gain=cam.gain_e_per_adu, **geometry)
    assert dark.mode == "rate" and dark.evidence["linear"]
    flat = master_flat(flats, exptimes=[5.0] * 7, bias=bias, dark=dark, filter="R", **geometry)
    bpm = bad_pixel_mask(dark=dark, flat=flat)
    run = calibrate_cube(lights, [120.0] * 4, bias=bias, dark=dark, flat=flat, bad_pixels=bpm,
                         gain=cam.gain_e_per_adu, read_noise=cam.read_noise_e,
                         uncertainty=True, **geometry)
    assert run.notes == []

    true_flat = detector.flat("R")
    truth = scene * np.median(true_flat) / cam.gain_e_per_adu  # ADU, flat normalised to 1
    # Noise beyond the frame's own (which `uncertainty` holds): ADC steps, the masters.
    extra = (1.0 / 12.0 + (cam.read_noise_e / cam.gain_e_per_adu) ** 2 / 9
             + (truth / np.sqrt(level * 7)) ** 2)
    sigma = np.sqrt(run.uncertainty.astype(np.float64) ** 2 + extra)
    good = run.mask == 0
    for k, frame_hits in enumerate(hits):  # cosmic rays: not in the truth
        for x, y in frame_hits:
            xs, ys = int(x) - x0, int(y)
            good[k, max(0, ys - 4):ys + 5, max(0, xs - 4):xs + 5] = False
    z = ((run.data - truth) / sigma)[good]
    assert good.mean() > 0.9
    assert abs(z.mean()) < 0.05, z.mean()
    assert 0.9 < z.std() < 1.15, z.std()
    # Without the overscan the per-frame bias jitter (4 ADU rms) would shift whole frames.
    frame_means = [float(((run.data[k] - truth) / sigma[k])[good[k]].mean()) for k in range(4)]
    assert max(abs(m) for m in frame_means) < 0.1


def test_cmos_amp_glow_that_does_not_scale_gets_matched_darks():
    rng = np.random.default_rng(8)
    detector = _detector(CMOS_NINA)  # glow grows as t**0.6: not linear
    zeros = np.zeros(detector.shape)
    times = (10.0, 30.0, 60.0, 120.0)
    biases, _ = _frames(detector, zeros, 0.0, 5, rng)
    darks = np.concatenate([_frames(detector, zeros, t, 3, rng)[0] for t in times])
    dark_times = np.repeat(times, 3)
    bias = master_bias(biases)
    model = master_dark(darks, dark_times, bias=bias)
    assert model.mode == "matched" and model.evidence["tested"]
    assert model.evidence["linear"] is False
    failing = [g for g in model.evidence["groups"] if not g["ok"]]
    assert failing and all(g["worst_block_residual_adu"] > g["allowed_adu"] for g in failing)
    assert any("do not scale" in note for note in model.notes)
    assert sorted(model.matched) == list(times)
    dark, scale, note = model.for_exposure(60.0)
    assert scale == 1.0 and note is None and dark is model.matched[60.0].data
    # A light of an exposure no dark has: said so.
    _, _, note = model.for_exposure(45.0)
    assert "no dark of 45 s" in note

    # Calibrated with its matched dark, a 60 s light has no glow left.
    scene = np.full(detector.shape, 300.0)
    lights, _ = _frames(detector, scene, 60.0, 3, rng)
    run = calibrate_cube(lights, [60.0] * 3, bias=bias, dark=model)
    expected = 300.0 / detector.camera.gain_e_per_adu
    assert abs(_glow_left(run, detector, expected)) < 2.0  # the glow's peak: ~150 ADU
    # Scaling a rate instead would leave glow behind: that is why the test said no.
    scaled = calibrate_cube(lights, [60.0] * 3, bias=bias,
                            dark=dataclasses.replace(model, mode="rate"))
    assert abs(_glow_left(scaled, detector, expected)) > 2 * abs(_glow_left(run, detector,
                                                                             expected))


def test_cmos_glow_that_scales_linearly_gets_a_rate():
    rng = np.random.default_rng(9)
    detector = _detector(CMOS_NINA, amp_glow_index=1.0)  # glow = A (0.05 + t / 60 s)
    zeros = np.zeros(detector.shape)
    times = (10.0, 30.0, 60.0, 120.0)
    biases, _ = _frames(detector, zeros, 0.0, 5, rng)
    darks = np.concatenate([_frames(detector, zeros, t, 3, rng)[0] for t in times])
    model = master_dark(darks, np.repeat(times, 3), bias=master_bias(biases))
    assert model.mode == "rate" and model.evidence["linear"]
    # The glow's floor at 0 s is kept (smoothed) with the rate: a 45 s light comes out clean.
    lights, _ = _frames(detector, np.full(detector.shape, 300.0), 45.0, 3, rng)
    run = calibrate_cube(lights, [45.0] * 3, bias=master_bias(biases), dark=model)
    expected = 300.0 / detector.camera.gain_e_per_adu
    assert abs(_glow_left(run, detector, expected)) < 2.0  # the glow's peak here: ~110 ADU


def test_missing_calibration_types_are_skipped_and_said():
    rng = np.random.default_rng(10)
    detector = _detector(CCD_OBSERVATORY)
    ny, nx = detector.shape
    x0 = detector.camera.data_x0
    lights, _ = _frames(detector, np.full((ny, nx), 500.0), 30.0, 2, rng)
    run = calibrate_cube(lights, [30.0, 30.0], trim=(0, ny, x0, x0 + nx), overscan=(0, x0))
    assert run.notes == ["no bias: calibrated without it", "no dark: calibrated without it",
                         "no flat: calibrated without it"]
    # The overscan alone still removes the pedestal.
    level = 500.0 * detector.flat("R") / detector.camera.gain_e_per_adu
    assert abs(float(np.median(run.data - level))) < 15.0  # bias structure remains, ~10 ADU

    model = master_dark(_frames(detector, np.zeros((ny, nx)), 60.0, 3, rng)[0], [60.0] * 3,
                        trim=(0, ny, x0, x0 + nx), overscan=(0, x0))
    assert isinstance(model, DarkModel) and model.mode == "matched" and model.includes_bias
    assert any("no bias frames" in note for note in model.notes)


def test_too_few_frames_to_clip_fall_back_and_say_so():
    rng = np.random.default_rng(11)
    detector = _detector(CCD_OBSERVATORY)
    biases, _ = _frames(detector, np.zeros(detector.shape), 0.0, 2, rng)
    bias = master_bias(biases)
    assert bias.notes == ("too few frames to clip (2 < 3): a plain mean",)
    np.testing.assert_allclose(bias.data, biases.mean(axis=0), rtol=1e-6)
    assert ("COMBINE", "mean", "plain mean: too few frames to clip") in bias.cards
    single = master_bias(biases[:1])
    assert single.notes == ("too few frames to clip (1 < 3): the frame is used as it is",)


def test_frames_of_the_wrong_shape_binning_or_temperature_are_rejected():
    lights = {"path": "light.fits", "shape": [1024, 1024], "binning_x": 1, "binning_y": 1,
              "set_temperature": -10.0}
    frames = [
        {"path": "ok.fits", "shape": [1024, 1024], "binning_x": 1, "binning_y": 1,
         "set_temperature": -10.0},
        {"path": "small.fits", "shape": [512, 512], "binning_x": 1, "binning_y": 1},
        {"path": "binned.fits", "shape": [1024, 1024], "binning_x": 2, "binning_y": 2},
        {"path": "warm.fits", "shape": [1024, 1024], "temperature": 5.0},
        {"path": "close.fits", "shape": [1024, 1024], "temperature": -11.5},
    ]
    accepted, rejected = check_frames(frames, lights)
    assert accepted == [0, 4]
    reasons = dict(rejected)
    assert reasons["small.fits"] == "shape 512x512 differs from 1024x1024"
    assert reasons["binned.fits"] == "binning 2x2 differs from 1x1"
    assert reasons["warm.fits"] == "sensor at 5.0 C, 15.0 C from -10.0 C (tolerance 2 C)"
    with pytest.raises(ValueError, match="exposure times"):
        master_dark(np.zeros((2, 8, 8), np.uint16), [10.0])
