"""One home for the checks of arguments and settings: each returns the value coerced to its
type, or raises EngineValueError naming it and saying what it must be.

Settings objects call them in `__post_init__` (a bad value is refused where it is read, with the
setting's name); public functions call them before any work or any compiled call.
`image_input`, `positions`, `pixel_lengths` and `gain_value` turn what a user of astropy hands
the measuring functions (masked arrays, NDData / CCDData, Quantities) into plain arrays and
numbers.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import EngineFileError, EngineValueError, InputNotFoundError, MissingToolError

__all__ = ["ImageInput", "existing_paths", "gain_value", "image_input", "integer", "non_negative",
           "non_negative_array", "number", "one_of", "output_file", "output_folder",
           "pixel_lengths", "positions", "positive", "positive_array", "require_dask",
           "table_columns"]


def number(name: str, value, *, low: float | None = None, high: float | None = None,
           above: float | None = None, allow_none: bool = False) -> float | None:
    """A finite float, optionally >= low, > above, <= high (None passes when allow_none)."""
    if value is None and allow_none:
        return None
    if isinstance(value, (bool, str, bytes)):  # "2" in a settings file is a typing slip
        raise EngineValueError(f"{name} must be a number, got {value!r}")
    try:
        result = float(value)
    except (TypeError, ValueError):
        raise EngineValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(result):
        raise EngineValueError(f"{name} must be finite, got {value!r}")
    if above is not None and not result > above:
        raise EngineValueError(f"{name} must be finite and > {above:g}, got {value!r}")
    if low is not None and result < low:
        raise EngineValueError(f"{name} must be finite and >= {low:g}, got {value!r}")
    if high is not None and result > high:
        raise EngineValueError(f"{name} must be <= {high:g}, got {value!r}")
    return result


def positive(name: str, value, *, allow_none: bool = False) -> float | None:
    """A finite float > 0."""
    return number(name, value, above=0.0, allow_none=allow_none)


def non_negative(name: str, value, *, allow_none: bool = False) -> float | None:
    """A finite float >= 0."""
    return number(name, value, low=0.0, allow_none=allow_none)


def integer(name: str, value, *, least: int | None = None, allow_none: bool = False) -> int | None:
    """An int (a float with no fraction is accepted; a bool is not), optionally >= least."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer():
        raise EngineValueError(f"{name} must be an integer, got {value!r}")
    result = int(value)
    if least is not None and result < least:
        raise EngineValueError(f"{name} must be an integer >= {least}, got {value!r}")
    return result


def one_of(name: str, value, choices) -> str:
    """`value` as one of `choices` (strings, compared as given)."""
    if value not in choices:
        raise EngineValueError(f"{name} must be one of {', '.join(map(repr, choices))}, got "
                               f"{value!r}")
    return value


def _array(name: str, value) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise EngineValueError(f"{name} must be numbers, got {value!r}") from None
    if not np.all(np.isfinite(array)):
        raise EngineValueError(f"{name} must be finite, got {value!r}")
    return array


def positive_array(name: str, value) -> np.ndarray:
    """A float64 array (or scalar) whose every element is finite and > 0."""
    array = _array(name, value)
    if np.any(array <= 0.0):
        raise EngineValueError(f"{name} must be finite and > 0, got {value!r}")
    return array


def non_negative_array(name: str, value) -> np.ndarray:
    """A float64 array (or scalar) whose every element is finite and >= 0."""
    array = _array(name, value)
    if np.any(array < 0.0):
        raise EngineValueError(f"{name} must be finite and >= 0, got {value!r}")
    return array


def existing_paths(name: str, paths) -> list[Path]:
    """Input paths that all exist (InputNotFoundError naming the first that does not)."""
    result = [Path(p).expanduser() for p in paths]
    for path in result:
        if not path.exists():
            raise InputNotFoundError(f"{name}: {str(path)!r} does not exist")
    return result


