"""Point-spread functions integrated over pixels: elliptical Moffat and Gaussian profiles.

What this module promises
-------------------------
- A profile of total flux F contributes to pixel (row j, column i) the integral of the profile
  over the pixel's square [i - 1/2, i + 1/2] x [j - 1/2, j + 1/2] (0-based, x = column, y = row).
  The integral is a tensor Gauss-Legendre rule whose node count is chosen per pixel from how far
  the pixel lies from the profile's nearest complex singularity (Moffat) or from a bound on the
  profile's growth off the real axis (Gaussian, which is entire), so that each pixel carries a
  relative error below `accuracy` (default 1e-9) or an absolute one below 1e-13 F, whichever is
  larger. A star's flux summed over a box large enough to hold its wings equals F to 1e-7 or
  better. `tests/test_psf_kernel.py` holds the sums to 1e-6 and every pixel to scipy's adaptive
  dblquad (`tests/reference.py::psf_kernel_pixel_grid`) within 2e-10 of the flux.
- Profiles are normalised analytically:
    Moffat:   I(x, y) = F (beta - 1) / (pi a b) [1 + q]^(-beta),
    Gaussian: I(x, y) = F / (2 pi a b) exp(-q / 2),
  with q = (x'/a)^2 + (y'/b)^2 in coordinates rotated by the position angle `angle` (radians,
  from the +x axis towards +y). `fwhm` is the geometric mean of the FWHMs along the two axes;
  `ellipticity` e = 1 - b/a.
- Each star is rendered only inside a square box of half-width `radius` pixels around it; the
  default radius leaves at most `tolerance` of the flux outside (`moffat_box_radius`,
  `gaussian_box_radius`).
- Kernels are pure functions of their inputs plus the image they add into; `add_stars` runs in
  parallel over horizontal bands of the image (no two threads write the same pixel), so the
  result does not depend on the thread count. Safe to call from several Python threads on
  different images.

Kernel layout: `_pixel_integral` is the scalar core (one star, one pixel), `_add_stars_bands`
the array driver. Both trust their inputs: call them only through `add_stars` (or the
`*_stamp` helpers), which check shapes, dtypes and values first.
"""

from __future__ import annotations

import math

import numpy as np
from numba import prange

from engine.errors import EngineValueError
from engine.kernels._jit import jit, set_threads

__all__ = [
    "GAUSSIAN",
    "MOFFAT",
    "add_stars",
    "fwhm_per_width",
    "gaussian_box_radius",
    "gaussian_profile",
    "gaussian_sigma",
    "gaussian_stamp",
    "moffat_alpha",
    "moffat_box_radius",
    "moffat_encircled_energy",
    "moffat_profile",
    "moffat_stamp",
]

GAUSSIAN = 0
MOFFAT = 1
_KINDS = {"gaussian": GAUSSIAN, "moffat": MOFFAT}

# Gauss-Legendre rules on one pixel ([-1/2, 1/2]): row n - 1 holds the n-node rule; weights sum
# to 1.
_MAX_NODES = 24
_NODES = np.zeros((_MAX_NODES, _MAX_NODES))
_WEIGHTS = np.zeros((_MAX_NODES, _MAX_NODES))
for _n in range(1, _MAX_NODES + 1):
    _t, _w = np.polynomial.legendre.leggauss(_n)
    _NODES[_n - 1, :_n] = 0.5 * _t
    _WEIGHTS[_n - 1, :_n] = 0.5 * _w
del _n, _t, _w

# Below this many pixel evaluations a render runs on one thread.
_SERIAL_WORK = 200_000

# Per-pixel accuracy aimed at (fraction of the star's flux); the node count follows from it.
_PIXEL_TOLERANCE = 1e-13


# ----------------------------------------------------------------------------------------------
# Shape helpers (Python, scalar or array)
# ----------------------------------------------------------------------------------------------

def fwhm_per_width(profile: str, beta=2.5):
    """FWHM of a profile of unit width: 2 sqrt(2^(1/beta) - 1) for a Moffat of core width alpha,
    2 sqrt(2 ln 2) for a Gaussian of sigma (beta ignored). The one conversion between the FWHM
    the engine speaks and the width parameter inside each profile's formula."""
    if profile == "moffat":
        return 2.0 * np.sqrt(np.power(2.0, 1.0 / np.asarray(beta, dtype=np.float64)) - 1.0)
    return 2.0 * math.sqrt(2.0 * math.log(2.0))


