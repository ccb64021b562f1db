"""A frame's analytic PSF (`PSFModel`) and its one parametrisation.

The engine speaks of a PSF as the simulator's renderer (`engine.kernels.psf.add_stars`) does:
`fwhm` (pixels, the geometric mean of the two axes' FWHMs), Moffat `beta`, `ellipticity`
(1 - minor/major) and `angle` (radians, major axis from +x towards +y). The compiled core fits
and renders the same profiles through their quadratic form (a, b, c, beta),
q = a dx^2 + 2 b dx dy + c dy^2 (engine/cext/include/engine/psf.hpp), which stays linear under a
shape varying across the field. `shape_from_parameters` and `parameters_from_shape` are the one
boundary between the two; the FWHM-to-width factor inside them is the renderer's
(`engine.kernels.psf.fwhm_per_width`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as _dataclass_field

import numpy as np

from engine.cext import psf as _psf
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.kernels.psf import fwhm_per_width

__all__ = ["PSFModel", "parameters_from_shape", "shape_from_parameters"]


def shape_from_parameters(model: str, fwhm, beta=2.5, ellipticity=0.0, angle=0.0) -> np.ndarray:
    """(a, b, c, beta) of a profile given as the renderer (engine.kernels.psf) gives it: `fwhm` the
    geometric mean of the axes' FWHMs, ellipticity 1 - minor/major, angle of the major axis in
    radians from +x towards +y."""
    width = float(fwhm) / float(fwhm_per_width(model, float(beta)))
    ratio = 1.0 - float(ellipticity)
    major, minor = width / math.sqrt(ratio), width * math.sqrt(ratio)
    c, s = math.cos(angle), math.sin(angle)
    return np.array([c * c / major ** 2 + s * s / minor ** 2,
                     c * s * (1.0 / major ** 2 - 1.0 / minor ** 2),
                     s * s / major ** 2 + c * c / minor ** 2, float(beta)])


def parameters_from_shape(model: str, shape) -> dict[str, float]:
    """fwhm, ellipticity, angle (radians, in (-pi/2, pi/2]) and beta of a shape (a, b, c, beta)."""
    a, b, c, beta = (float(v) for v in shape)
    mean, spread = 0.5 * (a + c), math.hypot(0.5 * (a - c), b)
    major, minor = 1.0 / math.sqrt(mean - spread), 1.0 / math.sqrt(mean + spread)
    angle = 0.5 * math.atan2(-2.0 * b, c - a) if spread > 0 else 0.0
    if angle <= -math.pi / 2:
        angle += math.pi
    width = math.sqrt(major * minor)
    return {"fwhm": float(width * fwhm_per_width(model, beta)), "ellipticity": 1.0 - minor / major,
            "angle": angle, "beta": beta if model == "moffat" else math.nan}


@dataclass(frozen=True, eq=False)
class PSFModel:
    """A frame's PSF: profile, shape coefficients (`engine.cext.psf.COEFFICIENTS` order) and fit
    diagnostics.

    The shape at (x, y) is a = a0 + ax u + ay v (b, c alike) with u = (x - x_centre) / x_scale,
    v = (y - y_centre) / y_scale from `field`; a constant PSF has the x and y terms 0. Build one by
    hand with `PSFModel.from_parameters`, or fit it with `fit_psf_model`.
    """

    model: str
    coefficients: np.ndarray
    field: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)
    coefficient_err: np.ndarray | None = None
    chi2_reduced: float = math.nan
    stars_used: int = 0
    iterations: int = 0
    flags: int = 0
    stars: np.ndarray = _dataclass_field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self):
        if self.model not in _psf.PROFILES:
            raise EngineValueError(f"model must be one of {sorted(_psf.PROFILES)}, got {self.model!r}")
        coefficients = np.array(self.coefficients, dtype=np.float64).reshape(-1)
        if coefficients.shape != (10,):
            raise EngineValueError(f"coefficients must have 10 values, got {coefficients.shape}")
        object.__setattr__(self, "coefficients", coefficients)
        if not self.failed and not _psf.valid_shapes(coefficients[[0, 3, 6, 9]],
                                                     _psf.PROFILES[self.model]):
            raise EngineValueError(f"the PSF's constant terms are not a valid shape: {coefficients!r}")

    @classmethod
    def from_parameters(cls, model: str = "moffat", fwhm: float = 3.0, beta: float = 2.5,
                        ellipticity: float = 0.0, angle: float = 0.0) -> PSFModel:
        """A constant PSF from its FWHM (pixels, geometric mean of the axes), Moffat beta,
        ellipticity (1 - minor/major) and angle (radians, major axis from +x towards +y)."""
        if model not in _psf.PROFILES:
            raise EngineValueError(f"model must be one of {sorted(_psf.PROFILES)}, got {model!r}")
        if not (math.isfinite(fwhm) and fwhm > 0):
            raise EngineValueError(f"fwhm must be finite and > 0, got {fwhm!r}")
        if model == "moffat" and not (math.isfinite(beta) and beta > 1):
            raise EngineValueError(f"beta must be > 1, got {beta!r}")
        if not (0.0 <= ellipticity < 1.0):
            raise EngineValueError(f"ellipticity must be in [0, 1), got {ellipticity!r}")
        a, b, c, beta = shape_from_parameters(model, fwhm, beta, ellipticity, angle)
        return cls(model, np.array([a, 0, 0, b, 0, 0, c, 0, 0, beta]))

    @property
    def failed(self) -> bool:
        return bool(self.flags & MeasurementFlag.FIT_FAILED)

    @property
    def varying(self) -> bool:
        return bool(np.any(self.coefficients[[1, 2, 4, 5, 7, 8]] != 0))

    def parameters(self, x: float | None = None, y: float | None = None) -> dict[str, float]:
        """fwhm, ellipticity, angle and beta at (x, y) (default: the field centre)."""
        if x is None or y is None:
            return parameters_from_shape(self.model, self.coefficients[[0, 3, 6, 9]])
        return parameters_from_shape(self.model, self.shape_at([x], [y])[0])

    @property
    def fwhm(self) -> float:
        return self.parameters()["fwhm"]

    def noise_area(self, box: int, x: float | None = None, y: float | None = None) -> float:
        """The fit's noise-equivalent area in pixels, 1 / sum(p^2) over the (2 box + 1)^2 box of
        a star centred on a pixel at (x, y) (default: the field centre): a sky-limited flux
        fitted with this PSF has variance noise_area x the per-pixel variance."""
        shape = (self.coefficients[[0, 3, 6, 9]] if x is None or y is None
                 else self.shape_at([x], [y])[0])
        side = 2 * int(box) + 1
        p = _psf.psf_pixel_grid(self.model, shape, float(box), float(box), (side, side))
        return float(1.0 / np.sum(p * p))

    def shape_at(self, x, y) -> np.ndarray:
        """(n, 4) shapes (a, b, c, beta) at positions x, y. Where a field-varying model is not a
        valid profile (extrapolated far outside the stars it was fitted to), its constant terms."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        x_centre, y_centre, x_scale, y_scale = self.field
        with np.errstate(invalid="ignore"):
            u = np.nan_to_num((x - x_centre) / x_scale)
            v = np.nan_to_num((y - y_centre) / y_scale)
        k = self.coefficients
        shapes = np.stack([k[0] + k[1] * u + k[2] * v, k[3] + k[4] * u + k[5] * v,
                           k[6] + k[7] * u + k[8] * v, np.full(u.shape, k[9])], axis=-1)
        bad = ~_psf.valid_shapes(shapes, _psf.PROFILES[self.model])
        if bad.any():
            shapes[bad] = k[[0, 3, 6, 9]]
        return shapes
