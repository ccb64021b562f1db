"""Plots a person wants to look at (matplotlib, written to files; no screen needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.kernels.transit import transit_light_curve

__all__ = ["plot_transit_fit"]


def plot_transit_fit(lightcurves: pa.Table, fit, path, limb_darkening: dict | None = None) -> Path:
    """Target light curve of every run, detrended by its fitted baseline, with the transit model
    and the residuals below. Returns the path written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from engine.transit_fit import limb_darkening_for

    table = lightcurves
    if "role" in table.column_names:
        roles = np.asarray(table.column("role").to_pylist())
        table = table.filter(pa.array(roles == "target"))
    runs = np.asarray(table.column("run_id").to_pylist())
    time = table.column("time_bjd_tdb").to_numpy(zero_copy_only=False)
    flux = table.column("rel_flux").to_numpy(zero_copy_only=False)
    error = table.column("rel_flux_err").to_numpy(zero_copy_only=False)
    airmass = (table.column("airmass").to_numpy(zero_copy_only=False)
               if "airmass" in table.column_names else np.ones_like(time))
    flags = (table.column("flags").to_numpy(zero_copy_only=False)
             if "flags" in table.column_names else np.zeros(len(time), dtype=np.uint32))
    filters = (np.asarray(table.column("filter").to_pylist())
               if "filter" in table.column_names else np.full(len(time), ""))
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6.5), sharex=True,
                                         gridspec_kw={"height_ratios": [3, 1]})
    hours = lambda t: (t - fit.tmid) * 24.0  # noqa: E731
    for index, run in enumerate(sorted(set(runs))):
        mine = (runs == run) & (flags == 0) & np.isfinite(flux)
        bad = (runs == run) & (flags != 0) & np.isfinite(flux)
        info = fit.runs.get(run, {})
        baseline = info.get("offset", 1.0) * (1.0 + info.get("slope", 0.0) * (airmass - 1.0))
        u1, u2 = limb_darkening_for(str(filters[mine][0]) if mine.any() else "", limb_darkening)
        shift = -0.03 * index
        colour = f"C{index}"
        top.errorbar(hours(time[mine]), flux[mine] / baseline[mine] + shift, error[mine], fmt=".",
                     color=colour, ms=3, alpha=0.7, label=f"{run} ({filters[mine][0] if mine.any() else ''})")
        top.plot(hours(time[bad]), flux[bad] / baseline[bad] + shift, "x", color=colour, ms=4,
                 alpha=0.6)
        grid = np.linspace(time[runs == run].min(), time[runs == run].max(), 400)
        model = transit_light_curve(grid, fit.tmid, fit.period, fit.rp_rs, fit.a_rs, fit.inc, u1, u2)
        top.plot(hours(grid), model + shift, "-", color="k", lw=1)
        residual = flux[mine] / baseline[mine] - transit_light_curve(
            time[mine], fit.tmid, fit.period, fit.rp_rs, fit.a_rs, fit.inc, u1, u2)
        bottom.plot(hours(time[mine]), residual * 1e3, ".", color=colour, ms=3)
    top.set_ylabel("relative flux (offset per run)")
    top.set_title(f"mid-transit BJD_TDB {fit.tmid:.5f} ± {fit.tmid_err * 86400:.0f} s, "
                  f"Rp/Rs {fit.rp_rs:.4f}; x = flagged frames")
    top.legend(fontsize=7, loc="lower left")
    bottom.axhline(0, color="k", lw=0.8)
    bottom.set_ylabel("residual (ppt)")
    bottom.set_xlabel("hours from mid-transit")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp.png")
    figure.savefig(temporary, dpi=110)
    plt.close(figure)
    temporary.replace(path)
    return path
