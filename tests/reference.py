"""Slow, obvious references that the fast kernels are tested against.

Each function here favours being evidently right over being fast: plain NumPy / SciPy, no
tricks shared with the compiled code it checks.
"""

from __future__ import annotations

import numpy as np

_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(32)


def _gauss_legendre(f, a: float, b: float) -> float:
    """32-point Gauss-Legendre quadrature of f over [a, b]: exact for smooth integrands here."""
    if b <= a:
        return 0.0
    half = 0.5 * (b - a)
    t = 0.5 * (a + b) + half * _GL_NODES
    return float(half * np.sum(_GL_WEIGHTS * f(t)))


def disk_rectangle_area(x0: float, x1: float, y0: float, y1: float, r: float) -> float:
    """Area of the disk of radius r at the origin inside [x0, x1] x [y0, y1], by quadrature.

    With x = r sin(t) the area is the integral over t of (clipped chord height) * r cos(t). The
    chord [-r cos t, r cos t] clipped to [y0, y1] changes form only where r cos t crosses |y0| or
    |y1|; between those angles the integrand is a smooth trigonometric polynomial, which
    Gauss-Legendre integrates to rounding.
    """
    if x1 <= x0 or y1 <= y0:
        return 0.0
    a = np.arcsin(np.clip(x0 / r, -1.0, 1.0))
    b = np.arcsin(np.clip(x1 / r, -1.0, 1.0))
    breaks = [a, b]
    for y in (y0, y1):
        if abs(y) < r:
            c = np.arccos(abs(y) / r)  # r cos t = |y| at t = +-c
            breaks += [-c, c]
    breaks = sorted(t for t in breaks if a <= t <= b)

    def integrand(t):
        half = r * np.cos(t)
        height = np.clip(np.minimum(half, y1) - np.maximum(-half, y0), 0.0, None)
        return height * r * np.cos(t)

    return sum(_gauss_legendre(integrand, lo, hi) for lo, hi in zip(breaks[:-1], breaks[1:]))


def circle_overlap_grid(x: float, y: float, r: float, shape: tuple[int, int]) -> np.ndarray:
    """Pixel-by-pixel overlap of a circle with a grid (pixel (j, i) = [i-.5, i+.5] x [j-.5, j+.5])."""
    ny, nx = shape
    out = np.zeros((ny, nx))
    for j in range(ny):
        for i in range(nx):
            out[j, i] = disk_rectangle_area(i - 0.5 - x, i + 0.5 - x, j - 0.5 - y, j + 0.5 - y, r)
    return out
