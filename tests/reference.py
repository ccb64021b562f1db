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


# ------------------------------------------------------------------------------------------------
# Calibration (engine/kernels/calibrate.py) and sigma-clipped combine (engine/kernels/combine.py).
# Float64 NumPy, whole arrays at once for calibration and one pixel at a time for the combine.
# ------------------------------------------------------------------------------------------------

def calibrate_frames(raw, *, bias=None, dark=None, dark_scale=None, flat=None, bad_pixels=None,
                     saturation=None, overscan=None, overscan_method="median", trim=None,
                     nonlinearity=None, gain=None, read_noise=0.0):
    """(raw - overscan - bias, through the non-linearity polynomial, - dark * scale) / flat.

    Returns (data, mask, uncertainty) in float64 (uncertainty None without a gain), the mask as
    int64 PixelFlag bits: the bad-pixel bits, SATURATED where the raw value >= saturation
    (default: the integer type's largest value), NONFINITE where the data are not finite. Flat
    pixels that are not > 0 give NaN. Sections are 0-based half-open: trim (y0, y1, x0, x1),
    overscan (x0, x1) raw columns, whose per-row median or mean of finite values is subtracted.
    """
    from engine.flags import PixelFlag

    raw = np.asarray(raw)
    cube = raw[None] if raw.ndim == 2 else raw
    values = cube.astype(np.float64)
    if overscan is not None:
        strip = values[:, :, overscan[0]:overscan[1]]
        average = np.nanmedian if overscan_method == "median" else np.nanmean
        values = values - average(strip, axis=2, keepdims=True)
    y0, y1, x0, x1 = trim if trim is not None else (0, cube.shape[1], 0, cube.shape[2])
    values = values[:, y0:y1, x0:x1]
    raw_kept = cube[:, y0:y1, x0:x1]
    if bias is not None:
        values = values - np.asarray(bias, dtype=np.float64)
    if nonlinearity is not None:
        values = np.polynomial.polynomial.polyval(values, np.asarray(nonlinearity, np.float64))
    variance = None
    if gain is not None:
        variance = np.maximum(values, 0.0) / gain + (read_noise / gain) ** 2
    if dark is not None:
        scale = np.broadcast_to(np.asarray(dark_scale, dtype=np.float64), (cube.shape[0],))
        values = values - np.asarray(dark, dtype=np.float64) * scale[:, None, None]
    uncertainty = None if variance is None else np.sqrt(variance)
    if flat is not None:
        flat = np.asarray(flat, dtype=np.float64)
        good = flat > 0
        with np.errstate(divide="ignore", invalid="ignore"):
            values = np.where(good, values / flat, np.nan)
            if uncertainty is not None:
                uncertainty = np.where(good, uncertainty / flat, np.nan)
    mask = np.zeros(values.shape, np.int64)
    if bad_pixels is not None:
        bad = np.asarray(bad_pixels)
        mask |= np.where(bad, int(PixelFlag.BAD), 0) if bad.dtype == bool else bad.astype(np.int64)
    if saturation is None and cube.dtype.kind in "iu":
        saturation = np.iinfo(cube.dtype).max
    if saturation is not None:
        mask |= np.where(raw_kept >= saturation, int(PixelFlag.SATURATED), 0)
    mask |= np.where(np.isfinite(values), 0, int(PixelFlag.NONFINITE))
    if raw.ndim == 2:
        values, mask = values[0], mask[0]
        uncertainty = None if uncertainty is None else uncertainty[0]
    return values, mask, uncertainty


def sigma_clip_bounds(values, sigma_lower=3.0, sigma_upper=3.0, maxiters=5, cenfunc="median",
                      stdfunc="std"):
    """Sigma clipping of one pixel's values as astropy's sigma_clip documents it.

    Returns (lower, upper): the last bounds (NaN without a finite value). The values kept are
    the finite ones inside them. maxiters None: until nothing changes.
    """
    values = np.asarray(values, dtype=np.float64)
    kept = values[np.isfinite(values)]
    if kept.size == 0:
        return np.nan, np.nan
    iteration = 0
    while True:
        center = np.median(kept) if cenfunc == "median" else np.mean(kept)
        if stdfunc == "std":
            std = np.std(kept)
        else:
            std = 1.482602218505602 * np.median(np.abs(kept - np.median(kept)))
        lower, upper = center - sigma_lower * std, center + sigma_upper * std
        new = kept[(kept >= lower) & (kept <= upper)]
        iteration += 1
        if new.size in (kept.size, 0) or (maxiters is not None and iteration >= maxiters):
            return lower, upper
        kept = new


