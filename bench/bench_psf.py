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

'psf-reduce': the photometry stage of `reduce` (engine.photometry_stage.measure_run) with PSF
photometry on against the same stage with it off (the aperture path: its anchor), in frames/s:
16 frames (quick: 4) of 512² (quick: 256²) with ~400 (quick: ~100) isolated Gaussian stars of
FWHM 3 px, Poisson sky 100 e-, 5 e- read noise, pointing jitter 0.3 px. The check: with no star
for the PSF residual to add, the aperture rows of both runs are identical.

'psf-empirical': building an empirical PSF from the same ~50 PSF stars of a field with a
two-Gaussian coma PSF, the engine's `build_empirical_psf` against photutils' EPSFBuilder (both
oversampling 2, 10 iterations), in PSF stars/s; the check: the unit star each renders at the
same position agrees within 10% of the peak.
"""

from __future__ import annotations

import numpy as np

from .harness import Benchmark, Case, max_abs_difference, register, require
from engine.psf import PSFModel, psf_photometry
from engine.settings.photometry import PhotometryConfig

_FWHM = 3.0
_BOX = 4
_READ_NOISE = 5.0
_SKY = 100.0
_SPACING = 24
_STAMP = 21


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


def _run_setup(quick: bool, rng: np.random.Generator) -> Case:
    """A run of frames of isolated stars and its frames table (see the module docstring)."""
    import pyarrow as pa

    from engine.kernels.psf import add_stars

    n_frames, size = (4, 256) if quick else (16, 512)
    grid = np.arange(_SPACING, size - _SPACING + 1, _SPACING, dtype=np.float64)
    gx, gy = np.meshgrid(grid, grid)
    x = gx.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    y = gy.ravel() + rng.uniform(-0.5, 0.5, gx.size)
    flux = 10.0 ** rng.uniform(3.5, 5.0, gx.size)
    cube = np.empty((n_frames, size, size), np.float32)
    for f in range(n_frames):
        image = np.full((size, size), _SKY)
        dx, dy = rng.normal(0.0, 0.3, 2)
        add_stars(image, x + dx, y + dy, flux, _FWHM, profile="gaussian", threads=1)
        cube[f] = rng.poisson(image) + rng.normal(0.0, _READ_NOISE, image.shape)
    frames = pa.table({"gain": [1.0] * n_frames, "read_noise": [_READ_NOISE] * n_frames,
                       "exptime": [60.0] * n_frames, "airmass": [1.2] * n_frames,
                       "site_height_m": [1000.0] * n_frames, "run_id": ["bench"] * n_frames})
    return Case(inputs=dict(cube=cube, frames=frames),
                size=f"{n_frames} frames {size}², {x.size} stars", units=n_frames, unit="frames")


def _stage(psf: bool):
    def run(inputs, threads: int = 1) -> np.ndarray:  # the anchor, on one thread too
        from engine.photometry_stage import measure_run

        config = PhotometryConfig(psf_photometry=psf, aperture_diameter_m=0.5)
        table = measure_run(inputs["cube"], inputs["frames"], config=config,
                            threads=threads).photometry
        aperture = np.asarray(table.column("method").to_pylist()) == "aperture"
        return table.column("flux").to_numpy(zero_copy_only=False)[aperture]
    return run


register(Benchmark(
    name="psf-reduce", anchor="engine aperture path", requires=(), setup=_run_setup,
    run_engine=_stage(True), run_anchor=_stage(False), discrepancy=max_abs_difference,
    tolerance=0.0, threaded=False, rounds=2, quick_rounds=1,
    notes="the photometry stage, frames/s: PSF on (model chosen, residual searched, every "
          "frame's PSF fitted, every star fitted) vs PSF off"))


def _coma_setup(quick: bool, rng: np.random.Generator) -> Case:
    """A field whose PSF no analytic profile fits (70% and 30% of each star's light in two
    Gaussians of FWHM 3 px, 1.3 px apart), the light's centroids and the PSF stars both sides
    build from (the engine's choice)."""
    from engine.kernels.psf import add_stars
    from engine.psf import select_psf_stars

    n, size = (60, 300) if quick else (100, 400)
    x = rng.uniform(20, size - 20, n)
    y = rng.uniform(20, size - 20, n)
    flux = 10.0 ** rng.uniform(4.3, 5.5, n)
    image = np.full((size, size), _SKY)
    add_stars(image, x, y, 0.7 * flux, _FWHM, profile="gaussian", radius=20.0, threads=1)
    add_stars(image, x + 1.2, y + 0.6, 0.3 * flux, _FWHM, profile="gaussian", radius=20.0,
              threads=1)
    image = rng.poisson(image) + rng.normal(0.0, _READ_NOISE, image.shape)
    x, y = x + 0.36, y + 0.18
    stars = select_psf_stars(image, x, y, box=12, isolation=8.0, max_stars=60)
    return Case(inputs=dict(image=image, x=x, y=y, stars=stars),
                size=f"{stars.size} PSF stars of {n}, {size}², two-Gaussian coma",
                units=int(stars.size), unit="stars")


def _empirical_engine(inputs, threads: int) -> np.ndarray:
    from engine.psf import build_empirical_psf

    image = np.asarray(inputs["image"], dtype=np.float64)
    psf = build_empirical_psf(image, inputs["x"], inputs["y"], inputs["stars"], fwhm=_FWHM,
                              read_noise=_READ_NOISE)
    return psf.stamp(10.0, 10.0, (_STAMP, _STAMP))


def _empirical_photutils(inputs) -> np.ndarray:
    import warnings

    psf = require("photutils.psf")
    from astropy.nddata import NDData
    from astropy.table import Table

    stars = psf.extract_stars(NDData(inputs["image"] - _SKY), Table(
        {"x": inputs["x"][inputs["stars"]], "y": inputs["y"][inputs["stars"]]}), size=25)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = psf.EPSFBuilder(oversampling=2, maxiters=10, progress_bar=False)(stars).epsf
    rows, columns = np.mgrid[0:_STAMP, 0:_STAMP]
    return model.evaluate(columns, rows, 1.0, 10.0, 10.0)


def _peak_relative_difference(engine_stamp, anchor_stamp) -> float:
    """Largest pixel difference of the two unit stars, over the engine's peak."""
    return float(np.max(np.abs(engine_stamp - anchor_stamp)) / np.max(engine_stamp))


register(Benchmark(
    name="psf-empirical", anchor="photutils EPSFBuilder", requires=("photutils.psf",),
    setup=_coma_setup, run_engine=_empirical_engine, run_anchor=_empirical_photutils,
    discrepancy=_peak_relative_difference, tolerance=0.1, threaded=False, rounds=1,
    quick_rounds=1,
    notes="building an empirical PSF (oversampling 2, 10 iterations) from the same stars; "
          "the check: the two unit stars agree within 10% of the peak"))
