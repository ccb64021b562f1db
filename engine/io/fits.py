"""FITS files: find them, locate the image in them, and read its pixels.

`find_fits_files` walks folders (recursively, hidden folders excluded) for .fit/.fits/.fts in any
case, plain, fpack'ed (.fz) or gzipped (.gz). `open_image` reads a file's headers and picks the
image: the primary HDU when it holds data, else the first image or tile-compressed image
extension (a file with several is read from its first, and `FitsImage.note` says so). The header
it returns is the primary header overlaid with the image extension's, so keywords an observatory
writes only in the primary header are kept. `read_image` returns the pixels as the FITS
standard defines them (BZERO/BSCALE applied) in native byte order, C-contiguous and 2-D.

Uncompressed images are read with one `np.fromfile` at the data offset (three to four times faster
than through astropy's HDU objects); tile-compressed and gzipped files go through astropy.
Integer pixels keep their integer type (BITPIX 16 with BZERO 32768 is uint16); other BZERO or
BSCALE values give float32 (float64 for 32- and 64-bit integers). BLANK is not applied to
integer images: raw frames from the cameras this engine reads do not use it.

Errors: EngineFileError (also OSError) naming the file for anything that is not a readable 2-D
image: not FITS, truncated, no image data, unexpected NAXIS; its `reason_code` attribute says
which in one word (not_fits, empty_file, truncated, no_data, bad_naxis, unreadable). Nothing here
writes to a file.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
from astropy.io import fits

from engine.errors import EngineFileError, InputNotFoundError

log = logging.getLogger("engine.io.fits")

__all__ = ["FitsImage", "find_fits_files", "is_fits_name", "open_image", "read_image"]

_BASE_SUFFIXES = (".fit", ".fits", ".fts")
_WRAPPER_SUFFIXES = ("", ".fz", ".gz")
_GZIP_MAGIC = b"\x1f\x8b"
_NATIVE = "<" if np.little_endian else ">"
_STRUCTURAL = {"SIMPLE", "XTENSION", "BITPIX", "NAXIS", "EXTEND", "PCOUNT", "GCOUNT", "GROUPS",
               "EXTNAME", "EXTVER", "CHECKSUM", "DATASUM", "BZERO", "BSCALE", "BLANK", "END"}


def is_fits_name(name: str) -> bool:
    """Whether a file name ends like a FITS file (.fit/.fits/.fts, optionally .fz or .gz; any
    case; a bare .fz counts too)."""
    lower = name.lower()
    if lower.endswith(".fz"):
        return True
    for wrapper in _WRAPPER_SUFFIXES:
        for base in _BASE_SUFFIXES:
            if lower.endswith(base + wrapper):
                return True
    return False


def find_fits_files(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Absolute paths of the FITS files among `paths`, sorted, each once.

    A file given by name is taken whatever its name; folders are searched recursively for names
    that `is_fits_name` accepts, skipping hidden folders (.git, .Trash). Raises
    InputNotFoundError for a path that does not exist or a folder with no FITS file.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    found: dict[str, Path] = {}
    for given in paths:
        path = Path(given).expanduser()
        if path.is_file():
            resolved = path.resolve()
            found[str(resolved)] = resolved
            continue
        if not path.is_dir():
            raise InputNotFoundError(f"input path {str(path)!r} does not exist")
        count = 0
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in files:
                if is_fits_name(name):
                    resolved = _resolve(Path(root) / name)
                    if resolved is not None and resolved.is_file():
                        found[str(resolved)] = resolved
                        count += 1
        if count == 0:
            raise InputNotFoundError(f"no FITS files (.fit, .fits, .fts, .fz) under {str(path)!r}")
    return [found[key] for key in sorted(found)]


def _resolve(path: Path) -> Path | None:
    """The file a found name stands for; None, with a warning, for a symbolic-link loop."""
    try:
        return path.resolve()
    except (RuntimeError, OSError) as exc:  # Python < 3.13 says RuntimeError, later OSError
        log.warning("skipped %s: %s", path, exc)
        return None


@dataclass(frozen=True)
class FitsImage:
    """Where a file's image is and how to decode it (everything but the pixels).

    header: primary header overlaid with the image HDU's header (astropy Header).
    hdu_index, hdu_name: which HDU holds the image. n_image_hdus: how many image HDUs the file has.
    compression: the tile compression ('RICE_1', 'GZIP_1', ...), 'gzip' for a gzipped file, or None.
    shape: (rows, columns) of the image, unit axes removed.
    dtype: the decoded pixels' dtype (native byte order).
    data_offset: byte offset of the pixels in the file when they can be read directly, else None.
    note: what a user should know about how the image was found (several image HDUs), or ''.
    """

    path: Path
    header: fits.Header
    hdu_index: int
    hdu_name: str
    n_image_hdus: int
    compression: str | None
    shape: tuple[int, int]
    dtype: np.dtype
    bitpix: int
    bzero: float
    bscale: float
    data_offset: int | None
    file_size: int
    note: str = ""


def _error(code: str, message: str) -> EngineFileError:
    """An EngineFileError with a machine-readable `reason_code` (see the frames table)."""
    error = EngineFileError(message)
    error.reason_code = code
    return error


def _decoded_dtype(bitpix: int, bzero: float, bscale: float) -> np.dtype:
    if bitpix < 0:
        return np.dtype(np.float32 if bitpix == -32 else np.float64)
    ints = {8: np.uint8, 16: np.int16, 32: np.int32, 64: np.int64}
    if bitpix not in ints:
        raise ValueError(f"BITPIX = {bitpix} is not a FITS pixel type")
    if bscale == 1.0 and bzero == 0.0:
        return np.dtype(ints[bitpix])
    if bscale == 1.0:
        pseudo = {8: (-128.0, np.int8), 16: (32768.0, np.uint16), 32: (2147483648.0, np.uint32),
                  64: (9223372036854775808.0, np.uint64)}
        value, dtype = pseudo[bitpix]
        if bzero == value:
            return np.dtype(dtype)
    return np.dtype(np.float32 if bitpix <= 16 else np.float64)


def _image_shape(header: fits.Header, path: Path) -> tuple[int, ...]:
    naxis = int(header.get("NAXIS", 0))
    return tuple(int(header.get(f"NAXIS{k}", 0)) for k in range(naxis, 0, -1))


def _squeeze(shape: tuple[int, ...], path: Path) -> tuple[int, int]:
    squeezed = tuple(n for n in shape if n != 1) if len(shape) > 2 else shape
    if len(squeezed) != 2 or 0 in squeezed:
        described = " x ".join(str(n) for n in shape) or "none"
        raise _error(
            "bad_naxis",
            f"{path}: unexpected NAXIS = {len(shape)} (axes {described}): not one 2-D image")
    return squeezed  # type: ignore[return-value]


def _merged_header(primary: fits.Header, image: fits.Header) -> fits.Header:
    merged = fits.Header()
    for card in primary.cards:
        if card.keyword in _STRUCTURAL or card.keyword.startswith("NAXIS") or not card.keyword:
            continue
        if card.keyword in ("COMMENT", "HISTORY"):
            continue
        merged.append(card, end=True)
    for card in image.cards:
        if card.keyword in ("COMMENT", "HISTORY", ""):
            continue
        if card.keyword in merged:
            merged[card.keyword] = (card.value, card.comment)
        else:
            merged.append(card, end=True)
    return merged


def open_image(path: str | os.PathLike) -> FitsImage:
    """Read a FITS file's headers and locate its image; no pixels are read.

    Raises EngineFileError (an OSError) naming the file when it is empty, not FITS, truncated
    before its pixels end, holds no image, or holds an image that is not 2-D.
    """
    path = Path(path)
    size, gzipped = _check_start(path)
    try:
        hdul = fits.open(path, memmap=False, lazy_load_hdus=False)
    except Exception as exc:  # astropy raises OSError, ValueError, IndexError on garbage
        if size % 2880:
            raise _error("truncated", f"{path}: truncated: {size} bytes is not a whole number "
                                      f"of 2880-byte FITS blocks ({exc})") from None
        raise _error("not_fits", f"{path}: not a readable FITS file ({exc})") from None
    with hdul:
        candidates = [index for index, hdu in enumerate(hdul) if _holds_image(hdu)]
        if not candidates:
            raise _error("no_data", f"{path}: no image data (NAXIS = 0 in every HDU)")
        index = candidates[0]
        hdu = hdul[index]
        header = hdu.header
        raw_shape = _image_shape(header, path)
        shape = _squeeze(raw_shape, path)
        bitpix = int(header.get("BITPIX"))
        bzero = float(header.get("BZERO", 0.0))
        bscale = float(header.get("BSCALE", 1.0))
        try:
            dtype = _decoded_dtype(bitpix, bzero, bscale)
        except ValueError as exc:
            raise _error("unreadable", f"{path}: {exc}") from None
        compression, data_offset = _data_location(hdul, index, raw_shape, path, size, gzipped)
        merged = header.copy() if index == 0 else _merged_header(hdul[0].header.copy(), header)
        name = str(hdu.name or ("PRIMARY" if index == 0 else f"HDU{index}"))
        note = ""
        if len(candidates) > 1:
            note = (f"{len(candidates)} image HDUs; read HDU {index} ({name}), "
                    f"ignored {', '.join(str(c) for c in candidates[1:])}")
    return FitsImage(path=path, header=merged, hdu_index=index, hdu_name=name,
                     n_image_hdus=len(candidates), compression=compression, shape=shape,
                     dtype=dtype, bitpix=bitpix, bzero=bzero, bscale=bscale,
                     data_offset=data_offset, file_size=size, note=note)


def _check_start(path: Path) -> tuple[int, bool]:
    """(size, gzipped) of a file that starts like FITS or gzip; EngineFileError otherwise."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            magic = handle.read(80)
    except OSError as exc:
        raise _error("unreadable", f"{path}: cannot be read ({exc.strerror or exc})") from None
    if size == 0:
        raise _error("empty_file", f"{path}: empty file (0 bytes)")
    gzipped = magic[:2] == _GZIP_MAGIC
    if not gzipped and not magic.startswith(b"SIMPLE  ="):
        raise _error("not_fits", f"{path}: not a FITS file (it does not start with 'SIMPLE  =')")
    return size, gzipped