def _writable_parent(name: str, path: Path) -> None:
    """The nearest existing folder above `path` is a folder this process may write into."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise EngineFileError(f"{name}: {str(parent)!r} (above {str(path)!r}) is a file, "
                              "not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EngineFileError(f"{name}: {str(path)!r} cannot be created: {str(parent)!r} is "
                              "not writable")


def output_folder(name: str, path) -> Path:
    """A folder to write into: an existing writable folder, or one that can be created. Nothing
    is created here (a refused argument writes nothing)."""
    path = Path(path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise EngineFileError(f"{name}: {str(path)!r} is a file, not a folder")
        if not os.access(path, os.W_OK | os.X_OK):
            raise EngineFileError(f"{name}: the folder {str(path)!r} is not writable")
        return path
    _writable_parent(name, path)
    return path


def output_file(name: str, path) -> Path:
    """A file to write: not a folder, and in a folder that exists or can be created."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise EngineFileError(f"{name}: {str(path)!r} is a folder, not a file")
    if path.exists() and not os.access(path, os.W_OK):
        raise EngineFileError(f"{name}: {str(path)!r} is not writable")
    _writable_parent(name, path)
    return path


def table_columns(what: str, table, columns, *, non_empty: bool = False) -> None:
    """A table argument: a pyarrow.Table holding `columns` (and rows, when `non_empty`)."""
    import pyarrow as pa

    if not isinstance(table, pa.Table):
        raise EngineValueError(f"{what}: expected a pyarrow.Table, got {type(table).__name__}")
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise EngineValueError(f"{what}: the table lacks column(s) {missing}; it has "
                               f"{table.column_names}")
    if non_empty and table.num_rows == 0:
        raise EngineValueError(f"{what}: the table is empty")


def require_dask() -> None:
    """Checked before any work: measuring runs on a Dask cluster needs the optional dask extra."""
    try:
        import dask.distributed  # noqa: F401
    except ImportError as exc:
        raise MissingToolError(
            f"measuring runs on a Dask cluster (workers / scheduler) needs dask.distributed "
            f"({exc}): pip install 'photometry-engine[dask]', or reduce without them") from None
@dataclass
class ImageInput:
    """An image argument taken apart: what the measuring functions pass to the kernels."""

    data: np.ndarray                  # 2-d, the image's own dtype
    pixel_flags: np.ndarray | None    # uint8 PixelFlag: the caller's flags, mask pixels BAD
    sigma: np.ndarray | None          # per-pixel 1-sigma error in the image's units, or None
    gain: float                       # e-/ADU (1 for an image in electrons)
    wcs: object | None                # celestial WCS (the NDData's, else the wcs argument)


def _unit_of(value):
    unit = getattr(value, "unit", None)
    if unit is None:
        return None
    import astropy.units as u

    return u.Unit(unit)


def gain_value(name: str, value) -> float:
    """A gain in e-/ADU from a number or an astropy Quantity in e-/ADU (or an equivalent)."""
    unit = _unit_of(value)
    if unit is not None:
        import astropy.units as u

        try:
            value = (value.value * unit).to_value(u.electron / u.adu)
        except u.UnitConversionError:
            raise EngineValueError(f"{name} must be in electron / adu, got {unit}") from None
    return positive(name, value)


def image_input(image, *, gain=1.0, pixel_flags=None, wcs=None,
                any_unit: bool = False) -> ImageInput:
    """A 2-d image from an ndarray, a NumPy masked array, an astropy Quantity, NDData or CCDData.

    A mask (masked array, NDData.mask) marks pixels BAD in the returned pixel_flags: the kernels
    leave them out and flag the measurements that touch them. NDData.uncertainty becomes the
    per-pixel sigma. The image's unit decides the gain: electron (gain 1; another gain is
    refused) or adu (`gain` converts); any other unit is refused, unless `any_unit` (a caller
    that works in the image's own units, such as detection).
    """
    sigma = mask = None
    if _is_nddata(image):
        wcs = image.wcs if wcs is None else wcs
        mask, sigma = image.mask, _sigma(image)
        unit, data = image.unit, image.data
    elif isinstance(image, np.ma.MaskedArray):
        unit, data, mask = None, image.data, np.ma.getmaskarray(image)
    else:
        unit, data = _unit_of(image), getattr(image, "value", image)
    data = np.asarray(data)
    if data.ndim != 2:
        raise EngineValueError(f"image must be 2-d, got shape {data.shape}")
    gain = _gain_for_unit(None if any_unit else unit, gain_value("gain", gain))
    flags = None if pixel_flags is None else np.asarray(pixel_flags)
    if flags is not None and flags.shape != data.shape:
        raise EngineValueError(f"pixel_flags must have the image's shape {data.shape}, got "
                               f"{flags.shape}")
    if mask is not None and np.any(mask):
        mask = np.broadcast_to(np.asarray(mask, dtype=bool), data.shape)
        from engine.flags import PixelFlag

        flags = np.zeros(data.shape, np.uint8) if flags is None else flags.astype(np.uint8)
        flags = flags | np.where(mask, np.uint8(PixelFlag.BAD), np.uint8(0))
    return ImageInput(data, flags, sigma, gain, wcs)


