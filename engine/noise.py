"""Expected photometric noise: scintillation and the CCD equation, term by term.

Two pieces, used by the simulator (for the truth it records) and by the photometry stages (for
the error bars they quote):

- `scintillation_sigma`: the relative flux scatter that atmospheric scintillation adds to one
  exposure, from Young's (1967) approximation as written and corrected by Osborn et al. (2015,
  MNRAS 452, 1707, their eq. 7):

      sigma_Y^2 = 10e-6 * C_Y^2 * D^(-4/3) * t^(-1) * (cos gamma)^(-3) * exp(-2 h_obs / H)

  with D the aperture diameter (m), t the exposure time (s), gamma the zenith distance (so
  (cos gamma)^-3 = X^3 with X the airmass), h_obs the site altitude (m) and H = 8000 m the scale
  height of atmospheric turbulence. 10e-6 is 1e-5. Young's original formula has C_Y = 1; Osborn
  et al. find that it underestimates the median scintillation at major observatories and give
  per-site correction factors C_Y whose mean is 1.5, the default here.
  (Check: Young's 0.09 D_cm^(-2/3) X^1.75 exp(-h/8000) / sqrt(2 t) squared is 8.7e-6 D_m^(-4/3)
  ... / t, the same coefficient to the precision of its "0.09".)

- `aperture_noise`: the CCD equation for a star's flux summed in an aperture of n_pix pixels,
  as a relative error (sigma_F / F) with each term kept separately:

      var = F + n_pix (1 + n_pix / n_sky) (sky + dark + read^2 + step^2 / 12) + (sigma_Y F)^2

  in electrons: F the star's detected electrons in the aperture, sky and dark the electrons per
  pixel, read the read noise (e- rms per pixel), step the ADC step in electrons (quantisation),
  n_sky the pixels the background was estimated from (None: background known exactly).

All functions broadcast over NumPy arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.checks import non_negative_array, positive_array
from engine.errors import EngineValueError

__all__ = ["NoiseBudget", "SCINTILLATION_SCALE_HEIGHT_M", "aperture_noise", "scintillation_sigma"]

#: Scale height of the turbulence that causes scintillation (Osborn et al. 2015), metres.
SCINTILLATION_SCALE_HEIGHT_M = 8000.0

#: Coefficient of the scintillation variance (Osborn et al. 2015, eq. 7: 10e-6 = 1e-5).
_YOUNG_COEFFICIENT = 1e-5


def _result(value):
    return float(value) if np.ndim(value) == 0 else value


def scintillation_sigma(aperture_diameter_m, airmass, altitude_m, exptime_s, c_y=1.5):
    """Relative flux scatter (sigma_F / F) from scintillation in one exposure.

    aperture_diameter_m: telescope aperture D (m); airmass: X = sec(zenith distance), >= 1;
    altitude_m: the site's height above sea level (m); exptime_s: exposure time t (s);
    c_y: Osborn et al.'s correction to Young's formula (1 = Young 1967; 1.5 = their mean).
    Scalars give a float; arrays broadcast.
    """
    d = positive_array("aperture_diameter_m", aperture_diameter_m)
    x = positive_array("airmass", airmass)
    if np.any(x < 1.0 - 1e-9):
        raise EngineValueError(f"airmass must be >= 1, got {airmass!r}")
    t = positive_array("exptime_s", exptime_s)
    h = np.asarray(altitude_m, dtype=np.float64)
    if not np.all(np.isfinite(h)):
        raise EngineValueError(f"altitude_m must be finite, got {altitude_m!r}")
    c = positive_array("c_y", c_y)
    variance = (_YOUNG_COEFFICIENT * c * c * d ** (-4.0 / 3.0) / t * x ** 3
                * np.exp(-2.0 * h / SCINTILLATION_SCALE_HEIGHT_M))
    return _result(np.sqrt(variance))


@dataclass(frozen=True)
class NoiseBudget:
    """Expected noise of an aperture flux. Every term is relative (sigma / signal)."""

    signal_e: object          #: the star's electrons in the aperture
    total: object             #: all terms in quadrature
    star: object              #: Poisson noise of the star itself
    sky: object               #: Poisson noise of the sky in the aperture (and its estimate)
    dark: object              #: Poisson noise of the dark current in the aperture
    read: object              #: read noise of the aperture's pixels
    quantisation: object      #: ADC rounding (step^2 / 12 per pixel)
    scintillation: object     #: atmospheric scintillation

    @property
    def snr(self):
        """Signal-to-noise ratio, 1 / total."""
        return _result(1.0 / np.asarray(self.total))

    def terms(self) -> dict:
        """The separate terms (relative), by name."""
        return {"star": self.star, "sky": self.sky, "dark": self.dark, "read": self.read,
                "quantisation": self.quantisation, "scintillation": self.scintillation}

    def as_dict(self) -> dict:
        """Plain floats (or lists), for JSON."""
        def plain(v):
            a = np.asarray(v, dtype=np.float64)
            return float(a) if a.ndim == 0 else a.tolist()
        out = {"total": plain(self.total)}
        out.update({k: plain(v) for k, v in self.terms().items()})
        out["signal_e"] = plain(self.signal_e)
        return out


def aperture_noise(star_e, n_pixels, sky_e_per_pixel=0.0, dark_e_per_pixel=0.0, read_noise_e=0.0,
                   scintillation=0.0, *, n_sky_pixels=None, adc_step_e=0.0) -> NoiseBudget:
    """Expected relative noise of a star's flux summed in an aperture, term by term.

    star_e: the star's detected electrons inside the aperture (> 0); n_pixels: the aperture's
    area in pixels; sky_e_per_pixel and dark_e_per_pixel: electrons per pixel in the exposure;
    read_noise_e: read noise per pixel (e- rms); scintillation: relative scintillation sigma
    (from `scintillation_sigma`); n_sky_pixels: pixels used to estimate the background (None:
    the background is known exactly); adc_step_e: electrons per ADC step (adds step^2/12 per
    pixel; 0 to leave quantisation out).
    """
    f = positive_array("star_e", star_e)
    n = positive_array("n_pixels", n_pixels)
    sky = non_negative_array("sky_e_per_pixel", sky_e_per_pixel)
    dark = non_negative_array("dark_e_per_pixel", dark_e_per_pixel)
    rn = non_negative_array("read_noise_e", read_noise_e)
    scint = non_negative_array("scintillation", scintillation)
    step = non_negative_array("adc_step_e", adc_step_e)
    if n_sky_pixels is None:
        area = n
    else:
        area = n * (1.0 + n / positive_array("n_sky_pixels", n_sky_pixels))
    star = np.sqrt(f) / f
    sky_term = np.sqrt(area * sky) / f
    dark_term = np.sqrt(area * dark) / f
    read_term = np.sqrt(area) * rn / f
    quant_term = np.sqrt(area / 12.0) * step / f
    scint_term = scint * np.ones_like(f)
    total = np.sqrt(star ** 2 + sky_term ** 2 + dark_term ** 2 + read_term ** 2 + quant_term ** 2
                    + scint_term ** 2)
    return NoiseBudget(signal_e=_result(f * np.ones_like(total)), total=_result(total),
                       star=_result(star * np.ones_like(total)),
                       sky=_result(sky_term * np.ones_like(total)),
                       dark=_result(dark_term * np.ones_like(total)),
                       read=_result(read_term * np.ones_like(total)),
                       quantisation=_result(quant_term * np.ones_like(total)),
                       scintillation=_result(scint_term * np.ones_like(total)))
