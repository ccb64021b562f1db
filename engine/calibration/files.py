"""Masters as FITS files: written atomically with their provenance, and read back.

Users open masters in DS9, so each is a plain FITS image: IMAGETYP 'MASTER BIAS' /
'MASTER DARK' / 'MASTER FLAT' / 'BAD PIXEL MASK', FILTER, NCOMBINE, the combine settings, the
notes and the source files as HISTORY; a dark rate's zero-exposure level follows as an image
extension (OFFSET). Header strings are reduced to printable ASCII; file names are built from
sanitised parts only.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import math
import os
import re
from pathlib import Path

import numpy as np

from engine.calibration.masters import _IMAGETYP, Master
from engine.errors import EngineFileError, EngineValueError
from engine.io.atomic import atomic_path

__all__ = ["load_master", "master_filename", "write_master"]

_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def _safe(text: str, limit: int = 60) -> str:
    """`text` as a file-name part of at most `limit` characters; a longer one keeps its start
    and ends in a hash of the whole, so that two names sharing their first characters differ."""
    cleaned = _UNSAFE.sub("-", str(text)).strip("-.") or "none"
    if len(cleaned) <= limit:
        return cleaned
    digest = hashlib.blake2b(str(text).encode(), digest_size=4).hexdigest()
    return f"{cleaned[:limit - len(digest) - 1]}-{digest}"


def master_filename(master: Master, prefix: str | None = None) -> str:
    """The file name `write_master` uses: kind, filter or exposure, sanitised."""
    parts = [] if not prefix else [_safe(prefix)]
    if master.kind == "bias":
        parts.append("master_bias")
    elif master.kind == "dark":
        parts.append("master_dark_rate" if master.rate else f"master_dark_{master.exptime:g}s")
    elif master.kind == "flat":
        parts.append(f"master_flat_{_safe(master.filter or 'nofilter')}")
    else:
        parts.append("bad_pixels")
    return "_".join(parts) + ".fits"


def _ascii(text) -> str:
    """Printable ASCII only (FITS headers allow nothing else)."""
    return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in str(text))


def _header_value(value):
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(float(value)) else str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, str):
        return "".join(ch if 32 <= ord(ch) < 127 else "?" for ch in value)[:68]
    return value


def write_master(master: Master, folder: str | os.PathLike, *, prefix: str | None = None,
                 name: str | None = None) -> Path:
    """Write a master as a FITS file in `folder` (created), atomically; returns its path.

    The header holds IMAGETYP, FILTER, NCOMBINE, EXPTIME (matched darks, flats), BUNIT,
    XBINNING / YBINNING, CCD-TEMP, INSTRUME, the combine settings, ORIGIN, DATE, the notes and
    the source files as HISTORY, and the master's own cards. Written under a temporary name and
    renamed, so a killed writer never leaves a half-written master under the real name.
    """
    from astropy.io import fits

    from engine import __version__

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (name if name is not None else master_filename(master, prefix))
    if (_UNSAFE.search(path.name) or path.name.startswith(".") or len(path.name) > 200
            or path.parent != folder):
        raise EngineValueError(f"unsafe master file name {path.name!r}")
    header = fits.Header()
    header["IMAGETYP"] = (master.imagetyp, "calibration master made by the engine")
    header["FILTER"] = (_header_value(master.filter or ""), "filter of the frames")
    header["NCOMBINE"] = (int(master.ncombine), "frames combined")
    if master.exptime is not None:
        header["EXPTIME"] = (float(master.exptime), "exposure time, s")
    if master.bunit:
        header["BUNIT"] = (master.bunit, "data unit")
    if master.binning is not None:
        header["XBINNING"] = (int(master.binning[0]), "binning along x")
        header["YBINNING"] = (int(master.binning[1]), "binning along y")
    if master.temperature is not None:
        header["CCD-TEMP"] = (float(master.temperature), "median sensor temperature, C")
    if master.camera:
        header["INSTRUME"] = (_header_value(master.camera), "camera")
    header["ORIGIN"] = (f"engine {__version__}", "photometry engine")
    header["DATE"] = (_dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
                      "file written (UTC)")
    for keyword, value, comment in master.cards:
        if keyword == "HISTORY":
            header.add_history(_ascii(value))
        else:
            value = _header_value(value)
            room = 80 - (len(fits.Card(keyword, value, "x").image.rstrip()) - 1)
            header[keyword] = (value, comment[:max(room, 0)])
    for text in master.notes:
        header.add_history(_ascii(text))
    header["NSOURCE"] = (len(master.sources), "input files (HISTORY 'source:')")
    for source in master.sources:
        header.add_history("source: " + _ascii(source))
    hdus = fits.HDUList([fits.PrimaryHDU(data=np.ascontiguousarray(master.data), header=header)]
                        + [fits.ImageHDU(data=np.ascontiguousarray(image), name=_safe(extname))
                           for extname, image in master.extensions])
    with atomic_path(path, suffix=".fits") as temporary:
        hdus.writeto(temporary, output_verify="silentfix")
    return path


def load_master(path: str | os.PathLike) -> Master:
    """Read a master written by `write_master` back (kind from IMAGETYP)."""
    from astropy.io import fits

    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header
            data = np.array(hdul[0].data)
            extensions = tuple((hdu.name, np.array(hdu.data, dtype=np.float32))
                               for hdu in hdul[1:] if hdu.data is not None)
    except (OSError, ValueError) as exc:
        raise EngineFileError(f"{path}: not a readable master ({exc})") from None
    kinds = {v: k for k, v in _IMAGETYP.items()}
    kind = kinds.get(str(header.get("IMAGETYP", "")).strip())
    if kind is None:
        raise EngineFileError(f"{path}: IMAGETYP {header.get('IMAGETYP')!r} is not a master")
    binning = None
    if "XBINNING" in header:
        binning = (int(header["XBINNING"]), int(header.get("YBINNING", header["XBINNING"])))
    return Master(kind, data.astype(np.uint8 if kind == "bad_pixels" else np.float32),
                  int(header.get("NCOMBINE", 0)), exptime=header.get("EXPTIME"),
                  rate=str(header.get("BUNIT", "")) == "adu/s",
                  filter=str(header.get("FILTER", "")).strip() or None, binning=binning,
                  temperature=header.get("CCD-TEMP"), camera=header.get("INSTRUME"),
                  extensions=extensions)