def _is_nddata(value) -> bool:
    if "astropy.nddata" not in sys.modules:  # never imported: the value cannot be one
        return False
    from astropy.nddata import NDData

    return isinstance(value, NDData)


def _sigma(image) -> np.ndarray | None:
    """The NDData's uncertainty as a per-pixel standard deviation in the image's units."""
    if image.uncertainty is None:
        return None
    from astropy.nddata import StdDevUncertainty

    try:
        sigma = np.asarray(image.uncertainty.represent_as(StdDevUncertainty).array,
                           dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise EngineValueError(f"image uncertainty cannot be used as a standard deviation: "
                               f"{exc}") from None
    return np.broadcast_to(sigma, np.shape(image.data))


def _gain_for_unit(unit, gain: float) -> float:
    if unit is None:
        return gain
    import astropy.units as u

    if unit == u.electron:
        if gain != 1.0:
            raise EngineValueError(f"image is in electrons: gain must be 1, got {gain!r}")
        return 1.0
    if unit == u.adu:
        return gain
    raise EngineValueError(f"image unit must be electron or adu (fluxes come out in "
                           f"electrons), got {unit}")


def pixel_lengths(name: str, value, wcs=None, *, allow_none: bool = False) -> np.ndarray | None:
    """Lengths in pixels (radii, annulus) from numbers, a Quantity in pixels, or an angular
    Quantity converted with `wcs`'s mean pixel scale."""
    if value is None and allow_none:
        return None
    unit = _unit_of(value)
    if unit is None:
        return value
    import astropy.units as u

    if unit.is_equivalent(u.pix):
        return (value.value * unit).to_value(u.pix)
    if not unit.is_equivalent(u.deg):
        raise EngineValueError(f"{name} must be in pixels or an angle, got {unit}")
    if wcs is None or not getattr(wcs, "has_celestial", False):
        raise EngineValueError(f"{name} is an angle ({unit}): give a celestial WCS (the "
                               f"image's NDData.wcs or wcs=) to turn it into pixels")
    from astropy.wcs.utils import proj_plane_pixel_scales

    scale = float(np.mean(proj_plane_pixel_scales(wcs.celestial)))  # deg per pixel
    return (value.value * unit).to_value(u.deg) / scale


def positions(x, y=None) -> tuple[np.ndarray, np.ndarray]:
    """1-d float64 x and y from two arrays (or Quantities in pixels) or one (N, 2) array."""
    if y is None:
        xy = np.asarray(_pixels("positions", x), dtype=np.float64)
        if xy.ndim == 1 and xy.shape == (2,):
            xy = xy[None]
        if xy.ndim != 2 or xy.shape[1] != 2:
            raise EngineValueError(f"positions given alone must be an (N, 2) array of (x, y), "
                                   f"got shape {xy.shape}")
        x, y = xy[:, 0], xy[:, 1]
    x = np.atleast_1d(np.asarray(_pixels("x", x), dtype=np.float64))
    y = np.atleast_1d(np.asarray(_pixels("y", y), dtype=np.float64))
    if x.ndim != 1 or x.shape != y.shape:
        raise EngineValueError(f"x and y must be 1-d of equal length, got {x.shape} and {y.shape}")
    return x, y


def _pixels(name: str, value):
    """Pixel coordinates: numbers, or a Quantity in pixels."""
    unit = _unit_of(value)
    if unit is None:
        return value
    import astropy.units as u

    if not unit.is_equivalent(u.pix):
        raise EngineValueError(f"{name} must be pixel coordinates, got a Quantity in {unit}")
    return (value.value * unit).to_value(u.pix)