def _holds_image(hdu) -> bool:
    if isinstance(hdu, fits.CompImageHDU):
        return True
    return (isinstance(hdu, (fits.PrimaryHDU, fits.ImageHDU))
            and int(hdu.header.get("NAXIS", 0)) > 0)


def _data_location(hdul, index: int, raw_shape: tuple[int, ...], path: Path, size: int,
                   gzipped: bool) -> tuple[str | None, int | None]:
    """(compression, byte offset of the pixels when they can be read directly); raises
    EngineFileError for a file that ends before its pixels do."""
    hdu = hdul[index]
    info = hdul.fileinfo(index)
    if isinstance(hdu, fits.CompImageHDU):
        # The table's data span is padded to 2880 bytes; a file that ends inside the padding
        # still decodes, one that ends before it does not (read_image will also say so).
        needed = int(info["datLoc"]) + int(info["datSpan"]) - 2879
        if needed > size:
            raise _error(
                "truncated", f"{path}: truncated: the compressed image needs {needed} bytes, "
                f"the file has {size}")
        return str(hdu.compression_type or "tile-compressed").strip(), None
    if gzipped:
        return "gzip", None
    data_offset = int(info["datLoc"])
    nbytes = abs(int(hdu.header.get("BITPIX"))) // 8 * int(np.prod(raw_shape))
    if data_offset + nbytes > size:
        raise _error("truncated", f"{path}: truncated: the image needs "
                                  f"{data_offset + nbytes} bytes, the file has {size}")
    return None, data_offset


