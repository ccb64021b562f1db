"""What every plot shares: a figure on matplotlib's Agg canvas, margins in inches, the atomic
PNG write, and reading the columns of the products' tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from engine.io.atomic import atomic_path

__all__ = ["DPI", "layout", "load_matplotlib", "new_figure", "numbers", "save", "strings"]


#: Resolution of the PNGs (dots per inch).
DPI = 110


def load_matplotlib() -> None:
    """Import what `new_figure` needs (about a second on a busy machine) now: on a worker
    thread ahead of the first plot, while the caller works on."""
    import matplotlib.backends.backend_agg
    import matplotlib.figure  # noqa: F401


def new_figure(rows: int, columns: int, figsize, **subplots):
    """A figure on matplotlib's Agg canvas and its axes (Figure.subplots' arguments). No pyplot:
    it keeps no global registry of figures, costs no backend set-up and is safe off the main
    thread."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, columns, **subplots)


def layout(figure, *, left: float, bottom: float, top: float, right: float = 0.15,
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


def save(figure, path) -> Path:
    """Write `figure` to `path` (PNG) atomically; returns the path."""
    with atomic_path(path, suffix=".png") as temporary:
        figure.savefig(temporary, dpi=DPI)
    return Path(path)


def numbers(table: pa.Table, name: str) -> np.ndarray:
    """A numeric column as float64 with nulls as NaN."""
    return table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False)


def strings(table: pa.Table, name: str) -> np.ndarray:
    return np.array([("" if v is None else str(v)) for v in table.column(name).to_pylist()],
                    dtype=object)
