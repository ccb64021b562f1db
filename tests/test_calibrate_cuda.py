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
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=str(TESTS))
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
