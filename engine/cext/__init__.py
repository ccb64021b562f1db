"""Validated entry points to the compiled C++ core.

The extension module `engine.cext._core` trusts its inputs; the functions here check and coerce
them first (finite values, positive radii, C-contiguous float64 outputs of the right shape), so
that nothing reaching C++ can read or write out of bounds. Call the core only through here.

Promise: the same numbers as the slow references in tests/reference.py, to rounding
(absolute error of a few ulps of max(1, r**2)); every function releases the GIL while it computes
and is safe to call from several threads on different outputs.
"""

from __future__ import annotations

import math

import numpy as np

from engine.errors import EngineValueError

from . import _core

__all__ = ["circle_overlap_grid", "disk_rectangle_area"]


def _finite(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value):
        raise EngineValueError(f"{name} must be finite, got {value!r}")
    return value


def circle_overlap_grid(x: float, y: float, r: float, shape: tuple[int, int],
                        out: np.ndarray | None = None) -> np.ndarray:
    """Exact area of a circle inside each pixel of a grid.

    Pixel ``(j, i)`` of the grid is the square ``[i - 0.5, i + 0.5] x [j - 0.5, j + 0.5]``:
    pixel centres sit on integer coordinates, ``x`` is the column and ``y`` the row coordinate.

    Parameters
    ----------
    x, y : float
        Centre of the circle in the grid's pixel coordinates (may lie off the grid).
    r : float
        Radius in pixels, > 0.
    shape : (ny, nx)
        Grid shape.
    out : ndarray, optional
        C-contiguous writable float64 array of ``shape`` to fill.

    Returns
    -------
    ndarray of float64, shape ``(ny, nx)``: overlap areas in pixels, each in [0, 1].
    """
    x = _finite("x", x)
    y = _finite("y", y)
    r = _finite("r", r)
    if r <= 0.0:
        raise EngineValueError(f"radius must be > 0, got {r!r}")
    try:
        ny, nx = (int(n) for n in shape)
    except (TypeError, ValueError):
        raise EngineValueError(f"shape must be a pair of integers, got {shape!r}") from None
    if ny < 0 or nx < 0:
        raise EngineValueError(f"shape must be non-negative, got {(ny, nx)}")
    if out is None:
        out = np.empty((ny, nx), dtype=np.float64)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.float64 or out.shape != (ny, nx)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise EngineValueError(
            f"out must be a writable C-contiguous float64 array of shape {(ny, nx)}")
    _core.circle_overlap_grid(x, y, r, out)
    return out


def disk_rectangle_area(x0: float, x1: float, y0: float, y1: float, r: float) -> float:
    """Area of the disk of radius ``r`` centred at the origin inside ``[x0, x1] x [y0, y1]``.

    An empty or inverted rectangle has zero area.
    """
    values = [_finite(name, v) for name, v in (("x0", x0), ("x1", x1), ("y0", y0), ("y1", y1))]
    r = _finite("r", r)
    if r <= 0.0:
        raise EngineValueError(f"radius must be > 0, got {r!r}")
    return _core.disk_rectangle_area(*values, r)
