"""One home for the checks of arguments and settings: each returns the value coerced to its
type, or raises EngineValueError naming it and saying what it must be.

Settings objects call them in `__post_init__` (a bad value is refused where it is read, with the
setting's name); public functions call them before any work or any compiled call.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from engine.errors import EngineFileError, EngineValueError, InputNotFoundError, MissingToolError

__all__ = ["existing_paths", "integer", "non_negative", "non_negative_array", "number", "one_of",
           "output_file", "output_folder", "positive", "positive_array", "require_dask"]


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


def require_dask() -> None:
    """Checked before any work: measuring runs on a Dask cluster needs the optional dask extra."""
    try:
        import dask.distributed  # noqa: F401
    except ImportError as exc:
        raise MissingToolError(
            f"measuring runs on a Dask cluster (workers / scheduler) needs dask.distributed "
            f"({exc}): pip install 'photometry-engine[dask]', or reduce without them") from None
