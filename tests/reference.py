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


# ------------------------------------------------------------------------------------------------
# Windowed centroids (engine/kernels/centroid.py)
# ------------------------------------------------------------------------------------------------

def windowed_centroid(image, x, y, sigma, background, max_shift, max_iter, tolerance):
    """SExtractor's windowed centroid of each star, one star and one step at a time.

    Every step takes the pixels whose centres lie within 4 sigma of the current position, weights
    them by the Gaussian exp(-r^2 / (2 sigma^2)) times (value - background), and moves by twice
    the weighted mean offset. Returns (x, y, status) with the status bits of the kernel module:
    1 off image, 2 window truncated by the edge, 4 no flux, 8 moved too far, 16 not converged;
    on a failure the starting position is returned.
    """
    image = np.asarray(image, dtype=np.float64)
    ny, nx = image.shape
    n = len(x)
    sigma = np.broadcast_to(np.asarray(sigma, dtype=np.float64), (n,))
    background = np.broadcast_to(np.asarray(background, dtype=np.float64), (n,))
    rows, cols = np.mgrid[0:ny, 0:nx]
    out_x, out_y = np.array(x, dtype=np.float64), np.array(y, dtype=np.float64)
    status = np.zeros(n, dtype=np.uint8)
    for k in range(n):
        x0, y0, s = float(x[k]), float(y[k]), float(sigma[k])
        if not (-0.5 <= x0 < nx - 0.5 and -0.5 <= y0 < ny - 0.5):
            status[k] = 1
            continue
        cx, cy = x0, y0
        for _ in range(max_iter):
            r2 = (cols - cx) ** 2 + (rows - cy) ** 2
            inside = (r2 <= (4.0 * s) ** 2) & np.isfinite(image)
            if not inside.any():
                status[k] = 1
                break
            w = np.exp(-r2[inside] / (2.0 * s * s)) * (image[inside] - background[k])
            if not w.sum() > 0.0:
                status[k] = 4
                break
            step_x = 2.0 * np.sum(w * (cols[inside] - cx)) / w.sum()
            step_y = 2.0 * np.sum(w * (rows[inside] - cy)) / w.sum()
            cx, cy = cx + step_x, cy + step_y
            if np.hypot(cx - x0, cy - y0) > max_shift:
                status[k] = 8
                break
            if np.hypot(step_x, step_y) < tolerance:
                r = 4.0 * s
                if cx - r < 0 or cy - r < 0 or cx + r > nx - 1 or cy + r > ny - 1:
                    status[k] = 2
                out_x[k], out_y[k] = cx, cy
                break
        else:
            status[k] = 16
    return out_x, out_y, status


# ---------------------------------------------------------------------------------------------
# Aperture photometry
# ---------------------------------------------------------------------------------------------

def aperture_sum(image: np.ndarray, x: float, y: float, r: float) -> tuple[float, float]:
    """(sum of overlap * value, sum of overlap) over the image, pixel by pixel."""
    ny, nx = image.shape
    weights = circle_overlap_grid(x, y, r, (ny, nx)) if max(ny, nx) <= 40 else None
    if weights is None:  # only the box around the circle, for larger images
        weights = np.zeros((ny, nx))
        j0, j1 = max(0, int(np.floor(y - r - 1))), min(ny, int(np.ceil(y + r + 2)))
        i0, i1 = max(0, int(np.floor(x - r - 1))), min(nx, int(np.ceil(x + r + 2)))
        weights[j0:j1, i0:i1] = circle_overlap_grid(x - i0, y - j0, r, (j1 - j0, i1 - i0))
    return float(np.sum(weights * image)), float(np.sum(weights))