def sigma_clip_combine(stack, method="mean", sigma=3.0, maxiters=5, cenfunc="median",
                       stdfunc="std"):
    """Sigma-clip each pixel of a stack (n, ...) along axis 0, then average what is kept.

    Returns (combined, counts) in float64 / int64: the mean or median of each pixel's finite
    values inside its last bounds (NaN if none), and how many there are.
    """
    stack = np.asarray(stack, dtype=np.float64)
    columns = stack.reshape(stack.shape[0], -1)
    combined = np.full(columns.shape[1], np.nan)
    counts = np.zeros(columns.shape[1], np.int64)
    for i in range(columns.shape[1]):
        values = columns[:, i]
        lower, upper = sigma_clip_bounds(values, sigma, sigma, maxiters, cenfunc, stdfunc)
        kept = values[(values >= lower) & (values <= upper)]
        counts[i] = kept.size
        if kept.size:
            combined[i] = np.mean(kept) if method == "mean" else np.median(kept)
    return combined.reshape(stack.shape[1:]), counts.reshape(stack.shape[1:])


# ----------------------------------------------------------------------------------------------
# PSF profiles (engine.kernels.psf): pixel integrals by adaptive quadrature
# ----------------------------------------------------------------------------------------------

def psf_kernel_profile(kind, x, y, x0, y0, flux, fwhm, beta=2.5, ellipticity=0.0, angle=0.0):
    """Surface brightness of a normalised elliptical Moffat or Gaussian (textbook forms).

    fwhm is the geometric mean of the two axes' FWHMs, ellipticity = 1 - b/a, angle the major
    axis' angle from +x towards +y (radians).
    """
    if kind == "moffat":
        width = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    else:
        width = fwhm / (2.0 * np.sqrt(2.0 * np.log(2.0)))
    a = width / np.sqrt(1.0 - ellipticity)
    b = width * np.sqrt(1.0 - ellipticity)
    dx, dy = x - x0, y - y0
    u = np.cos(angle) * dx + np.sin(angle) * dy
    v = -np.sin(angle) * dx + np.cos(angle) * dy
    q = (u / a) ** 2 + (v / b) ** 2
    if kind == "moffat":
        return flux * (beta - 1.0) / (np.pi * a * b) * (1.0 + q) ** (-beta)
    return flux / (2.0 * np.pi * a * b) * np.exp(-0.5 * q)


def psf_kernel_pixel_grid(kind, shape, x0, y0, flux, fwhm, beta=2.5, ellipticity=0.0, angle=0.0):
    """Each pixel's integral of `psf_kernel_profile` by scipy's adaptive dblquad (slow, obvious)."""
    from scipy.integrate import dblquad

    ny, nx = shape
    out = np.zeros(shape)
    for j in range(ny):
        for i in range(nx):
            value, _ = dblquad(
                lambda yy, xx: psf_kernel_profile(kind, xx, yy, x0, y0, flux, fwhm, beta,
                                                  ellipticity, angle),
                i - 0.5, i + 0.5, j - 0.5, j + 0.5, epsabs=1e-14, epsrel=1e-11)
            out[j, i] = value
    return out


# ------------------------------------------------------------------------------------------------
# Ensemble photometry (engine/kernels/ensemble.py): the weighted comparison ensemble and SysRem,
# written loop by loop in plain Python over frames and stars.
# ------------------------------------------------------------------------------------------------

