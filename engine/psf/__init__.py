"""PSF photometry, in one place: a per-frame PSF model from bright isolated stars, then a fit of
every star. This module only gathers the package's public names; each lives in one module:

- `model`: `PSFModel` (Moffat or Gaussian, constant or varying across the field) and its one
  parametrisation, FWHM / beta / ellipticity / angle, converted to the compiled core's quadratic
  form (a, b, c, beta) at `shape_from_parameters` / `parameters_from_shape` only;
- `stars`: choosing PSF stars, a first FWHM, default fitting boxes;
- `fitting`: fitting a frame's PSF (`fit_psf_model`, `fit_psf_models`);
- `empirical`: the empirical PSF grid (`EmpiricalPSF`) and its fits;
- `choice`: the model a frame's stars support (`choose_psf_model`);
- `photometry`: fitting every star (`psf_photometry`, `psf_photometry_frames`) and residuals.

The compiled fits are reached through `engine.cext.psf` (validated wrappers of the C++ core);
the simulator's star renderer, a Numba kernel, is `engine.kernels.psf`.
"""

from engine.psf.choice import choose_psf_model
from engine.psf.empirical import EmpiricalPSF, build_empirical_psf
from engine.psf.fitting import MODELS, fit_psf_model, fit_psf_models
from engine.psf.model import PSFModel, parameters_from_shape, shape_from_parameters
from engine.psf.photometry import (
    psf_photometry,
    psf_photometry_frames,
    psf_residual_fraction,
    psf_residual_image,
)
from engine.psf.stars import default_box, estimate_fwhm, select_psf_stars

__all__ = [
    "MODELS",
    "EmpiricalPSF",
    "PSFModel",
    "build_empirical_psf",
    "choose_psf_model",
    "default_box",
    "estimate_fwhm",
    "fit_psf_model",
    "fit_psf_models",
    "parameters_from_shape",
    "psf_photometry",
    "psf_photometry_frames",
    "psf_residual_fraction",
    "psf_residual_image",
    "select_psf_stars",
    "shape_from_parameters",
]
