"""Frame cubes: a run's frames as one Zarr v3 array (frame, y, x), one frame per chunk.

Written under a temporary hidden name beside the final one and renamed into place only when every
frame and the attributes are in, so a killed writer leaves a temporary folder that nothing
trusts (`remove_stale_temporaries` clears them) and never a half-written cube under a real name.

Compression: Blosc LZ4 with bit-shuffle (clevel 5), chosen by measurement on this project's
2-core machines. Single-threaded numcodecs, one frame at a time, real frames from ../shared/data
and a simulated star field; compression ratio, then encode / decode MB/s:

    frame (uint16)             lz4 bitshuffle      zstd-1 byteshuffle   zstd-1 (no shuffle)
    AST443 bias (sigma 8 ADU)  2.61 2708/3697      3.14 1021/1822       2.40  319/1344
    AST443 300 s dark          1.84 1361/2540      2.23  726/1170       1.81  462/2115
    AST443 flat (19.6 kADU)    1.46 1841/3498      1.50  402/ 903       1.33  989/1530
    NTT/EMMI field (int16)     1.69 2236/3195      1.88  489/ 863       1.61  901/1713
    SAAO frame with overscan   2.66 2128/3240      2.93  996/1650       2.25  317/1321
    simulated light (stars)    1.59 2424/3742      1.89  428/ 725       1.68  721/2328

(gzip-1: ratios like zstd-1's, 40-120 MB/s to encode and 150-360 MB/s to decode.)

And through zarr-python (whole cubes; ratio, write MB/s, read MB/s frame by frame; np.load of the
same array from the page cache: 7.1 GB/s for the first set, 17.7 GB/s for the second):

    12 x 2048² sky + noise    none 1.00 1833/5104  lz4-bit 2.14 924/1688  lz4-byte 1.80 1455/1914
                              zstd1-bit 2.36 520/996
    14 x 1024² AST443 frames  none 1.00 1414/3281  lz4-bit 1.83 733/1406  lz4-byte 1.59  667/1787
                              zstd1-bit 2.02 421/917

Every later stage reads the cubes (calibration, photometry, perhaps more than once), so decode
speed matters most: LZ4 with bit-shuffle decodes at 2.5-3.7 GB/s per core, 2-4x faster than zstd,
and still saves 30-60% of the space (80-95% of what zstd saves). Byte-shuffle LZ4 reads 15-30%
faster through zarr but its cubes are 15-20% larger on every noisy frame; zstd halves the read
rate for 10% more saving; gzip is 10x slower for nothing. Uncompressed cubes only read faster
while they sit in the page cache; from disk the smaller cube is the faster one.
Zarr writes the array's metadata; the chunk files (the same bytes Zarr would write) are encoded
and written, and read and decoded, here, by `CubeWriter` and `FrameCube`: Zarr's per-chunk
machinery (an event loop, a copy and an empty-chunk check per chunk) cost 2-3x the codec
itself, and read one chunk at a time. Cubes in any other layout are read through Zarr.
"""

from __future__ import annotations

import os
import shutil
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from numcodecs import Blosc
from zarr.codecs import BloscCodec, BytesCodec

from engine.cext import default_threads
from engine.errors import EngineFileError, EngineValueError

__all__ = ["CUBE_COMPRESSION", "CubeWriter", "FrameCube", "cube_attributes",
           "open_cube", "remove_stale_temporaries"]

CUBE_COMPRESSION = "blosc-lz4-bitshuffle-5"
_TEMPORARY = ".tmp-"
_RETIRED = ".old-"


def _compressor() -> BloscCodec:
    return BloscCodec(cname="lz4", clevel=5, shuffle="bitshuffle")


_SHUFFLES = {"noshuffle": Blosc.NOSHUFFLE, "shuffle": Blosc.SHUFFLE,
             "bitshuffle": Blosc.BITSHUFFLE}


def _frame_chunks(array: zarr.Array) -> bool:
    """Whether an array keeps one frame per chunk file at CubeWriter's keys (Zarr v3 default
    chunk keys, c/FRAME/0/0)."""
    metadata = array.metadata
    return (metadata.zarr_format == 3 and array.ndim == 3
            and tuple(array.chunks) == (1,) + tuple(array.shape[1:])
            and metadata.chunk_key_encoding.name == "default"
            and metadata.chunk_key_encoding.separator == "/")