def weighted_ensemble(mag, var, valid=None, clip=5.0, min_stars=2, max_iter=50, tol=1e-9,
                      unclipped_iterations=2):
    """The iteration of `engine.kernels.ensemble.weighted_ensemble`, one number at a time.

    Starts from each star's mean magnitude and no excess. Each iteration: (1) every frame's zero point is the weighted mean, over the stars it uses,
    of mag - star_mag with weights 1 / (var + excess); (2) every star's mean is the weighted
    mean of mag - zero_point; its leave-one-out residuals r (against the other stars' zero
    point) give one moment step of its excess variance e:
        e = max(0, sum u (r^2 - var - v_others) / sum u),  u = 1 / (var + e)^2
    with v_others = 1 / (the other stars' weight sum); (3) from iteration `unclipped_iterations`
    on, a measurement is used when r^2 <= clip^2 (var + e_old + v_others), e_old the excess the
    step started from. Stop when nothing moves more than tol and no use changed. Returns a dict
    of the EnsembleFit fields.
    """
    mag = np.array(mag, dtype=float)
    var = np.array(var, dtype=float)
    n_frames, n_stars = mag.shape
    ok = np.isfinite(mag) & np.isfinite(var) & (var > 0)
    if valid is not None:
        ok &= np.asarray(valid, dtype=bool)
    use = ok.copy()
    star_mag = np.zeros(n_stars)
    for i in range(n_stars):
        values = [mag[k, i] for k in range(n_frames) if ok[k, i]]
        star_mag[i] = float(np.sum(values) / len(values)) if values else 0.0
    excess = np.zeros(n_stars)

    def zero_points():
        z = np.full(n_frames, np.nan)
        wsum = np.zeros(n_frames)
        count = np.zeros(n_frames, dtype=int)
        for k in range(n_frames):
            total = 0.0
            for i in range(n_stars):
                if use[k, i]:
                    w = 1.0 / (var[k, i] + excess[i])
                    total += w * (mag[k, i] - star_mag[i])
                    wsum[k] += w
                    count[k] += 1
            if count[k] >= min_stars:
                z[k] = total / wsum[k]
        return z, wsum, count

    previous_zero = None
    converged = False
    iterations = 0
    for iteration in range(max_iter):
        iterations = iteration + 1
        z, wsum, count = zero_points()
        moved = 0.0 if previous_zero is None else np.inf
        if previous_zero is not None and np.array_equal(np.isnan(z), np.isnan(previous_zero)):
            both = ~np.isnan(z)
            moved = float(np.max(np.abs(z[both] - previous_zero[both]))) if both.any() else 0.0
        previous_zero = z
        moved_mag = 0.0
        changes = 0
        for i in range(n_stars):
            frames = [k for k in range(n_frames) if use[k, i] and not np.isnan(z[k])]
            old_e = excess[i]
            if frames:
                w = np.array([1.0 / (var[k, i] + old_e) for k in frames])
                x = np.array([mag[k, i] - z[k] for k in frames])
                mean = float(np.sum(w * x) / np.sum(w))
            else:
                mean = star_mag[i]
            num = den = 0.0
            for k in frames:
                w = 1.0 / (var[k, i] + old_e)
                others = wsum[k] - w
                if others <= 0:
                    continue
                r = (mag[k, i] - mean - z[k]) * wsum[k] / others
                u = 1.0 / (var[k, i] + old_e) ** 2
                num += u * (r * r - var[k, i] - 1.0 / others)
                den += u
            new_e = max(num / den, 0.0) if den > 0 else old_e
            if iteration >= unclipped_iterations:
                for k in range(n_frames):
                    if not ok[k, i] or np.isnan(z[k]):
                        continue
                    if use[k, i]:
                        w = 1.0 / (var[k, i] + old_e)
                        others = wsum[k] - w
                        if others <= 0:
                            continue
                        r = (mag[k, i] - mean - z[k]) * wsum[k] / others
                    else:
                        others = wsum[k]
                        if others <= 0:
                            continue
                        r = mag[k, i] - mean - z[k]
                    keep = r * r <= clip * clip * (var[k, i] + old_e + 1.0 / others)
                    if keep != use[k, i]:
                        use[k, i] = keep
                        changes += 1
            if not (np.isnan(mean) and np.isnan(star_mag[i])):
                moved_mag = max(moved_mag, abs(mean - star_mag[i]))
            star_mag[i] = mean
            excess[i] = new_e
        if (iteration > unclipped_iterations and moved <= tol and moved_mag <= tol
                and changes == 0):
            converged = True
            break

    z, wsum, count = zero_points()
    has = ~np.isnan(z)
    weight = np.zeros((n_frames, n_stars))
    for k in range(n_frames):
        for i in range(n_stars):
            if has[k] and use[k, i]:
                weight[k, i] = 1.0 / (var[k, i] + excess[i])
    if has.any():
        shift = float(np.mean(z[has]))
        z = z - shift
        star_mag = star_mag + shift
    star_mag = np.array([star_mag[i] if use[:, i].any() else np.nan for i in range(n_stars)])
    return {"zero_point": z, "zero_point_var": np.where(has, 1.0 / np.where(has, wsum, 1.0),
                                                        np.nan),
            "star_mag": star_mag, "excess": excess, "weight": weight,
            "used": use & has[:, None], "stars_used": np.where(has, count, 0),
            "iterations": iterations, "converged": converged}