def moffat_alpha(fwhm, beta):
    """Moffat core width alpha for a FWHM: fwhm = 2 alpha sqrt(2^(1/beta) - 1)."""
    return np.asarray(fwhm, dtype=np.float64) / fwhm_per_width("moffat", beta)


def gaussian_sigma(fwhm):
    """Gaussian sigma for a FWHM: fwhm = 2 sqrt(2 ln 2) sigma."""
    return np.asarray(fwhm, dtype=np.float64) / fwhm_per_width("gaussian")


def _axes(width, ellipticity):
    """Major and minor axis widths whose geometric mean is `width`, with b/a = 1 - e."""
    ratio = 1.0 - np.asarray(ellipticity, dtype=np.float64)
    return width / np.sqrt(ratio), width * np.sqrt(ratio)


def moffat_encircled_energy(radius, fwhm, beta):
    """Fraction of a circular Moffat's flux inside `radius`: 1 - (1 + (r/alpha)^2)^(1 - beta)."""
    alpha = moffat_alpha(fwhm, beta)
    r = np.asarray(radius, dtype=np.float64)
    return 1.0 - np.power(1.0 + (r / alpha) ** 2, 1.0 - np.asarray(beta, dtype=np.float64))


def moffat_box_radius(fwhm, beta, ellipticity=0.0, tolerance=1e-6):
    """Half-width (pixels) of a box outside which at most `tolerance` of a Moffat's flux lies.

    Uses the circle that fits in the box and the major axis (a conservative bound).
    """
    a, _ = _axes(moffat_alpha(fwhm, beta), ellipticity)
    beta = np.asarray(beta, dtype=np.float64)
    return a * np.sqrt(np.power(tolerance, 1.0 / (1.0 - beta)) - 1.0)


def gaussian_box_radius(fwhm, ellipticity=0.0, tolerance=1e-6):
    """Half-width (pixels) of a box outside which at most `tolerance` of a Gaussian's flux lies."""
    a, _ = _axes(gaussian_sigma(fwhm), ellipticity)
    return a * math.sqrt(-2.0 * math.log(tolerance))


def moffat_profile(x, y, x0, y0, flux, fwhm, beta, ellipticity=0.0, angle=0.0):
    """Surface brightness of an elliptical Moffat at points (x, y) (per unit pixel area)."""
    a, b = _axes(moffat_alpha(fwhm, beta), ellipticity)
    q = _quadratic(np.asarray(x, float) - x0, np.asarray(y, float) - y0, a, b, angle)
    return flux * (beta - 1.0) / (math.pi * a * b) * np.power(1.0 + q, -beta)


def gaussian_profile(x, y, x0, y0, flux, fwhm, ellipticity=0.0, angle=0.0):
    """Surface brightness of an elliptical Gaussian at points (x, y) (per unit pixel area)."""
    a, b = _axes(gaussian_sigma(fwhm), ellipticity)
    q = _quadratic(np.asarray(x, float) - x0, np.asarray(y, float) - y0, a, b, angle)
    return flux / (2.0 * math.pi * a * b) * np.exp(-0.5 * q)


def _quadratic(dx, dy, a, b, angle):
    c, s = math.cos(angle), math.sin(angle)
    u = c * dx + s * dy
    v = -s * dx + c * dy
    return (u / a) ** 2 + (v / b) ** 2


# ----------------------------------------------------------------------------------------------
# Compiled kernels
# ----------------------------------------------------------------------------------------------

