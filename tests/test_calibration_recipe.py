"""A run's calibration recipe: raw blocks calibrated as they are read give the calibrated cube's
numbers bit for bit, however the run is cut; the recipe survives a round trip through its file,
and a damaged file is named."""

import numpy as np
import pytest

from engine.calibration import DarkModel, Master, calibrate_cube
from engine.calibration.recipe import CalibratedFrames, CalibrationRecipe, load_recipe
from engine.errors import EngineFileError, EngineValueError
from engine.flags import PixelFlag
from engine.io.cube import open_cube

from cubes import write_cube


def _run(rng, n=13):
    """Raw frames with an overscan strip, matched darks of two exposures (one light exposure
    without a dark of its own: scaled), a flat, bad pixels and per-frame saturation levels."""
    raw = rng.integers(1000, 3000, (n, 24, 40)).astype(np.uint16)
    raw[4, 10, 20] = 2990
    shape = (20, 32)
    dark10 = rng.uniform(0, 20, shape).astype(np.float32)
    dark30 = rng.uniform(0, 60, shape).astype(np.float32)
    dark = DarkModel("matched", None, {10.0: Master("dark", dark10, 3, exptime=10.0),
                                       30.0: Master("dark", dark30, 3, exptime=30.0)},
                     False, {})
    bad = np.zeros(shape, np.uint8)
    bad[2, 3] = 1
    settings = dict(
        bias=Master("bias", rng.normal(1000.0, 3.0, shape).astype(np.float32), 9), dark=dark,
        flat=rng.uniform(0.9, 1.1, shape).astype(np.float32), bad_pixels=bad,
        saturation=np.where(np.arange(n) < 6, 2950.0, 2980.0), trim=(2, 22, 8, 40),
        overscan=(0, 8), gain=1.5, read_noise=4.0)
    times = np.resize([10.0, 30.0, 20.0], n)
    return raw, times, settings


def test_blocks_calibrated_as_read_equal_the_calibrated_cube(tmp_path):
    rng = np.random.default_rng(3)
    raw, times, settings = _run(rng)
    own = np.zeros(raw.shape, np.uint8)
    own[5, 12, 30] = 1
    cube, own_cube = write_cube(tmp_path / "raw.zarr", raw), write_cube(tmp_path / "bpm.zarr", own)
    written = calibrate_cube(cube, times, out=tmp_path / "run.zarr", chunk_bytes=24 * 40 * 9 * 5,
                             frame_bad_pixels=own_cube, **settings)
    expected, expected_mask = open_cube(written.data)[:], open_cube(written.mask)[:]
    recipe = CalibrationRecipe.build(raw.shape[1:], times, **settings)
    frames = CalibratedFrames(cube, recipe, frame_bad_pixels=own_cube)
    assert frames.shape == expected.shape
    for start, stop in ((0, 4), (4, 11), (11, 13)):  # cut unlike the cube's chunks
        np.testing.assert_array_equal(frames[start:stop], expected[start:stop])
        np.testing.assert_array_equal(frames.mask[start:stop], expected_mask[start:stop])
    np.testing.assert_array_equal(frames[7], expected[7])
    np.testing.assert_array_equal(frames.mask[-1], expected_mask[-1])
    assert expected_mask[5, 10, 22] & PixelFlag.BAD  # the file's own mask, trimmed
    assert expected_mask[4, 8, 12] & PixelFlag.SATURATED  # 2990 over the first level
    assert any("scaled" in note for note in recipe.notes)  # the 20 s frames' dark


def test_the_recipe_removes_what_the_masters_model():
    """Analytic: raw = bias + dark + flat * signal calibrates to the signal."""
    rng = np.random.default_rng(4)
    shape = (6, 9)
    bias = rng.normal(500.0, 2.0, shape)
    rate = rng.uniform(0.0, 1.0, shape)
    flat = rng.uniform(0.8, 1.2, shape)
    times = np.array([10.0, 40.0, 40.0])
    signal = rng.uniform(100.0, 900.0, (3,) + shape)
    raw = (bias + rate * times[:, None, None] + flat * signal).astype(np.float32)
    dark = DarkModel("rate", Master("dark", rate.astype(np.float32), 5, rate=True), {}, False, {})
    recipe = CalibrationRecipe.build(shape, times, bias=bias.astype(np.float32), dark=dark,
                                     flat=flat.astype(np.float32))
    np.testing.assert_allclose(CalibratedFrames(raw, recipe)[:], signal, rtol=1e-5, atol=2e-3)


def test_the_recipe_file_round_trips_and_a_damaged_one_is_named(tmp_path):
    rng = np.random.default_rng(5)
    raw, times, settings = _run(rng, n=5)
    recipe = CalibrationRecipe.build(raw.shape[1:], times, **settings)
    path = recipe.save(tmp_path / "run.recipe.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.recipe.npz"]
    loaded = load_recipe(path)
    np.testing.assert_array_equal(CalibratedFrames(raw, loaded)[:], CalibratedFrames(raw, recipe)[:])
    assert loaded.notes == recipe.notes and loaded.trim == recipe.trim
    data = bytearray(path.read_bytes())
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(EngineFileError, match="run.recipe.npz"):
        load_recipe(path)


def test_a_recipe_for_another_cube_is_refused():
    rng = np.random.default_rng(6)
    raw, times, settings = _run(rng, n=5)
    recipe = CalibrationRecipe.build(raw.shape[1:], times, **settings)
    with pytest.raises(EngineValueError, match="recipe is for 5 frames"):
        CalibratedFrames(raw[:4], recipe)
    with pytest.raises(EngineValueError, match="by frame or by a run of frames"):
        CalibratedFrames(raw, recipe)[::2]


def test_the_same_recipe_gives_the_same_bytes(tmp_path):
    """The manifest fingerprints photometry by the recipe's bytes: no clock in them."""
    rng = np.random.default_rng(7)
    raw, times, settings = _run(rng, n=5)
    recipe = CalibrationRecipe.build(raw.shape[1:], times, **settings)
    first = recipe.save(tmp_path / "a.recipe.npz").read_bytes()
    assert recipe.save(tmp_path / "b.recipe.npz").read_bytes() == first


def test_write_calibrated_is_off_unless_the_configuration_says_so():
    from engine.settings.file import parse_config

    assert parse_config("").calibration.write_calibrated is False
    assert parse_config("[calibration]\nwrite_calibrated = true\n").calibration.write_calibrated
    with pytest.raises(EngineValueError, match="write_calibrated must be true or false"):
        parse_config('[calibration]\nwrite_calibrated = "yes"\n')