def sysrem(residual, var, components=1, initial=None, max_iter=100, tol=1e-7):
    """SysRem (Tamuz, Mazeh & Zucker 2005), one component after another.

    For each component: alternately a_j = sum_k w r c / sum_k w c^2 (every star) and
    c_k = sum_j w r a / sum_j w a^2 (every frame), w = 1 / var (0 where missing), rescaling c
    to unit rms, until c moves less than tol; then a once more and r -= c a. Returns a dict of
    the SysremFit fields.
    """
    r = np.array(residual, dtype=float)
    var = np.array(var, dtype=float)
    n_frames, n_stars = r.shape
    ok = np.isfinite(r) & np.isfinite(var) & (var > 0)
    w = np.where(ok, 1.0 / np.where(ok, var, 1.0), 0.0)
    r = np.where(ok, r, 0.0)
    start = np.ones(n_frames) if initial is None else np.array(initial, dtype=float)
    vectors, coefficients, iterations = [], [], []
    for _ in range(components):
        c = start.copy()
        a = np.zeros(n_stars)

        def star_coefficients(c):
            out = np.zeros(n_stars)
            for j in range(n_stars):
                num = sum(w[k, j] * r[k, j] * c[k] for k in range(n_frames) if w[k, j] > 0)
                den = sum(w[k, j] * c[k] * c[k] for k in range(n_frames) if w[k, j] > 0)
                out[j] = num / den if den > 0 else 0.0
            return out

        count = 0
        for it in range(max_iter):
            count = it + 1
            a = star_coefficients(c)
            previous = c.copy()
            for k in range(n_frames):
                num = sum(w[k, j] * r[k, j] * a[j] for j in range(n_stars) if w[k, j] > 0)
                den = sum(w[k, j] * a[j] * a[j] for j in range(n_stars) if w[k, j] > 0)
                c[k] = num / den if den > 0 else 0.0
            scale = np.sqrt(np.mean(c * c))
            if scale == 0:
                break
            c = c / scale
            if np.max(np.abs(c - previous)) <= tol:
                break
        a = star_coefficients(c)
        r = r - np.outer(c, a)
        vectors.append(c)
        coefficients.append(a)
        iterations.append(count)
    return {"vectors": np.array(vectors).reshape(components, n_frames),
            "coefficients": np.array(coefficients).reshape(components, n_stars),
            "cleaned": np.where(ok, r, np.nan), "iterations": np.array(iterations)}


