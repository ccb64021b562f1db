"""The CUDA sigma-clipped combine under numba's CUDA simulator, against the slow reference.

The simulator must be switched on before numba.cuda is first imported, so the checks run in a
fresh interpreter with NUMBA_ENABLE_CUDASIM=1 (see test_calibrate_cuda.run_simulated).
"""

from test_calibrate_cuda import run_simulated


def test_cuda_combine_matches_reference_under_the_simulator():
    out = run_simulated("""
        import numpy as np
        import reference
        from engine.kernels.combine import sigma_clip_combine
        from engine.kernels.combine_cuda import sigma_clip_combine_cuda

        rng = np.random.default_rng(1)
        stack = 100.0 + 5.0 * rng.standard_cauchy((9, 3, 5))
        stack[:, 0, 0] = np.nan  # no finite value
        stack[:, 0, 1] = 42.0    # all equal
        stack[2, 1, 1] = np.inf
        for settings in (dict(), dict(cenfunc="mean", maxiters=1),
                         dict(stdfunc="mad_std", method="median", sigma=2.0),
                         dict(maxiters=None, sigma=2.0)):
            got = sigma_clip_combine_cuda(stack, counts=True, **settings)
            expected, counts = reference.sigma_clip_combine(stack, **settings)
            np.testing.assert_allclose(got.data, expected, rtol=1e-12, equal_nan=True)
            np.testing.assert_array_equal(got.counts, counts)
        # float32 stacks into float32, as the masters use them, equal to the CPU kernel.
        stack32 = stack.astype(np.float32)
        gpu = sigma_clip_combine_cuda(stack32)
        cpu = sigma_clip_combine(stack32)
        assert gpu.data.dtype == np.float32
        np.testing.assert_allclose(gpu.data, cpu.data, rtol=1e-6, equal_nan=True)
        print("ok")
    """)
    assert out.strip().endswith("ok")


def test_cuda_combine_refuses_too_many_frames():
    out = run_simulated("""
        import numpy as np
        from engine.errors import EngineValueError
        from engine.kernels.combine_cuda import sigma_clip_combine_cuda
        try:
            sigma_clip_combine_cuda(np.zeros((129, 2, 2), np.float32))
        except EngineValueError as exc:
            print("refused:", exc)
    """)
    assert "at most 128 frames" in out
