"""Benchmark family: ingest throughput, and reading a cube back.

`ingest`: the engine's ingest of one night of camera files (N.I.N.A.-style headers, BITPIX 16 with
BZERO 32768 as every CCD/CMOS camera writes, 2048² frames; 512² when quick) into a fresh output
folder: header normalisation, times and BJD_TDB, classification, content hashes, and the Zarr
cube written (compressed, renamed into place) and frames.parquet. The anchor is the plain astropy
loop a user would otherwise write, which only reads each file's header and pixels into memory
(`fits.open` + `.data`), so the ratio is the price of everything ingest does beyond one read.
The check compares every frame of the engine's cube with the anchor's arrays. Files/s are the
harness's units/s; MB/s are those times the file size in the size column.

`cube-read`: reading a whole run cube back (`engine.io.cube.open_cube`: each chunk file read
once and decoded, LZ4 + bit-shuffle, straight into the result, frames decoded on every thread)
against `np.load` of the same array stored uncompressed as .npy.

The engine's output folders are made in a temporary folder removed at exit; each engine run
removes the previous run's output first (a few ms, inside its timing).
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .harness import Benchmark, Case, max_abs_difference, register, require

_FULL = dict(n_files=24, size=2048)
_QUICK = dict(n_files=8, size=512)
_TARGET = ("20:00:43.7", "+22:42:31")

_workspace: Path | None = None


def _scratch() -> Path:
    global _workspace
    if _workspace is None:
        _workspace = Path(tempfile.mkdtemp(prefix="engine-bench-ingest-"))
        atexit.register(shutil.rmtree, _workspace, True)
    return _workspace


def _frame(rng: np.random.Generator, size: int) -> np.ndarray:
    """A star field on a sky of ~1000 ADU with read and photon noise, as uint16."""
    image = rng.normal(1000.0, 12.0, size=(size, size))
    for x, y, flux in zip(rng.uniform(10, size - 10, 150), rng.uniform(10, size - 10, 150),
                          10 ** rng.uniform(3.0, 5.5, 150)):
        i, j = int(x), int(y)
        stamp = np.arange(-6, 7)
        r2 = (stamp[:, None] + j - y) ** 2 + (stamp[None, :] + i - x) ** 2
        g = np.exp(-0.5 * r2 / 2.0 ** 2)
        image[j - 6:j + 7, i - 6:i + 7] += flux / (2 * np.pi * 4.0) * g
    return np.clip(image, 0, 65535).astype(np.uint16)


def _write_night(folder: Path, rng: np.random.Generator, n_files: int, size: int) -> list[Path]:
    from astropy.io import fits

    folder.mkdir(parents=True)
    base = _frame(rng, size)
    paths = []
    for k in range(n_files):
        header = fits.Header()
        header["IMAGETYP"] = "LIGHT"
        header["EXPOSURE"] = header["EXPTIME"] = 60.0
        header["DATE-OBS"] = f"2024-07-10T04:{k // 60:02d}:{k % 60:02d}.1234567"
        header["DATE-LOC"] = f"2024-07-09T21:{k // 60:02d}:{k % 60:02d}.1234567"
        header["GAIN"], header["OFFSET"], header["EGAIN"] = 139, 21, 0.7716
        header["SITELAT"], header["SITELONG"], header["SITEELEV"] = 32.42, -110.95, 2510.0
        header["TELESCOP"], header["FILTER"] = "RC8", "V"
        header["OBJCTRA"], header["OBJCTDEC"] = "20 00 43.7", "+22 42 31"
        header["SWCREATE"] = "N.I.N.A. 3.0.0.9001 (x64)"
        header["CCD-TEMP"], header["SET-TEMP"] = -10.0, -10.0
        noise = rng.normal(0.0, 8.0, size=(size, size))
        data = np.clip(base + noise, 0, 65535).astype(np.uint16)
        path = folder / f"WASP_{k:04d}_LIGHT_60.00s.fits"
        fits.PrimaryHDU(data, header).writeto(path)  # astropy stores uint16 as BZERO 32768
        paths.append(path)
    return paths


def _setup_ingest(quick: bool, rng: np.random.Generator) -> Case:
    settings = _QUICK if quick else _FULL
    folder = Path(tempfile.mkdtemp(dir=_scratch()))
    paths = _write_night(folder / "raw", rng, settings["n_files"], settings["size"])
    megabytes = sum(p.stat().st_size for p in paths) / 1e6
    return Case(inputs=dict(paths=paths, out=folder / "out", runs=[0]),
                size=(f"{len(paths)} files of {settings['size']}² uint16, "
                      f"{megabytes / len(paths):.2f} MB each"),
                units=len(paths), unit="files")


def _ingest(inputs, threads: int):
    from engine.ingest import ingest

    previous = inputs["out"] / str(inputs["runs"][0])
    shutil.rmtree(previous, ignore_errors=True)
    inputs["runs"][0] += 1
    result = ingest(inputs["paths"], inputs["out"] / str(inputs["runs"][0]), target=_TARGET,
                    workers=threads)
    return result


def _astropy_loop(inputs) -> list[np.ndarray]:
    fits = require("astropy.io.fits", "astropy")
    frames = []
    for path in inputs["paths"]:
        with fits.open(path, memmap=False) as hdul:
            header = hdul[0].header
            frames.append(hdul[0].data)
            _ = header["DATE-OBS"], header["EXPTIME"]
    return frames


def _ingest_discrepancy(result, frames) -> float:
    if result.n_ok != len(frames) or len(result.cubes) != 1:
        return float("inf")
    cube = result.cube(next(iter(result.cubes)))
    return max_abs_difference([cube[k] for k in range(cube.shape[0])], frames)


INGEST = register(Benchmark(
    name="ingest",
    anchor="astropy.io.fits loop",
    requires=("astropy.io.fits",),
    setup=_setup_ingest,
    run_engine=_ingest,
    run_anchor=_astropy_loop,
    discrepancy=_ingest_discrepancy,
    tolerance=0.0,
    threaded=True,
    rounds=5,
    quick_rounds=3,
    notes="engine: headers, times + BJD_TDB, hashes, compressed Zarr cube and frames.parquet "
          "written; anchor: headers and pixels read into memory only",
))


def _setup_cube(quick: bool, rng: np.random.Generator) -> Case:
    from engine.io.cube import CubeWriter

    settings = _QUICK if quick else _FULL
    size, n_frames = settings["size"], settings["n_files"]
    folder = Path(tempfile.mkdtemp(dir=_scratch()))
    base = _frame(rng, size)
    cube = np.stack([np.clip(base + rng.normal(0.0, 8.0, (size, size)), 0, 65535)
                     for _ in range(n_frames)]).astype(np.uint16)
    with CubeWriter(folder / "run.zarr", (size, size), np.uint16, n_frames) as writer:
        for frame in cube:
            writer.append(frame)
        writer.commit()
    np.save(folder / "run.npy", cube)
    stored = sum(p.stat().st_size for p in (folder / "run.zarr").rglob("*") if p.is_file())
    return Case(inputs=dict(zarr=folder / "run.zarr", npy=folder / "run.npy"),
                size=(f"{n_frames} x {size}² uint16, {cube.nbytes / 1e6:.0f} MB "
                      f"({cube.nbytes / stored:.2f}x compressed)"),
                units=n_frames, unit="frames")


def _read_cube(inputs, threads: int) -> np.ndarray:
    from engine.io.cube import open_cube

    return open_cube(inputs["zarr"], threads=threads)[:]


def _np_load(inputs) -> np.ndarray:
    return np.load(inputs["npy"])


CUBE_READ = register(Benchmark(
    name="cube-read",
    anchor="np.load (.npy)",
    requires=("numpy",),
    setup=_setup_cube,
    run_engine=_read_cube,
    run_anchor=_np_load,
    discrepancy=max_abs_difference,
    tolerance=0.0,
    threaded=True,
    rounds=7,
    quick_rounds=3,
    notes="a whole run cube: Zarr v3, blosc LZ4 + bit-shuffle, one frame per chunk, against the "
          "same array uncompressed in .npy; both from the page cache",
))
