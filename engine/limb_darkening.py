"""Quadratic limb-darkening coefficients from a star's effective temperature and a filter.

Where the numbers come from
---------------------------
No model-atmosphere table (Claret 2011/2017, PHOENIX, ATLAS) ships with the engine and none can be
fetched at run time, so the coefficients are derived here from the grey atmosphere in the
Eddington approximation:

    T(tau)^4 = 3/4 Teff^4 (tau + 2/3),   S(tau) = B_lambda(T(tau)),
    I(mu) = integral_0^inf S(tau) exp(-tau / mu) dtau / mu   (Gauss-Laguerre in x = tau / mu),

at the filter's effective wavelength (FILTER_WAVELENGTH_NM), and (u1, u2) are the least-squares
fit of I(mu) / I(1) = 1 - u1 (1 - mu) - u2 (1 - mu)^2 on mu uniform in [0.01, 1].

What that is worth: the model gets the dependence on temperature and wavelength right (cooler
stars and bluer bands are more darkened) and u1 + u2 (the limb's contrast) within ~0.1 of
model-atmosphere tables for FGK dwarfs, but it splits the darkening differently between u1 and u2
(for the Sun in V it gives (0.61, 0.05) where tables give about (0.44, 0.25)). A grey atmosphere
has no surface gravity or metallicity in it: log g and [Fe/H] are accepted, recorded, and do not
change the numbers. Where a published table is at hand, give its coefficients to the fit instead.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from engine.errors import EngineValueError

__all__ = ["FILTER_WAVELENGTH_NM", "TEFF_RANGE_K", "band_wavelength_nm", "grey_atmosphere_coefficients"]

#: Effective wavelengths (nm) of the bands the network uses: Johnson-Cousins (Bessell 2005),
#: SDSS/Sloan (Fukugita et al. 1996), TESS (Ricker et al. 2015: 600-1000 nm, weighted to red) and
#: an unfiltered silicon CCD (Clear / Luminance, ~400-900 nm peaking near 600 nm).
FILTER_WAVELENGTH_NM = {
    "U": 366.0, "B": 438.0, "V": 545.0, "R": 641.0, "I": 798.0,
    "g": 477.0, "r": 623.0, "i": 763.0, "z": 913.0,
    "TESS": 786.0, "CLEAR": 620.0, "L": 620.0,
}

#: Temperatures over which the quadratic law describes the grey-atmosphere profile well (the limb
#: stays bright: 1 - u1 - u2 > 0 and the intensity falls monotonically to the limb).
TEFF_RANGE_K = (3500.0, 10000.0)

_PLANCK_HC_OVER_K = 6.62607015e-34 * 2.99792458e8 / 1.380649e-23  # m K
_LAGUERRE_X, _LAGUERRE_W = np.polynomial.laguerre.laggauss(60)
_MU = np.linspace(0.01, 1.0, 100)


def band_wavelength_nm(filter_name: str) -> float | None:
    """The effective wavelength of a filter name ('V', 'Rc', 'rp', 'TESS', 'Clear'); None if
    the name is not one we know."""
    key = (filter_name or "").strip()
    for candidate in (key, key.upper(), key[:1], key[:1].upper()):
        if candidate in FILTER_WAVELENGTH_NM:
            return FILTER_WAVELENGTH_NM[candidate]
    return None


@lru_cache(maxsize=256)
def grey_atmosphere_coefficients(teff: float, wavelength_nm: float) -> tuple[float, float]:
    """(u1, u2) of the quadratic law fitted to a grey Eddington atmosphere's intensity profile
    at `teff` (K) and `wavelength_nm` (see the module docstring)."""
    if not (math.isfinite(teff) and TEFF_RANGE_K[0] <= teff <= TEFF_RANGE_K[1]):
        raise EngineValueError(f"Teff {teff} K is outside the limb-darkening model's range "
                               f"{TEFF_RANGE_K[0]:.0f}-{TEFF_RANGE_K[1]:.0f} K")
    if not (math.isfinite(wavelength_nm) and 200.0 <= wavelength_nm <= 3000.0):
        raise EngineValueError(f"wavelength {wavelength_nm} nm is outside 200-3000 nm")
    tau = _MU[:, None] * _LAGUERRE_X[None, :]
    temperature = teff * (0.75 * (tau + 2.0 / 3.0)) ** 0.25
    # B_lambda up to a factor that cancels in I(mu) / I(1).
    source = 1.0 / np.expm1(_PLANCK_HC_OVER_K / (wavelength_nm * 1e-9 * temperature))
    intensity = source @ _LAGUERRE_W
    intensity /= intensity[-1]
    design = np.column_stack([1.0 - _MU, (1.0 - _MU) ** 2])
    (u1, u2), *_ = np.linalg.lstsq(design, 1.0 - intensity, rcond=None)
    return float(u1), float(u2)
