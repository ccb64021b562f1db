"""The engine's exceptions: which to raise, and what a caller catches.

Every engine error derives from EngineError and also from the builtin a caller would catch
anyway, so `except ValueError` keeps working around engine calls:

- EngineValueError(ValueError): an argument or an input's content is wrong (bad shape, radius <= 0).
- EngineFileError(OSError): a file cannot be read or is not what it claims; names the file.
  - InputNotFoundError(EngineFileError, FileNotFoundError): a path given as input does not
    exist, or a folder given as input holds no FITS file. Stops the run.
- HeaderError(EngineValueError): a FITS header lacks or garbles something the engine needs
  (exposure start, exposure time, a section); names the file and the keyword. Ingest turns it
  into a skipped frame with the message as the reason; it stops nothing by itself.
- RegistrationError(EngineValueError): two star lists cannot be matched (match_transform);
  register_frames flags such frames instead of raising.
  - SolveError(RegistrationError): no sky solution (WCS) for a field; says why.
- CatalogueError(EngineValueError): a reference catalogue lacks a column (ra, dec, a
  magnitude), has none of its rows usable, or holds impossible coordinates; names the file.
- CatalogueFetchError(EngineError, ConnectionError): a reference catalogue could not be fetched
  from an online archive (offline, archive down); says what failed and how to go on offline.
- DeviceUnavailableError(RuntimeError): `device = "cuda"` was asked for and no usable CUDA
  device is there; raised before any work.
- EngineWarning(UserWarning): a result the engine gives but the caller should know about (a PSF
  that could not be fitted, so every star is flagged FIT_FAILED); says why.
- MissingToolError(ImportError): an optional tool (a benchmark anchor, astroquery for
  `--catalogue gaia`) is not installed; names the extra that installs it.
- OutputLockedError(EngineFileError): another run is writing into the same output folder; names
  its pid, host and start time.

`file_error(exc, path, doing)` turns an OSError from the system (disk full, permission denied,
not a folder) into an EngineFileError that names the path and says what was being done.
"""

import errno


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class EngineValueError(EngineError, ValueError):
    """An argument or input value the engine cannot use."""


class EngineFileError(EngineError, OSError):
    """A file that cannot be read, or whose content is not what it claims."""


class InputNotFoundError(EngineFileError, FileNotFoundError):
    """An input path that does not exist, or an input folder with no FITS file in it."""


class HeaderError(EngineValueError):
    """A FITS header keyword that is missing or cannot be understood (names file and keyword)."""


class RegistrationError(EngineValueError):
    """Two star lists could not be matched (raised by `match_transform`; `register_frames` flags
    such frames instead)."""


class SolveError(RegistrationError):
    """A field's stars could not be placed on the sky (no catalogue match, too few stars)."""


class CatalogueError(EngineValueError):
    """A reference catalogue whose columns or values cannot be used (names the file)."""


class CatalogueFetchError(EngineError, ConnectionError):
    """A reference catalogue that could not be fetched from an online archive."""


class DeviceUnavailableError(EngineError, RuntimeError):
    """A GPU was asked for (device "cuda") and none is usable."""


class EngineWarning(UserWarning):
    """A result given with a caveat the caller should see (why stars were flagged, say)."""


class MissingToolError(EngineError, ImportError):
    """An optional dependency (for example a benchmark anchor) is not installed."""


class OutputLockedError(EngineFileError):
    """The output folder is held by another writing run (the message names it)."""


#: What a user can do about the commonest system errors.
_OS_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EEXIST: "it exists and is not a folder",
    errno.ELOOP: "too many symbolic links (a link loop)",
}


def file_error(exc: OSError, path, doing: str) -> EngineFileError:
    """An EngineFileError for a system error met while `doing` something to `path` (raise it
    `from exc`); an EngineFileError passes through unchanged."""
    if isinstance(exc, EngineFileError):
        return exc
    reason = _OS_REASONS.get(exc.errno) or exc.strerror or str(exc)
    return EngineFileError(f"cannot {doing} {str(path)!r}: {reason}")
