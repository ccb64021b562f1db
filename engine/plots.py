"""Plots a person wants to look at (matplotlib, written to files; no screen needed).

Each function takes the products `reduce` writes (Arrow tables, the report dict), draws with
matplotlib's Agg backend, writes the PNG atomically (temporary name, then rename) and returns
its path:

- plot_transit_fit(lightcurves, fit, path): the joint transit fit and its residuals.
- plot_comparison_weights(report or star summary, path): each run's comparison stars' share of
  the ensemble weight, and their scatter against the noise model.
- plot_transparency(lightcurves, path): each run's frame transparency and zero point against
  time, flagged frames marked.
- plot_noise_budget(photometry, path, lightcurves=...): the noise model's terms for one star
  per run (the target by default) against time or, for every star, against magnitude, with the
  total and the scatter measured.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.io.atomic import atomic_path

__all__ = ["plot_comparison_weights", "plot_noise_budget", "plot_transit_fit",
           "plot_transparency"]

#: Flags that mark a whole frame (set by the ensemble on every row of the frame).
FRAME_FLAGS = (MeasurementFlag.CLOUD, MeasurementFlag.NOISE_MODEL_EXCEEDED,
               MeasurementFlag.NO_ENSEMBLE)

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


#: Resolution of the PNGs (dots per inch).
DPI = 110


def _figure(rows: int, columns: int, figsize, **subplots):
    """A figure on matplotlib's Agg canvas and its axes (Figure.subplots' arguments). No pyplot:
    it keeps no global registry of figures, costs no backend set-up and is safe off the main
    thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, **subplots)


def _layout(figure, *, left: float, bottom: float, top: float, right: float = 0.15,
            between: float = 0.0, across: float = 0.0, legends_outside: bool = False) -> None:
    """Margins and gaps between panels in inches, in place of tight_layout, which measures every
    tick label and costs about a third of a plot's time. With `legends_outside` the right margin
    widens by the widest axes legend (each placed just right of its axes), measured alone."""
    width, height = figure.get_size_inches()
    if legends_outside:
        renderer = figure.canvas.get_renderer()
        right += max((ax.get_legend().get_window_extent(renderer).width / figure.dpi
                      for ax in figure.axes if ax.get_legend() is not None), default=0.0)
    rows, columns = figure.axes[0].get_subplotspec().get_gridspec().get_geometry()
    panel_height = (height - top - bottom - (rows - 1) * between) / rows
    panel_width = (width - left - right - (columns - 1) * across) / columns
    figure.subplots_adjust(left=left / width, right=1.0 - right / width, bottom=bottom / height,
                           top=1.0 - top / height, hspace=between / panel_height,
                           wspace=across / panel_width)


def _save(figure, path) -> Path:
    """Write `figure` to `path` (PNG) atomically; returns the path."""
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=DPI)
    return Path(path)


