"""The CUDA calibration kernel under numba's CUDA simulator, against the slow reference.

The simulator must be switched on before numba.cuda is first imported, so each check runs in a
fresh interpreter with NUMBA_ENABLE_CUDASIM=1. Frames are tiny: the simulator runs every GPU
thread as Python.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def run_simulated(code: str) -> str:
    # This checkout's engine first (PYTHONPATH as given), then the tests' helpers.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(TESTS)) if p)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=path)
    # Run outside the checkout: from its root, `-c` would import the source tree's engine/,
    # which has no compiled core after a plain `pip install .`.
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                            cwd=tempfile.gettempdir(), capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_cuda_calibration_matches_reference_under_the_simulator():
    out = run_simulated("""
        import numpy as np
        import reference
        from engine.flags import PixelFlag
        from engine.kernels.calibrate import calibrate_frames
        from engine.kernels.calibrate_cuda import calibrate_frames_cuda

        rng = np.random.default_rng(0)
        raw = rng.normal(3000.0, 300.0, (2, 8, 14))
        raw[0, 1, 1] = np.nan
        raw[1, 3, 12] = np.nan  # left out of that row's overscan
        raw[1, 2, 2] = 4000.0   # saturated
        bias = rng.normal(1000.0, 5.0, (6, 9))
        dark = rng.uniform(0.0, 2.0, (6, 9))
        flat = rng.uniform(0.8, 1.2, (6, 9))
        flat[0, 0] = 0.0
        bad = np.zeros((6, 9), np.uint8)
        bad[4, 4] = PixelFlag.BAD
        for method in ("median", "mean"):
            kwargs = dict(bias=bias, dark=dark, dark_scale=[10.0, 20.0], flat=flat,
                          bad_pixels=bad, overscan=(10, 14), overscan_method=method,
                          trim=(1, 7, 0, 9), nonlinearity=[0.0, 1.01, -1e-6], gain=2.0,
                          read_noise=5.0, saturation=3500.0)
            got = calibrate_frames_cuda(raw, dtype=np.float64, uncertainty=True, **kwargs)
            data, mask, error = reference.calibrate_frames(raw, **kwargs)
            np.testing.assert_allclose(got.data, data, rtol=1e-12, atol=1e-9, equal_nan=True)
            np.testing.assert_allclose(got.uncertainty, error, rtol=1e-12, equal_nan=True)
            np.testing.assert_array_equal(got.mask, mask)
            assert mask[1, 1, 2] & PixelFlag.SATURATED and mask[0, 4, 4] & PixelFlag.BAD

        # uint16 -> float32, the pipeline's case, and the CPU kernel gives the same.
        raw16 = rng.integers(900, 4000, (3, 6, 9)).astype(np.uint16)
        raw16[2, 5, 8] = 65535
        kwargs = dict(bias=bias.astype(np.float32), flat=flat.astype(np.float32),
                      dark=dark.astype(np.float32), dark_scale=30.0)
        gpu = calibrate_frames_cuda(raw16, **kwargs)
        cpu = calibrate_frames(raw16, **kwargs)
        np.testing.assert_allclose(gpu.data, cpu.data, rtol=1e-6, atol=1e-3, equal_nan=True)
        np.testing.assert_array_equal(gpu.mask, cpu.mask)
        assert gpu.mask[2, 5, 8] == PixelFlag.SATURATED
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_a_run_calibrated_on_the_device_equals_the_cpu_blocks():
    out = run_simulated("""
        import numpy as np
        import engine.kernels.calibrate_cuda as gpu
        from engine.calibration.recipe import CalibratedFrames, CalibrationRecipe
        from engine.flags import PixelFlag
        from test_calibration_recipe import _run

        # Overscan, trim, two matched darks and one scaled, per-frame saturation levels, the
        # frames' own bad pixels: every part of the recipe, cut into blocks unlike its groups.
        raw, times, settings = _run(np.random.default_rng(3), n=7)
        own = np.zeros(raw.shape, np.uint8)
        own[5, 12, 30] = 1
        recipe = CalibrationRecipe.build(raw.shape[1:], times, **settings)
        cpu = CalibratedFrames(raw, recipe, frame_bad_pixels=own)
        uploads = []
        upload = gpu.upload_masters
        gpu.upload_masters = lambda job, known=None: uploads.append(known is None) or upload(
            job, known)
        device = cpu.on_device()
        for start, stop in ((0, 3), (3, 7)):
            np.testing.assert_allclose(device[start:stop], cpu[start:stop], rtol=1e-6,
                                       atol=1e-3)
            np.testing.assert_array_equal(device.mask[start:stop], cpu.mask[start:stop])
        # Every master once per run: bias, flat and bad pixels with the first dark, then the
        # other dark alone (the 20 s frames scale one of the two).
        assert len(recipe.darks) == 2 and uploads == [True, False], uploads
        assert device.mask[5][10, 22] & PixelFlag.BAD  # the frames' own mask, trimmed
        assert device.mask[4][8, 12] & PixelFlag.SATURATED

        # The device keeps the block; the host's added flags reach it, and only they are sent.
        flags = np.array(device.mask[3:7])
        flags[1, 0, 0] |= PixelFlag.COSMIC_RAY
        sent = []
        scatter = gpu.set_pixel_flags
        gpu.set_pixel_flags = lambda mask, index, values: sent.append(index.size) or scatter(
            mask, index, values)
        data, mask = device.device_block(3, 7, flags)
        np.testing.assert_array_equal(mask.copy_to_host(), flags)
        np.testing.assert_array_equal(data.copy_to_host(), device[3:7])
        assert sent == [2], sent  # the cosmic ray and the frames' own bad pixel
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_cuda_refuses_what_the_cpu_refuses():
    out = run_simulated("""
        import numpy as np
        from engine.errors import EngineValueError
        from engine.kernels.calibrate_cuda import calibrate_frames_cuda

        for kwargs in (dict(bias=np.zeros((2, 2))), dict(dark=np.zeros((4, 300))),
                       dict(trim=(0, 4, 0, 10), overscan=(10, 300))):
            try:
                calibrate_frames_cuda(np.zeros((1, 4, 300), np.uint16), **kwargs)
            except EngineValueError as exc:
                print("refused:", exc)
            else:
                raise AssertionError(kwargs)
    """)
    assert out.count("refused:") == 3
    assert "at most 128 columns" in out


def test_the_cpu_path_never_imports_numba_cuda():
    code = """
        import sys
        import numpy as np
        import engine.kernels.calibrate, engine.kernels.combine, engine.calibration
        engine.kernels.calibrate.calibrate_frames(np.zeros((2, 4, 5), np.uint16))
        engine.kernels.combine.sigma_clip_combine(np.zeros((3, 4, 5), np.float32))
        assert "numba.cuda" not in sys.modules, "numba.cuda was imported"
        print("ok")
    """
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                            cwd=tempfile.gettempdir(), text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
