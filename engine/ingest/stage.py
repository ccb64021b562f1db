"""The ingest stage's driver: `ingest()` and what it returns (the package docstring says what
the stage does). Pass 1 reads every header in the pool (engine.ingest.scan); the readable frames
are grouped into runs (engine.ingest.runs), each run's times are settled
(engine.ingest.times), and each run whose cube is not current is written (engine.ingest.pixels);
then the frames table is written if its content changed."""

from __future__ import annotations

import collections
import json
import logging
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from engine.cext import default_threads
from engine.errors import EngineFileError, EngineValueError
from engine.ingest.pixels import write_run
from engine.ingest.runs import (FORMAT_VERSION, camera_saturation, check_shapes, fingerprint,
                                group_runs)
from engine.ingest.scan import scan_safely
from engine.ingest.table import LATER_CODES, log_notes, previous_rows, to_table
from engine.ingest.times import light_times, run_times
from engine.io.cube import open_cube, remove_stale_temporaries
from engine.io.fits import find_fits_files
from engine.io.headers import parse_dec, parse_ra
from engine.io.layout import CUBES_FOLDER, FRAMES_TABLE, PRODUCT_FOLDERS, bad_pixel_cube_path
from engine.io.manifest import Manifest
from engine.io.schemas import FRAMES_SCHEMA
from engine.io.tables import read_parquet, write_parquet
from engine.progress import progress
from engine.settings.ingest import IngestConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestResult:
    """What ingest produced.

    Attributes
    ----------
    frames
        the frames table (pyarrow Table, FRAMES_SCHEMA), one row per input file.
    cubes
        run id -> path of its cube (read it with `cube(run_id)`).
    out_dir, frames_path
        where the products are.
    written, table_written
        run ids whose cubes this call (re)wrote, and whether it wrote the table.
    """

    frames: pa.Table
    cubes: dict[str, Path]
    out_dir: Path
    frames_path: Path
    written: tuple[str, ...]
    table_written: bool

    @property
    def n_ok(self) -> int:
        return sum(1 for s in self.frames.column("status").to_pylist() if s == "ok")

    @property
    def n_skipped(self) -> int:
        return self.frames.num_rows - self.n_ok

    def cube(self, run_id: str):
        """The run's cube, read-only (a zarr Array: cube[k] is frame k)."""
        if run_id not in self.cubes:
            raise EngineValueError(f"no run {run_id!r}; runs: {', '.join(sorted(self.cubes))}")
        return open_cube(self.cubes[run_id])

    def summary(self) -> str:
        rows = self.frames.to_pylist()
        lines = [f"{self.frames.num_rows} files: {self.n_ok} ok, {self.n_skipped} skipped; "
                 f"{len(self.cubes)} cubes in {self.out_dir / CUBES_FOLDER} "
                 f"({len(self.written)} written now)"]
        counts = collections.Counter((r["run_id"], r["frame_type"]) for r in rows
                                     if r["status"] == "ok")
        for (run_id, frame_type), n in sorted(counts.items()):
            lines.append(f"  {run_id:48s} {frame_type:6s} {n:5d} frames")
        reasons = collections.Counter(r["reason_code"] for r in rows if r["status"] != "ok")
        for code, n in sorted(reasons.items()):
            lines.append(f"  skipped ({code}): {n}")
        return "\n".join(lines)


def parse_target(target) -> tuple[float, float] | None:
    """(ra_deg, dec_deg) from None, a (ra, dec) pair of degrees or of strings ('HH:MM:SS',
    '±DD:MM:SS'; a plain number string is degrees). Raises EngineValueError."""
    if target is None:
        return None
    try:
        ra, dec = target
    except (TypeError, ValueError):
        raise EngineValueError(f"target must be (ra, dec), got {target!r}") from None
    try:
        return parse_ra(ra), parse_dec(dec)
    except (TypeError, ValueError) as exc:
        raise EngineValueError(f"target ({ra!r}, {dec!r}) is not a sky position: {exc}") from None


@dataclass(frozen=True)
class _Job:
    """What every run of one ingest call shares."""

    settings: str  # format, configuration and target, as stored with the table
    target: tuple[float, float] | None
    target_source: str | None
    bayer: str
    cubes_dir: Path
    previous: dict[str, dict]  # the previous table's rows by path
    manifest: Manifest
    pool: ThreadPoolExecutor
    depth: int  # frames read and written ahead


