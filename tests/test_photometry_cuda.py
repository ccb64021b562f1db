"""The GPU aperture photometry under numba's CUDA simulator, against the C++ kernel (the CPU path),
analytic answers and the photometry stage's CPU run.

Tolerance: the device sums float64 as the CPU does, over the same float32 (or float64) pixels, in
another order: sums, areas and backgrounds agree to rtol 1e-9, flags and annulus pixel counts
exactly. The simulator runs every GPU thread as Python, in a fresh interpreter (it must be on
before numba.cuda is first imported): frames are 64x64 with 5 stars.
"""

import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

TESTS = Path(__file__).resolve().parent

FIELD = """
    import numpy as np
    from engine.flags import PixelFlag

    STARS = ([20.3, 40.7, 44.1, 3.2, 31.0], [22.6, 40.2, 43.9, 50.5, 8.4],
             [3000, 1500, 800, 2000, 500])

    def star_field(n_frames=3, dtype=np.float32, stars=STARS):
        rng = np.random.default_rng(1)
        xs, ys, amplitudes = (np.asarray(v, dtype=float) for v in stars)
        jj, ii = np.indices((64, 64))
        frames = rng.normal(100.0, 5.0, (n_frames, 64, 64))
        x = xs + 0.3 * np.arange(n_frames)[:, None]
        y = ys - 0.2 * np.arange(n_frames)[:, None]
        for f in range(n_frames):
            for xx, yy, a in zip(x[f], y[f], amplitudes):
                frames[f] += a * np.exp(-((ii - xx) ** 2 + (jj - yy) ** 2) / (2 * 1.5 ** 2))
        return frames.astype(dtype), x, y
"""


