"""Expected against achieved scatter of a light curve, term by term.

Expected: each frame's relative error, the noise model's terms (star Poisson, sky, read, dark,
scintillation, as the photometry gives them, or its flux_err alone) plus the ensemble's
zero-point error, in quadrature. Achieved: the rms of the relative flux about its weighted mean
over the frames given (5-sigma outliers left out, robustly, and counted; corrected for the
parameters fitted to those frames), and the point-to-point scatter (the rms of successive
differences over their expected sigma, 5-sigma outliers left out), which slow signals (a
transit, a variable star) hardly touch. The ratios achieved / expected are what the report
quotes; a ratio near 1 says the errors are honest and the systematics are under control.
"""

from __future__ import annotations

import numpy as np

__all__ = ["MAG_PER_RELATIVE_FLUX", "noise_summary"]

#: Magnitudes per unit relative flux error, 2.5 / ln 10 = 1.0857.
MAG_PER_RELATIVE_FLUX = 2.5 / np.log(10.0)


def _robust_std(values):
    if values.size < 2:
        return float("nan")
    return float(1.4826 * np.median(np.abs(values - np.median(values))))


def noise_summary(rel_flux, rel_err, frames, terms: dict, *, basis: str,
                  parameters: int = 1) -> dict:
    """Expected vs achieved scatter of one star's relative flux over `frames` (bool mask).

    terms: name -> (frames,) relative sigma of each noise term (the ensemble's included), for
    the median budget the report shows. basis: words saying which frames were used.
    parameters: parameters fitted to these frames (1: the mean); the achieved rms is corrected
    by sqrt(n / (n - parameters)), the usual degrees-of-freedom correction.
    """
    rel_flux = np.asarray(rel_flux, dtype=np.float64)
    rel_err = np.asarray(rel_err, dtype=np.float64)
    used = frames & np.isfinite(rel_flux) & np.isfinite(rel_err) & (rel_err > 0)
    out = {"basis": basis, "frames": int(used.sum()), "expected_rms": None, "achieved_rms": None,
           "rms_ratio": None, "expected_point_to_point": None,
           "achieved_point_to_point": None, "point_to_point_ratio": None, "outliers": 0,
           "terms": {}}
    if used.sum() < 3:
        return out
    f, e = rel_flux[used], rel_err[used]
    w = 1.0 / e ** 2
    mean = float(np.sum(w * f) / np.sum(w))
    residual = f - mean
    spread = _robust_std(residual / e)
    keep = np.abs(residual / e) <= 5.0 * max(spread, 1.0)
    n_kept = int(keep.sum())
    dof = max(n_kept - parameters, 1)
    achieved = float(np.sqrt(np.sum(residual[keep] ** 2) / dof))
    expected = float(np.sqrt(np.mean(e[keep] ** 2)))
    # Point to point: successive differences over their expected sigma, 5-sigma clipped rms.
    z = np.diff(f) / np.sqrt(e[1:] ** 2 + e[:-1] ** 2)
    p2p_ratio = None
    p2p_expected = float(np.sqrt(np.mean(0.5 * (e[1:] ** 2 + e[:-1] ** 2)))) if z.size else None
    if z.size >= 2:
        core = np.abs(z - np.median(z)) <= 5.0 * max(_robust_std(z), 1.0)
        p2p_ratio = float(np.sqrt(np.mean(z[core] ** 2)))
    out.update(expected_rms=expected, achieved_rms=achieved,
               rms_ratio=achieved / expected if expected > 0 else None,
               expected_point_to_point=p2p_expected,
               achieved_point_to_point=(p2p_ratio * p2p_expected
                                        if p2p_ratio is not None else None),
               point_to_point_ratio=p2p_ratio,
               outliers=int((~keep).sum()), mean=mean, parameters=int(parameters))
    budget = {}
    for name, values in terms.items():
        values = np.asarray(values, dtype=np.float64)[used]
        values = values[np.isfinite(values)]
        budget[name] = float(np.median(values)) if values.size else None
    budget["total"] = float(np.median(e))
    out["terms"] = budget
    return out
