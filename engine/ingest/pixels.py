"""Pass 2 of ingest: a run's pixels into its cube. Each frame is read, checked (no pixels, all
NaN, a duplicate of another frame), hashed, Bayer-extracted and freed of its pedestal, then
compressed and written in the thread pool while the next frames are read."""

from __future__ import annotations

import collections
import hashlib
import logging
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.errors import EngineFileError
from engine.ingest.table import skip
from engine.io import bayer as _bayer
from engine.io.adc import saturation_level
from engine.io.cube import CubeWriter
from engine.io.fits import open_image, read_image
from engine.io.layout import bad_pixel_cube_path
from engine.progress import progress

log = logging.getLogger(__name__)


def median(data: np.ndarray) -> float:
    sample = data[::8, ::8]  # 1/64 of the pixels: 65k for a 2048² frame, plenty for a median
    if sample.dtype.kind == "f":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            value = np.nanmedian(sample)
    else:
        value = np.median(sample)
    return float(value)


@dataclass
class _Loaded:
    data: np.ndarray | None = None
    content_hash: str | None = None
    median: float | None = None
    code: str | None = None  # why the frame is skipped, when it is
    reason: str | None = None
    bad_pixels: np.ndarray | None = None  # the file's own bad-pixel mask (uint8, 1 = bad)
    saturation: tuple[float, str] | None = None  # measured on the raw pixels: (level, how)


def _load(scanned, mode: str) -> _Loaded:
    """One frame's stored pixels, content hash and median, or why it must be skipped."""
    row = scanned.row
    try:
        image = scanned.image or open_image(row["path"])
        data = read_image(image)
    except EngineFileError as exc:
        return _Loaded(code=getattr(exc, "reason_code", "unreadable"), reason=str(exc))
    except Exception as exc:  # one broken file must not stop the night
        log.debug("reading %s failed", row["path"], exc_info=True)
        return _Loaded(code="unreadable", reason=f"{row['path']}: cannot be read ({exc})")
    if data.size == 0:
        return _Loaded(code="no_data", reason=f"{row['path']}: the image has no pixels")
    if data.dtype.kind == "f" and not np.isfinite(data).any():
        return _Loaded(code="all_nan", reason=f"{row['path']}: every pixel is NaN or infinite")
    digest = hashlib.sha256(f"{data.dtype.str}{data.shape}".encode())
    digest.update(memoryview(np.ascontiguousarray(data)).cast("B"))
    data, measured = _stored_pixels(data, scanned, mode)
    bad = _file_bad_pixels(row) if row["bad_pixel_hdu"] is not None else None
    return _Loaded(data=data, content_hash=digest.hexdigest()[:32], median=median(data),
                   bad_pixels=bad, saturation=measured)


def _stored_pixels(data: np.ndarray, scanned, mode: str):
    """The frame as its cube stores it (Bayer-extracted, pedestal removed), and the saturation
    level measured on its raw pixels as (level, how), or None when the header or site gave one.

    Saturation is measured on the pixels as the camera stored them: before a Bayer extraction
    averages it away and before the run's cube promotes the dtype."""
    row = scanned.row
    raw_level, measured = scanned.raw_saturation, None
    if raw_level is None:
        measured = saturation_level(data)
        raw_level = measured[0] if measured else None
    if scanned.bayer is not None:
        data = _bayer.extract(data, scanned.bayer, mode, saturation=raw_level)
        if measured:
            measured = (_bayer.extracted_saturation(measured[0], mode), measured[1] +
                        "; on the raw Bayer pixels: a 2x2 cell with one saturated is saturated")
    if row["pedestal_adu"]:
        data = data.astype(np.float32) - np.float32(row["pedestal_adu"])
        if measured:  # the level moves with the pixels
            measured = (measured[0] - row["pedestal_adu"], measured[1] + ", less the pedestal")
    return data, measured


def _file_bad_pixels(row: dict) -> np.ndarray | None:
    """The file's own bad-pixel mask (uint8, 1 = bad); None when it cannot be read: a broken
    mask loses the mask, not the frame."""
    try:
        from astropy.io import fits

        with fits.open(row["path"], memmap=False) as hdul:
            return (np.asarray(hdul[row["bad_pixel_hdu"]].data) != 0).astype(np.uint8)
    except Exception as exc:
        log.warning("%s: bad-pixel HDU %s unreadable (%s): not used", row["path"],
                    row["bad_pixel_hdu"], exc)
        return None


def _cube_dtype(members: list[dict]) -> np.dtype:
    dtypes = {np.dtype(r["dtype"]) for r in members}
    if len(dtypes) == 1:
        return dtypes.pop()
    result = np.result_type(*dtypes)
    if result.kind == "f" and result.itemsize > 4 and np.dtype(np.float64) not in dtypes:
        return np.dtype(np.float32)
    return result