def run_simulated(code: str) -> str:
    # This checkout's engine first (PYTHONPATH as given), then the tests' helpers; run outside
    # the checkout so that `-c` does not put the source tree ahead of it.
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), str(TESTS)) if p)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONPATH=path)
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(FIELD) + textwrap.dedent(code)],
                            env=env, cwd=tempfile.gettempdir(), capture_output=True, text=True,
                            timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_gpu_sums_equal_the_cpu_kernel_with_flags_blends_and_edges():
    out = run_simulated("""
        from engine.cext import aperture_sums
        from engine.flags import MeasurementFlag as M
        from engine.kernels.photometry_cuda import aperture_sums_cuda

        frames, x, y = star_field()
        x[2, 4] = np.nan                    # a star lost on one frame
        x[1, 3] = -1.2                      # centre off the frame, aperture partly on it
        frames[0, 22, 21] = np.nan          # a non-finite pixel in star 0's aperture
        flags = np.zeros(frames.shape, np.uint8)
        flags[1, 41, 40] = PixelFlag.SATURATED
        flags[1, 23, 20] = PixelFlag.COSMIC_RAY
        flags[2, 30, 22] = PixelFlag.BAD    # in star 0's annulus: left out of it
        kwargs = dict(annulus=(6.0, 9.0), pixel_flags=flags, mask_radius=4.0, blend_radius=6.0)
        gpu = aperture_sums_cuda(frames, x, y, [1.5, 3.0, 4.5], **kwargs)
        cpu = aperture_sums(frames, x, y, [1.5, 3.0, 4.5], **kwargs)
        for name in ("sum", "area", "background", "background_std"):
            np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-9, atol=1e-9,
                                       equal_nan=True, err_msg=name)
        for name in ("flags", "background_pixels"):
            np.testing.assert_array_equal(gpu[name], cpu[name], err_msg=name)
        # The cases this field is built to reach are reached.
        assert gpu["flags"][0, 0, 0] & M.BAD_PIXEL and gpu["flags"][1, 1, 0] & M.SATURATED
        assert gpu["flags"][1, 0, 0] & M.BAD_PIXEL       # the cosmic ray
        assert gpu["flags"][0, 1, 0] & M.BLENDED and gpu["flags"][1, 3, 0] & M.OFF_FRAME
        assert gpu["flags"][0, 3, 2] & M.NEAR_EDGE and gpu["flags"][2, 4, 0] == M.OFF_FRAME
        assert np.isnan(gpu["sum"][2, 4]).all() and gpu["background_pixels"][2, 4] == 0
        # Star 1's annulus lost the pixels near star 2 (masked), not star 0's.
        assert gpu["background_pixels"][0, 1] < gpu["background_pixels"][0, 0]
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_gpu_sums_meet_analytic_answers():
    out = run_simulated("""
        import math
        from engine.kernels.photometry_cuda import aperture_sums_cuda

        # A flat frame of 1: sum = area = pi r^2 wherever the disk is on the frame; a sky of 7
        # with one outlier: the clipped annulus median is 7, its scatter 0.
        flat = np.ones((1, 40, 40))
        radii = [0.3, 2.0, 3.7, 6.25]
        x = np.array([[19.5, 20.13, 3.0]])
        y = np.array([[20.0, 17.71, 3.0]])
        got = aperture_sums_cuda(flat, x, y, radii)
        np.testing.assert_allclose(got["area"][0, :2], [[math.pi * r * r for r in radii]] * 2,
                                   rtol=1e-12)
        np.testing.assert_allclose(got["sum"], got["area"], rtol=1e-12)
        assert got["area"][0, 2, 3] < math.pi * 6.25 ** 2  # cut by the frame's edge
        sky = np.full((1, 40, 40), 7.0, np.float32)
        sky[0, 20, 27] = 1e4
        got = aperture_sums_cuda(sky, x[:, :1], y[:, :1], [2.0], annulus=(5.0, 9.0))
        assert got["background"][0, 0] == 7.0 and got["background_std"][0, 0] == 0.0
        ring = sum((i - 19.5) ** 2 + (j - 20.0) ** 2 >= 25 and (i - 19.5) ** 2 + (j - 20.0) ** 2 < 81
                   for i in range(40) for j in range(40))
        assert got["background_pixels"][0, 0] == ring - 1  # the outlier clipped
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_gpu_annulus_clip_is_the_cpu_clipping_core():
    out = run_simulated("""
        from numba import cuda
        from engine.cext import aperture_sums
        from engine.kernels.photometry_cuda import aperture_sums_cuda
        from engine.kernels.sigma_clip import clipped_median_std

        # The core as a device function gives the CPU's numbers, outliers and ties included.
        @cuda.jit
        def clip_rows(values, counts, sigma, iterations, out):
            row = cuda.grid(1)
            if row < values.shape[0]:
                work = cuda.local.array(64, np.float64)  # as the kernel's annulus: on the device
                for i in range(values.shape[1]):
                    work[i] = values[row, i]
                median, std, kept = clipped_median_std(work, counts[row], sigma, iterations)
                out[row, 0], out[row, 1], out[row, 2] = median, std, kept

        rng = np.random.default_rng(2)
        values = np.r_["0,2", rng.normal(10.0, 2.0, 60), rng.integers(0, 4, 60),
                       np.r_[rng.normal(5.0, 1.0, 50), rng.uniform(40.0, 80.0, 10)]]
        counts = np.array([60, 60, 60, 0])
        values = np.vstack([values, values[:1]])
        for iterations, sigma in ((0, 3.0), (1, 3.0), (5, 2.0)):
            device = np.zeros((4, 3))
            clip_rows[1, 4](values.copy(), counts, sigma, iterations, device)
            for row in range(4):
                host = clipped_median_std(values[row].copy(), counts[row], sigma, iterations)
                np.testing.assert_array_equal(device[row], host)

        # In the photometry: the neighbours in each other's annuli (unmasked) and hot pixels
        # are clipped as the C++ kernel clips them, at every iteration count.
        frames, x, y = star_field(n_frames=2)
        hot = rng.integers(0, 64, (2, 60, 2))
        for f in range(2):
            frames[f, hot[f, :, 0], hot[f, :, 1]] += 400.0
        kept = []
        for iterations, sigma in ((0, 3.0), (1, 3.0), (5, 2.0)):
            kwargs = dict(annulus=(4.0, 10.0), clip_sigma=sigma, clip_iterations=iterations)
            gpu = aperture_sums_cuda(frames, x, y, [2.0], **kwargs)
            cpu = aperture_sums(frames, x, y, [2.0], **kwargs)
            np.testing.assert_array_equal(gpu["background_pixels"], cpu["background_pixels"])
            for name in ("background", "background_std"):
                np.testing.assert_allclose(gpu[name], cpu[name], rtol=1e-9, err_msg=name)
            kept.append(int(gpu["background_pixels"].sum()))
        assert kept[0] > kept[1] > kept[2]  # clipping removed pixels, more with more passes
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_gpu_refuses_what_it_cannot_measure():
    out = run_simulated("""
        from engine.errors import EngineValueError
        from engine.kernels.photometry_cuda import aperture_sums_cuda

        frames, x, y = star_field(1)
        for args, kwargs in (((np.arange(1, 10),), {}), (([2.0],), dict(annulus=(10.0, 40.0))),
                             (([-1.0],), {}), (([2.0],), dict(annulus=(5.0, 3.0)))):
            try:
                aperture_sums_cuda(frames, x, y, *args, **kwargs)
            except EngineValueError as exc:
                print("refused:", exc)
            else:
                raise AssertionError(args, kwargs)
    """)
    assert out.count("refused:") == 4
    assert "at most 8 radii" in out and "at most 4096 pixels" in out


def test_the_photometry_stage_on_the_gpu_equals_the_cpu():
    out = run_simulated("""
        import pyarrow as pa
        from engine.photometry_stage import measure_run
        from engine.flags import MeasurementFlag
        from engine.settings import PhotometryConfig

        # Five stars, no two alike in their distances: an asterism registration can match.
        stars = ([14.2, 47.5, 30.8, 18.9, 50.1], [12.7, 15.3, 33.1, 50.6, 46.2],
                 [4000, 3000, 2500, 2000, 3500])
        frames, x, y = star_field(3, stars=stars)
        table = pa.table({"gain": [1.5] * 3, "read_noise": [4.0] * 3, "exptime": [30.0] * 3,
                          "airmass": [1.2] * 3, "site_height_m": [500.0] * 3})
        runs = {}
        for device in ("cpu", "cuda"):
            config = PhotometryConfig(device=device, tracking_min_stars=3, max_stars=5)
            runs[device] = measure_run(frames, table, radii=[2.0, 3.0], annulus=(6.0, 9.0),
                                       config=config, threads=1).photometry
        cpu, gpu = runs["cpu"], runs["cuda"]
        assert cpu.num_rows == gpu.num_rows == 3 * 5 * 2
        assert cpu.column_names == gpu.column_names
        for name in cpu.column_names:
            a, b = cpu.column(name).to_numpy(), gpu.column(name).to_numpy()
            if a.dtype.kind == "f":
                np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-9, equal_nan=True,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(b, a, err_msg=name)
        # Every frame registered, and each star's flux the truth it was drawn with: a Gaussian
        # of sigma 1.5 px holds 1 - exp(-2) of its 2 pi sigma^2 amplitude within 3 px (1.5 e-/ADU).
        assert not np.any(gpu.column("flags").to_numpy() & MeasurementFlag.NOT_REGISTERED)
        at_3 = gpu.filter(pa.compute.equal(gpu.column("radius"), 3.0))
        flux = np.sort(at_3.column("flux").to_numpy().reshape(3, 5), axis=1)
        truth = np.sort(stars[2]) * 2 * np.pi * 1.5 ** 2 * (1 - np.exp(-2.0)) * 1.5
        np.testing.assert_allclose(flux, np.broadcast_to(truth, flux.shape), rtol=0.02)
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_the_stage_calibrates_on_the_gpu_and_equals_the_cpu():
    """reduce's case: the stage gets raw frames and their recipe. On 'cuda' the raw blocks are
    calibrated on the device (the CPU kernel is never called) and measured there (no calibrated
    frame goes up from the host). Tolerance: the GPU calibrates in float64 without folding the
    masters, so calibrated float32 pixels differ from the CPU's in the last bit, and fluxes,
    positions and noise terms by up to ~1e-7 relative: rtol 1e-5; flags and counts exactly."""
    out = run_simulated("""
        import pyarrow as pa
        import engine.calibration.recipe as recipe_module
        import engine.kernels.photometry_cuda as photometry_cuda
        from engine.calibration import DarkModel, Master
        from engine.calibration.recipe import CalibratedFrames, CalibrationRecipe
        from engine.flags import MeasurementFlag as M
        from engine.photometry_stage import measure_run
        from engine.settings import PhotometryConfig

        stars = ([14.2, 47.5, 30.8, 18.9, 50.1], [12.7, 15.3, 33.1, 50.6, 46.2],
                 [4000, 3000, 2500, 2000, 3500])
        signal, x, y = star_field(3, dtype=np.float64, stars=stars)
        rng = np.random.default_rng(7)
        bias = rng.normal(500.0, 3.0, (64, 64)).astype(np.float32)
        rate = rng.uniform(0.0, 0.5, (64, 64)).astype(np.float32)
        flat = rng.uniform(0.9, 1.1, (64, 64)).astype(np.float32)
        bad = np.zeros((64, 64), np.uint8)
        bad[13, 15] = 1                      # in star 0's apertures
        signal[1, 35, 32] += 4000.0          # a cosmic ray 2.3 px from star 2, frame 1
        raw = np.round(bias + 30.0 * rate + flat * signal).astype(np.uint16)
        own = np.zeros(raw.shape, np.uint8)
        own[2, 16, 47] = 1                   # the frame's own bad pixel, on star 1
        dark = DarkModel("rate", Master("dark", rate, 5, rate=True), {}, False, {})
        recipe = CalibrationRecipe.build((64, 64), [30.0] * 3, bias=bias, dark=dark, flat=flat,
                                         bad_pixels=bad)
        table = pa.table({"gain": [1.5] * 3, "read_noise": [4.0] * 3, "exptime": [30.0] * 3,
                          "airmass": [1.2] * 3, "site_height_m": [500.0] * 3})

        def measure(device):
            data = CalibratedFrames(raw, recipe, frame_bad_pixels=own)
            config = PhotometryConfig(device=device, tracking_min_stars=3, max_stars=5,
                                      block_frames=2)
            return measure_run(data, table, mask=data.mask, radii=[2.0, 3.0],
                               annulus=(6.0, 9.0), config=config, threads=1).photometry

        cpu = measure("cpu")

        def refuse(*args, **kwargs):
            raise AssertionError("not on the device")

        recipe_module.calibrate_frames = refuse   # the CPU calibration kernel
        photometry_cuda._staging = refuse         # calibrated frames sent up from the host
        gpu = measure("cuda")
        assert cpu.num_rows == gpu.num_rows == 3 * 5 * 2
        assert cpu.column_names == gpu.column_names
        for name in cpu.column_names:
            a, b = cpu.column(name).to_numpy(), gpu.column(name).to_numpy()
            if a.dtype.kind == "f":
                np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6, equal_nan=True,
                                           err_msg=name)
            else:
                np.testing.assert_array_equal(b, a, err_msg=name)
        # The flags that only calibration, the frames' own masks and the host's cosmic-ray
        # search give reached the device's measurement.
        flags = gpu.column("flags").to_numpy().reshape(3, 5, 2)
        x0 = gpu.column("x").to_numpy().reshape(3, 5, 2)[:, :, 0]
        star = lambda f, xs: int(np.argmin(np.abs(x0[f] - xs)))
        assert np.all(flags[:, star(0, 14.2)] & M.BAD_PIXEL)
        assert flags[2, star(2, 47.5), 1] & M.BAD_PIXEL
        assert flags[1, star(1, 30.8), 1] & M.BAD_PIXEL
        assert not flags[0, star(0, 30.8)].any()
        print("ok")
    """)
    assert out.strip().endswith("ok")
