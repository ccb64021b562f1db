"""The PSF model a frame's stars support: Gaussian, Moffat, field-varying or an empirical grid,
chosen by the PSF stars' reduced chi^2."""

from __future__ import annotations

import numpy as np

from engine.errors import EngineValueError
from engine.psf.empirical import held_out_chi2
from engine.psf.fitting import fit_psf_model
from engine.psf.model import PSFModel
from engine.psf.photometry import psf_residual_fraction

__all__ = ["choose_psf_model"]

#: A model with more freedom (Moffat over Gaussian, a field-varying shape over a constant one)
#: is taken only when it lowers the PSF stars' reduced chi^2 by more than this fraction.
_BETTER = 0.02


def choose_psf_model(image, x, y, *, profiles=("gaussian", "moffat", "empirical"),
                     gain: float = 1.0,
                     read_noise: float = 0.0, pixel_flags=None,
                     threads: int | None = None) -> tuple[PSFModel, dict]:
    """The PSF model a frame's bright isolated stars support, and how it was chosen.

    Each of `profiles` is fitted: a Gaussian (exact for Gaussian seeing, and the beta -> infinity
    limit of a Moffat) and a Moffat, kept only when its reduced chi^2 is lower by more than 2%.
    With 20 or more PSF stars the chosen profile is refitted with a linear x, y shape, kept on
    the same rule. Last an empirical grid (`engine.psf.empirical`), kept on the same rule with
    its reduced chi^2 on stars it was not built from (`held_out_chi2`; on the stars it was
    built from it would fit their noise too). Returns (model, report) with report holding
    `model`, `varying`, the candidates' reduced chi^2, `residual_fraction` (see
    `psf_residual_fraction`), `fwhm`, `beta` (Moffat only) and `stars_used`. Raises
    EngineValueError when no candidate can be fitted.
    """
    kwargs = {"gain": gain, "read_noise": read_noise, "pixel_flags": pixel_flags,
              "threads": threads}
    fitted = _fit_candidates(image, x, y, profiles, kwargs)
    chi2 = {name: m.chi2_reduced for name, m in fitted.items()}
    chosen = _profile_of_choice(fitted)
    if chosen.model != "empirical" and chosen.stars_used >= 20:
        chosen = _varying_if_better(image, x, y, chosen, chi2, kwargs)
    empirical = fitted.get("empirical")
    if empirical is not None:
        chi2["empirical"] = held_out_chi2(
            np.asarray(image, dtype=np.float64) * gain, x, y, empirical.stars, fwhm=empirical.fwhm,
            read_noise=read_noise, pixel_flags=pixel_flags)
        if chosen is empirical or _better(chi2["empirical"], chosen):
            chosen = empirical
    parameters = chosen.parameters()
    report = {"model": chosen.model, "varying": chosen.varying,
              "chi2_reduced": {k: float(v) for k, v in chi2.items()},
              "residual_fraction": psf_residual_fraction(image, x, y, chosen, gain=gain,
                                                         read_noise=read_noise, threads=threads),
              "fwhm": parameters["fwhm"],
              "beta": parameters["beta"] if chosen.model == "moffat" else None,
              "stars_used": chosen.stars_used}
    return chosen, report


def _profile_of_choice(fitted: dict):
    """Of the fitted candidates, the Gaussian unless the Moffat beats it (either when it is the
    only one); the empirical grid when it is the only candidate."""
    chosen = fitted.get("gaussian") or fitted.get("moffat") or fitted["empirical"]
    if "moffat" in fitted and _better(fitted["moffat"].chi2_reduced, chosen):
        chosen = fitted["moffat"]
    return chosen


def _better(chi2_reduced: float, current) -> bool:
    """Whether a candidate's reduced chi^2 beats the current model's by the margin _BETTER."""
    return chi2_reduced < (1 - _BETTER) * current.chi2_reduced


def _fit_candidates(image, x, y, profiles, kwargs) -> dict:
    """Each profile that can be fitted, by name; EngineValueError (the last fit's reason) when
    none can."""
    fitted, why = {}, "no candidate profiles"
    for name in profiles:
        try:
            fitted[name] = fit_psf_model(image, x, y, model=name, **kwargs)
        except EngineValueError as exc:
            why = str(exc)
    if not fitted:
        raise EngineValueError(f"no PSF model could be fitted: {why}")
    return fitted


def _varying_if_better(image, x, y, chosen, chi2: dict, kwargs):
    """The chosen profile refitted with a linear x, y shape (its reduced chi^2 added to chi2 as
    '<profile> varying'), when that fits and beats it; otherwise chosen."""
    try:
        varying = fit_psf_model(image, x, y, model=chosen.model, varying=True, **kwargs)
    except EngineValueError:
        return chosen
    chi2[f"{chosen.model} varying"] = varying.chi2_reduced
    return varying if _better(varying.chi2_reduced, chosen) else chosen
