"""Frame zero points as transparency, and the frames that cloud or excess scatter spoil.

The ensemble's zero point of a frame (mag) is the run's instrumental zero point plus the
extinction plus whatever cloud took. The clear sky is the *upper envelope* of the zero points:
clouds only ever take light away. It is fitted as

    zero_point = c0 + k (airmass - mean) [+ f (fwhm - mean)] + polynomial(time, degree)

(degree = transparency_time_degree; the seeing term, for the aperture loss that follows the
seeing, when the frames table gives fwhm; terms are dropped, time first, until there are 5
frames per term) by weighted least squares with asymmetric clipping: it starts from the
brighter half of the frames, then frames fainter than the fit by more than 2.5 sigma leave it
and brighter ones only beyond 5 sigma, sigma being the robust scatter of the frames kept,
never below their expected zero-point error. The caller passes the zero points of its largest
aperture, the least sensitive to seeing. Then, for each frame,

    loss = zero_point - baseline (mag, > 0 = light lost),  transparency = 10^(-0.4 loss)

and the frame is flagged CLOUD when loss exceeds cloud_sigma times its error
sqrt(zero_point_var + jitter^2) (jitter: the clear frames' scatter beyond their expected errors)
and the light lost exceeds cloud_min_loss. A frame whose comparisons scatter about the zero
point more than the noise model allows (the ensemble's scatter ratio beyond 1 + scatter_sigma *
1.17 / sqrt(n), the standard error of that robust ratio for n stars, and beyond
scatter_min_ratio) is flagged NOISE_MODEL_EXCEEDED; a frame without a zero point gets
NO_ENSEMBLE. Each flagged frame carries its reasons in words. Nothing is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from engine.flags import MeasurementFlag
from engine.settings.ensemble import EnsembleConfig

__all__ = ["FrameQuality", "frame_quality"]

#: Standard error of the robust scatter ratio sqrt(median(q) / 0.4549) per 1/sqrt(n) stars.
_RATIO_STANDARD_ERROR = 1.17


@dataclass
class FrameQuality:
    """Per frame (k): the clear-sky baseline, transparency and flags with reasons."""

    zero_point: np.ndarray      # the zero points judged (mag)
    baseline: np.ndarray        # their clear-sky baseline (mag)
    loss: np.ndarray            # zero point - baseline (mag; > 0 = light lost)
    transparency: np.ndarray    # 10^(-0.4 loss)
    loss_sigma: np.ndarray      # loss / its error
    flags: np.ndarray           # uint32 CLOUD | NOISE_MODEL_EXCEEDED | NO_ENSEMBLE
    reasons: list               # per frame: a string, or None when not flagged
    extinction: float           # baseline slope against airmass (mag / airmass)
    jitter: float               # clear frames' scatter beyond the expected errors (mag)
    clear: np.ndarray           # frames the baseline rests on


def _design(time, airmass, degree, use_airmass, fwhm):
    columns = [np.ones_like(time)]
    if use_airmass:
        columns.append(airmass - np.mean(airmass))
    if fwhm is not None:
        columns.append(fwhm - np.mean(fwhm))
    span = np.ptp(time)
    if span > 0:
        scaled = 2.0 * (time - time.min()) / span - 1.0
        for d in range(1, degree + 1):
            columns.append(np.polynomial.legendre.legval(scaled, [0] * d + [1]))
    return np.column_stack(columns)


def _robust_std(values):
    values = values[np.isfinite(values)]
    if values.size < 2:
        return 0.0
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def _baseline_design(time, airmass, fwhm, has, config: EnsembleConfig):
    """(design matrix of the clear-sky baseline, whether it has the airmass term): terms
    dropped, time first, until there are 5 frames with a zero point per term."""
    use_airmass = bool(np.all(np.isfinite(airmass[has]))) and np.ptp(airmass[has]) > 1e-3 \
        if has.any() else False
    x = np.where(np.isfinite(airmass), airmass, np.nanmean(airmass) if np.isfinite(
        airmass).any() else 1.0)
    if fwhm is not None:
        fwhm = np.asarray(fwhm, dtype=np.float64)
        if not (np.all(np.isfinite(fwhm[has])) and has.any() and np.ptp(fwhm[has]) > 0):
            fwhm = None
        else:
            fwhm = np.where(np.isfinite(fwhm), fwhm, np.median(fwhm[has]))
    design = _design(time, x, config.transparency_time_degree, use_airmass, fwhm)
    n_par = design.shape[1]
    while n_par > 1 and has.sum() < 5 * n_par:  # too few frames for every term: simplify
        n_par -= 1
    return design[:, :n_par], use_airmass


def _clear_sky_fit(design, zero_point, zero_point_var, has):
    """The upper envelope by asymmetric clipping: (baseline, clear frames, jitter,
    coefficients)."""
    n_par = design.shape[1]
    baseline = np.full(has.shape[0], np.nan)
    clear = has.copy()
    jitter = 0.0
    coefficients = np.zeros(n_par)
    median_var = float(np.median(zero_point_var[has])) if has.any() else 0.0
    if has.sum() >= 2 * n_par:
        # Start from the brighter half about a first fit: cloud may cover up to half the run.
        first = np.linalg.lstsq(design[has], zero_point[has], rcond=None)[0]
        residual = zero_point - design @ first
        clear = has & (residual <= np.median(residual[has]))
    for _ in range(30):
        if clear.sum() < n_par:
            break
        w = 1.0 / (zero_point_var[clear] + jitter ** 2)
        sw = np.sqrt(w)
        coefficients = np.linalg.lstsq(design[clear] * sw[:, None], zero_point[clear] * sw,
                                       rcond=None)[0]
        baseline = design @ coefficients
        residual = zero_point - baseline
        spread = _robust_std(residual[clear])
        jitter = float(np.sqrt(max(spread ** 2 - median_var, 0.0)))
        sigma = np.sqrt(zero_point_var + jitter ** 2)
        new_clear = has & (residual < 2.5 * sigma) & (residual > -5.0 * sigma)
        if np.array_equal(new_clear, clear):
            break
        clear = new_clear
    return baseline, clear, jitter, coefficients


def _flag_frames(has, cloudy, noisy, transparency, loss_sigma, allowed, scatter_ratio,
                 scatter_count, config: EnsembleConfig):
    """(flags, reasons in words) per frame: NO_ENSEMBLE, CLOUD, NOISE_MODEL_EXCEEDED."""
    n = has.shape[0]
    flags = np.zeros(n, dtype=np.uint32)
    reasons: list = [None] * n
    for k in range(n):
        why = []
        if not has[k]:
            flags[k] |= np.uint32(MeasurementFlag.NO_ENSEMBLE)
            why.append(f"fewer than {config.min_stars_per_frame} usable comparison stars: "
                       "no zero point")
        if cloudy[k]:
            flags[k] |= np.uint32(MeasurementFlag.CLOUD)
            why.append(f"transparency {transparency[k]:.3f} (light lost {1 - transparency[k]:.1%}"
                       f", {loss_sigma[k]:.0f} sigma; allowed {config.cloud_sigma:g} sigma and "
                       f"{config.cloud_min_loss:.1%})")
        if noisy[k]:
            flags[k] |= np.uint32(MeasurementFlag.NOISE_MODEL_EXCEEDED)
            limit = max(allowed[k], config.scatter_min_ratio)
            why.append(f"comparison scatter {scatter_ratio[k]:.2f} x the noise model over "
                       f"{int(scatter_count[k])} stars (allowed {limit:.2f})")
        if why:
            reasons[k] = "; ".join(why)
    return flags, reasons


def frame_quality(time, airmass, zero_point, zero_point_var, scatter_ratio, scatter_count,
                  config: EnsembleConfig, fwhm=None) -> FrameQuality:
    """Fit the clear-sky baseline of the zero points and flag frames (see the module doc).

    fwhm: optional per-frame seeing; when given (finite and varying) the baseline gets a term
    linear in it, for the aperture loss that follows the seeing."""
    time = np.asarray(time, dtype=np.float64)
    airmass = np.asarray(airmass, dtype=np.float64)
    has = np.isfinite(zero_point) & np.isfinite(zero_point_var)
    design, use_airmass = _baseline_design(time, airmass, fwhm, has, config)
    baseline, clear, jitter, coefficients = _clear_sky_fit(design, zero_point, zero_point_var,
                                                           has)
    loss = zero_point - baseline
    sigma = np.sqrt(zero_point_var + jitter ** 2)
    with np.errstate(all="ignore"):
        loss_sigma = loss / sigma
        transparency = 10.0 ** (-0.4 * loss)
    min_loss_mag = -2.5 * np.log10(1.0 - config.cloud_min_loss)
    cloudy = has & (loss_sigma > config.cloud_sigma) & (loss > min_loss_mag)
    with np.errstate(invalid="ignore"):
        allowed = 1.0 + config.scatter_sigma * _RATIO_STANDARD_ERROR / np.sqrt(
            np.maximum(scatter_count, 1))
        noisy = (np.isfinite(scatter_ratio) & (scatter_ratio > allowed)
                 & (scatter_ratio > config.scatter_min_ratio))
    flags, reasons = _flag_frames(has, cloudy, noisy, transparency, loss_sigma, allowed,
                                  scatter_ratio, scatter_count, config)
    extinction = float(coefficients[1]) if use_airmass and design.shape[1] > 1 else float("nan")
    return FrameQuality(zero_point=np.asarray(zero_point, dtype=np.float64),
                        baseline=baseline, loss=loss, transparency=transparency,
                        loss_sigma=loss_sigma, flags=flags, reasons=reasons,
                        extinction=extinction, jitter=jitter, clear=clear)
