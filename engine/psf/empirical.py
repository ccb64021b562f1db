"""The empirical PSF (ePSF, Anderson & King 2000, PASP 112, 1360): a frame's PSF as it is, read
off its own bright isolated stars, where no analytic profile fits (crowded fields, coma, guiding
trails, a defocused or aberrated camera).

What the model is
-----------------
An `EmpiricalPSF` is a grid sampled `oversampling` times per pixel: node (j, i) holds the
fraction of a star's flux that falls in a pixel whose centre lies at (dx, dy) = ((i - c) / o,
(j - c) / o) pixels from the star (c the centre node, o the oversampling). It is the PSF already
integrated over pixels, so a star is rendered by evaluating the grid's bicubic spline at each
pixel's offset; nothing is integrated. The nodes of each sub-pixel phase sum to 1 (a star's
flux is its flux within the grid's square, `radius` pixels either side, wherever it falls in its
pixel). It does not vary across the field.

How it is built (`build_empirical_psf`)
---------------------------------------
The stars `engine.psf.select_psf_stars` picks (bright, isolated, unflagged, wholly on the image)
are cut out; each iteration every PSF star and its neighbours are fitted with the current grid
(flux, position, constant background; neighbours subtracted from the cut-out), each pixel's
residual from the model (data - background - neighbours) / flux - grid gives one sample of the
correction at the nearest node, the samples at each node are averaged with 3-sigma clipping,
the correction is smoothed over a few nodes and added, and the grid renormalised. The first
iteration stacks the stars at their input positions. The stars' mean shift from their input
positions is held at zero, which ties the grid's origin to the inputs' centroid convention (the
positions every frame gives `psf_photometry_frames`).

Fits (`fit_stars`): one weighted least-squares solve per group of stars whose fitting boxes
overlap, as the compiled analytic fit does (engine/cext/psf.py): weights from
var = read_noise^2 + max(data, 0), at least 1 e-^2; positions fixed (linear, one solve) or
fitted by Gauss-Newton with the spline's derivatives, within max_shift of the inputs; the same
table columns and flags.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from dataclasses import field as _dataclass_field
from functools import cached_property

import numpy as np
from scipy import ndimage
from scipy.interpolate import RectBivariateSpline
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from engine.errors import EngineValueError
from engine.flags import MeasurementFlag, PixelFlag
from engine.registration.recentring import _local_background

__all__ = ["EmpiricalPSF", "build_empirical_psf", "fit_frames", "fit_stars"]

_BAD = int(PixelFlag.BAD | PixelFlag.NONFINITE | PixelFlag.COSMIC_RAY)
_SATURATED = int(PixelFlag.SATURATED)

#: Smoothing of each iteration's correction (binomial, over about one pixel), by oversampling.
_SMOOTHING = {2: np.array([1.0, 2.0, 1.0]) / 4.0, 4: np.array([1.0, 2.0, 1.0]) / 4.0}


@dataclass(frozen=True, eq=False)
class EmpiricalPSF:
    """A frame's empirical PSF: the oversampled grid (see the module docstring) and how it was
    built (chi2_reduced of its PSF stars' fits, stars_used, iterations, flags, stars: their
    indices in the star list it was built from)."""

    grid: np.ndarray
    oversampling: int
    chi2_reduced: float = math.nan
    stars_used: int = 0
    iterations: int = 0
    flags: int = 0
    stars: np.ndarray = _dataclass_field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    model = "empirical"
    varying = False

    def __post_init__(self):
        grid = np.array(self.grid, dtype=np.float64)
        if grid.ndim != 2 or grid.shape[0] != grid.shape[1] or grid.shape[0] % 2 == 0:
            raise EngineValueError(f"grid must be square with an odd side, got {grid.shape}")
        if self.oversampling not in _SMOOTHING:
            raise EngineValueError(f"oversampling must be one of {sorted(_SMOOTHING)}, "
                                   f"got {self.oversampling!r}")
        object.__setattr__(self, "grid", grid)

    @classmethod
    def failure(cls, stars_used: int = 0) -> EmpiricalPSF:
        return cls(np.zeros((1, 1)), 2, stars_used=stars_used,
                   flags=int(MeasurementFlag.FIT_FAILED))

    @property
    def failed(self) -> bool:
        return bool(self.flags & MeasurementFlag.FIT_FAILED)

    @property
    def radius(self) -> float:
        """Half-width of the grid's square in pixels."""
        return (self.grid.shape[0] // 2) / self.oversampling

    @cached_property
    def _spline(self) -> RectBivariateSpline:
        nodes = (np.arange(self.grid.shape[0]) - self.grid.shape[0] // 2) / self.oversampling
        return RectBivariateSpline(nodes, nodes, self.grid, kx=3, ky=3, s=0)

    def evaluate(self, dx, dy, derivatives: bool = False):
        """Fraction of a unit star's flux in pixels centred (dx, dy) from it; 0 off the grid.
        With derivatives, also d/d(dx) and d/d(dy)."""
        dx = np.asarray(dx, dtype=np.float64)
        dy = np.asarray(dy, dtype=np.float64)
        inside = (np.abs(dx) <= self.radius) & (np.abs(dy) <= self.radius)
        values = np.where(inside, self._spline.ev(dy, dx), 0.0)
        if not derivatives:
            return values
        return (values, np.where(inside, self._spline.ev(dy, dx, dy=1), 0.0),
                np.where(inside, self._spline.ev(dy, dx, dx=1), 0.0))

    def stamp(self, x0: float, y0: float, shape: tuple[int, int]) -> np.ndarray:
        """A unit star at (x0, y0) rendered on a grid of pixels (rows, columns) from (0, 0)."""
        rows, columns = np.mgrid[0:shape[0], 0:shape[1]]
        return self.evaluate(columns - x0, rows - y0)

    @property
    def fwhm(self) -> float:
        """Width (pixels) of a circle with the area of the grid above half its peak."""
        area = np.count_nonzero(self.grid >= 0.5 * self.grid.max()) / self.oversampling ** 2
        return float(2.0 * math.sqrt(area / math.pi))

    def parameters(self, x=None, y=None) -> dict[str, float]:
        return {"fwhm": self.fwhm, "ellipticity": math.nan, "angle": math.nan, "beta": math.nan}

    def noise_area(self, box: int, x=None, y=None) -> float:
        """1 / sum(p^2) over the (2 box + 1)^2 box of a star centred on a pixel (as
        `engine.psf.PSFModel.noise_area`)."""
        offsets = np.arange(-int(box), int(box) + 1, dtype=np.float64)
        p = self.evaluate(offsets[None, :], offsets[:, None])
        return float(1.0 / np.sum(p * p))


# ------------------------------------------------------------------------------------------------
# Fitting stars with a grid
# ------------------------------------------------------------------------------------------------

def _groups(cx, cy, box: int, max_group: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Stars (indices into cx, cy) whose boxes overlap, in groups of at most max_group, and which
    stars were in a group that had to be cut (BLENDED)."""
    n = cx.size
    pairs = cKDTree(np.c_[cx, cy]).query_pairs(2 * box, p=np.inf, output_type="ndarray")
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n)) \
        if len(pairs) else coo_matrix((n, n))
    _, label = connected_components(graph, directed=False)
    order = np.argsort(label, kind="stable")
    cuts = np.flatnonzero(np.diff(label[order])) + 1
    groups, cut = [], np.zeros(n, dtype=bool)
    for members in np.split(order, cuts):
        if members.size > max_group:
            cut[members] = True
        groups.extend(np.array_split(members, math.ceil(members.size / max_group)))
    return groups, cut


def _design(psf, px, py, x, y, derivatives):
    """Model columns of each star (and their position derivatives) at pixels px, py."""
    dx = px[None, :] - x[:, None]
    dy = py[None, :] - y[:, None]
    return psf.evaluate(dx, dy, derivatives)


def _solve(columns, data, weight):
    """Weighted least squares: parameters and their covariance; None where singular."""
    a = columns * weight[None, :]
    normal = a @ columns.T
    try:
        covariance = np.linalg.inv(normal)
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(covariance)) or np.any(np.diag(covariance) <= 0):
        return None
    return covariance @ (a @ data), covariance


def _background_columns(background: str, px, py, x0, y0):
    if background == "none":
        return np.zeros((0, px.size))
    if background == "constant":
        return np.ones((1, px.size))
    return np.vstack([np.ones(px.size), px - x0, py - y0])


@dataclass(frozen=True)
class _GroupPixels:
    """A group's fitting pixels: the window [y0:y1, x0:x1] round the stars' boxes (each star's
    box centre cx, cy), which window pixels lie in each star's box (own), and the usable ones
    (finite, unflagged, in some box) at (px, py) with values d; pixels: each star's usable
    count."""

    cx: np.ndarray
    cy: np.ndarray
    window: tuple[slice, slice]
    own: np.ndarray
    data: np.ndarray
    pixels: np.ndarray
    px: np.ndarray
    py: np.ndarray
    d: np.ndarray


def _group_pixels(image, flags, x, y, box) -> _GroupPixels:
    ny, nx = image.shape
    cx, cy = np.ceil(x - 0.5).astype(np.int64), np.ceil(y - 0.5).astype(np.int64)
    x0, x1 = max(cx.min() - box, 0), min(cx.max() + box + 1, nx)
    y0, y1 = max(cy.min() - box, 0), min(cy.max() + box + 1, ny)
    rows, columns = np.mgrid[y0:y1, x0:x1]
    own = ((np.abs(columns[None] - cx[:, None, None]) <= box)
           & (np.abs(rows[None] - cy[:, None, None]) <= box))
    data = image[y0:y1, x0:x1].astype(np.float64)
    usable = own.any(axis=0) & np.isfinite(data)
    if flags is not None:
        usable &= (flags[y0:y1, x0:x1] & (_BAD | _SATURATED)) == 0
    return _GroupPixels(cx, cy, (slice(y0, y1), slice(x0, x1)), own, data,
                        (own & usable[None]).sum(axis=(1, 2)), columns[usable].astype(np.float64),
                        rows[usable].astype(np.float64), data[usable])


def _fit_group(image, flags, psf, x, y, box, *, background, fit_positions, max_shift,
               position_snr, read_noise, model_variance, max_iterations=20):
    """One group's joint fit; a dict of per-star arrays, or None when no solution."""
    g = _group_pixels(image, flags, x, y, box)
    n_bkg = {"none": 0, "constant": 1, "plane": 3}[background]
    if g.px.size <= x.size + n_bkg or np.any(g.pixels < 3):
        return None
    sky = _background_columns(background, g.px, g.py, float(x.mean()), float(y.mean()))
    solved = _solve_group(psf, g, sky, x, y, fit_positions=fit_positions, max_shift=max_shift,
                          position_snr=position_snr, read_noise=read_noise,
                          model_variance=model_variance, max_iterations=max_iterations)
    if solved is None:
        return None
    x_fit, y_fit, p, covariance, weight, free, iterations = solved
    model = np.vstack([_design(psf, g.px, g.py, x_fit, y_fit, False), sky]).T @ p
    chi2 = float(np.sum(weight * (g.d - model) ** 2))
    dof = max(g.px.size - p.size - 2 * int(free.sum()), 1)
    at_star = np.zeros(x.size) if not n_bkg else (
        p[x.size] + (0 if n_bkg == 1 else p[x.size + 1] * (x_fit - x.mean())
                     + p[x.size + 2] * (y_fit - y.mean())))
    flag = _group_flags(g, flags, image.shape, box)
    at_bound = free & (np.hypot(x_fit - x, y_fit - y) >= max_shift * (1 - 1e-9))
    flag |= np.where(at_bound, int(MeasurementFlag.CENTROID_FAILED), 0)
    if iterations >= max_iterations:
        flag |= int(MeasurementFlag.FIT_NOT_CONVERGED)
    return {"x": x_fit, "y": y_fit, "flux": p[:x.size],
            "flux_err": np.sqrt(np.diag(covariance)[:x.size]), "background": at_star,
            "chi2_reduced": np.full(x.size, chi2 / dof), "iterations": np.full(x.size, iterations),
            "pixels": g.pixels, "group_pixels": np.full(x.size, g.px.size), "flags": flag}


def _solve_group(psf, g, sky, x, y, *, fit_positions, max_shift, position_snr, read_noise,
                 model_variance, max_iterations):
    """The linear fit of fluxes and background at the input positions; then, when fitting
    positions, Gauss-Newton on the stars bright enough to place (flux above position_snr
    sigma); with model_variance, all of it again with weights from the model rather than the
    data. (x_fit, y_fit, parameters, covariance, weight, free, iterations), or None."""
    weight = 1.0 / np.maximum(read_noise ** 2 + np.maximum(g.d, 0.0), 1.0)
    x_fit, y_fit = x.copy(), y.copy()
    free = np.zeros(x.size, dtype=bool)
    iterations = 1
    for attempt in range(2 if model_variance else 1):
        stars = _design(psf, g.px, g.py, x_fit, y_fit, False)
        solved = _solve(np.vstack([stars, sky]), g.d, weight)
        if solved is None:
            return None
        p, covariance = solved
        if fit_positions and attempt == 0:
            err = np.sqrt(np.diag(covariance)[:x.size])
            free = p[:x.size] > position_snr * err
            if free.any():
                x_fit, y_fit, p, covariance, iterations = _fit_positions(
                    psf, g.px, g.py, g.d, weight, sky, x, y, p, free, max_shift, max_iterations)
                if p is None:
                    return None
        if model_variance:
            model = np.vstack([_design(psf, g.px, g.py, x_fit, y_fit, False), sky]).T @ p
            weight = 1.0 / np.maximum(read_noise ** 2 + np.maximum(model, 0.0), 1.0)
    return x_fit, y_fit, p, covariance, weight, free, iterations


def _group_flags(g, flags, shape, box) -> np.ndarray:
    """Each star's NEAR_EDGE (box off the image), SATURATED and BAD_PIXEL (in its box) bits."""
    ny, nx = shape
    n = g.cx.size
    edge = (g.cx - box < 0) | (g.cy - box < 0) | (g.cx + box >= nx) | (g.cy + box >= ny)
    flag = np.where(edge, int(MeasurementFlag.NEAR_EDGE), 0)
    if flags is not None:
        box_flags = [np.bitwise_or.reduce(flags[g.window][g.own[k]]) for k in range(n)]
        box_flags = np.array(box_flags, dtype=np.int64)
        flag |= np.where(box_flags & _SATURATED, int(MeasurementFlag.SATURATED), 0)
        flag |= np.where(box_flags & _BAD, int(MeasurementFlag.BAD_PIXEL), 0)
    flag |= np.where((g.own & ~np.isfinite(g.data)[None]).any(axis=(1, 2)),
                     int(MeasurementFlag.BAD_PIXEL), 0)
    return flag


def _fit_positions(psf, px, py, d, weight, sky, x, y, p, free, max_shift, max_iterations):
    """Gauss-Newton on fluxes, background and the free stars' positions, each step halved
    until chi^2 falls; positions clamped within max_shift of the inputs."""
    n = x.size
    x_fit, y_fit = x.copy(), y.copy()

    def chi2_of(xs, ys, params):
        model = np.vstack([_design(psf, px, py, xs, ys, False), sky]).T @ params
        return float(np.sum(weight * (d - model) ** 2))

    current = chi2_of(x_fit, y_fit, p)
    iterations = 1
    covariance = None
    for iterations in range(1, max_iterations + 1):
        values, d_dx, d_dy = _design(psf, px, py, x_fit, y_fit, True)
        # The model moves opposite to the pixel offsets: d/dx0 = -d/d(dx).
        jacobian = np.vstack([values, sky, -(p[:n, None] * d_dx)[free], -(p[:n, None] * d_dy)[free]])
        model = np.vstack([values, sky]).T @ p
        solved = _solve(jacobian, d - model, weight)
        if solved is None:
            return x_fit, y_fit, None, None, iterations
        step, covariance = solved
        k = int(free.sum())
        step_p, step_x, step_y = step[:p.size], step[p.size:p.size + k], step[p.size + k:]
        scale = 1.0
        while scale > 1e-3:
            new_x, new_y = x_fit.copy(), y_fit.copy()
            new_x[free] += scale * step_x
            new_y[free] += scale * step_y
            shift = np.hypot(new_x - x, new_y - y)
            over = shift > max_shift
            new_x[over] = x[over] + (new_x[over] - x[over]) * max_shift / shift[over]
            new_y[over] = y[over] + (new_y[over] - y[over]) * max_shift / shift[over]
            new_p = p + scale * step_p
            trial = chi2_of(new_x, new_y, new_p)
            if trial <= current:
                break
            scale *= 0.5
        else:
            break
        gain = current - trial
        x_fit, y_fit, p, current = new_x, new_y, new_p, trial
        if gain <= 1e-6 * max(current, 1.0):
            break
    if covariance is None:
        return x_fit, y_fit, None, None, iterations
    return x_fit, y_fit, p, covariance[:p.size, :p.size], iterations


def fit_stars(image, x, y, psf: EmpiricalPSF, *, box: int, background: str = "constant",
              fit_positions: bool = False, max_shift: float = 2.0, position_snr: float = 3.0,
              read_noise: float = 0.0, model_variance: bool = False, pixel_flags=None,
              max_group: int = 50) -> dict[str, np.ndarray]:
    """Fits of the grid to every star at (x, y) on one image in electrons: a dict of per-star
    arrays (x, y, flux, flux_err, background, chi2_reduced, iterations, pixels, group_pixels,
    flags) as `engine.cext.psf.psf_fit` gives for one frame. Stars with no box centre on the
    image are OFF_FRAME, those without a solution FIT_FAILED (NaN flux)."""
    n = x.size
    ny, nx = image.shape
    out = {"x": x.astype(np.float64).copy(), "y": y.astype(np.float64).copy(),
           "flux": np.full(n, np.nan), "flux_err": np.full(n, np.nan),
           "background": np.full(n, np.nan), "chi2_reduced": np.full(n, np.nan),
           "iterations": np.zeros(n, dtype=np.int32), "pixels": np.zeros(n, dtype=np.int64),
           "group_pixels": np.zeros(n, dtype=np.int64), "flags": np.zeros(n, dtype=np.uint32)}
    with np.errstate(invalid="ignore"):
        cx, cy = np.ceil(x - 0.5), np.ceil(y - 0.5)
        on = np.isfinite(cx) & np.isfinite(cy) & (cx >= 0) & (cy >= 0) & (cx < nx) & (cy < ny)
    out["flags"][~on] = int(MeasurementFlag.OFF_FRAME)
    index = np.flatnonzero(on)
    if index.size == 0 or psf.failed:
        out["flags"][on] = int(MeasurementFlag.FIT_FAILED)
        return out
    groups, cut = _groups(cx[index], cy[index], box, max_group)
    for members in groups:
        stars = index[members]
        fitted = _fit_group(image, pixel_flags, psf, x[stars], y[stars], box,
                            background=background, fit_positions=fit_positions,
                            max_shift=max_shift, position_snr=position_snr,
                            read_noise=read_noise, model_variance=model_variance)
        if fitted is None:
            out["flags"][stars] = int(MeasurementFlag.FIT_FAILED)
            continue
        for name, values in fitted.items():
            out[name][stars] = values
        if cut[members].any():
            out["flags"][stars] |= int(MeasurementFlag.BLENDED)
    return out


# ------------------------------------------------------------------------------------------------
# Building the grid
# ------------------------------------------------------------------------------------------------

def _clipped_node_means(nodes, values, weights, size, clip=3.0):
    """Per node, the inverse-variance weighted mean of its samples, after two passes that drop
    samples more than clip x max(1, the node's rms) of their errors from it, and whether it had
    any."""
    keep = np.ones(values.size, dtype=bool)
    for _ in range(3):
        count = np.bincount(nodes[keep], minlength=size)
        total = np.bincount(nodes[keep], weights[keep], minlength=size)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = np.where(total > 0, np.bincount(nodes[keep], weights[keep] * values[keep],
                                                   minlength=size) / total, 0.0)
            z2 = weights * (values - mean[nodes]) ** 2
            rms = np.sqrt(np.where(count > 0, np.bincount(nodes[keep], z2[keep], minlength=size)
                                   / count, 0.0))
        keep = z2 <= (clip * np.maximum(rms, 1.0))[nodes] ** 2
    return mean, count > 0


def _smooth(values, sampled, kernel):
    """Normalised convolution: the values smoothed over the nodes that had samples, which also
    fills the nodes that had none from their neighbours (with 16 nodes per pixel a few stars
    leave some empty)."""
    def blur(a):
        return ndimage.convolve1d(ndimage.convolve1d(a, kernel, axis=0, mode="constant"),
                                  kernel, axis=1, mode="constant")
    weight = blur(sampled.astype(np.float64))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 1e-3, blur(np.where(sampled, values, 0.0)) / weight, 0.0)


def _conserve_flux(grid, oversampling):
    """The grid with each sub-pixel phase's nodes (those a star at one phase samples) summing
    to 1: a star's flux must not depend on where in its pixel it falls. Each phase is otherwise
    free to take any scale, since the fluxes that normalise its samples come from the grid."""
    grid = grid.copy()
    for a in range(oversampling):
        for b in range(oversampling):
            grid[a::oversampling, b::oversampling] /= grid[a::oversampling, b::oversampling].sum()
    return grid


def _stamps_less_neighbours(image, psf, x, y, fitted, sky, psf_stars, radius, read_noise):
    """Each PSF star's (2 radius + 1)^2 cut-out less its sky and every other fitted star
    inside it (none before there is a grid) as samples of the grid: offsets from the star's
    fitted position, values over its fitted flux, their inverse variances."""
    known = np.flatnonzero(np.isfinite(fitted["x"]) & np.isfinite(fitted["y"]))
    tree = cKDTree(np.c_[fitted["x"][known], fitted["y"][known]])
    offsets = np.arange(-radius, radius + 1)
    row_offsets, column_offsets = np.meshgrid(offsets, offsets, indexing="ij")
    samples = []
    for s in psf_stars:
        cx, cy = math.ceil(x[s] - 0.5), math.ceil(y[s] - 0.5)
        rows, columns = cy + row_offsets, cx + column_offsets
        stamp = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1] - sky[s]
        for k in known[tree.query_ball_point([fitted["x"][s], fitted["y"][s]], 2.0 * radius + 2)]:
            if psf is not None and k != s and np.isfinite(fitted["flux"][k]):
                stamp = stamp - fitted["flux"][k] * psf.evaluate(columns - fitted["x"][k],
                                                                 rows - fitted["y"][k])
        variance = np.maximum(read_noise ** 2 + np.maximum(stamp + sky[s], 0.0), 1.0)
        samples.append((columns - fitted["x"][s], rows - fitted["y"][s],
                        stamp / fitted["flux"][s], fitted["flux"][s] ** 2 / variance))
    return samples


def build_empirical_psf(image, x, y, psf_stars, *, fwhm: float, read_noise: float = 0.0,
                        pixel_flags=None, oversampling: int | None = None,
                        max_iterations: int = 10) -> EmpiricalPSF:
    """An `EmpiricalPSF` from the stars psf_stars (indices into x, y: bright, isolated, their
    cut-outs wholly on the image and unflagged) of an image in electrons; x, y all the image's
    known stars (neighbours are fitted with them). The grid reaches ceil(2.5 fwhm) pixels from
    the centre; oversampling 2 (default: ground-based stars of FWHM >= 2.5 px are sampled well
    enough, and each node gets 4 times the samples) or 4 (converges more slowly: on 60
    noiseless Gaussian stars its noise-equivalent area is still 8% off after 10 iterations). Returns a failed
    model (FIT_FAILED in flags) with fewer than 5 PSF stars."""
    psf_stars = np.asarray(psf_stars, dtype=np.int64)
    if psf_stars.size < 5:
        return EmpiricalPSF.failure(psf_stars.size)
    image = np.asarray(image, dtype=np.float64)
    oversampling = oversampling or 2
    radius = math.ceil(2.5 * fwhm)
    half = radius * oversampling
    side = 2 * half + 1
    smoothing = _SMOOTHING[oversampling]
    grid = np.zeros((side, side))
    psf = None
    # The stars' sky from an annulus beyond the grid, held fixed: a background fitted with the
    # grid would trade with a constant added to the grid's wings. The first stack puts each star
    # at its input position with its flux summed over the cut-out.
    sky = np.zeros(x.size)
    sky[psf_stars] = _local_background(image, x[psf_stars], y[psf_stars], radius + 0.5,
                                       radius + 3.5)
    fitted = {"x": x.copy(), "y": y.copy(), "flux": np.full(x.size, np.nan)}
    for s in psf_stars:
        cx, cy = math.ceil(x[s] - 0.5), math.ceil(y[s] - 0.5)
        stamp = image[cy - radius:cy + radius + 1, cx - radius:cx + radius + 1]
        fitted["flux"][s] = np.sum(stamp - sky[s])
    neighbours = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    box = max(2, math.ceil(1.5 * fwhm))
    iteration = 0
    for iteration in range(1, max_iterations + 1):
        samples = _stamps_less_neighbours(image, psf, x, y, fitted, sky, psf_stars, radius,
                                          read_noise)
        dx = np.concatenate([s[0].ravel() for s in samples])
        dy = np.concatenate([s[1].ravel() for s in samples])
        value = np.concatenate([s[2].ravel() for s in samples])
        weight = np.concatenate([s[3].ravel() for s in samples])
        if psf is not None:
            value = value - psf.evaluate(dx, dy)
        i = np.rint(dx * oversampling).astype(np.int64) + half
        j = np.rint(dy * oversampling).astype(np.int64) + half
        inside = (i >= 0) & (i < side) & (j >= 0) & (j < side) & np.isfinite(value)
        mean, sampled = _clipped_node_means(j[inside] * side + i[inside], value[inside],
                                            weight[inside], side * side)
        correction = _smooth(mean.reshape(side, side), sampled.reshape(side, side), smoothing)
        grid = _conserve_flux(grid + correction, oversampling)
        psf = EmpiricalPSF(grid, oversampling)
        fitted = _refit(image, x, y, psf, psf_stars, neighbours, box, read_noise, pixel_flags, fwhm)
        if np.max(np.abs(correction)) < 1e-4 * grid.max():
            break
    chi2 = fitted["chi2_reduced"][psf_stars]
    good = np.isfinite(fitted["flux"][psf_stars]) & (fitted["flux"][psf_stars] > 0)
    if good.sum() < 5:
        return EmpiricalPSF.failure(int(good.sum()))
    return EmpiricalPSF(grid, oversampling, float(np.median(chi2[good])), int(good.sum()),
                        iteration, 0, np.sort(psf_stars[good]))


def held_out_chi2(image, x, y, psf_stars, *, fwhm: float, read_noise: float = 0.0,
                  pixel_flags=None) -> float:
    """The reduced chi^2 an empirical grid gives stars it was not built from: the PSF stars in
    two halves, each fitted (flux, position, constant background, with its neighbours, on
    (2 ceil(2.5 fwhm) - 1)^2 boxes) with the grid built from the other half; the median over
    stars. A grid built from the very stars it is scored on fits their noise too (reduced chi^2
    ~0.75 for noise-limited stars), so only this is fair against an analytic profile's.
    NaN when a half has fewer than 5 stars."""
    psf_stars = np.sort(np.asarray(psf_stars, dtype=np.int64))
    image = np.asarray(image, dtype=np.float64)
    box = math.ceil(2.5 * fwhm) - 1
    scores = []
    for built, scored in ((psf_stars[::2], psf_stars[1::2]), (psf_stars[1::2], psf_stars[::2])):
        psf = build_empirical_psf(image, x, y, built, fwhm=fwhm, read_noise=read_noise,
                                  pixel_flags=pixel_flags)
        if psf.failed or scored.size < 5:
            return math.nan
        fitted = _refit(image, x, y, psf, scored, np.flatnonzero(np.isfinite(x) & np.isfinite(y)),
                        box, read_noise, pixel_flags, fwhm)
        scores.append(fitted["chi2_reduced"][scored])
    scores = np.concatenate(scores)
    return float(np.nanmedian(scores)) if np.isfinite(scores).any() else math.nan


def _refit(image, x, y, psf, psf_stars, neighbours, box, read_noise, pixel_flags, fwhm):
    """The PSF stars and their neighbours fitted (flux, position, background) with the current
    grid; the PSF stars' mean shift from their inputs removed (it is the grid's to hold)."""
    tree = cKDTree(np.c_[x[neighbours], y[neighbours]])
    near = set()
    for s in psf_stars:
        near.update(tree.query_ball_point([x[s], y[s]], 2.0 * psf.radius + 2.0 * box))
    stars = np.union1d(neighbours[sorted(near)], psf_stars)
    result = fit_stars(image, x[stars], y[stars], psf, box=box, fit_positions=True,
                       max_shift=max(1.0, fwhm), read_noise=read_noise, pixel_flags=pixel_flags)
    fitted = {name: np.full(x.size, np.nan) for name in ("x", "y", "flux", "background",
                                                         "chi2_reduced")}
    for name, values in fitted.items():
        values[stars] = result[name]
    own = np.isin(stars, psf_stars) & np.isfinite(result["x"])
    shift_x = np.mean(result["x"][own] - x[stars][own]) if own.any() else 0.0
    shift_y = np.mean(result["y"][own] - y[stars][own]) if own.any() else 0.0
    fitted["x"] -= shift_x
    fitted["y"] -= shift_y
    return fitted


def fit_frames(frames, x, y, models, *, box: int, gain: float = 1.0, pixel_flags=None,
               **kwargs) -> dict[str, np.ndarray]:
    """`fit_stars` on each frame of a block (frame, y, x) in its own units (fluxes come out in
    electrons), each with its own model: a dict of (n_frames, n_stars) arrays."""
    results = [fit_stars(np.asarray(frames[f], dtype=np.float64) * gain, x[f], y[f], models[f],
                         box=box, pixel_flags=None if pixel_flags is None else pixel_flags[f],
                         **kwargs) for f in range(len(models))]
    return {name: np.stack([r[name] for r in results]) for name in results[0]}