def _require(table, columns, what: str) -> None:
    if not isinstance(table, pa.Table):
        raise EngineValueError(f"{what}: expected a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise EngineValueError(f"{what}: the table lacks column(s) {missing}")
    if table.num_rows == 0:
        raise EngineValueError(f"{what}: the table is empty")


def _numbers(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN."""
    return table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def _strings(table: pa.Table, name: str) -> np.ndarray:
    return np.array([("" if v is None else str(v)) for v in table.column(name).to_pylist()],
                    dtype=object)


def plot_transit_fit(lightcurves: pa.Table, fit, path, limb_darkening: dict | None = None,
                     bin_minutes: float = 10.0) -> Path:
    """Target light curve of every run (one colour each, named in the legend), divided by its
    fitted baseline and offset below the previous run, with the transit model, points binned
    over `bin_minutes`, and the residuals below; time in hours from the fitted mid-transit
    (BJD_TDB). Limb darkening is what the fit used (fit.limb_darkening), else
    `limb_darkening` / the defaults. Returns the path written."""
    from engine.kernels.transit import transit_light_curve  # numba: only this plot needs it
    from engine.transit_fit import limb_darkening_for

    _require(lightcurves, ("run_id", "time_bjd_tdb", "rel_flux", "rel_flux_err"),
             "plot_transit_fit")
    table = lightcurves
    if "role" in table.column_names:
        table = table.filter(pa.array(_strings(table, "role") == "target"))
    runs = _strings(table, "run_id")
    time, flux, error = (_numbers(table, n) for n in ("time_bjd_tdb", "rel_flux", "rel_flux_err"))
    airmass = _numbers(table, "airmass") if "airmass" in table.column_names else np.ones_like(time)
    flags = (_numbers(table, "flags") if "flags" in table.column_names else np.zeros_like(time))
    filters = _strings(table, "filter") if "filter" in table.column_names else np.full(
        len(time), "", dtype=object)
    regressor = {"airmass": airmass - 1.0, "time": time - getattr(fit, "time_origin", 0.0)}.get(
        getattr(fit, "baseline", "airmass"), np.zeros_like(time))
    used = getattr(fit, "limb_darkening", {})
    figure, (top, bottom) = _figure(2, 1, figsize=(10, 7), sharex=True,
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
    _layout(figure, left=1.0, bottom=0.55, top=0.35, right=0.25, between=0.1,
            legends_outside=True)
    return _save(figure, path)


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


# ------------------------------------------------------------------------------------------------
# Comparison weights
# ------------------------------------------------------------------------------------------------

def _comparisons_by_run(source) -> dict[str, list[dict]]:
    """run_id -> comparisons as dicts (star_id, weight_share, scatter, expected, suspect), from a
    report dict (report.json: runs -> weights -> comparisons), one run's diagnostics, or a star
    summary table (STAR_SUMMARY_SCHEMA rows: RunLightCurve.stars of one or many runs)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.suffix.lower() == ".json":
            with open(path, encoding="utf-8") as handle:
                source = json.load(handle)
        else:
            from engine.io.tables import read_parquet

            source = read_parquet(path)
    if isinstance(source, pa.Table):
        _require(source, ("run_id", "star_id", "weight_share"), "plot_comparison_weights")
        share = _numbers(source, "weight_share")
        members = share > 0
        if "role" in source.column_names:
            members = _strings(source, "role") == "comparison"
        runs = _strings(source, "run_id")
        star_id = _numbers(source, "star_id")
        scatter = _numbers(source, "scatter") if "scatter" in source.column_names else \
            np.full(source.num_rows, np.nan)
        expected = _numbers(source, "expected") if "expected" in source.column_names else \
            np.full(source.num_rows, np.nan)
        result: dict[str, list[dict]] = {}
        for i in np.flatnonzero(members):
            result.setdefault(runs[i], []).append({
                "star_id": int(star_id[i]), "weight_share": float(share[i]),
                "scatter": float(scatter[i]), "expected": float(expected[i]), "suspect": False})
        return result
    if isinstance(source, dict):
        runs = source["runs"] if "runs" in source else {source.get("run_id", "run"): source}
        result = {}
        for run, diagnostics in runs.items():
            weights = diagnostics.get("weights") if isinstance(diagnostics, dict) else None
            if not weights:  # a skipped run
                continue
            suspects = set(weights.get("suspected_variables") or ())
            result[run] = [{
                "star_id": int(c.get("star_id", c.get("star", -1))),
                "weight_share": float(c.get("weight_share") or 0.0),
                "scatter": np.nan if c.get("rms_mag") is None else float(c["rms_mag"]),
                "expected": (np.nan if c.get("expected_rms_mag") is None
                             else float(c["expected_rms_mag"])),
                "suspect": c.get("star") in suspects,
            } for c in weights.get("comparisons", ())]
        return result
    raise EngineValueError("plot_comparison_weights: expected the report dict (report.json), a "
                           f"star summary table or a path to either, got {type(source).__name__}")


def plot_comparison_weights(stars_or_summary, path) -> Path:
    """Per run, a bar chart of each comparison star's share of the ensemble weight (largest
    first) and, where the scatter is known, its scatter over the noise model's expectation
    (1 = as expected). Red bars, in both panels, are suspected variables: named by the ensemble or
    with a scatter above twice the expected; a legend above the panels says so.

    Parameters
    ----------
    stars_or_summary
        the report dict `reduce` returns / writes (report.json; per run
        weights.comparisons with weight_share, rms_mag, expected_rms_mag), a star summary table
        (STAR_SUMMARY_SCHEMA: run_id, star_id, role, weight_share, scatter, expected), or a path to
        either (.json, else Parquet).
    """
    by_run = {run: rows for run, rows in _comparisons_by_run(stars_or_summary).items() if rows}
    if not by_run:
        raise EngineValueError("plot_comparison_weights: no run has comparison stars")
    with_scatter = any(np.isfinite(r["scatter"]) and np.isfinite(r["expected"])
                       for rows in by_run.values() for r in rows)
    columns = 2 if with_scatter else 1
    figure, axes = _figure(len(by_run), columns, squeeze=False,
                           figsize=(5.0 * columns, 2.4 * len(by_run) + 0.6))
    for row, (run, rows) in enumerate(sorted(by_run.items())):
        rows = sorted(rows, key=lambda r: -r["weight_share"])
        position = np.arange(len(rows))
        labels = [str(r["star_id"]) for r in rows]
        with np.errstate(all="ignore"):
            ratio = np.array([r["scatter"] / r["expected"] for r in rows])
        # The same stars are red in both panels: named by the ensemble, or scatter above 2x.
        suspect = [r["suspect"] or v > 2.0 for v, r in zip(ratio, rows)]
        left = axes[row, 0]
        left.bar(position, [100.0 * r["weight_share"] for r in rows],
                 color=["C3" if s else "C0" for s in suspect])
        left.set_xticks(position, labels, fontsize=7, rotation=90 if len(rows) > 12 else 0)
        left.set_ylabel("weight share (%)")
        left.set_title(run, fontsize=8)
        if with_scatter:
            right = axes[row, 1]
            right.bar(position, np.where(np.isfinite(ratio), ratio, 0.0),
                      color=["C3" if s else "C2" for s in suspect])
            right.axhline(1.0, color="k", lw=0.8)
            right.axhline(2.0, color="C3", lw=0.8, ls="--")
            right.set_xticks(position, labels, fontsize=7, rotation=90 if len(rows) > 12 else 0)
            right.set_ylabel("scatter / expected")
            right.set_title("scatter over the noise model (dashed: 2)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("comparison star (star_id)")
    _weights_legend(figure, with_scatter)
    # Above: the legend (0.5 in) and the titles; below each row its star ids, turned upright.
    _layout(figure, left=0.65, bottom=0.8, top=0.75, between=0.75, across=0.7)
    return _save(figure, path)


def _weights_legend(figure, with_scatter: bool) -> None:
    """One legend above the panels saying what the bar colours and lines mean."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(color="C0", label="comparison star: its share of the weight"),
               Patch(color="C3", label="suspected variable (named by the ensemble, or "
                                       "scatter > 2x expected)")]
    if with_scatter:
        handles += [Patch(color="C2", label="scatter within 2x of the noise model"),
                    Line2D([], [], color="k", lw=0.8, label="scatter = expected"),
                    Line2D([], [], color="C3", lw=0.8, ls="--", label="2x expected: threshold")]
    figure.legend(handles=handles, loc="upper center", ncol=3 if with_scatter else 2,
                  fontsize=7, frameon=False)


# ------------------------------------------------------------------------------------------------
# Transparency and zero points
# ------------------------------------------------------------------------------------------------

def _frames_of(lightcurves: pa.Table, columns) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> per-frame arrays (time order) of the light-curve table: the first row's value
    of each column in `columns`, and `flags` ORed over the frame's rows, frame bits only."""
    runs = _strings(lightcurves, "run_id")
    time = _numbers(lightcurves, "time_bjd_tdb")
    key = _numbers(lightcurves, "frame") if "frame" in lightcurves.column_names else time
    flags = lightcurves.column("flags").cast(pa.uint32()).fill_null(0).to_numpy(
        zero_copy_only=False)
    frame_bits = np.uint32(sum(int(f) for f in FRAME_FLAGS))
    values = {name: _numbers(lightcurves, name) for name in columns}
    result = {}
    for run in sorted(set(runs)):
        rows = np.flatnonzero(runs == run)
        frames, first, inverse = np.unique(key[rows], return_index=True, return_inverse=True)
        frame_flags = np.zeros(frames.size, dtype=np.uint32)
        np.bitwise_or.at(frame_flags, inverse.ravel(), flags[rows] & frame_bits)
        order = np.argsort(time[rows][first], kind="stable")
        picked = rows[first][order]
        result[run] = {"time": time[picked], "flags": frame_flags[order],
                       **{name: values[name][picked] for name in columns}}
    return result


def plot_transparency(lightcurves: pa.Table, path) -> Path:
    """Per run (one colour each), the frames' transparency relative to the clear-sky baseline
    and, below it when the table has it, their ensemble zero point (axis inverted, so that
    cloud dips point down in both), against time. Frames flagged CLOUD are marked x,
    NOISE_MODEL_EXCEEDED +, NO_ENSEMBLE (no zero point) by a dotted vertical line.

    Parameters
    ----------
    lightcurves
        the light-curve table: run_id, time_bjd_tdb, flags, transparency, and
        optionally zero_point and frame (one value per frame, repeated on its rows).
    """
    _require(lightcurves, ("run_id", "time_bjd_tdb", "flags", "transparency"),
             "plot_transparency")
    columns = ["transparency"] + (["zero_point"] if "zero_point" in lightcurves.column_names
                                  else [])
    by_run = _frames_of(lightcurves, columns)
    start = np.nanmin(_numbers(lightcurves, "time_bjd_tdb"))
    figure, axes = _figure(len(columns), 1, sharex=True, squeeze=False,
                           figsize=(9, 2.8 * len(columns) + 0.8))
    axes = axes[:, 0]
    marks = ((MeasurementFlag.CLOUD, "x", "cloud"),
             (MeasurementFlag.NOISE_MODEL_EXCEEDED, "+", "noise model exceeded"))
    for index, (run, frames) in enumerate(by_run.items()):
        colour = f"C{index % 10}"
        hours = (frames["time"] - start) * 24.0
        for ax, name in zip(axes, columns):
            ax.plot(hours, frames[name], ".-", color=colour, ms=3, lw=0.6, label=run)
            for bit, marker, label in marks:
                hit = (frames["flags"] & np.uint32(bit)) != 0
                if hit.any():  # repeated labels are merged in the legend below
                    ax.plot(hours[hit], frames[name][hit], marker, color="C3", ms=7, label=label)
            for t in hours[(frames["flags"] & np.uint32(MeasurementFlag.NO_ENSEMBLE)) != 0]:
                ax.axvline(t, color="0.5", ls=":", lw=0.8)
    axes[0].set_ylabel("transparency")
    axes[0].axhline(1.0, color="k", lw=0.6)
    axes[0].set_title("frame transparency (x cloud, + noise model exceeded, dotted: no "
                      "ensemble)", fontsize=9)
    handles, labels = axes[0].get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    axes[0].legend(unique.values(), unique.keys(), fontsize=7, loc="lower left")
    if len(axes) > 1:
        axes[1].set_ylabel("zero point (mag)")
        axes[1].invert_yaxis()  # a larger zero point is a fainter sky: down, as in transparency
    axes[-1].set_xlabel(f"hours from BJD_TDB {start:.5f}")
    _layout(figure, left=0.9, bottom=0.55, top=0.35, between=0.1)
    return _save(figure, path)


# ------------------------------------------------------------------------------------------------
# Noise budget
# ------------------------------------------------------------------------------------------------

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
    _require(photometry, ("run_id", "frame", "star", "radius", "flux", "flux_err"),
             "plot_noise_budget")
    terms = [(name, label) for name, label in NOISE_TERMS if name in photometry.column_names]
    if not terms:
        raise EngineValueError("plot_noise_budget: the photometry table has no noise term "
                               f"column ({', '.join(n for n, _ in NOISE_TERMS)})")
    if versus not in ("time", "magnitude"):
        raise EngineValueError(f"plot_noise_budget: versus must be 'time' or 'magnitude', got "
                               f"{versus!r}")
    if lightcurves is not None:
        _require(lightcurves, ("run_id", "star", "role", "time_bjd_tdb", "frame", "rel_flux",
                               "flags"), "plot_noise_budget (lightcurves)")
    if "method" in photometry.column_names:  # PSF rows carry no aperture noise terms
        photometry = photometry.filter(pa.array(_strings(photometry, "method") == "aperture"))
    phot_runs = _strings(photometry, "run_id")
    runs = sorted(set(phot_runs)) if run_id is None else [run_id]
    if run_id is not None and run_id not in set(phot_runs):
        raise EngineValueError(f"plot_noise_budget: no photometry of run {run_id!r}")

    columns = {name: _numbers(photometry, name)
               for name in ("frame", "star", "radius", "flux", "flux_err")}
    variances = {name: _numbers(photometry, name) for name, _ in terms}
    phot_flags = (photometry.column("flags").cast(pa.uint32()).fill_null(0).to_numpy(
        zero_copy_only=False) if "flags" in photometry.column_names
        else np.zeros(photometry.num_rows, np.uint32))
    curves = None
    if lightcurves is not None:
        curves = {name: _numbers(lightcurves, name)
                  for name in ("star", "time_bjd_tdb", "frame", "rel_flux", "flags")}
        curves["run_id"] = _strings(lightcurves, "run_id")
        curves["role"] = _strings(lightcurves, "role")
        curves["aperture"] = (_strings(lightcurves, "aperture")
                              if "aperture" in lightcurves.column_names else
                              np.full(lightcurves.num_rows, "", dtype=object))
        curves["rel_flux_err"] = (_numbers(lightcurves, "rel_flux_err")
                                  if "rel_flux_err" in lightcurves.column_names else
                                  np.full(lightcurves.num_rows, np.nan))

    figure, axes = _figure(len(runs), 1, squeeze=False, figsize=(11, 3.4 * len(runs) + 0.6))
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
    _layout(figure, left=0.75, bottom=0.55, top=0.3, right=0.25, between=0.8,
            legends_outside=True)
    return _save(figure, path)


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
        _require(stars, ("run_id", "star", "is_target"), "plot_noise_budget (stars)")
        is_target = np.asarray(stars.column("is_target").fill_null(False).to_pylist(), bool)
        mine = is_target & (_strings(stars, "run_id") == run)
        if mine.any():
            chosen_star = int(_numbers(stars, "star")[np.flatnonzero(mine)[0]])
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
