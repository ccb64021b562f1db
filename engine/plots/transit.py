"""The joint transit fit drawn over every run's target light curve, with its residuals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.checks import table_columns
from engine.plots.canvas import layout, new_figure, numbers, save, strings

__all__ = ["plot_transit_fit"]


def plot_transit_fit(lightcurves: pa.Table, fit, path, limb_darkening: dict | None = None,
                     bin_minutes: float = 10.0) -> Path:
    """Target light curve of every run (one colour each, named in the legend), divided by its
    fitted baseline and offset below the previous run, with the transit model, points binned
    over `bin_minutes`, and the residuals below; time in hours from the fitted mid-transit
    (BJD_TDB). Limb darkening is what the fit used (fit.limb_darkening), else
    `limb_darkening` / the defaults. Returns the path written."""
    from engine.kernels.transit import transit_light_curve  # numba: only this plot needs it
    from engine.transit_fit import limb_darkening_for

    table_columns("plot_transit_fit", lightcurves,
                  ("run_id", "time_bjd_tdb", "rel_flux", "rel_flux_err"), non_empty=True)
    table = lightcurves
    if "role" in table.column_names:
        table = table.filter(pa.array(strings(table, "role") == "target"))
    runs = strings(table, "run_id")
    time, flux, error = (numbers(table, n) for n in ("time_bjd_tdb", "rel_flux", "rel_flux_err"))
    airmass = numbers(table, "airmass") if "airmass" in table.column_names else np.ones_like(time)
    flags = (numbers(table, "flags") if "flags" in table.column_names else np.zeros_like(time))
    filters = strings(table, "filter") if "filter" in table.column_names else np.full(
        len(time), "", dtype=object)
    regressor = {"airmass": airmass - 1.0, "time": time - getattr(fit, "time_origin", 0.0)}.get(
        getattr(fit, "baseline", "airmass"), np.zeros_like(time))
    used = getattr(fit, "limb_darkening", {})
    figure, (top, bottom) = new_figure(2, 1, figsize=(10, 7), sharex=True,
                                       gridspec_kw={"height_ratios": [3, 1]})

    def hours(t):
        return (t - fit.tmid) * 24.0

    step = max(0.01, 1.5 * fit.depth)  # each run drawn below the previous one
    order = sorted(set(runs), key=lambda r: np.nanmin(time[runs == r]))  # in the order observed
    for index, run in enumerate(order):
        in_run = (runs == run) & np.isfinite(flux)
        mine, bad = in_run & (flags == 0), in_run & (flags != 0)
        info = fit.runs.get(run, {})
        baseline = info.get("offset", 1.0) * (1.0 + info.get("slope", 0.0) * regressor)
        band = str(filters[in_run][0]) if in_run.any() else ""
        u1, u2 = ((used[band]["u1"], used[band]["u2"]) if band in used
                  else limb_darkening_for(band, limb_darkening))
        shift, colour = -step * index, f"C{index % 10}"

        def transit(t, u1=u1, u2=u2):
            return transit_light_curve(t, fit.tmid, fit.period, fit.rp_rs, fit.a_rs, fit.inc,
                                       u1, u2)

        detrended = flux / baseline
        top.errorbar(hours(time[mine]), detrended[mine] + shift, error[mine], fmt=".",
                     color=colour, ms=3, alpha=0.35, lw=0.6)
        top.plot([], [], "o", color=colour, ms=5, label=f"{run} ({band})")
        top.plot(hours(time[bad]), detrended[bad] + shift, "x", color=colour, ms=4, alpha=0.6)
        centre, mean, spread = _binned(time[mine], detrended[mine], bin_minutes)
        top.errorbar(hours(centre), mean + shift, spread, fmt="o", color=colour, mec="k",
                     mew=0.6, ms=5, zorder=3)
        grid = np.linspace(time[in_run].min(), time[in_run].max(), 400)
        top.plot(hours(grid), transit(grid) + shift, "-", color="k", lw=1.1, zorder=4)
        residual = detrended[mine] - transit(time[mine])
        bottom.plot(hours(time[mine]), residual * 1e3, ".", color=colour, ms=3, alpha=0.35)
        centre, mean, spread = _binned(time[mine], residual, bin_minutes)
        bottom.errorbar(hours(centre), mean * 1e3, spread * 1e3, fmt="o", color=colour, mec="k",
                        mew=0.6, ms=5)
    top.plot([], [], "o", color="0.6", mec="k", mew=0.6, label=f"binned over {bin_minutes:g} min")
    top.plot([], [], "-", color="k", label="transit model (joint fit)")
    if np.any(flags != 0):
        top.plot([], [], "x", color="0.4", label="flagged frames (not fitted)")
    top.set_ylabel("relative flux, baseline divided out\n(runs offset downward)")
    top.set_title(f"mid-transit {fit.tmid:.5f} BJD_TDB ± {fit.tmid_err * 86400:.0f} s, "
                  f"Rp/Rs {fit.rp_rs:.4f}, χ²_red {fit.chi2_reduced:.2f}, "
                  f"β {getattr(fit, 'beta', 1.0):.2f}", fontsize=9)
    top.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_ylabel("residual (ppt)")
    bottom.set_xlabel(f"hours from the fitted mid-transit (time scale BJD_TDB; 0 = "
                      f"{fit.tmid:.5f})")
    layout(figure, left=1.0, bottom=0.55, top=0.35, right=0.25, between=0.1,
           legends_outside=True)
    return save(figure, path)


def _binned(time: np.ndarray, values: np.ndarray, minutes: float):
    """Bin centres (mean time), means and errors of the mean over bins `minutes` wide; bins
    with fewer than 2 points are left out."""
    if time.size < 2:
        return np.empty(0), np.empty(0), np.empty(0)
    index = np.floor((time - time.min()) / (minutes / 1440.0)).astype(np.int64)
    counts = np.bincount(index)
    keep = counts >= 2
    centre = np.bincount(index, time)[keep] / counts[keep]
    mean = np.bincount(index, values)[keep] / counts[keep]
    square = np.bincount(index, values ** 2)[keep] / counts[keep]
    spread = np.sqrt(np.clip(square - mean ** 2, 0.0, None) / (counts[keep] - 1))
    return centre, mean, spread