def _read_direct(image: FitsImage) -> np.ndarray:
    bits = image.bitpix
    stored = {8: ">u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}[bits]
    count = image.shape[0] * image.shape[1]
    raw = np.fromfile(image.path, dtype=stored, count=count, offset=image.data_offset)
    if raw.size != count:
        raise _error("truncated", f"{image.path}: truncated: read {raw.size} of {count} pixels")
    raw = raw.reshape(image.shape)
    if raw.dtype.byteorder not in ("=", "|") and raw.dtype.byteorder != _NATIVE:
        raw.byteswap(inplace=True)  # fromfile's array is ours: swap in place, no copy
        raw = raw.view(raw.dtype.newbyteorder())
    native = raw
    dtype = image.dtype
    if dtype == native.dtype:
        return native
    if dtype.kind == "u" and image.bscale == 1.0 and bits > 8:
        # Signed storage with BZERO = 2**(bits-1): flipping the sign bit is the exact conversion.
        unsigned = native.view(dtype)
        unsigned ^= dtype.type(1 << (bits - 1))
        return unsigned
    if dtype == np.int8:  # BITPIX 8 with BZERO -128
        return (native.astype(np.int16) - 128).astype(np.int8)
    out = native.astype(dtype)
    if image.bscale != 1.0:
        out *= dtype.type(image.bscale)
    if image.bzero != 0.0:
        out += dtype.type(image.bzero)
    return out


def read_image(image: FitsImage) -> np.ndarray:
    """The image's pixels: 2-D, C-contiguous, native byte order, dtype `image.dtype`.

    Raises EngineFileError naming the file when the pixels cannot be decoded.
    """
    if image.data_offset is not None:
        try:
            return _read_direct(image)
        except OSError as exc:
            raise _error("unreadable", f"{image.path}: cannot read the image ({exc})") from None
    try:
        with fits.open(image.path, memmap=False) as hdul:
            data = hdul[image.hdu_index].data
            if data is None:
                raise _error("no_data", f"{image.path}: no image data in HDU {image.hdu_index}")
            data = np.asarray(data)
    except EngineFileError:
        raise
    except Exception as exc:  # decompression errors come as many types
        raise _error("unreadable", f"{image.path}: cannot decode the image ({exc})") from None
    data = data.reshape(image.shape)
    target = image.dtype if data.dtype.kind != "f" or image.dtype.kind == "f" else data.dtype
    return np.ascontiguousarray(data, dtype=target.newbyteorder("="))
