"""The arguments of `calibrate_frames`, validated and coerced for the kernels.

`prepare` checks everything a caller of engine.kernels.calibrate.calibrate_frames (or of the CUDA
driver, engine.kernels.calibrate_cuda) can get wrong, before any pixel is touched, and returns a
`CalibrationJob`: the raw cube, sections, masters, outputs and settings in exactly the dtypes,
shapes and layouts the kernels take. Bad arguments raise EngineValueError saying which and why.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from engine.checks import positive
from engine.errors import EngineValueError
from engine.flags import PixelFlag

__all__ = ["RAW_DTYPES", "CalibrationJob", "prepare"]

#: Raw pixel types the kernels read (what FITS cameras write, and floats).
RAW_DTYPES = tuple(np.dtype(t) for t in (np.uint8, np.uint16, np.int16, np.int32, np.uint32,
                                         np.float32, np.float64))
_OUT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
_MASK_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))


class CalibrationJob(NamedTuple):
    """A validated calibration: everything coerced to what the kernels take (see `prepare`)."""

    raw: np.ndarray          # (nframes, NY, NX), native byte order, C-contiguous
    single: bool             # the caller gave one 2-D frame
    trim: tuple              # (y0, y1, x0, x1)
    overscan: tuple          # (x0, x1); (0, 0) for none
    overscan_median: bool
    bias: np.ndarray | None  # (ny, nx) of the output dtype
    dark: np.ndarray | None
    dark_scale: np.ndarray   # (nframes,) float64; zeros without a dark
    flat: np.ndarray | None
    bad: np.ndarray | None   # (ny, nx) of the mask dtype
    poly: np.ndarray         # float64 coefficients, empty for none
    saturation: float
    check_saturation: bool
    gain: float
    read_noise: float
    out: np.ndarray          # (nframes, ny, nx) float32 / float64
    mask: np.ndarray | None  # (nframes, ny, nx) uint8 / uint16
    uncertainty: np.ndarray | None
    given: tuple             # the caller's out, mask and uncertainty arguments

    def neutral(self, array, value, dtype=None):
        """The master itself, or a (1, nx) row of `value` (of the output's dtype unless given)
        standing for it."""
        if array is not None:
            return array
        return np.full((1, self.out.shape[2]), value, dtype or self.out.dtype)

    @property
    def mask_dtype(self):
        return np.dtype(np.uint8) if self.mask is None else self.mask.dtype

    def placeholder(self, array, dtype):
        """The output itself, or a (1, 1, nx) array standing for an output not asked for."""
        if array is not None:
            return array
        return np.zeros((1, 1, self.out.shape[2]), dtype)

    def outputs(self) -> tuple:
        """(data, mask, uncertainty) shaped as the caller gave raw: the caller's own arrays
        (filled in place), new ones, or None for those not asked for."""
        def shaped(array, given):
            if isinstance(given, np.ndarray):
                return given
            return None if array is None else (array[0] if self.single else array)

        return tuple(shaped(a, g) for a, g in
                     zip((self.out, self.mask, self.uncertainty), self.given))


def prepare(raw, *, bias, dark, dark_scale, flat, bad_pixels, saturation, overscan,
            overscan_method, trim, nonlinearity, gain, read_noise, out, mask, uncertainty,
            dtype) -> CalibrationJob:
    """Validate and coerce the arguments of `calibrate_frames` (CPU and CUDA drivers)."""
    cube, single = _raw_cube(raw)
    nframes, raw_ny, raw_nx = cube.shape
    trim, overscan = _sections(trim, overscan, raw_ny, raw_nx)
    if overscan_method not in ("mean", "median"):
        raise EngineValueError(f"overscan_method must be 'mean' or 'median', got "
                               f"{overscan_method!r}")
    ty0, ty1, tx0, tx1 = trim
    shape2 = (ty1 - ty0, tx1 - tx0)
    out3, mask3, error3 = _outputs(out, mask, uncertainty, dtype, cube, single, shape2)
    out_dtype = out3.dtype
    mask_dtype = np.dtype(np.uint8) if mask3 is None else mask3.dtype
    gain, read_noise = _noise(gain, read_noise) if error3 is not None else (1.0, 0.0)
    bias2 = None if bias is None else _master("bias", bias, shape2, out_dtype)
    flat2 = None if flat is None else _master("flat", flat, shape2, out_dtype)
    dark2 = None if dark is None else _master("dark", dark, shape2, out_dtype)
    scale = _dark_scale(dark_scale, nframes) if dark2 is not None else np.zeros(nframes)
    bad2 = _bad_pixels(bad_pixels, shape2, mask_dtype)
    if mask3 is None:
        bad2 = None  # nothing to flag them in
    saturation, check_saturation = _saturation(saturation, cube.dtype)
    return CalibrationJob(cube, single, trim, overscan, overscan_method == "median", bias2,
                          dark2, scale, flat2, bad2, _polynomial(nonlinearity), saturation,
                          check_saturation, gain, read_noise, out3, mask3, error3,
                          (out, mask, uncertainty))


def _raw_cube(raw) -> tuple[np.ndarray, bool]:
    """(the raw frames as a native-order C-contiguous cube, whether one 2-D frame was given)."""
    raw = np.asarray(raw)
    if raw.ndim not in (2, 3) or 0 in raw.shape:
        raise EngineValueError(f"raw must be one frame (ny, nx) or a cube (nframes, ny, nx), "
                               f"got shape {raw.shape}")
    if raw.dtype.newbyteorder("=") not in RAW_DTYPES:
        raise EngineValueError(f"raw pixels of dtype {raw.dtype} are not supported "
                               f"({', '.join(str(d) for d in RAW_DTYPES)})")
    single = raw.ndim == 2
    cube = np.ascontiguousarray(raw[None] if single else raw, dtype=raw.dtype.newbyteorder("="))
    return cube, single


def _sections(trim, overscan, raw_ny: int, raw_nx: int) -> tuple[tuple, tuple]:
    """(trim (y0, y1, x0, x1), overscan (x0, x1), (0, 0) for none), checked against the frame."""
    ty0, ty1, tx0, tx1 = (0, raw_ny, 0, raw_nx) if trim is None else _section(
        "trim", trim, (raw_ny, raw_nx))
    if overscan is None:
        return (ty0, ty1, tx0, tx1), (0, 0)
    ox0, ox1 = _section("overscan", overscan, (raw_nx,))
    if ox0 < tx1 and tx0 < ox1:
        raise EngineValueError(f"overscan columns {ox0}..{ox1} overlap the trimmed data "
                               f"columns {tx0}..{tx1}")
    return (ty0, ty1, tx0, tx1), (ox0, ox1)


def _outputs(out, mask, uncertainty, dtype, cube: np.ndarray, single: bool, shape2: tuple):
    """(out, mask, uncertainty) as (nframes, ny, nx) arrays: the caller's, checked, or new ones
    (mask and uncertainty None when not asked for)."""
    shape3 = (cube.shape[0],) + shape2

    def as_cube(array):
        return array[None] if single and isinstance(array, np.ndarray) else array

    if out is None:
        out_dtype = np.dtype(dtype)
        if out_dtype not in _OUT_DTYPES:
            raise EngineValueError(f"dtype must be float32 or float64, got {out_dtype}")
        out3 = np.empty(shape3, out_dtype)
    else:
        out3 = _output("out", as_cube(out), shape3, _OUT_DTYPES, cube)
    if mask is True:
        mask3 = np.empty(shape3, np.uint8)
    elif mask is False or mask is None:
        mask3 = None
    else:
        mask3 = _output("mask", as_cube(mask), shape3, _MASK_DTYPES, cube)
    if uncertainty is True:
        error3 = np.empty(shape3, out3.dtype)
    elif uncertainty is False or uncertainty is None:
        error3 = None
    else:
        error3 = _output("uncertainty", as_cube(uncertainty), shape3, (out3.dtype,), cube)
    return out3, mask3, error3


def _noise(gain, read_noise) -> tuple[float, float]:
    """(gain e-/ADU, read noise e-) for the uncertainty: gain > 0 required, read noise >= 0."""
    gain = positive("gain", gain)
    read_noise = 0.0 if read_noise is None else float(read_noise)
    if not np.isfinite(read_noise) or read_noise < 0:
        raise EngineValueError(f"read_noise must be finite and >= 0, got {read_noise!r}")
    return gain, read_noise


def _dark_scale(dark_scale, nframes: int) -> np.ndarray:
    """The dark's scale per frame, float64 (nframes,)."""
    if dark_scale is None:
        raise EngineValueError("a dark needs dark_scale: the exposure time (s) for a dark "
                               "rate, or 1 for an exposure-matched dark")
    scale = np.array(np.broadcast_to(np.asarray(dark_scale, dtype=np.float64), (nframes,)))
    if not np.all(np.isfinite(scale)):
        raise EngineValueError(f"dark_scale must be finite, got {dark_scale!r}")
    return scale


def _bad_pixels(bad_pixels, shape2: tuple, mask_dtype: np.dtype) -> np.ndarray | None:
    """The bad-pixel flags in the mask's dtype (bool means PixelFlag.BAD), or None."""
    if bad_pixels is None:
        return None
    bad = np.asarray(bad_pixels)
    if bad.shape != shape2:
        raise EngineValueError(f"bad_pixels has shape {bad.shape}; the calibrated frames "
                               f"are {shape2}")
    if bad.dtype == np.bool_:
        bad = np.where(bad, int(PixelFlag.BAD), 0)
    if bad.dtype.kind not in "iu" or (bad.size and (bad.min() < 0
                                                     or bad.max() > np.iinfo(mask_dtype).max)):
        raise EngineValueError(f"bad_pixels must hold flag bits that fit the {mask_dtype} mask")
    return np.ascontiguousarray(bad, dtype=mask_dtype)


def _polynomial(nonlinearity) -> np.ndarray:
    """The non-linearity coefficients (c0, c1, ...) as float64, empty for none."""
    if nonlinearity is None:
        return np.zeros(0)
    poly = np.array(nonlinearity, dtype=np.float64).ravel()
    if poly.size == 0 or not np.all(np.isfinite(poly)):
        raise EngineValueError(f"nonlinearity must be finite polynomial coefficients "
                               f"(c0, c1, ...), got {nonlinearity!r}")
    return poly


def _saturation(saturation, raw_dtype: np.dtype) -> tuple[float, bool]:
    """(saturation level, whether to check it): default the integer type's largest value, no
    check for float raw data."""
    if saturation is None:
        check = raw_dtype.kind in "iu"
        return (float(np.iinfo(raw_dtype).max) if check else np.inf), check
    saturation = float(saturation)
    if np.isnan(saturation):
        raise EngineValueError("saturation must be a number, got NaN")
    return saturation, True


def _section(name: str, section, limits: tuple[int, ...]) -> tuple[int, ...]:
    """Validate a 0-based, half-open section: (y0, y1, x0, x1) or (x0, x1) against its limits."""
    try:
        values = tuple(int(v) for v in section)
        exact = all(float(v) == int(v) for v in section)
    except (TypeError, ValueError):
        raise EngineValueError(f"{name} must be a tuple of integers, got {section!r}") from None
    if not exact or len(values) != 2 * len(limits):
        raise EngineValueError(
            f"{name} must be {len(limits)} pairs of integers (start, stop), got {section!r}")
    for k, limit in enumerate(limits):
        start, stop = values[2 * k], values[2 * k + 1]
        if not 0 <= start < stop <= limit:
            raise EngineValueError(
                f"{name} {section!r} is empty or outside the raw frame (0..{limit} on axis {k})")
    return values


def _master(name: str, array, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
    a = np.asarray(array)
    if a.shape != shape:
        raise EngineValueError(f"{name} has shape {a.shape}; the calibrated frames are {shape}")
    if a.dtype.kind not in "biuf":
        raise EngineValueError(f"{name} must be numeric, got dtype {a.dtype}")
    return np.ascontiguousarray(a, dtype=dtype)


def _output(name: str, array, shape: tuple[int, ...], dtypes, raw: np.ndarray) -> np.ndarray:
    if not isinstance(array, np.ndarray):
        raise EngineValueError(f"{name} must be a NumPy array, got {type(array).__name__}")
    if array.shape != shape:
        raise EngineValueError(f"{name} has shape {array.shape}, expected {shape}")
    if array.dtype not in dtypes:
        raise EngineValueError(
            f"{name} must have dtype {' or '.join(str(d) for d in dtypes)}, got {array.dtype}")
    if not array.flags.c_contiguous or not array.flags.writeable:
        raise EngineValueError(f"{name} must be C-contiguous and writeable")
    if np.may_share_memory(array, raw):
        raise EngineValueError(f"{name} shares memory with the raw frames (inputs are never "
                               f"modified)")
    return array
