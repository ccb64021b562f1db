"""The noise model's terms for one star per run against time, or for every star against
magnitude, with their total and the scatter measured."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.errors import EngineValueError
from engine.checks import table_columns
from engine.plots.canvas import layout, new_figure, numbers, save, strings

__all__ = ["NOISE_TERMS", "plot_noise_budget"]

#: Noise terms of the photometry table (engine/photometry_stage.py), in plotting order, with labels.
#: var_read and var_dark are parts of var_background, drawn dashed, not added to the total.
NOISE_TERMS = (
    ("var_star", "star (Poisson)"),
    ("var_background", "sky + dark + read (annulus scatter)"),
    ("var_background_error", "background estimate"),
    ("var_scintillation", "scintillation"),
    ("var_read", "read (part of background)"),
    ("var_dark", "dark (part of background)"),
)

#: Colours of the noise budget outside the terms' C0-C5: the scatter measured, the chosen star.
MEASURED_COLOUR = "C6"
CHOSEN_COLOUR = "C9"


def _point_to_point(values: np.ndarray) -> float:
    """Scatter of a series from its successive differences (std / sqrt 2): blind to slow
    trends and to a transit, which the plain rms would count as noise."""
    values = values[np.isfinite(values)]
    if values.size < 3:
        return np.nan
    return float(np.std(np.diff(values)) / np.sqrt(2.0))


def _radius_of(label) -> float | None:
    """The radius in an aperture label 'r=<px>' of the light-curve table; None for 'psf'."""
    if isinstance(label, str) and label.startswith("r="):
        try:
            return float(label[2:])
        except ValueError:
            return None
    return None


def plot_noise_budget(photometry: pa.Table, path, *, lightcurves: pa.Table | None = None,
                      stars: pa.Table | None = None, run_id: str | None = None,
                      star: int | None = None, radius: float | None = None,
                      versus: str = "time") -> Path:
    """The noise model's terms (relative to the flux, log scale) for each run (one panel each),
    with their total (flux_err) and the scatter measured.

    versus 'time': one star (the target unless `star` is given) frame by frame: the terms
        stored in the photometry table (var_star, var_background, var_background_error,
        var_scintillation; var_read and var_dark dashed, as parts of var_background), their
        total, and with `lightcurves` the light curve's error (ensemble included) and its
        measured point-to-point scatter (a horizontal line).
    versus 'magnitude': every star of the run, each term's median over the good frames against
        the star's instrumental magnitude (-2.5 log10 of its median flux in e-); the chosen star
        is ringed, and with `lightcurves` the measured scatter of each star in it is drawn.

    Parameters
    ----------
    photometry
        photometry.parquet (aperture rows: run_id, frame, star, radius, flux,
        flux_err, flags, var_*).
    lightcurves
        lightcurves.parquet; gives the target's star and chosen aperture per run,
        the frames' times, and the measured scatter. Without it, `stars` (stars.parquet, its
        is_target column) or `star` names the star, frame numbers replace times, and the
        aperture is `radius` or else the run's middle radius.
    run_id
        one run only; default every run in the photometry table.
    star, radius
        the star number (run's star table) and aperture radius (px, the nearest one
        measured is used) for every run, instead of the target's.
    """
    terms = _checked_terms(photometry, lightcurves, versus)
    if "method" in photometry.column_names:  # PSF rows carry no aperture noise terms
        photometry = photometry.filter(pa.array(strings(photometry, "method") == "aperture"))
    phot_runs = strings(photometry, "run_id")
    runs = sorted(set(phot_runs)) if run_id is None else [run_id]
    if run_id is not None and run_id not in set(phot_runs):
        raise EngineValueError(f"plot_noise_budget: no photometry of run {run_id!r}")

    columns = {name: numbers(photometry, name)
               for name in ("frame", "star", "radius", "flux", "flux_err")}
    variances = {name: numbers(photometry, name) for name, _ in terms}
    phot_flags = (photometry.column("flags").cast(pa.uint32()).fill_null(0).to_numpy(
        zero_copy_only=False) if "flags" in photometry.column_names
        else np.zeros(photometry.num_rows, np.uint32))
    curves = None if lightcurves is None else _light_curve_columns(lightcurves)

    figure, axes = new_figure(len(runs), 1, squeeze=False, figsize=(11, 3.4 * len(runs) + 0.6))
    for ax, run in zip(axes[:, 0], runs):
        in_run = phot_runs == run
        chosen_star, chosen_radius = _star_and_radius(run, in_run, columns, curves, stars, star,
                                                      radius)
        radii = np.unique(columns["radius"][in_run])
        nearest = radii[np.argmin(np.abs(radii - chosen_radius))]
        at_radius = in_run & (columns["radius"] == nearest)
        title = f"{run}: star {chosen_star}, aperture r={nearest:.3g} px"
        if versus == "time":
            _budget_in_time(ax, at_radius & (columns["star"] == chosen_star), run, chosen_star,
                            columns, variances, terms, curves)
        else:
            _budget_by_magnitude(ax, at_radius, phot_flags, run, chosen_star, columns,
                                 variances, terms, curves)
        _readable_log_y(ax)
        ax.set_ylabel("noise / flux (ppt)")
        ax.set_title(title, fontsize=8)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    layout(figure, left=0.75, bottom=0.55, top=0.3, right=0.25, between=0.8,
           legends_outside=True)
    return save(figure, path)


def _checked_terms(photometry: pa.Table, lightcurves, versus: str) -> list:
    """The noise terms (column, label) the photometry has, after checking the inputs."""
    table_columns("plot_noise_budget", photometry,
                  ("run_id", "frame", "star", "radius", "flux", "flux_err"), non_empty=True)
    terms = [(name, label) for name, label in NOISE_TERMS if name in photometry.column_names]
    if not terms:
        raise EngineValueError("plot_noise_budget: the photometry table has no noise term "
                               f"column ({', '.join(n for n, _ in NOISE_TERMS)})")
    if versus not in ("time", "magnitude"):
        raise EngineValueError(f"plot_noise_budget: versus must be 'time' or 'magnitude', got "
                               f"{versus!r}")
    if lightcurves is not None:
        table_columns("plot_noise_budget (lightcurves)", lightcurves,
                      ("run_id", "star", "role", "time_bjd_tdb", "frame", "rel_flux", "flags"),
                      non_empty=True)
    return terms


def _light_curve_columns(lightcurves: pa.Table) -> dict:
    """The light-curve table's columns the budget uses, as arrays."""
    curves = {name: numbers(lightcurves, name)
              for name in ("star", "time_bjd_tdb", "frame", "rel_flux", "flags")}
    curves["run_id"] = strings(lightcurves, "run_id")
    curves["role"] = strings(lightcurves, "role")
    curves["aperture"] = (strings(lightcurves, "aperture")
                          if "aperture" in lightcurves.column_names else
                          np.full(lightcurves.num_rows, "", dtype=object))
    curves["rel_flux_err"] = (numbers(lightcurves, "rel_flux_err")
                              if "rel_flux_err" in lightcurves.column_names else
                              np.full(lightcurves.num_rows, np.nan))
    return curves