@jit
def _node_count(kind, d, a, b, beta, norm, log_tol, max_digits):
    """Gauss-Legendre nodes per axis for a pixel whose centre lies d pixels from the star.

    Moffat: (1 + q)^-beta is analytic except where q = -1, at a distance ~ the minor axis width
    b in the imaginary direction. Seen from a pixel (half-width 1/2) centred d away, that point
    lies on the Bernstein ellipse of parameter rho ~ |z| + sqrt(|z|^2 + 1), |z| = 2 sqrt(d^2 + b^2),
    and an n-node rule errs by ~ rho^(-2n) times the profile's size on the pixel. We ask for
    exp(-max_digits) of the pixel's value (the `accuracy`), or less where exp(log_tol) of the
    star's flux is a larger share of it,
    and for at least 2 nodes (the midpoint rule's bias in the wings would add up over wide boxes)
    unless the pixel holds less than exp(log_tol). The Gaussian, being entire, has its own rule
    (`_gaussian_node_count`).
    """
    near = d - 0.7072
    if near < 0.0:
        near = 0.0
    t = near / a
    if kind == 1:
        log_local = math.log(norm) - beta * math.log1p(t * t)
    else:
        log_local = math.log(norm) - 0.5 * t * t
    digits = log_local - log_tol
    if digits > max_digits:
        digits = max_digits
    if digits <= 0.0:
        return 1
    if kind == 0:
        # Callers pass the floor of the distance; the growth is worst at the far end.
        return _gaussian_node_count(d + 1.0, b, digits)
    z = 2.0 * math.sqrt(d * d + b * b)
    rho = z + math.sqrt(z * z + 1.0)
    # + 2.3: the error bound carries a constant of order 10 near the singularity.
    n = int(math.ceil((digits + 2.3) / (2.0 * math.log(rho))))
    if n < 2:
        n = 2
    if n > 24:
        n = 24
    return n


@jit
def _gaussian_node_count(d, sigma, digits):
    """Nodes per axis for a Gaussian pixel d pixels out (sigma: the narrower axis).

    The Gaussian is entire, so the Gauss-Legendre error on a pixel is bounded through any
    Bernstein ellipse rho (semi-axes (rho +- 1/rho) / 4 around the pixel):
    E <= (64/15) M(rho) rho^(-2n) / (rho^2 - 1), with M(rho) <= exp((d a + b^2 / 2) / sigma^2)
    the largest growth of the profile on that ellipse relative to the pixel centre. We take the
    best of a few ellipses, doubled for the two axes.
    """
    inv_var = 1.0 / (sigma * sigma)
    for n in range(1, 25):
        for rho in (1.3, 1.6, 2.0, 2.6, 3.5, 5.0, 7.0, 10.0, 15.0, 25.0, 40.0):
            a = 0.25 * (rho + 1.0 / rho)
            b = 0.25 * (rho - 1.0 / rho)
            log_error = (1.45 + (d * a + 0.5 * b * b) * inv_var - 2.0 * n * math.log(rho)
                         - math.log(rho * rho - 1.0))
            if log_error < -digits:
                return n
    return 24


@jit
def _pixel_integral(kind, dx, dy, c, s, inv_a, inv_b, beta, norm, n, nodes, weights):
    """Integral of a unit-flux profile over the pixel centred (dx, dy) from the star.

    c, s: cos and sin of the position angle; inv_a, inv_b: inverse axis widths; norm: the
    profile's peak normalisation; n: nodes per axis; nodes/weights: the rule table.
    """
    total = 0.0
    for p in range(n):
        ex = dx + nodes[n - 1, p]
        wx = weights[n - 1, p]
        row = 0.0
        for q in range(n):
            ey = dy + nodes[n - 1, q]
            u = (c * ex + s * ey) * inv_a
            v = (-s * ex + c * ey) * inv_b
            r2 = u * u + v * v
            if kind == 1:
                val = math.exp(-beta * math.log1p(r2))
            else:
                val = math.exp(-0.5 * r2)
            row += weights[n - 1, q] * val
        total += wx * row
    return norm * total


@jit(parallel=True)
def _add_stars_bands(image, x, y, flux, kind, width, beta, ellipticity, angle, radius,
                     log_tol, max_digits, band_rows, nodes, weights):
    """Add stars into `image` (float64, C order), in parallel over bands of `band_rows` rows.

    Every per-star array has the length of x; `width` is the profile's width parameter (Moffat
    alpha or Gaussian sigma, geometric mean of the axes). Inputs are trusted: finite, width > 0,
    beta > 1 for Moffat, 0 <= ellipticity < 1, 0 < radius <= max(image.shape) + 1.
    The node count of a pixel depends only on its distance d from the star; it is tabulated per
    star at integer distances (the count at floor(d) is the safe one: more flux, nearer the
    singularity).
    """
    ny, nx = image.shape
    n_bands = (ny + band_rows - 1) // band_rows
    n_stars = x.shape[0]
    table_size = int(math.ceil(1.4143 * (max(ny, nx) + 2.0))) + 2
    for band in prange(n_bands):
        row0 = band * band_rows
        row1 = min(ny, row0 + band_rows)
        counts = np.empty(table_size, dtype=np.int64)
        for k in range(n_stars):
            r = radius[k]
            j0 = max(row0, int(math.floor(y[k] - r)))
            j1 = min(row1 - 1, int(math.ceil(y[k] + r)))
            if j0 > j1:
                continue
            i0 = max(0, int(math.floor(x[k] - r)))
            i1 = min(nx - 1, int(math.ceil(x[k] + r)))
            if i0 > i1:
                continue
            ratio = 1.0 - ellipticity[k]
            a = width[k] / math.sqrt(ratio)
            b = width[k] * math.sqrt(ratio)
            if kind == 1:
                norm = (beta[k] - 1.0) / (math.pi * a * b)
            else:
                norm = 1.0 / (2.0 * math.pi * a * b)
            n_table = min(table_size, int(1.4143 * (r + 1.0)) + 2)
            for m in range(n_table):
                counts[m] = _node_count(kind, float(m), a, b, beta[k], norm, log_tol, max_digits)
            c = math.cos(angle[k])
            s = math.sin(angle[k])
            inv_a = 1.0 / a
            inv_b = 1.0 / b
            f = flux[k]
            for j in range(j0, j1 + 1):
                dy = j - y[k]
                for i in range(i0, i1 + 1):
                    dx = i - x[k]
                    m = int(math.sqrt(dx * dx + dy * dy))
                    if m >= n_table:
                        m = n_table - 1
                    image[j, i] += f * _pixel_integral(kind, dx, dy, c, s, inv_a, inv_b,
                                                       beta[k], norm, counts[m], nodes, weights)
    return image


# ----------------------------------------------------------------------------------------------
# Validating public functions
# ----------------------------------------------------------------------------------------------

