"""Plots from small synthetic products: each writes a PNG, draws what it should (axes, bars,
lines checked on the figure before it is saved) and refuses tables it cannot use."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from engine import plots
from engine.plots import canvas, noise_budget, transit, transparency, weights
from engine.ensemble.schema import table_from_columns
from engine.errors import EngineValueError
from engine.flags import MeasurementFlag
from engine.io.schemas import LIGHTCURVES_SCHEMA, STAR_SUMMARY_SCHEMA

PNG = b"\x89PNG\r\n\x1a\n"
FRAMES = 10
CLOUDY = (3, 4)          # frames flagged CLOUD in run A
NO_ENSEMBLE = (7,)       # frame without a zero point in run B


@pytest.fixture
def figures(monkeypatch):
    """The figures the plot functions save, kept open for inspection."""
    kept = []

    def keep(figure, path):
        kept.append((figure, [(ax, list(ax.get_lines()), list(ax.patches)) for ax in
                              figure.axes]))
        return canvas.save(figure, path)

    for module in (noise_budget, transit, transparency, weights):
        monkeypatch.setattr(module, "save", keep)
    return kept


def _is_png(path):
    data = path.read_bytes()
    return data[:8] == PNG and len(data) > 2000


def _lightcurves():
    """Two runs of FRAMES frames; stars 5 (target), 1 (check), 7 (comparison)."""
    columns = {name: [] for name in ("run_id", "time_bjd_tdb", "star_id", "star", "role",
                                     "frame", "flags", "transparency", "zero_point", "rel_flux",
                                     "rel_flux_err", "aperture")}
    rng = np.random.default_rng(1)
    for run, start, aperture in (("A", 2460000.50, "r=3"), ("B", 2460000.52, "r=4.5")):
        for k in range(FRAMES):
            flags = 0
            if run == "A" and k in CLOUDY:
                flags = int(MeasurementFlag.CLOUD)
            if run == "B" and k in NO_ENSEMBLE:
                flags = int(MeasurementFlag.NO_ENSEMBLE)
            for star, role in ((5, "target"), (1, "check"), (7, "comparison")):
                columns["run_id"].append(run)
                columns["time_bjd_tdb"].append(start + k * 0.003)
                columns["star_id"].append(star)
                columns["star"].append(star)
                columns["role"].append(role)
                columns["frame"].append(k)
                # a row-only flag on a check star must not mark the frame
                row_flag = int(MeasurementFlag.SATURATED) if (role == "check" and k == 1) else 0
                columns["flags"].append(flags | row_flag)
                columns["transparency"].append(0.8 if flags else 1.0 - 0.001 * k)
                columns["zero_point"].append(0.2 if flags else 0.001 * k)
                columns["rel_flux"].append(1.0 + rng.normal(0, 0.002))
                columns["rel_flux_err"].append(0.002)
                columns["aperture"].append(aperture)
    arrays = {k: (v if isinstance(v[0], str) else np.asarray(v)) for k, v in columns.items()}
    return table_from_columns(arrays, LIGHTCURVES_SCHEMA)


def _photometry():
    """Aperture photometry of the same runs: stars 1, 5, 7 at radii 3 and 4.5 px, with the noise
    terms (e-^2) of engine/photometry_stage.py."""
    rows = {name: [] for name in ("run_id", "frame", "star", "radius", "flux", "flux_err",
                                  "flags", "var_star", "var_background", "var_background_error",
                                  "var_scintillation", "var_read", "var_dark", "method")}
    for run in ("A", "B"):
        for k in range(FRAMES):
            for star, flux in ((1, 4e5), (5, 1e5), (7, 2e4)):
                for radius in (3.0, 4.5):
                    terms = {"var_star": flux, "var_background": 900.0 * radius,
                             "var_background_error": 30.0 * radius,
                             "var_scintillation": (1e-3 * flux) ** 2,
                             "var_read": 100.0 * radius, "var_dark": 0.0}
                    rows["run_id"].append(run)
                    rows["frame"].append(k)
                    rows["star"].append(star)
                    rows["radius"].append(radius)
                    rows["flux"].append(flux * (1 + 0.01 * k))
                    rows["flux_err"].append(np.sqrt(terms["var_star"] + terms["var_background"]
                                                    + terms["var_background_error"]
                                                    + terms["var_scintillation"]))
                    rows["flags"].append(0)
                    for name, value in terms.items():
                        rows[name].append(value)
                    rows["method"].append("aperture")
    return pa.table({k: pa.array(v, pa.uint32() if k == "flags" else None)
                     for k, v in rows.items()})


def _report():
    comparison = {"star": 7, "star_id": 7, "weight_share": 0.6, "rms_mag": 0.004,
                  "expected_rms_mag": 0.004}
    return {"runs": {
        "A": {"weights": {"comparisons": [
            comparison,
            {"star": 8, "star_id": 8, "weight_share": 0.3, "rms_mag": 0.003,
             "expected_rms_mag": 0.003},
            {"star": 9, "star_id": 9, "weight_share": 0.1, "rms_mag": 0.02,
             "expected_rms_mag": 0.004}], "suspected_variables": [9]}},
        "B": {"weights": {"comparisons": [comparison | {"weight_share": 1.0}]}},
        "C": {"skipped": "the target was not identified in this run"},
    }}


def test_comparison_weights_from_the_report(tmp_path, figures):
    path = plots.plot_comparison_weights(_report(), tmp_path / "weights.png")
    assert _is_png(path)
    _, axes = figures[-1]
    assert len(axes) == 4  # runs A and B (C skipped) x (weights, scatter)
    (share_a, _, bars_a), (_, _, ratio_bars) = axes[0], axes[1]
    assert [round(b.get_height(), 6) for b in bars_a] == [60.0, 30.0, 10.0]
    assert [t.get_text() for t in share_a.get_xticklabels()] == ["7", "8", "9"]
    assert [round(b.get_height(), 6) for b in ratio_bars] == [1.0, 1.0, 5.0]
    assert len(axes[2][2]) == 1


def test_comparison_weights_from_a_star_summary(tmp_path, figures):
    summary = table_from_columns({
        "run_id": ["A", "A", "A", "B"], "star": np.array([5, 7, 8, 7]),
        "star_id": np.array([5, 7, 8, 7]), "role": ["target", "comparison", "comparison",
                                                    "comparison"],
        "weight_share": np.array([0.0, 0.75, 0.25, 1.0])}, STAR_SUMMARY_SCHEMA)
    plots.plot_comparison_weights(summary, tmp_path / "weights.png")
    _, axes = figures[-1]
    assert len(axes) == 2  # no scatter known: weights only
    assert [round(b.get_height(), 6) for b in axes[0][2]] == [75.0, 25.0]


def test_comparison_weights_errors(tmp_path):
    with pytest.raises(EngineValueError, match="no run has comparison"):
        plots.plot_comparison_weights({"runs": {"C": {"skipped": "x"}}}, tmp_path / "w.png")
    with pytest.raises(EngineValueError, match="lacks column"):
        plots.plot_comparison_weights(pa.table({"run_id": ["A"]}), tmp_path / "w.png")
    with pytest.raises(EngineValueError, match="expected the report"):
        plots.plot_comparison_weights([1, 2], tmp_path / "w.png")
    assert list(tmp_path.iterdir()) == []


def test_transparency(tmp_path, figures):
    path = plots.plot_transparency(_lightcurves(), tmp_path / "transparency.png")
    assert _is_png(path)
    _, axes = figures[-1]
    assert len(axes) == 2  # transparency, zero point
    _, lines, _ = axes[0]
    runs = [line for line in lines if line.get_label() in ("A", "B")]
    assert [len(line.get_xdata()) for line in runs] == [FRAMES, FRAMES]  # one point a frame
    clouds = [line for line in lines if line.get_label() == "cloud"]
    assert len(clouds) == 1
    np.testing.assert_allclose(clouds[0].get_ydata(), [0.8] * len(CLOUDY))
    np.testing.assert_allclose(clouds[0].get_xdata(), [k * 0.003 * 24 for k in CLOUDY])
    # the frame without an ensemble: a dotted vertical line on each panel
    vertical = [line for line in lines if line.get_linestyle() == ":"]
    assert len(vertical) == len(NO_ENSEMBLE)
    assert axes[1][0].yaxis_inverted()


def test_drawn_off_the_main_thread_without_pyplot(tmp_path):
    """The plots use matplotlib's object API alone: no pyplot (its global figure registry and
    backend set-up), so a plot can be drawn on a worker thread while the night goes on."""
    code = (
        "import sys, threading\n"
        "sys.path.insert(0, 'tests')\n"
        "from test_plots import _lightcurves\n"
        "from engine import plots\n"
        "thread = threading.Thread(target=plots.plot_transparency,\n"
        f"                          args=(_lightcurves(), {str(tmp_path / 't.png')!r}))\n"
        "thread.start(); thread.join()\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[1])
    assert _is_png(tmp_path / "t.png")


def test_transparency_errors(tmp_path):
    table = _lightcurves()
    with pytest.raises(EngineValueError, match="transparency"):
        plots.plot_transparency(table.drop_columns(["transparency"]), tmp_path / "t.png")
    with pytest.raises(EngineValueError, match="empty"):
        plots.plot_transparency(table.slice(0, 0), tmp_path / "t.png")


def test_noise_budget_in_time(tmp_path, figures):
    photometry, lightcurves = _photometry(), _lightcurves()
    path = plots.plot_noise_budget(photometry, tmp_path / "noise.png", lightcurves=lightcurves)
    assert _is_png(path)
    _, axes = figures[-1]
    assert len(axes) == 2  # runs A and B
    for (ax, lines, _), radius in zip(axes, (3.0, 4.5)):
        labels = [line.get_label() for line in lines]
        # var_dark is zero here: left off the log plot
        assert labels[:5] == ["star (Poisson)", "sky + dark + read (annulus scatter)",
                              "background estimate", "scintillation",
                              "read (part of background)"]
        assert "total (flux_err)" in labels
        assert any(label.startswith("measured point-to-point") for label in labels)
        total = lines[labels.index("total (flux_err)")]
        flux = 1e5 * (1 + 0.01 * np.arange(FRAMES))
        want = 1e3 * np.sqrt(1e5 + 930 * radius + (1e-3 * 1e5) ** 2) / flux
        np.testing.assert_allclose(total.get_ydata(), want, rtol=1e-12)
        np.testing.assert_allclose(total.get_xdata(), np.arange(FRAMES) * 0.003 * 24)
        assert f"star 5, aperture r={radius:.3g}" in ax.get_title()


def test_noise_budget_by_magnitude_and_from_stars(tmp_path, figures):
    photometry, lightcurves = _photometry(), _lightcurves()
    plots.plot_noise_budget(photometry, tmp_path / "noise.png", lightcurves=lightcurves,
                            run_id="B", versus="magnitude")
    _, axes = figures[-1]
    assert len(axes) == 1
    lines = axes[0][1]
    total = next(line for line in lines if line.get_label() == "total (flux_err)")
    assert len(total.get_xdata()) == 3  # one point a star
    measured = [line for line in lines if line.get_label().startswith("measured")]
    assert len(measured[0].get_xdata()) == 3  # the light curves' three stars

    stars = pa.table({"run_id": ["A", "A", "B"], "star": [1, 5, 5],
                      "is_target": [False, True, True]})
    plots.plot_noise_budget(photometry, tmp_path / "noise2.png", stars=stars, radius=4.4)
    _, axes = figures[-1]
    assert all("star 5, aperture r=4.5" in ax.get_title() for ax, _, _ in axes)
    assert all(ax.get_xlabel() == "frame" for ax, _, _ in axes)  # no times without light curves


def test_noise_budget_errors(tmp_path):
    photometry = _photometry()
    terms = [n for n in photometry.column_names if n.startswith("var_")]
    with pytest.raises(EngineValueError, match="no noise term"):
        plots.plot_noise_budget(photometry.drop_columns(terms), tmp_path / "n.png", star=5)
    with pytest.raises(EngineValueError, match="lacks column"):
        plots.plot_noise_budget(photometry.drop_columns(["flux_err"]), tmp_path / "n.png",
                                star=5)
    with pytest.raises(EngineValueError, match="which star"):
        plots.plot_noise_budget(photometry, tmp_path / "n.png")
    with pytest.raises(EngineValueError, match="no photometry of star 99"):
        plots.plot_noise_budget(photometry, tmp_path / "n.png", star=99)
    with pytest.raises(EngineValueError, match="no photometry of run"):
        plots.plot_noise_budget(photometry, tmp_path / "n.png", star=5, run_id="Z")
    with pytest.raises(EngineValueError, match="versus"):
        plots.plot_noise_budget(photometry, tmp_path / "n.png", star=5, versus="airmass")
    assert list(tmp_path.iterdir()) == []


def test_transit_fit_plot_shows_runs_model_binned_points_and_time_scale(tmp_path, figures):
    from engine.kernels.transit import transit_light_curve
    from engine.transit_fit import fit_transit

    rng = np.random.default_rng(3)
    columns = {k: [] for k in ("run_id", "time_bjd_tdb", "rel_flux", "rel_flux_err", "airmass",
                               "filter")}
    tmid = 2460000.6
    for run, band, start, stop in (("early", "V", -0.1, 0.02), ("late", "I", -0.01, 0.1)):
        t = tmid + np.arange(start, stop, 60 / 86400)
        airmass = 1.1 + 0.3 * (t - t[0])
        model = transit_light_curve(t, tmid, 3.0, 0.1, 9.0, 88.0, 0.4, 0.25)
        columns["run_id"] += [run] * t.size
        columns["time_bjd_tdb"] += t.tolist()
        columns["rel_flux"] += (model * (1 + 0.02 * (airmass - 1))
                                + rng.normal(0, 1e-3, t.size)).tolist()
        columns["rel_flux_err"] += [1e-3] * t.size
        columns["airmass"] += airmass.tolist()
        columns["filter"] += [band] * t.size
    table = pa.table(columns)
    fit = fit_transit(table, period=3.0, t0=tmid, a_rs=9.0, inc=88.0)
    path = plots.plot_transit_fit(table, fit, tmp_path / "FIT.png", bin_minutes=10)
    assert _is_png(path)
    _, axes = figures[-1]
    top, bottom = axes[0][0], axes[1][0]
    legend = [text.get_text() for text in top.get_legend().get_texts()]
    assert legend[:2] == ["early (V)", "late (I)"]  # in the order observed, each its colour
    assert "binned over 10 min" in legend and "transit model (joint fit)" in legend
    assert "BJD_TDB" in bottom.get_xlabel() and "mid-transit" in bottom.get_xlabel()
    # Hours from the fitted mid-transit: the early run starts ~2.4 h before it.
    xmin = min(line.get_xdata().min() for line in top.get_lines() if len(line.get_xdata()))
    assert xmin == pytest.approx(-0.1 * 24 - (fit.tmid - tmid) * 24, abs=0.05)
    # The residual panel's binned points: one per 10 min of the 2.9 h and 2.6 h runs (18 + 16),
    # scattered ~1 ppt / sqrt(10) each.
    binned = [c for c in bottom.containers]
    assert len(binned) == 2
    means = np.concatenate([c.lines[0].get_ydata() for c in binned])
    assert means.size == 34 and np.std(means) < 0.6