@dataclass
class _Products:
    """What the runs made so far; duplicates are found across runs."""

    seen: dict[str, str] = field(default_factory=dict)  # content hash -> first path
    cubes: dict[str, Path] = field(default_factory=dict)
    written: list[str] = field(default_factory=list)


def ingest(paths, out_dir, target=None, config: IngestConfig | None = None, *,
           workers: int | None = None, manifest: Manifest | None = None) -> IngestResult:
    """Ingest FITS files (or folders of them, searched recursively) into `out_dir`.

    Parameters
    ----------
    paths
        FITS files and folders (searched recursively).
    out_dir
        the output folder: cubes/ and frames.parquet are written there.
    target
        (ra, dec) of the target for BJD_TDB and airmass: degrees, or strings 'HH:MM:SS' and
        '±DD:MM:SS'; default: the configuration's, else each run's median header pointing.
    config
        engine.settings.IngestConfig (sites with locations and clock offsets, frame-type overrides,
        Bayer mode); default: IngestConfig().
    workers
        threads reading files (default: the cores this process may use).
    manifest
        the output folder's engine.io.manifest.Manifest (default: read from `out_dir`); a cube
        is reused only when it lists it as current.

    Returns
    -------
    IngestResult
        the frames table, the cubes. See engine.ingest's docstring for what is skipped and what
        raises.
    """
    config = IngestConfig() if config is None else config
    if not isinstance(config, IngestConfig):
        raise EngineValueError(
            f"config must be an engine.settings.IngestConfig, got {type(config).__name__}")
    threads = default_threads(workers, "workers")
    parsed, target_source = _target(target, config)
    out_dir = Path(out_dir).expanduser().resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise EngineFileError(f"output folder {str(out_dir)!r} is a file")
    files = _input_files(paths, out_dir)
    cubes_dir, frames_path = _prepare_output(out_dir)
    settings = json.dumps([FORMAT_VERSION, config.fingerprint(), parsed])
    previous = previous_rows(frames_path, settings)
    manifest = Manifest(out_dir) if manifest is None else manifest
    log.info("ingesting %d files into %s with %d threads", len(files), out_dir, threads)

    products = _Products()
    with warnings.catch_warnings(), ThreadPoolExecutor(threads) as pool:
        _quiet_astropy()
        scanned = list(progress(pool.map(lambda p: scan_safely(p, config), files),
                                total=len(files), desc="ingest: headers", unit="file"))
        job = _Job(settings, parsed, target_source, config.bayer, cubes_dir, previous, manifest,
                   pool, depth=2 * threads)
        for run_id, members in group_runs(scanned):
            _ingest_run(run_id, members, job, products)

    rows = [item.row for item in scanned]
    _finish_rows(rows)
    table, table_written = _store_table(to_table(rows), frames_path, previous, settings)
    result = IngestResult(frames=table, cubes=dict(sorted(products.cubes.items())),
                          out_dir=out_dir, frames_path=frames_path,
                          written=tuple(products.written), table_written=table_written)
    log.info("%s", result.summary().splitlines()[0])
    return result


def _target(target, config: IngestConfig) -> tuple[tuple[float, float] | None, str | None]:
    """The target for BJD_TDB and where it came from: the argument, else the configuration."""
    parsed = parse_target(target)
    if parsed is not None:
        return parsed, "argument"
    if config.target_ra_deg is not None:
        return (config.target_ra_deg, config.target_dec_deg), "configuration"
    return None, None


def _input_files(paths, out_dir: Path) -> list[Path]:
    """The FITS files under `paths`. The engine's own products (masters are FITS) are never
    inputs; raw frames kept inside the output folder (as the demo keeps them in raw/) are."""
    files = find_fits_files(paths if not isinstance(paths, (str, os.PathLike)) else [paths])
    products = [out_dir / name for name in PRODUCT_FOLDERS]
    return [f for f in files if not any(folder in f.parents for folder in products)]