def _readable_log_y(ax) -> None:
    """A log y axis labelled with plain numbers at 1, 2, 5 x 10^n (0.2, 0.5, 1, 2, 5, ...), the
    minor ticks unlabelled: matplotlib's default labels a span under a decade '6x10^0'."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    axis = ax.yaxis
    axis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    axis.set_minor_locator(LogLocator(base=10.0, subs=np.arange(2, 10) * 1.0))
    axis.set_minor_formatter(NullFormatter())


def _star_and_radius(run, in_run, columns, curves, stars, star, radius):
    """The star and aperture radius one run's budget is drawn for (see plot_noise_budget)."""
    chosen_star, chosen_radius = star, radius
    if curves is not None:
        target = (curves["run_id"] == run) & (curves["role"] == "target")
        if target.any():
            first = np.flatnonzero(target)[0]
            if chosen_star is None:
                chosen_star = int(curves["star"][first])
            if chosen_radius is None and chosen_star == int(curves["star"][first]):
                chosen_radius = _radius_of(curves["aperture"][first])
    if chosen_star is None and stars is not None:
        table_columns("plot_noise_budget (stars)", stars, ("run_id", "star", "is_target"),
                      non_empty=True)
        is_target = np.asarray(stars.column("is_target").fill_null(False).to_pylist(), bool)
        mine = is_target & (strings(stars, "run_id") == run)
        if mine.any():
            chosen_star = int(numbers(stars, "star")[np.flatnonzero(mine)[0]])
    if chosen_star is None:
        raise EngineValueError(f"plot_noise_budget: run {run!r}: which star? Give lightcurves "
                               "(its target), stars (is_target) or star")
    if not (in_run & (columns["star"] == chosen_star)).any():
        raise EngineValueError(f"plot_noise_budget: run {run!r} has no photometry of star "
                               f"{chosen_star}")
    if chosen_radius is None:
        radii = np.unique(columns["radius"][in_run])
        chosen_radius = float(radii[radii.size // 2])
    return chosen_star, float(chosen_radius)


def _budget_in_time(ax, rows, run, chosen_star, columns, variances, terms, curves) -> None:
    order = np.argsort(columns["frame"][rows], kind="stable")
    rows = np.flatnonzero(rows)[order]
    frame = columns["frame"][rows]
    x, xlabel = frame, "frame"
    measured = light_error = None
    if curves is not None:
        mine = (curves["run_id"] == run) & (curves["star"] == chosen_star)
        time_of = dict(zip(curves["frame"][mine], curves["time_bjd_tdb"][mine]))
        if time_of:
            start = min(time_of.values())
            x = np.array([(time_of.get(f, np.nan) - start) * 24.0 for f in frame])
            xlabel = f"hours from BJD_TDB {start:.5f}"
            good = mine & (curves["flags"] == 0)
            order = np.argsort(curves["time_bjd_tdb"][good])
            measured = _point_to_point(curves["rel_flux"][good][order])
            error_of = dict(zip(curves["frame"][mine], curves["rel_flux_err"][mine]))
            light_error = np.array([error_of.get(f, np.nan) for f in frame])
    flux = columns["flux"][rows]
    with np.errstate(all="ignore"):
        flux = np.where(flux > 0, flux, np.nan)
        for index, (name, label) in enumerate(terms):
            relative = np.sqrt(variances[name][rows]) / flux
            if not (relative > 0).any():  # a term the camera lacks (no dark) has no place on a log
                continue
            dashed = name in ("var_read", "var_dark")
            ax.plot(x, 1e3 * relative, "--" if dashed else "-", color=f"C{index}", lw=1.0,
                    label=label)
        ax.plot(x, 1e3 * columns["flux_err"][rows] / flux, "-", color="k", lw=1.8,
                label="total (flux_err)")
    if light_error is not None and np.isfinite(light_error).any():
        ax.plot(x, 1e3 * light_error, ":", color="k", lw=1.2,
                label="light-curve error (ensemble included)")
    if measured is not None and np.isfinite(measured):
        ax.axhline(1e3 * measured, color=MEASURED_COLOUR, lw=1.4,
                   label=f"measured point-to-point scatter ({1e3 * measured:.2f} ppt)")
    ax.set_xlabel(xlabel)


def _budget_by_magnitude(ax, rows, phot_flags, run, chosen_star, columns, variances, terms,
                         curves) -> None:
    rows = rows & (phot_flags == 0)
    star = columns["star"][rows]
    ids, inverse = np.unique(star, return_inverse=True)
    inverse = inverse.ravel()

    def per_star(values):
        """Median over each star's good frames."""
        result = np.full(ids.size, np.nan)
        for k in range(ids.size):
            mine = values[inverse == k]
            mine = mine[np.isfinite(mine)]
            if mine.size:
                result[k] = np.median(mine)
        return result

    with np.errstate(all="ignore"):
        flux = per_star(columns["flux"][rows])
        magnitude = -2.5 * np.log10(np.where(flux > 0, flux, np.nan))
        for index, (name, label) in enumerate(terms):
            relative = per_star(np.sqrt(variances[name][rows]) / columns["flux"][rows])
            if not (relative > 0).any():
                continue
            ax.plot(magnitude, 1e3 * relative, "v" if name in ("var_read", "var_dark") else ".",
                    color=f"C{index}", ms=4, label=label)
        total = per_star(columns["flux_err"][rows] / columns["flux"][rows])
    ax.plot(magnitude, 1e3 * total, "o", mfc="none", color="k", ms=5, label="total (flux_err)")
    chosen = ids == chosen_star
    ax.plot(magnitude[chosen], 1e3 * total[chosen], "o", mfc="none", color=CHOSEN_COLOUR, ms=12,
            mew=1.5, label=f"star {chosen_star}")
    if curves is not None:
        mine = curves["run_id"] == run
        points = []
        for s in np.unique(curves["star"][mine]):
            good = mine & (curves["star"] == s) & (curves["flags"] == 0)
            k = np.flatnonzero(ids == s)
            if k.size:
                order = np.argsort(curves["time_bjd_tdb"][good])
                points.append((magnitude[k[0]], _point_to_point(curves["rel_flux"][good][order])))
        if points:
            points = np.array(points)
            ax.plot(points[:, 0], 1e3 * points[:, 1], "*", color=MEASURED_COLOUR, ms=8,
                    label="measured point-to-point scatter (light curves)")
    ax.set_xlabel("instrumental magnitude (-2.5 log10 e-)")
