"""Calibrating run cubes chunk by chunk: the same numbers as one call, bounded memory, clean
failure, and masters built from Zarr stacks a block of rows at a time."""

import tracemalloc

import numpy as np
import pytest

from engine.calibration import DarkModel, Master, calibrate_cube, combine_stack
from engine.errors import EngineValueError
from engine.io.cube import open_cube
from engine.kernels.calibrate import calibrate_frames
from engine.kernels.combine import sigma_clip_combine

from cubes import write_cube


def _masters(rng, shape):
    bias = rng.normal(1000.0, 3.0, shape).astype(np.float32)
    rate = rng.uniform(0.0, 0.5, shape).astype(np.float32)
    flat = rng.uniform(0.9, 1.1, shape).astype(np.float32)
    bad = np.zeros(shape, np.uint8)
    bad[3, 4] = 1
    return bias, rate, flat, bad


def test_chunks_give_the_numbers_of_one_call(tmp_path):
    rng = np.random.default_rng(1)
    raw = rng.integers(1000, 3000, (23, 40, 70)).astype(np.uint16)
    cube = write_cube(tmp_path / "raw.zarr", raw)
    bias, rate, flat, bad = _masters(rng, (36, 60))
    times = np.repeat([30.0, 60.0], [11, 12])
    dark = DarkModel("rate", Master("dark", rate, 5, rate=True), {}, False, {})
    geometry = dict(trim=(2, 38, 6, 66), overscan=(0, 6))
    run = calibrate_cube(cube, times, bias=Master("bias", bias, 9), dark=dark, flat=flat,
                         bad_pixels=bad, out=tmp_path / "run.zarr", chunk_bytes=40 * 70 * 7 * 3,
                         attributes={"run_id": "run"}, **geometry)
    expected = calibrate_frames(raw, bias=bias, dark=rate, dark_scale=times, flat=flat,
                                bad_pixels=bad, **geometry)
    data, mask = open_cube(run.data), open_cube(run.mask)
    assert run.data.name == "run.zarr" and run.mask.name == "run_mask.zarr"
    # Equal to float32 rounding: a chunk of one exposure folds bias + dark * t first.
    np.testing.assert_allclose(data[:], expected.data, rtol=0, atol=1e-3)
    np.testing.assert_array_equal(mask[:], expected.mask)
    assert data.attrs["run_id"] == "run" and data.attrs["n_frames"] == 23
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw.zarr", "run.zarr", "run_mask.zarr"]


def test_matched_darks_follow_each_frames_exposure():
    rng = np.random.default_rng(2)
    raw = rng.integers(1000, 3000, (6, 10, 12)).astype(np.uint16)
    dark10 = rng.uniform(0, 20, (10, 12)).astype(np.float32)
    dark30 = rng.uniform(0, 60, (10, 12)).astype(np.float32)
    model = DarkModel("matched", None, {10.0: Master("dark", dark10, 3, exptime=10.0),
                                        30.0: Master("dark", dark30, 3, exptime=30.0)}, False, {})
    times = [10.0, 10.0, 30.0, 10.0, 30.0, 30.0]
    run = calibrate_cube(raw, times, dark=model, chunk_bytes=10 * 12 * 7 * 4)
    for k, t in enumerate(times):
        expected = raw[k] - (dark10 if t == 10.0 else dark30)
        np.testing.assert_allclose(run.data[k], expected, rtol=1e-6)
    assert "no bias: calibrated without it" in run.notes


def test_memory_stays_bounded_whatever_the_run_length(tmp_path):
    rng = np.random.default_rng(3)
    raw = rng.integers(1000, 3000, (120, 96, 128)).astype(np.uint16)
    cube = write_cube(tmp_path / "raw.zarr", raw)
    del raw
    bias, rate, flat, bad = _masters(rng, (96, 128))
    frame_bytes = 96 * 128 * (2 + 4 + 1)
    tracemalloc.start()
    try:
        calibrate_cube(cube, np.full(120, 20.0), bias=bias, flat=flat, bad_pixels=bad,
                       out=tmp_path / "run.zarr", chunk_bytes=4 * frame_bytes)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The whole run's outputs would be 120 frames (10 MB); a chunk is 4 frames (0.3 MB).
    assert peak < 20 * frame_bytes, peak
    assert open_cube(tmp_path / "run.zarr").shape == (120, 96, 128)


def test_a_failure_leaves_nothing_under_the_real_names(tmp_path):
    raw = np.ones((5, 8, 8), np.uint16)
    with pytest.raises(EngineValueError, match="flat has shape"):
        calibrate_cube(raw, [1.0] * 5, flat=np.ones((4, 4)), out=tmp_path / "run.zarr")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EngineValueError, match="exposure times"):
        calibrate_cube(raw, [1.0] * 4)


def test_combining_a_zarr_stack_by_blocks_of_rows(tmp_path):
    rng = np.random.default_rng(4)
    stack = rng.normal(1000.0, 8.0, (9, 50, 33)).astype(np.float32)
    outliers = rng.random(stack.shape) < 0.01
    stack[outliers] = 5000.0
    cube = write_cube(tmp_path / "stack.zarr", stack)
    notes = []
    combined, counts = combine_stack(cube, budget_bytes=9 * 33 * 4 * 2 * 7, notes=notes)
    expected = sigma_clip_combine(stack, counts=True)
    np.testing.assert_array_equal(combined, expected.data)
    np.testing.assert_array_equal(counts, expected.counts)
    # Single outliers are clipped; two in nine frames inflate the spread too much (as astropy).
    assert notes == []
    assert np.all(combined[outliers.sum(axis=0) == 1] < 1100.0)
