"""Each run's frame transparency and zero point against time, flagged frames marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.flags import MeasurementFlag
from engine.checks import table_columns
from engine.plots.canvas import layout, new_figure, numbers, save, strings

__all__ = ["FRAME_FLAGS", "plot_transparency"]

#: Flags that mark a whole frame (set by the ensemble on every row of the frame).
FRAME_FLAGS = (MeasurementFlag.CLOUD, MeasurementFlag.NOISE_MODEL_EXCEEDED,
               MeasurementFlag.NO_ENSEMBLE)


def _frames_of(lightcurves: pa.Table, columns) -> dict[str, dict[str, np.ndarray]]:
    """run_id -> per-frame arrays (time order) of the light-curve table: the first row's value
    of each column in `columns`, and `flags` ORed over the frame's rows, frame bits only."""
    runs = strings(lightcurves, "run_id")
    time = numbers(lightcurves, "time_bjd_tdb")
    key = numbers(lightcurves, "frame") if "frame" in lightcurves.column_names else time
    flags = lightcurves.column("flags").cast(pa.uint32()).fill_null(0).to_numpy(
        zero_copy_only=False)
    frame_bits = np.uint32(sum(int(f) for f in FRAME_FLAGS))
    values = {name: numbers(lightcurves, name) for name in columns}
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
    table_columns("plot_transparency", lightcurves,
                  ("run_id", "time_bjd_tdb", "flags", "transparency"), non_empty=True)
    columns = ["transparency"] + (["zero_point"] if "zero_point" in lightcurves.column_names
                                  else [])
    by_run = _frames_of(lightcurves, columns)
    start = np.nanmin(numbers(lightcurves, "time_bjd_tdb"))
    figure, axes = new_figure(len(columns), 1, sharex=True, squeeze=False,
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
    layout(figure, left=0.9, bottom=0.55, top=0.35, between=0.1)
    return save(figure, path)
