"""The empirical PSF's former import path, kept for callers outside the engine: it lives in
`engine.psf.empirical`."""

from engine.psf.empirical import (
    EmpiricalPSF,
    build_empirical_psf,
    fit_frames,
    fit_stars,
    held_out_chi2,
)

__all__ = ["EmpiricalPSF", "build_empirical_psf", "fit_frames", "fit_stars", "held_out_chi2"]