def _frame_codec(array: zarr.Array) -> Blosc | None:
    """The Blosc codec of an array laid out as CubeWriter writes it (`_frame_chunks`, each the
    frame's little-endian bytes through Blosc), so that its chunk files can be encoded and
    decoded directly, without Zarr's per-chunk machinery; None for any other layout (Zarr reads
    those)."""
    if not _frame_chunks(array):
        return None
    codecs = tuple(array.metadata.codecs)
    if (len(codecs) != 2 or not isinstance(codecs[0], BytesCodec)
            or not isinstance(codecs[1], BloscCodec)
            or (codecs[0].endian is not None and codecs[0].endian.value != "little")):
        return None
    blosc = codecs[1]
    return Blosc(cname=blosc.cname.name, clevel=blosc.clevel,
                 shuffle=_SHUFFLES[blosc.shuffle.name], blocksize=blosc.blocksize,
                 typesize=blosc.typesize)


def _chunk_path(cube: Path, frame: int) -> Path:
    # CubeWriter's layout: one chunk per frame, Zarr v3's default key c/FRAME/0/0.
    return cube.joinpath("c", str(frame), "0", "0")


def _temporary_name(final: Path, tag: str) -> Path:
    return final.with_name(f".{final.name}{tag}{os.getpid()}-{uuid.uuid4().hex[:8]}")