def _prepare_output(out_dir: Path) -> tuple[Path, Path]:
    """The cubes folder (created) and the frames table's path; clears the temporaries an
    interrupted ingest left."""
    cubes_dir = out_dir / CUBES_FOLDER
    try:
        cubes_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EngineFileError(
            f"cannot create the output folder {str(cubes_dir)!r}: {exc}") from None
    for stale in remove_stale_temporaries(cubes_dir) + remove_stale_temporaries(out_dir):
        log.info("removed %s, left by an interrupted ingest", stale)
    return cubes_dir, out_dir / FRAMES_TABLE


def _ingest_run(run_id: str, members: list, job: _Job, products: _Products) -> None:
    """One run: its times, then its cube, unless the previous ingest's is still current."""
    members = sorted(members, key=lambda s: (s.row["jd_utc_mid"], s.row["path"]))
    rows = [m.row for m in members]
    for row in rows:
        row["run_id"] = row["run_id"] or run_id
    run_times(members)
    run_fingerprint = fingerprint(run_id, rows, job.settings)
    cube_path = job.cubes_dir / f"{run_id}.zarr"
    if _reuse(run_id, rows, cube_path, run_fingerprint, job, products):
        return
    check_shapes(run_id, rows)
    candidates = [m for m in members if m.row["status"] == "ok"]
    lights = [m.row for m in candidates if m.row["frame_type"] == "light"]
    if lights:
        light_times(run_id, lights, job.target, job.target_source)
    if not candidates:
        return
    first = candidates[0].row
    attributes = {"run_id": run_id, "frame_type": first["frame_type"], "site": first["site"],
                  "telescope": first["telescope"], "night": first["night"],
                  "filter": first["filter"], "fingerprint": run_fingerprint,
                  "format": FORMAT_VERSION,
                  "bayer_mode": job.bayer if first["bayer_pattern"] else None}
    if write_run(run_id, candidates, cube_path, attributes, products.seen, job.bayer, job.pool,
                 job.depth):
        products.cubes[run_id] = cube_path
        products.written.append(run_id)
        masks = bad_pixel_cube_path(cube_path)
        job.manifest.record([cube_path] + ([masks] if masks.is_dir() else []), run_fingerprint)


def _reuse(run_id: str, rows: list[dict], cube_path: Path, run_fingerprint: str, job: _Job,
           products: _Products) -> bool:
    """Whether the previous ingest's cube of the run is current (same files, settings and
    bytes); then the run's rows are the previous table's."""
    old = [job.previous.get(r["path"]) for r in rows]
    cubes = [cube_path] + [p for p in [bad_pixel_cube_path(cube_path)] if job.manifest.lists(p)]
    if not (all(o is not None and o["run_id"] == run_id for o in old)
            and job.manifest.is_current(cubes, run_fingerprint)):
        return False
    for row, before in zip(rows, old):
        row.update(before)
        if row["status"] == "ok":
            products.seen.setdefault(row["content_hash"], row["path"])
    products.cubes[run_id] = cube_path
    return True


def _finish_rows(rows: list[dict]) -> None:
    """What needs every row: one saturation level per camera; skipped rows logged (those
    skipped once in a run keep its id); the notes logged."""
    camera_saturation(rows)
    for row in rows:
        if row["status"] != "ok":
            row["run_id"] = row["run_id"] if row["reason_code"] in LATER_CODES else None
            log.warning("skipped %s", row["reason"])
    log_notes(rows)


def _store_table(table: pa.Table, frames_path: Path, previous: dict,
                 settings: str) -> tuple[pa.Table, bool]:
    """The frames table as stored, and whether this call wrote it (only when its content
    changed: a rerun on the same files writes nothing)."""
    written = True
    if frames_path.is_file() and previous:
        try:
            written = not read_parquet(frames_path).equals(table, check_metadata=False)
        except EngineFileError:
            written = True
    if written:
        write_parquet(table, frames_path, metadata={"engine_ingest_settings": settings},
                      schema=FRAMES_SCHEMA)
    else:
        table = read_parquet(frames_path)
    return table, written


def _quiet_astropy() -> None:
    """Inside a catch_warnings block: astropy's warnings about non-standard cards and truncated
    files are reported by ingest itself (as skip reasons and notes)."""
    from astropy.io.fits.verify import VerifyWarning
    from astropy.utils.exceptions import AstropyUserWarning
    from astropy.wcs import FITSFixedWarning

    for category in (VerifyWarning, AstropyUserWarning, FITSFixedWarning):
        warnings.simplefilter("ignore", category)
