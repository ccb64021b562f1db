"""Benchmark family: PSF photometry of isolated stars, the engine against photutils' PSFPhotometry.

Workload: ~1,600 isolated stars (quick: ~100) on a jittered 24-pixel grid of a 1024² float64
image, a circular Gaussian PSF of FWHM 3 px integrated over pixels, fluxes 1e3-1e5 e-, Poisson
sky of 100 e- plus 5 e- read noise, the sky then subtracted; starting positions off by ~0.2 px.
Both sides fit the same model to the same pixels with the same weights: photutils'
`CircularGaussianPRF` (the pixel-integrated Gaussian, erf form) on a 9 x 9 `fit_shape` with
`error` from the engine's noise model (sqrt(read_noise^2 + max(data, 0)), at least 1 e-), no
local background; the engine's `psf_photometry(model psf=PSFModel('gaussian', fwhm 3), box=4,
background='none')`. 'psf' fits positions and fluxes, 'psf-fixed' fluxes only (photutils with
x_0, y_0 fixed). The check before timing is the largest relative flux difference (both sides
converge to the same least-squares minimum; photutils stops at its fitter's tolerance).
"""

from __future__ import annotations

import numpy as np

from bench.harness import Benchmark, Case, register, require
from engine.psf import PSFModel, psf_photometry

_FWHM = 3.0
_BOX = 4
_READ_NOISE = 5.0
_SKY = 100.0
_SPACING = 24


def _field(rng: np.random.Generator, size: int):
    """A sky-subtracted image of isolated Gaussian stars, their true and starting positions."""
    from engine.kernels.psf import add_stars

    grid = np.arange(_SPACING, size - _SPACING + 1, _SPACING, dtype=np.float64)
    gx, gy = np.meshgrid(grid, grid)
    n = gx.size
    x = gx.ravel() + rng.uniform(-0.5, 0.5, n)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, n)
    flux = 10.0 ** rng.uniform(3.0, 5.0, n)
    image = np.full((size, size), _SKY)
    add_stars(image, x, y, flux, _FWHM, profile="gaussian", threads=1)
    image = rng.poisson(image) + rng.normal(0.0, _READ_NOISE, image.shape) - _SKY
    x0 = x + rng.normal(0.0, 0.2, n)
    y0 = y + rng.normal(0.0, 0.2, n)
    return image, x0, y0


def _setup(quick: bool, rng: np.random.Generator) -> Case:
    size = 256 if quick else 1024
    image, x0, y0 = _field(rng, size)
    error = np.sqrt(np.maximum(_READ_NOISE ** 2 + np.maximum(image, 0.0), 1.0))
    # A starting flux for photutils: the box sum (the engine starts from its own linear fit).
    cx, cy = np.ceil(x0 - 0.5).astype(int), np.ceil(y0 - 0.5).astype(int)
    offsets = np.arange(-_BOX, _BOX + 1)
    flux0 = np.array([image[j + offsets[:, None], i + offsets[None, :]].sum() for i, j in zip(cx, cy)])
    return Case(inputs=dict(image=image, x=x0, y=y0, error=error, flux=np.maximum(flux0, 100.0)),
                size=f"{x0.size} isolated stars, {size}², Gaussian 9x9",
                units=int(x0.size), unit="stars")


def _engine(fit_positions: bool):
    psf = PSFModel.from_parameters("gaussian", _FWHM)

    def run(inputs, threads: int) -> np.ndarray:
        table = psf_photometry(inputs["image"], inputs["x"], inputs["y"], psf=psf, box=_BOX,
                               background="none", fit_positions=fit_positions,
                               read_noise=_READ_NOISE, max_shift=2.0, threads=threads)
        return table.column("flux").to_numpy()
    return run


def _photutils(fit_positions: bool):
    def run(inputs) -> np.ndarray:
        psf = require("photutils.psf")
        from astropy.table import Table

        model = psf.CircularGaussianPRF(fwhm=_FWHM)
        if not fit_positions:
            model.x_0.fixed = True
            model.y_0.fixed = True
        photometry = psf.PSFPhotometry(model, 2 * _BOX + 1, aperture_radius=_BOX)
        init = Table({"x": inputs["x"], "y": inputs["y"], "flux": inputs["flux"]})
        result = photometry(inputs["image"], error=inputs["error"], init_params=init)
        return np.asarray(result["flux_fit"], dtype=np.float64)
    return run


def _relative_difference(engine_flux, anchor_flux) -> float:
    engine_flux = np.asarray(engine_flux)
    anchor_flux = np.asarray(anchor_flux)
    if engine_flux.shape != anchor_flux.shape:
        return float("inf")
    return float(np.max(np.abs(engine_flux - anchor_flux) / np.abs(anchor_flux)))


_COMMON = dict(anchor="photutils", requires=("photutils.psf",), setup=_setup,
               discrepancy=_relative_difference, tolerance=1e-4, rounds=3, quick_rounds=1)

register(Benchmark(
    name="psf", run_engine=_engine(True), run_anchor=_photutils(True), threaded=False,
    notes="per core: positions and fluxes; engine threads=1 vs photutils PSFPhotometry "
          "(CircularGaussianPRF, TRFLSQFitter)", **_COMMON))

register(Benchmark(
    name="psf-threads", run_engine=_engine(True), run_anchor=_photutils(True), threaded=True,
    notes="positions and fluxes; engine on every thread given vs photutils on one core",
    **_COMMON))

register(Benchmark(
    name="psf-fixed", run_engine=_engine(False), run_anchor=_photutils(False), threaded=False,
    notes="per core: fluxes at fixed positions (a linear fit for the engine; photutils with "
          "x_0, y_0 fixed)", **_COMMON))
