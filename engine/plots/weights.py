"""Each run's comparison stars: their share of the ensemble weight and their scatter against
the noise model, suspected variables in red."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.errors import EngineValueError
from engine.checks import table_columns
from engine.plots.canvas import layout, new_figure, numbers, save, strings

__all__ = ["plot_comparison_weights"]


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
        return _from_star_summary(source)
    if isinstance(source, dict):
        return _from_report(source)
    raise EngineValueError("plot_comparison_weights: expected the report dict (report.json), a "
                           f"star summary table or a path to either, got {type(source).__name__}")


def _from_star_summary(source: pa.Table) -> dict[str, list[dict]]:
    table_columns("plot_comparison_weights", source, ("run_id", "star_id", "weight_share"),
                  non_empty=True)
    share = numbers(source, "weight_share")
    members = share > 0
    if "role" in source.column_names:
        members = strings(source, "role") == "comparison"
    runs = strings(source, "run_id")
    star_id = numbers(source, "star_id")
    scatter = numbers(source, "scatter") if "scatter" in source.column_names else \
        np.full(source.num_rows, np.nan)
    expected = numbers(source, "expected") if "expected" in source.column_names else \
        np.full(source.num_rows, np.nan)
    result: dict[str, list[dict]] = {}
    for i in np.flatnonzero(members):
        result.setdefault(runs[i], []).append({
            "star_id": int(star_id[i]), "weight_share": float(share[i]),
            "scatter": float(scatter[i]), "expected": float(expected[i]), "suspect": False})
    return result


def _from_report(source: dict) -> dict[str, list[dict]]:
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
    figure, axes = new_figure(len(by_run), columns, squeeze=False,
                              figsize=(5.0 * columns, 2.4 * len(by_run) + 0.6))
    for row, (run, rows) in enumerate(sorted(by_run.items())):
        _draw_run(axes[row], run, rows, with_scatter)
    for ax in axes[-1]:
        ax.set_xlabel("comparison star (star_id)")
    _weights_legend(figure, with_scatter)
    # Above: the legend (0.5 in) and the titles; below each row its star ids, turned upright.
    layout(figure, left=0.65, bottom=0.8, top=0.75, between=0.75, across=0.7)
    return save(figure, path)


def _draw_run(axes, run: str, rows: list, with_scatter: bool) -> None:
    """One run's row of panels: weight shares (largest first) and scatter over expected."""
    rows = sorted(rows, key=lambda r: -r["weight_share"])
    position = np.arange(len(rows))
    labels = [str(r["star_id"]) for r in rows]
    with np.errstate(all="ignore"):
        ratio = np.array([r["scatter"] / r["expected"] for r in rows])
    # The same stars are red in both panels: named by the ensemble, or scatter above 2x.
    suspect = [r["suspect"] or v > 2.0 for v, r in zip(ratio, rows)]
    left = axes[0]
    left.bar(position, [100.0 * r["weight_share"] for r in rows],
             color=["C3" if s else "C0" for s in suspect])
    left.set_xticks(position, labels, fontsize=7, rotation=90 if len(rows) > 12 else 0)
    left.set_ylabel("weight share (%)")
    left.set_title(run, fontsize=8)
    if with_scatter:
        right = axes[1]
        right.bar(position, np.where(np.isfinite(ratio), ratio, 0.0),
                  color=["C3" if s else "C2" for s in suspect])
        right.axhline(1.0, color="k", lw=0.8)
        right.axhline(2.0, color="C3", lw=0.8, ls="--")
        right.set_xticks(position, labels, fontsize=7, rotation=90 if len(rows) > 12 else 0)
        right.set_ylabel("scatter / expected")
        right.set_title("scatter over the noise model (dashed: 2)", fontsize=8)


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