def _loaded_frames(members: list, mode: str, pool: ThreadPoolExecutor, depth: int):
    """(frame, _Loaded) in the run's order, the pool reading up to `depth` frames ahead."""
    pending = collections.deque()
    for scanned in members:
        pending.append((scanned, pool.submit(_load, scanned, mode)))
        if len(pending) > depth:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


def _accept(row: dict, loaded: _Loaded, seen: dict[str, str]) -> bool:
    """Fill the row's pixel columns; False, the row skipped, for a frame without pixels to
    store or whose pixels another frame (`seen`: content hash -> path) already has."""
    if loaded.data is None:
        skip(row, loaded.code, loaded.reason)
        return False
    row["content_hash"], row["median_adu"] = loaded.content_hash, loaded.median
    if loaded.saturation is not None:
        row["saturation"] = loaded.saturation[0]
        row["saturation_source"] = f"measured: {loaded.saturation[1]}"
    if loaded.content_hash in seen:
        skip(row, "duplicate", f"{row['path']}: duplicate of "
                               f"{seen[loaded.content_hash]} (identical pixels)")
        return False
    seen[loaded.content_hash] = row["path"]
    return True


class _RunCube:
    """A run's cube being written and, when a file has its own bad-pixel masks, the masks frame
    by frame beside it (RUN_ID_bpm.zarr). Frames compress and write in the pool, at most
    `depth` at a time; the cube itself is created with the first frame kept."""

    def __init__(self, run_id: str, rows: list[dict], cube_path: Path, attributes: dict,
                 pool: ThreadPoolExecutor, depth: int):
        self.rows, self.cube_path, self.attributes = rows, cube_path, attributes
        self.pool, self.depth = pool, depth
        self.writer: CubeWriter | None = None
        self.writes = collections.deque()  # frames compressing and writing in the pool
        self.masks = None
        if any(r["bad_pixel_hdu"] is not None for r in rows):
            self.masks = CubeWriter(bad_pixel_cube_path(cube_path), tuple(rows[0]["shape"]),
                                    np.uint8, capacity=len(rows),
                                    attributes={"run_id": run_id, "meaning": "1 = bad pixel"})

    def add(self, row: dict, loaded: _Loaded) -> None:
        if self.writer is None:
            self.writer = CubeWriter(self.cube_path, tuple(row["shape"]), _cube_dtype(self.rows),
                                     capacity=len(self.rows), attributes=self.attributes)
        row["cube_index"] = self.writer.reserve()
        self.writes.append(self.pool.submit(self.writer.write, row["cube_index"], loaded.data))
        if self.masks is not None:
            bad = loaded.bad_pixels
            if bad is None or bad.shape != loaded.data.shape:
                bad = np.zeros(loaded.data.shape, np.uint8)
            self.masks.write(self.masks.reserve(), bad)
        while len(self.writes) > self.depth:
            self.writes.popleft().result()

    def commit(self) -> bool:
        """Finish the writes and commit; False (nothing kept) when no frame was added."""
        while self.writes:
            self.writes.popleft().result()
        if self.writer is None:
            if self.masks is not None:
                self.masks.abort()
            return False
        ok = [r for r in self.rows if r["status"] == "ok"]
        self.writer.commit({"paths": [r["path"] for r in ok],
                            "content_hashes": [r["content_hash"] for r in ok]})
        if self.masks is not None:
            self.masks.commit()
        return True

    def abort(self) -> None:
        for future in self.writes:  # let running writes finish before the temporary goes
            future.cancel()
        for future in self.writes:
            if not future.cancelled():
                try:
                    future.result()
                except BaseException:
                    pass
        for partial in (self.writer, self.masks):
            if partial is not None:
                partial.abort()


def write_run(run_id: str, members: list, cube_path: Path, attributes: dict,
              seen: dict[str, str], mode: str, pool: ThreadPoolExecutor, depth: int) -> bool:
    """Read, check and store a run's frames; fills their pass-2 fields. Returns whether a cube
    was written (False when every frame was skipped)."""
    cube = _RunCube(run_id, [m.row for m in members], cube_path, attributes, pool, depth)
    bar = progress(total=len(members), desc=f"ingest {run_id}")
    try:
        for scanned, loaded in _loaded_frames(members, mode, pool, depth):
            bar.update(1)
            if _accept(scanned.row, loaded, seen):
                cube.add(scanned.row, loaded)
        return cube.commit()
    except BaseException:
        cube.abort()
        raise
    finally:
        bar.close()