def sigma_clipped_mean_numpy(stack, sigma=3.0, maxiters=5):
    """Sigma-clipped mean along axis 0, whole arrays at a time in NumPy (for large stacks).

    The algorithm of `sigma_clip_bounds` with cenfunc median and stdfunc std: each pixel's
    clipping continues until it keeps as many values as before (or none, or maxiters), and the
    mean is over every finite value inside the pixel's last bounds.
    """
    import warnings

    data = np.asarray(stack, dtype=np.float64)
    kept = np.where(np.isfinite(data), data, np.nan)
    lower = np.full(data.shape[1:], np.nan)
    upper = np.full(data.shape[1:], np.nan)
    active = np.any(np.isfinite(kept), axis=0)
    count = np.sum(np.isfinite(kept), axis=0)
    for _ in range(maxiters):
        if not active.any():
            break
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            center = np.nanmedian(kept, axis=0)
            std = np.nanstd(kept, axis=0)
        new_lower, new_upper = center - sigma * std, center + sigma * std
        lower = np.where(active, new_lower, lower)
        upper = np.where(active, new_upper, upper)
        with np.errstate(invalid="ignore"):
            clipped = np.where((kept >= lower) & (kept <= upper), kept, np.nan)
        new_count = np.sum(np.isfinite(clipped), axis=0)
        stop = active & ((new_count == count) | (new_count == 0))
        go = active & ~stop
        kept = np.where(go, clipped, kept)
        count = np.where(go, new_count, count)
        active = go
    with np.errstate(invalid="ignore"):
        inside = np.isfinite(data) & (data >= lower) & (data <= upper)
    total = np.where(inside, data, 0.0).sum(axis=0)
    n = inside.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, total / n, np.nan)


# ------------------------------------------------------------------------------------------------
# PSF photometry (engine/cext/src/psf_*.cpp through engine.psf). Written from the
# definitions in engine/cext/include/engine/psf.hpp, sharing nothing with the compiled code:
# pixel integrals by a fixed 24 x 24 Gauss-Legendre product rule on every pixel (no adaptive node
# counts, no erf), groups by an all-pairs union-find, fits by scipy.optimize.least_squares with
# finite-difference Jacobians, covariance from a central-difference Jacobian at the solution.
# ------------------------------------------------------------------------------------------------

_PSF_NODES, _PSF_WEIGHTS = np.polynomial.legendre.leggauss(24)
_PSF_NODES = 0.5 * _PSF_NODES
_PSF_WEIGHTS = 0.5 * _PSF_WEIGHTS


def psf_profile(model: str, shape, dx, dy):
    """Surface brightness of a unit-flux profile at offsets (dx, dy) from its centre."""
    a, b, c, beta = (float(v) for v in shape)
    q = a * dx * dx + 2.0 * b * dx * dy + c * dy * dy
    det = a * c - b * b
    if model == "moffat":
        return (beta - 1.0) * np.sqrt(det) / np.pi * (1.0 + q) ** (-beta)
    return np.sqrt(det) / (2.0 * np.pi) * np.exp(-0.5 * q)


def psf_pixels(model: str, shape, x0: float, y0: float, columns, rows):
    """Integrals of the unit-flux profile centred at (x0, y0) over the pixels (columns, rows)."""
    columns = np.asarray(columns, dtype=np.float64)[:, None, None]
    rows = np.asarray(rows, dtype=np.float64)[:, None, None]
    dx = columns + _PSF_NODES[None, :, None] - x0
    dy = rows + _PSF_NODES[None, None, :] - y0
    weights = _PSF_WEIGHTS[None, :, None] * _PSF_WEIGHTS[None, None, :]
    return np.sum(weights * psf_profile(model, shape, dx, dy), axis=(1, 2))


def psf_groups(x, y, box: int, valid) -> list[list[int]]:
    """Stars (indices where `valid`) whose (2 box + 1)^2 boxes overlap, by all-pairs union-find."""
    cx, cy = np.ceil(np.asarray(x) - 0.5), np.ceil(np.asarray(y) - 0.5)
    stars = [int(s) for s in np.flatnonzero(valid)]
    parent = {s: s for s in stars}

    def find(s):
        while parent[s] != s:
            s = parent[s]
        return s

    for i, s in enumerate(stars):
        for t in stars[i + 1:]:
            if abs(cx[s] - cx[t]) <= 2 * box and abs(cy[s] - cy[t]) <= 2 * box:
                parent[max(find(s), find(t))] = min(find(s), find(t))
    groups: dict[int, list[int]] = {}
    for s in stars:
        groups.setdefault(find(s), []).append(s)
    return list(groups.values())


def psf_fit_group(image, members, x, y, shapes, *, model: str, box: int, background: str,
                  fit_positions: bool, gain: float = 1.0, read_noise: float = 0.0,
                  pixel_flags=None, model_variance: bool = False) -> dict[int, dict]:
    """The engine's fit of one group, done the slow way.

    Pixels: the union of the members' boxes on the image, less non-finite and flagged ones.
    Model: background (none / constant / plane in (x - xg) / box, (y - yg) / box about the mean
    box centre) plus each member's flux times its pixel integrals, on the pixels within 3 box
    (Chebyshev) of its box centre. Weights 1 / max(read_noise^2 + max(signal, 0), 1) with the
    signal the data (or the model of a first fit, refitted once). Returns per member: flux,
    flux_err, x, y, x_err, y_err, background (at the star) and chi2_reduced.
    """
    from scipy.optimize import least_squares

    ny, nx = image.shape
    cx = np.ceil(np.asarray(x, dtype=np.float64) - 0.5).astype(int)
    cy = np.ceil(np.asarray(y, dtype=np.float64) - 0.5).astype(int)
    pixels = set()
    for s in members:
        for j in range(max(0, cy[s] - box), min(ny - 1, cy[s] + box) + 1):
            for i in range(max(0, cx[s] - box), min(nx - 1, cx[s] + box) + 1):
                pixels.add((j, i))
    pixels = sorted(pixels)
    rows = np.array([p[0] for p in pixels])
    columns = np.array([p[1] for p in pixels])
    data = image[rows, columns].astype(np.float64) * gain
    usable = np.isfinite(data)
    if pixel_flags is not None:
        usable &= (np.asarray(pixel_flags)[rows, columns] & 15) == 0
    rows, columns, data = rows[usable], columns[usable], data[usable]
    n_background = {"none": 0, "constant": 1, "plane": 3}[background]
    per_star = 3 if fit_positions else 1
    gx = np.mean([cx[s] for s in members])
    gy = np.mean([cy[s] for s in members])
    u, v = (columns - gx) / box, (rows - gy) / box
    reach = [(np.abs(columns - cx[s]) <= 3 * box) & (np.abs(rows - cy[s]) <= 3 * box) for s in members]

    def model_of(p):
        m = np.zeros(data.size)
        if n_background >= 1:
            m += p[0]
        if n_background == 3:
            m += p[1] * u + p[2] * v
        for k, s in enumerate(members):
            flux = p[n_background + per_star * k]
            xs, ys = (p[n_background + per_star * k + 1], p[n_background + per_star * k + 2]) \
                if fit_positions else (x[s], y[s])
            m[reach[k]] += flux * psf_pixels(model, shapes[s], xs, ys, columns[reach[k]], rows[reach[k]])
        return m

    start = np.zeros(n_background + per_star * len(members))
    for k, s in enumerate(members):
        start[n_background + per_star * k] = max(np.sum(data[reach[k]]) / len(members), 1.0)
        if fit_positions:
            start[n_background + per_star * k + 1: n_background + per_star * k + 3] = x[s], y[s]

    def fit(weights, p0):
        root_w = np.sqrt(weights)
        result = least_squares(lambda p: root_w * (data - model_of(p)), p0, method="lm",
                               xtol=1e-15, ftol=1e-15, gtol=1e-15, max_nfev=20000)
        return result.x

    weights = 1.0 / np.maximum(read_noise ** 2 + np.maximum(data, 0.0), 1.0)
    p = fit(weights, start)
    if model_variance:
        weights = 1.0 / np.maximum(read_noise ** 2 + np.maximum(model_of(p), 0.0), 1.0)
        p = fit(weights, p)
    # Covariance (J^T W J)^-1 from a central-difference Jacobian of the model.
    jac = np.empty((data.size, p.size))
    for a in range(p.size):
        h = 1e-6 * max(abs(p[a]), 1.0)
        up, down = p.copy(), p.copy()
        up[a] += h
        down[a] -= h
        jac[:, a] = (model_of(up) - model_of(down)) / (2 * h)
    covariance = np.linalg.inv(jac.T @ (weights[:, None] * jac))
    residual = data - model_of(p)
    chi2 = float(np.sum(weights * residual ** 2))
    out = {}
    for k, s in enumerate(members):
        f = n_background + per_star * k
        xs, ys = (p[f + 1], p[f + 2]) if fit_positions else (x[s], y[s])
        bkg = 0.0
        if n_background >= 1:
            bkg = p[0]
        if n_background == 3:
            bkg += p[1] * (xs - gx) / box + p[2] * (ys - gy) / box
        out[s] = dict(flux=p[f], flux_err=np.sqrt(covariance[f, f]), x=xs, y=ys,
                      x_err=np.sqrt(covariance[f + 1, f + 1]) if fit_positions else np.nan,
                      y_err=np.sqrt(covariance[f + 2, f + 2]) if fit_positions else np.nan,
                      background=bkg, chi2_reduced=chi2 / (data.size - p.size))
    return out


def psf_photometry(image, x, y, shapes, *, model: str, box: int, background: str = "constant",
                   fit_positions: bool = False, gain: float = 1.0, read_noise: float = 0.0,
                   pixel_flags=None, model_variance: bool = False) -> dict[str, np.ndarray]:
    """Every star of one image: groups by overlapping boxes, each fitted by psf_fit_group.
    Stars whose centre is off the image are not fitted (NaN). shapes: (n, 4)."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    ny, nx = image.shape
    valid = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x <= nx - 0.5) & (y > -0.5) & (y <= ny - 0.5)
    keys = ("flux", "flux_err", "x", "y", "x_err", "y_err", "background", "chi2_reduced")
    out = {key: np.full(x.size, np.nan) for key in keys}
    for members in psf_groups(x, y, box, valid):
        fitted = psf_fit_group(image, members, x, y, shapes, model=model, box=box,
                               background=background, fit_positions=fit_positions, gain=gain,
                               read_noise=read_noise, pixel_flags=pixel_flags,
                               model_variance=model_variance)
        for s, values in fitted.items():
            for key in keys:
                out[key][s] = values[key]
    return out


def psf_fit_shape(image, x, y, initial, *, model: str, box: int, gain: float = 1.0,
                  read_noise: float = 0.0, fit_beta: bool = True):
    """A constant PSF shape (a, b, c[, beta]) shared by the stars at (x, y), each with its own
    flux, position and constant background, each on its own (2 box + 1)^2 box; least_squares.
    Returns the fitted (a, b, c, beta) and the per-star fluxes."""
    from scipy.optimize import least_squares

    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    boxes = []
    for s in range(x.size):
        cx, cy = int(np.ceil(x[s] - 0.5)), int(np.ceil(y[s] - 0.5))
        jj, ii = np.mgrid[cy - box:cy + box + 1, cx - box:cx + box + 1]
        data = image[jj, ii].ravel().astype(np.float64) * gain
        weights = 1.0 / np.maximum(read_noise ** 2 + np.maximum(data, 0.0), 1.0)
        boxes.append((ii.ravel(), jj.ravel(), data, np.sqrt(weights)))
    n_shape = 4 if (model == "moffat" and fit_beta) else 3
    beta0 = float(initial[3])

    def residuals(p):
        shape = (p[0], p[1], p[2], p[3] if n_shape == 4 else beta0)
        if p[0] <= 0 or p[2] <= 0 or p[0] * p[2] <= p[1] ** 2 or (model == "moffat" and shape[3] <= 1):
            return np.full(sum(b[2].size for b in boxes), 1e10)
        out = []
        for s, (ii, jj, data, root_w) in enumerate(boxes):
            flux, xs, ys, bkg = p[n_shape + 4 * s: n_shape + 4 * s + 4]
            out.append(root_w * (data - bkg - flux * psf_pixels(model, shape, xs, ys, ii, jj)))
        return np.concatenate(out)

    start = list(np.asarray(initial, dtype=np.float64)[:n_shape])
    for s, (ii, jj, data, _) in enumerate(boxes):
        edge = np.median(data[(np.abs(ii - ii.mean()) == box) | (np.abs(jj - jj.mean()) == box)])
        start += [np.sum(data - edge), x[s], y[s], edge]
    result = least_squares(residuals, np.array(start), method="lm", xtol=1e-15, ftol=1e-15,
                           gtol=1e-15, max_nfev=50000)
    p = result.x
    shape = np.array([p[0], p[1], p[2], p[3] if n_shape == 4 else beta0])
    return shape, p[n_shape::4]