class CubeWriter:
    """Writes one cube: `append` frames in order (or `reserve` indices in order and `write` them
    from worker threads, so that frames compress in parallel), then `commit` (or `abort`).

    path: the cube's final location (a folder, conventionally NAME.zarr). frame_shape: (rows,
    columns). dtype: the stored dtype (frames are cast to it, exactly: a frame whose values do not
    fit is refused). capacity: the most frames that will be appended (the array shrinks to the
    number appended at commit). attributes: JSON-able metadata stored with the array.

    Use as a context manager: leaving the block by an exception aborts, removing the temporary.
    """

    def __init__(self, path: str | os.PathLike, frame_shape: tuple[int, int], dtype,
                 capacity: int, attributes: dict | None = None):
        self.path = Path(path)
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self.dtype = np.dtype(dtype)
        if capacity < 1:
            raise EngineValueError(f"a cube needs room for at least one frame, got {capacity}")
        self.capacity = int(capacity)
        self.count = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._temporary = _temporary_name(self.path, _TEMPORARY)
        self._array = zarr.create_array(
            store=str(self._temporary), shape=(self.capacity,) + self.frame_shape,
            chunks=(1,) + self.frame_shape, dtype=self.dtype, compressors=[_compressor()],
            fill_value=0, zarr_format=3, attributes=dict(attributes or {}))
        self._codec = _frame_codec(self._array)
        self._done = False

    def reserve(self) -> int:
        """The index of the next frame (then `write` it, possibly from another thread)."""
        if self._done:
            raise EngineValueError("this cube is already committed or aborted")
        if self.count >= self.capacity:
            raise EngineValueError(f"the cube holds at most {self.capacity} frames")
        self.count += 1
        return self.count - 1

    def write(self, index: int, frame: np.ndarray) -> None:
        """Store a frame at a reserved index. Threads may write different indices at once
        (each frame is its own chunk); every reserved index must be written before `commit`."""
        if self._done:
            raise EngineValueError("this cube is already committed or aborted")
        if not 0 <= index < self.count:
            raise EngineValueError(f"frame index {index} was not reserved")
        if frame.shape != self.frame_shape:
            raise EngineValueError(f"frame shape {frame.shape} differs from the cube's "
                                   f"{self.frame_shape}")
        if frame.dtype != self.dtype:
            cast = frame.astype(self.dtype)
            if not np.array_equal(cast, frame, equal_nan=frame.dtype.kind == "f"):
                raise EngineValueError(f"frame values do not fit the cube's dtype {self.dtype}")
            frame = cast
        # The chunk file Zarr would write, without its per-chunk machinery (~3x the encoding's
        # own cost): the frame's little-endian bytes through Blosc.
        stored = np.ascontiguousarray(frame, dtype=self.dtype.newbyteorder("<"))
        chunk = _chunk_path(self._temporary, index)
        chunk.parent.mkdir(parents=True, exist_ok=True)
        chunk.write_bytes(self._codec.encode(stored))

    def append(self, frame: np.ndarray) -> int:
        """Store the next frame; returns its index in the cube."""
        index = self.reserve()
        self.write(index, frame)
        return index

    def commit(self, attributes: dict | None = None) -> Path:
        """Shrink to the frames appended, add `attributes`, and rename into place."""
        if self._done:
            raise EngineValueError("this cube is already committed or aborted")
        if self.count == 0:
            self.abort()
            raise EngineValueError(f"{self.path}: no frames were appended; nothing to commit")
        if self.count < self.capacity:
            self._array.resize((self.count,) + self.frame_shape)
        merged = dict(attributes or {})
        merged["n_frames"] = self.count
        merged["compression"] = CUBE_COMPRESSION
        self._array.update_attributes(merged)  # one metadata write
        retired = None
        if self.path.exists():
            retired = _temporary_name(self.path, _RETIRED)
            os.replace(self.path, retired)
        os.replace(self._temporary, self.path)
        if retired is not None:
            shutil.rmtree(retired, ignore_errors=True)
        self._done = True
        return self.path

    def abort(self) -> None:
        """Forget the cube: remove the temporary folder."""
        if not self._done:
            self._done = True
            shutil.rmtree(self._temporary, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            self.abort()
        return False


class FrameCube:
    """A committed cube opened for reading: index it like a NumPy array (cube[k] is frame k);
    shape, dtype, attrs and the rest are the Zarr array's.

    Whole frames of a cube in CubeWriter's layout are read directly: each chunk file read once,
    its length checked against its Blosc header on those bytes, and decoded straight into the
    result, `threads` frames at a time. Other layouts and other indexing go through Zarr.

    Reading checks what Zarr does not: a frame whose chunk file is gone would read as zeros (the
    fill value), and a damaged chunk fails deep in the decompressor without naming the file;
    both raise EngineFileError naming the chunk.
    """

    def __init__(self, path: Path, array: zarr.Array, threads: int = 1):
        self.path = path
        self.threads = threads
        self._array = array
        self._codec = _frame_codec(array)
        self._frame_chunks = _frame_chunks(array)
        # Other codecs: the chunk files are Blosc frames only when the last codec is Blosc.
        codecs = getattr(array.metadata, "codecs", None) or ()
        self._blosc_chunks = bool(codecs) and isinstance(codecs[-1], BloscCodec)
        self._buffers = threading.local()  # each reading thread's chunk buffer

    def __getattr__(self, name):
        return getattr(self._array, name)

    def __len__(self) -> int:
        return len(self._array)

    def __array__(self, dtype=None, copy=None):
        frames = self[...]
        return frames if dtype is None else frames.astype(dtype)

    def __getitem__(self, key):
        selection = self._direct_selection(key) if self._codec is not None else None
        if selection is None:
            return self._through_zarr(key)
        frames, single, within = selection
        frame_shape = tuple(self._array.shape[1:])
        out = np.empty((len(frames),) + frame_shape, self._array.dtype.newbyteorder("<"))
        jobs = [(frame, out[k]) for k, frame in enumerate(frames)]
        if self.threads > 1 and len(jobs) > 1:
            with ThreadPoolExecutor(min(self.threads, len(jobs))) as pool:
                list(pool.map(lambda job: self._decode(*job), jobs))
        else:
            for job in jobs:
                self._decode(*job)
        out = out.astype(self._array.dtype, copy=False)  # native byte order
        result = out[0] if single else out
        return result[within] if single else result[(slice(None),) + within]

    def _direct_selection(self, key) -> tuple[list[int], bool, tuple] | None:
        """(frames, one frame asked for by an integer, the slices within each frame) for a key
        the direct path reads: an integer, slice or 1-D index array over frames, then integers
        and slices; None for anything else. Raises IndexError for a frame outside the cube."""
        key = key if isinstance(key, tuple) else (key,)
        count = self._array.shape[0]
        if not key or (len(key) == 1 and key[0] is Ellipsis):
            return list(range(count)), False, ()
        first, within = key[0], key[1:]
        if len(within) >= self._array.ndim or not all(
                isinstance(k, slice) or _is_integer(k) for k in within):
            return None
        if _is_integer(first):
            frames, single = np.array([int(first)]), True
        elif isinstance(first, slice):
            return list(range(*first.indices(count))), False, within
        else:
            frames, single = np.asarray(first), False
            if frames.dtype == bool and frames.shape == (count,):
                return np.flatnonzero(frames).tolist(), False, within
            if frames.ndim != 1 or frames.dtype.kind not in "iu":
                return None
        if frames.size and (frames.min() < -count or frames.max() >= count):
            raise IndexError(f"{self.path}: frame index out of range for {count} frames")
        return np.where(frames < 0, frames + count, frames).tolist(), single, within

    def _decode(self, frame: int, out: np.ndarray) -> None:
        """Frame `frame` decoded into `out` (C-contiguous, little-endian)."""
        chunk = _chunk_path(self.path, frame)
        data = self._chunk_bytes(chunk, frame)
        _check_length(data[:16], len(data), chunk, frame, self.path, out.nbytes)
        try:
            self._codec.decode(data, out=out)
        except Exception as exc:  # blosc raises RuntimeError or ValueError on a damaged chunk
            raise EngineFileError(f"{chunk}: frame {frame} of the cube {self.path} cannot be "
                                  f"decoded ({type(exc).__name__}: {exc})") from None

    def _chunk_bytes(self, chunk: Path, frame: int) -> memoryview:
        """A chunk file's bytes, read once into this thread's buffer: reused, because a fresh
        4 MB bytes object per chunk costs ten times the read itself in page faults."""
        try:
            with open(chunk, "rb", buffering=0) as handle:
                size = os.fstat(handle.fileno()).st_size
                buffer = getattr(self._buffers, "data", None)
                if buffer is None or len(buffer) < size:
                    buffer = self._buffers.data = bytearray(size)
                view, read = memoryview(buffer)[:size], 0
                while read < size and (count := handle.readinto(view[read:])):
                    read += count
        except FileNotFoundError:
            raise _missing(chunk, frame, self.path) from None
        return view[:read]

    def _through_zarr(self, key):
        for frame in _frames(key, self._array.shape[0]) if self._frame_chunks else ():
            if 0 <= frame < self._array.shape[0]:
                _check_chunk(_chunk_path(self.path, int(frame)), int(frame), self.path,
                             self._blosc_chunks)
        try:
            return self._array[key]
        except IndexError:  # the caller's index, not the file
            raise
        except Exception as exc:  # a damaged chunk: RuntimeError from blosc, others from zarr
            raise EngineFileError(f"{self.path}: frames {key!r} cannot be read, a chunk is "
                                  f"damaged ({type(exc).__name__}: {exc})") from None


def _is_integer(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _frames(key, count: int) -> range | np.ndarray:
    """The frames a Zarr key reads (before Zarr checks it)."""
    first = key[0] if isinstance(key, tuple) and key else key
    if first is Ellipsis or (isinstance(key, tuple) and not key):
        return range(count)
    if isinstance(first, slice):
        return range(*first.indices(count))
    indices = np.atleast_1d(np.asarray(first))
    if indices.dtype == bool:
        return np.flatnonzero(indices)
    return np.where(indices < 0, indices + count, indices).astype(np.int64)


def _missing(chunk: Path, frame: int, cube: Path) -> EngineFileError:
    return EngineFileError(f"{chunk}: frame {frame} of the cube {cube} is missing (chunk file "
                           f"deleted)")


def _check_chunk(chunk: Path, frame: int, cube: Path, blosc: bool) -> None:
    """The frame's chunk file exists and, when it is Blosc's, is as long as its header says
    (before Zarr reads it)."""
    try:
        with open(chunk, "rb") as handle:
            header = handle.read(16)
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError:
        raise _missing(chunk, frame, cube) from None
    if blosc:
        _check_length(header, size, chunk, frame, cube)


def _check_length(header: bytes, size: int, chunk: Path, frame: int, cube: Path,
                  frame_bytes: int | None = None) -> None:
    """A chunk of `size` bytes is as long as its Blosc header says (and, given `frame_bytes`,
    decodes to that many bytes). Blosc trusts that header: a truncated chunk can decompress from
    whatever memory follows the buffer and return garbage without an error."""
    # Blosc 1 frame header: version, codec version, flags, type size, then uint32 LE nbytes,
    # blocksize and cbytes (the whole compressed chunk, header included).
    if len(header) == 16 and header[0] in (1, 2):
        decoded = int.from_bytes(header[4:8], "little")
        compressed = int.from_bytes(header[12:16], "little")
        if compressed != size:
            raise EngineFileError(f"{chunk}: frame {frame} of the cube {cube} is damaged (the "
                                  f"chunk holds {size} bytes, its header says {compressed})")
        if frame_bytes is not None and decoded != frame_bytes:
            raise EngineFileError(f"{chunk}: frame {frame} of the cube {cube} is damaged (it "
                                  f"decodes to {decoded} bytes, a frame has {frame_bytes})")
    elif size < 16 or frame_bytes is not None:
        raise EngineFileError(f"{chunk}: frame {frame} of the cube {cube} is damaged (a chunk "
                              f"of {size} bytes without a Blosc header)")


def open_cube(path: str | os.PathLike, threads: int | None = None) -> FrameCube:
    """A committed cube, read-only (index it like a NumPy array: cube[k] is frame k); reading a
    deleted or damaged frame raises EngineFileError naming it. threads: frames decoded at once
    when several are read (default: every core this process may use)."""
    threads = default_threads(threads)
    path = Path(path)
    try:
        return FrameCube(path, zarr.open_array(str(path), mode="r"), threads)
    except Exception as exc:  # zarr raises several types for a missing or broken array
        raise EngineFileError(f"{path}: not a readable frame cube ({exc})") from None


def cube_attributes(path: str | os.PathLike) -> dict | None:
    """A committed cube's attributes, or None when there is no readable cube at `path`."""
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return None
    try:
        return dict(zarr.open_array(str(path), mode="r").attrs.asdict())
    except Exception:
        return None


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed writers left in `folder` (temporary and retired cubes); returns them.
    Only one writer may work in a folder at a time."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        if entry.name.startswith(".") and (_TEMPORARY in entry.name or _RETIRED in entry.name):
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed
