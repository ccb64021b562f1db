"""Aperture photometry: exact circular apertures at several radii with a local background.

`aperture_photometry` measures one image; `aperture_photometry_frames` measures a block of frames
(the cube-level stage feeds it chunk by chunk). Both share the compiled kernel in
engine/cext (exact circle-pixel overlap, sigma-clipped annulus with other stars masked) and
return Arrow tables with one row per (star, radius) — per (frame, star, radius) for blocks.

Units: fluxes are in electrons, `gain` (e-/ADU) converting from the image's units (gain=1 for
images already in electrons). Errors: Poisson noise of the star, the background's scatter over
the aperture, and the error of the background estimate itself:
    var = max(flux, 0) + area * sigma_bkg**2 + area**2 * sigma_bkg**2 / n_bkg
with sigma_bkg the clipped per-pixel scatter in the annulus (sky Poisson plus read noise, as
measured). Without an annulus, sigma_bkg is the read noise and n_bkg is infinite.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from engine import checks
from engine.cext import aperture_sums
from engine.errors import EngineValueError

__all__ = ["aperture_photometry", "aperture_photometry_frames"]


def aperture_photometry(image, x, y=None, radii=None, annulus=None, *, gain=1.0,
                        read_noise: float = 0.0, pixel_flags=None, mask_radius=None,
                        blend_radius=None, clip_sigma: float = 3.0, clip_iterations: int = 5,
                        wcs=None, threads: int | None = None) -> pa.Table:
    """Exact aperture photometry of stars at (x, y) on one image, at several radii.

    Parameters
    ----------
    image : 2-d array (y, x), calibrated (float32 or float64 kept as is); or a NumPy masked
        array, an astropy NDData / CCDData or Quantity. Masked pixels are left out like bad
        pixels (BAD_PIXEL). An NDData's uncertainty gives the flux errors (see Returns). A unit
        of electron means gain 1; adu is converted with `gain`; any other unit is refused.
    x, y : 1-d arrays of star centres, 0-based, pixel centres on integers (x = column); or x
        alone as one (N, 2) array of (x, y).
    radii : aperture radius or radii in pixels (a Quantity in pixels, or an angle with a WCS).
    annulus : (inner, outer) radii of the background annulus, or None for no background.
    gain, read_noise : e-/ADU (a number or a Quantity in electron / adu) and e- per pixel.
    pixel_flags : optional uint8 `engine.flags.PixelFlag` mask of the image's shape.
    mask_radius : annulus pixels closer than this to another star are left out
        (default: the largest aperture radius).
    blend_radius : another star closer than this flags BLENDED (default: the largest radius).
    clip_sigma, clip_iterations : sigma clipping of the annulus about its median.
    wcs : celestial WCS turning angular radii into pixels (default: the NDData's).
    threads : threads for the compiled kernel (default: all cores of this process).

    Returns
    -------
    pyarrow.Table, one row per (star, radius): star (index into x / y), radius, x, y, flux,
    flux_err, background (per pixel, e-), background_std, background_pixels, area, flags.
    With an uncertainty, flux_err is gain x sqrt(sum over the aperture of overlap x sigma^2)
    (photutils' aperture_sum_err), plus the background estimate's error with an annulus.
    """
    given = checks.image_input(image, gain=gain, pixel_flags=pixel_flags, wcs=wcs)
    x, y = checks.positions(x, y)
    if radii is None:
        raise EngineValueError("radii must be given (aperture radius or radii in pixels)")
    lengths = {name: checks.pixel_lengths(name, value, given.wcs, allow_none=True)
               for name, value in (("radii", radii), ("annulus", annulus),
                                   ("mask_radius", mask_radius), ("blend_radius", blend_radius))}
    flags_block = None if given.pixel_flags is None else given.pixel_flags[None]
    table = aperture_photometry_frames(
        given.data[None], x[None], y[None], read_noise=read_noise, gain=given.gain,
        pixel_flags=flags_block, clip_sigma=clip_sigma, clip_iterations=clip_iterations,
        threads=threads, **lengths)
    if given.sigma is not None:
        table = _errors_from_uncertainty(table, given, x, y, lengths["radii"], flags_block,
                                         threads)
    return table.drop_columns(["frame"])


def _errors_from_uncertainty(table: pa.Table, given, x, y, radii, flags_block, threads):
    """flux_err from the image's per-pixel sigma: sum of overlap x sigma^2 over each aperture
    (the same exact overlaps as the flux), plus the error of the background estimate."""
    variance = np.square(given.sigma, dtype=np.float64)[None]
    sums = aperture_sums(variance, x[None], y[None], np.atleast_1d(np.asarray(radii, float)),
                         annulus=None, pixel_flags=flags_block, clip_sigma=3.0,
                         clip_iterations=0, mask_radius=0.0, blend_radius=0.0, threads=threads)
    flux_variance = sums["sum"].ravel() * given.gain ** 2
    area = table.column("area").to_numpy()
    sigma = table.column("background_std").to_numpy()
    pixels = table.column("background_pixels").to_numpy().astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        background_error = np.where(pixels > 0, area ** 2 * sigma ** 2 / pixels, 0.0)
    flux_err = np.sqrt(flux_variance + background_error)
    return table.set_column(table.column_names.index("flux_err"), "flux_err",
                            pa.array(flux_err, pa.float64()))


def aperture_photometry_frames(frames, x, y, radii, annulus=None, *, gain: float = 1.0,
                               read_noise: float = 0.0, pixel_flags=None,
                               mask_radius: float | None = None, blend_radius: float | None = None,
                               clip_sigma: float = 3.0, clip_iterations: int = 5,
                               threads: int | None = None, device: str = "cpu") -> pa.Table:
    """`aperture_photometry` for a block of frames (frame, y, x) with per-frame centres.

    x, y have shape (n_frames, n_stars). The table gains a `frame` column (index into the block)
    and has one row per (frame, star, radius), frame slowest. device 'cuda' measures on the GPU
    (engine.kernels.photometry_cuda: the same numbers to rounding); resolve 'auto' first
    (engine.device.resolve_device).
    """
    gain = checks.gain_value("gain", gain)
    read_noise = float(read_noise)
    if not (np.isfinite(read_noise) and read_noise >= 0):
        raise EngineValueError(f"read_noise must be finite and >= 0, got {read_noise!r}")
    radii = np.atleast_1d(np.asarray(radii, dtype=np.float64))
    largest = float(np.max(radii)) if radii.size else 0.0
    if device == "cuda":
        from engine.kernels.photometry_cuda import aperture_sums_cuda as measure
    elif device == "cpu":
        measure = aperture_sums
    else:
        raise EngineValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    sums = measure(
        frames, x, y, radii, annulus=annulus, pixel_flags=pixel_flags,
        clip_sigma=clip_sigma, clip_iterations=clip_iterations,
        mask_radius=largest if mask_radius is None else mask_radius,
        blend_radius=largest if blend_radius is None else blend_radius, threads=threads)
    n_frames, n_stars, n_radii = sums["sum"].shape

    area = sums["area"]
    raw = sums["sum"] * gain
    if annulus is not None:
        background = sums["background"][..., None] * gain
        sigma = sums["background_std"][..., None] * gain
        n_background = sums["background_pixels"][..., None].astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            flux = raw - background * area
            variance = (np.maximum(flux, 0.0) + area * sigma ** 2
                        + area ** 2 * sigma ** 2 / n_background)
    else:
        background = np.zeros((n_frames, n_stars, 1))
        sigma = np.full((n_frames, n_stars, 1), read_noise)
        flux = raw
        variance = np.maximum(flux, 0.0) + area * read_noise ** 2
    shape = (n_frames, n_stars, n_radii)

    def per_star(values):
        return np.broadcast_to(values, shape).ravel()

    frame_index = np.broadcast_to(np.arange(n_frames)[:, None, None], shape).ravel()
    star_index = np.broadcast_to(np.arange(n_stars)[None, :, None], shape).ravel()
    return pa.table({
        "frame": pa.array(frame_index, pa.int64()),
        "star": pa.array(star_index, pa.int64()),
        "radius": pa.array(np.broadcast_to(radii, shape).ravel(), pa.float64()),
        "x": pa.array(per_star(np.asarray(x, dtype=np.float64)[..., None]), pa.float64()),
        "y": pa.array(per_star(np.asarray(y, dtype=np.float64)[..., None]), pa.float64()),
        "flux": pa.array(flux.ravel(), pa.float64()),
        "flux_err": pa.array(np.sqrt(variance).ravel(), pa.float64()),
        "background": pa.array(per_star(background), pa.float64()),
        "background_std": pa.array(per_star(sigma), pa.float64()),
        "background_pixels": pa.array(per_star(sums["background_pixels"][..., None]), pa.int64()),
        "area": pa.array(area.ravel(), pa.float64()),
        "flags": pa.array(sums["flags"].ravel(), pa.uint32()),
    })