def _per_star(name, value, n):
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        arr = np.full(n, float(arr))
    if arr.shape != (n,):
        raise EngineValueError(f"{name} must be a scalar or have one value per star ({n}), "
                               f"got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise EngineValueError(f"{name} must be finite")
    return np.ascontiguousarray(arr)


def add_stars(image, x, y, flux, fwhm, *, profile="moffat", beta=2.5, ellipticity=0.0,
              angle=0.0, radius=None, tolerance=1e-6, accuracy=1e-9, threads=None):
    """Add pixel-integrated stars into `image` in place and return it.

    image: 2-D float64 C-contiguous writable array (rows = y, columns = x).
    x, y: star centres, 0-based pixel coordinates (x = column); stars may lie off the image.
    flux: total flux of each star (any finite value; negative subtracts a model).
    fwhm: FWHM in pixels (geometric mean of the two axes); beta: Moffat exponent (> 1; ignored
    for the Gaussian); ellipticity: 1 - b/a in [0, 1); angle: major-axis position angle, radians
    from +x towards +y. Each may be a scalar or one value per star.
    radius: half-width in pixels of the square box each star is rendered in; default: where at
    most `tolerance` of the flux falls outside. accuracy: relative error allowed on each pixel's
    integral (default 1e-9; a simulator drowning it in photon noise may ask for 1e-5, which
    needs about half the nodes). threads: Numba threads (None: all).
    """
    if profile not in _KINDS:
        raise EngineValueError(f"profile must be one of {sorted(_KINDS)}, got {profile!r}")
    kind = _KINDS[profile]
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        raise EngineValueError("image must be a 2-D NumPy array")
    if image.dtype != np.float64 or not image.flags.c_contiguous or not image.flags.writeable:
        raise EngineValueError("image must be float64, C-contiguous and writable")
    stars = _star_values(kind, x, y, flux, fwhm, beta, ellipticity, angle)
    if not (0.0 < tolerance < 1.0):
        raise EngineValueError(f"tolerance must be in (0, 1), got {tolerance}")
    if not (1e-15 <= accuracy < 1.0):
        raise EngineValueError(f"accuracy must be in [1e-15, 1), got {accuracy}")
    width, radius = _widths_and_boxes(kind, stars, radius, tolerance, max(image.shape))
    if radius.size == 0:
        return image
    # Waking a thread pool costs far more than a small render (milliseconds on a busy
    # machine): stamps and small frames run on the calling thread.
    work = float(np.sum((2.0 * np.minimum(radius, max(image.shape)) + 1.0) ** 2))
    threads = set_threads(1 if work < _SERIAL_WORK else threads)
    band_rows = max(8, min(64, image.shape[0] // (4 * threads) or 8))
    _add_stars_bands(image, stars["x"], stars["y"], stars["flux"], kind, width, stars["beta"],
                     stars["ellipticity"], stars["angle"], radius, math.log(_PIXEL_TOLERANCE),
                     -math.log(accuracy), band_rows, _NODES, _WEIGHTS)
    return image


def _star_values(kind, x, y, flux, fwhm, beta, ellipticity, angle) -> dict[str, np.ndarray]:
    """`add_stars`' per-star values as checked float64 arrays of one length."""
    x = np.atleast_1d(np.asarray(x, dtype=np.float64))
    if x.ndim != 1:
        raise EngineValueError("x must be one-dimensional")
    n = x.shape[0]
    stars = {name: _per_star(name, value, n) for name, value in (
        ("x", x), ("y", y), ("flux", flux), ("fwhm", fwhm), ("beta", beta),
        ("ellipticity", ellipticity), ("angle", angle))}
    if np.any(stars["fwhm"] <= 0.0):
        raise EngineValueError("fwhm must be > 0")
    if kind == MOFFAT and np.any(stars["beta"] <= 1.0):
        raise EngineValueError("Moffat beta must be > 1 (otherwise it cannot be normalised)")
    if np.any(stars["ellipticity"] < 0.0) or np.any(stars["ellipticity"] >= 1.0):
        raise EngineValueError("ellipticity must be in [0, 1)")
    return stars


def _widths_and_boxes(kind, stars, radius, tolerance, image_size):
    """Each star's profile width (Moffat alpha or Gaussian sigma) and box half-width: `radius`,
    or where `tolerance` of its flux falls outside, bounded near the image's size so that
    off-image stars cost nothing."""
    fwhm, ellipticity = stars["fwhm"], stars["ellipticity"]
    if kind == MOFFAT:
        width = moffat_alpha(fwhm, stars["beta"])
        default_radius = moffat_box_radius(fwhm, stars["beta"], ellipticity, tolerance)
    else:
        width = gaussian_sigma(fwhm)
        default_radius = gaussian_box_radius(fwhm, ellipticity, tolerance)
    radius = _per_star("radius", default_radius if radius is None else radius, fwhm.size)
    if np.any(radius <= 0.0):
        raise EngineValueError("radius must be > 0")
    return (np.ascontiguousarray(width, dtype=np.float64),
            np.minimum(radius, float(image_size) + 1.0))


def moffat_stamp(shape, x, y, flux, fwhm, beta, ellipticity=0.0, angle=0.0, *, radius=None,
                 tolerance=1e-6, out=None, threads=None):
    """One pixel-integrated Moffat on a zero grid of `shape` (or added into `out`)."""
    image = _stamp_target(shape, out)
    return add_stars(image, [x], [y], [flux], fwhm, profile="moffat", beta=beta,
                     ellipticity=ellipticity, angle=angle, radius=radius, tolerance=tolerance,
                     threads=threads)


def gaussian_stamp(shape, x, y, flux, fwhm, ellipticity=0.0, angle=0.0, *, radius=None,
                   tolerance=1e-6, out=None, threads=None):
    """One pixel-integrated Gaussian on a zero grid of `shape` (or added into `out`)."""
    image = _stamp_target(shape, out)
    return add_stars(image, [x], [y], [flux], fwhm, profile="gaussian",
                     ellipticity=ellipticity, angle=angle, radius=radius, tolerance=tolerance,
                     threads=threads)


def _stamp_target(shape, out):
    if out is not None:
        return out
    try:
        ny, nx = (int(v) for v in shape)
    except (TypeError, ValueError):
        raise EngineValueError(f"shape must be two integers, got {shape!r}") from None
    if ny < 1 or nx < 1:
        raise EngineValueError(f"shape must be positive, got {shape!r}")
    return np.zeros((ny, nx), dtype=np.float64)