def annulus_background(image: np.ndarray, x: float, y: float, inner: float, outer: float,
                       others=(), mask_radius: float = 0.0, sigma: float = 3.0,
                       iterations: int = 5) -> tuple[float, float, int]:
    """(median, std, count) of annulus pixels (centre within [inner, outer)) by astropy."""
    from astropy.stats import sigma_clip

    jj, ii = np.indices(image.shape)
    d2 = (ii - x) ** 2 + (jj - y) ** 2
    keep = (d2 >= inner ** 2) & (d2 < outer ** 2) & np.isfinite(image)
    for ox, oy in others:
        keep &= (ii - ox) ** 2 + (jj - oy) ** 2 >= mask_radius ** 2
    values = image[keep].astype(np.float64)
    if values.size == 0:
        return float("nan"), float("nan"), 0
    clipped = sigma_clip(values, sigma=sigma, maxiters=iterations, cenfunc="median", stdfunc="std")
    kept = clipped.compressed()
    return float(np.median(kept)), float(np.std(kept)), int(kept.size)


# ------------------------------------------------------------------------------------------------
# Transit light curves (engine.kernels.transit). The occulted flux is integrated directly over the
# stellar disk, ring by ring: no elliptic integrals, nothing shared with the analytic kernel.
# ------------------------------------------------------------------------------------------------

def transit_occulted_flux(z: float, p: float, u1: float, u2: float) -> float:
    """Visible / total flux of a quadratically limb-darkened star behind a disk of radius p at z.

    Blocked flux = integral over r in [0, 1] of I(r) * (length of the ring of radius r that lies
    inside the planet's disk), the length being 2 r arccos((r^2 + z^2 - p^2) / (2 r z)) clipped to
    [0, 2 pi r]. The integrand changes form at r = |z - p| and r = z + p and has square-root ends
    there and at r = 1 (mu = sqrt(1 - r^2)); between breakpoints we integrate over t in [0, pi]
    with r = a + (b - a)(1 - cos t) / 2, which makes those ends smooth for scipy's quad. The total
    flux is pi (1 - u1/3 - u2/6).
    """
    import math

    from scipy import integrate

    z, p, u1, u2 = abs(float(z)), float(p), float(u1), float(u2)
    if z >= 1.0 + p:
        return 1.0

    def intensity(r):
        mu = math.sqrt(max(0.0, 1.0 - r * r))
        return 1.0 - u1 * (1.0 - mu) - u2 * (1.0 - mu) ** 2

    def arc_inside_planet(r):
        if r <= 0.0:
            return 0.0
        if z == 0.0:
            return 2.0 * math.pi * r if r < p else 0.0
        cosine = (r * r + z * z - p * p) / (2.0 * r * z)
        return 2.0 * r * math.acos(min(1.0, max(-1.0, cosine)))

    edges = sorted({0.0, 1.0} | {x for x in (abs(z - p), z + p) if 0.0 < x < 1.0})
    blocked = 0.0
    for a, b in zip(edges[:-1], edges[1:]):
        half = 0.5 * (b - a)

        def integrand(t, a=a, half=half):
            r = a + half * (1.0 - math.cos(t))
            return intensity(r) * arc_inside_planet(r) * half * math.sin(t)

        value, _ = integrate.quad(integrand, 0.0, math.pi, epsabs=1e-15, epsrel=1e-13, limit=100)
        blocked += value
    return 1.0 - blocked / (math.pi * (1.0 - u1 / 3.0 - u2 / 6.0))


def transit_projected_separation(time, t0, period, a_rs, inc_deg) -> np.ndarray:
    """Circular orbit: z = a sqrt(sin^2 phi + cos^2 i cos^2 phi), inf where cos phi < 0."""
    phi = 2.0 * np.pi * (np.asarray(time, dtype=float) - t0) / period
    cos_i = np.cos(np.radians(inc_deg))
    z = a_rs * np.sqrt(np.sin(phi) ** 2 + (cos_i * np.cos(phi)) ** 2)
    return np.where(np.cos(phi) < 0.0, np.inf, z)


def transit_exposure_average(flux_of_time, time, exptime, samples: int = 20000) -> np.ndarray:
    """Brute-force exposure averages: the mean of `flux_of_time` over `samples` evenly spaced
    midpoints of [t - exptime/2, t + exptime/2], for each t in `time`."""
    time = np.atleast_1d(np.asarray(time, dtype=float))
    offsets = ((np.arange(samples) + 0.5) / samples - 0.5) * exptime
    return np.array([np.mean(flux_of_time(t + offsets)) for t in time])
