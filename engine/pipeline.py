"""The main job: `reduce` runs ingest -> calibrate -> photometry -> ensemble -> merge.

Every stage writes its products into `out_dir` atomically and is skipped on a rerun when the
output folder's manifest (engine.io.manifest) lists its products as made from the same inputs
and still holding the bytes they were written with, so a killed reduction resumes where it
stopped and a damaged product (a deleted chunk, a truncated table) is rebuilt with everything
made from it; the report's `rebuilt` names them. The sky, ensemble and merge stages are cheap
and always rerun. Runs (telescope x night x filter) are independent until the merge: their
photometry runs serially, on a local Dask cluster (`workers`), or on an existing one
(`scheduler`).

After photometry, the sky stage (`engine.sky`) puts every run's reference frame on the sky (its
header WCS, a solve against `--catalogue`, or a match to another solved run), finds the target
by RA/Dec (or a pixel position) and gives the stars of all runs one identity, so that the merge
can tie the runs together. A run that cannot be solved or whose target is not found is reported
and skipped; the others go on.

Products: frames.parquet and cubes (ingest), catalogues/ (Gaia DR3 fetched for `--catalogue
gaia`, one Parquet file per field), masters/ and calibrated/ (calibrate: each run's recipe, and
the calibrated cubes when `[calibration] write_calibrated`; photometry calibrates the raw frames
with the recipe as it reads them),
photometry/RUN.parquet plus photometry.parquet and stars.parquet (all runs), sky/RUN.wcs.fits
(each solved run's WCS as a FITS header), lightcurves.parquet and report.json (ensemble and
merge), reduce.log, lightcurves.csv and the plots weights.png, transparency.png and
noise_budget.png.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from engine.calibration import calibrate
from engine.calibration.recipe import CalibratedFrames, load_recipe
from engine.checks import integer, require_dask
from engine.device import resolve_device
from engine.ensemble import build_run_lightcurve, merge_runs, write_lightcurves, write_report
from engine.errors import EngineValueError
from engine.ingest import ingest
from engine.io.atomic import atomic_path
from engine.io.cube import open_cube
from engine.io.layout import (CATALOGUE_FOLDER, LIGHTCURVES_TABLE, LOG_FILE, PHOTOMETRY_TABLE,
                              REPORT, STARS_TABLE, bad_pixel_cube_path, run_photometry,
                              run_registration, run_sky_header, run_stars)
from engine.io.lock import output_lock
from engine.io.manifest import Manifest, fingerprint
from engine.io.schemas import (FRAMES_SCHEMA, PHOTOMETRY_SCHEMA, REGISTRATION_SCHEMA,
                               STARS_SCHEMA)
from engine.io.tables import concat_parquet, read_parquet, write_parquet
from engine.photometry_stage import measure_run
from engine.plots.canvas import load_matplotlib
from engine.progress import progress, quiet
from engine.registration import Transform
from engine.settings import EnsembleConfig, PhotometryConfig, PipelineConfig
from engine.sky import RunStars, fetch_field_catalogue, locate_runs, sky_star_columns

__all__ = ["ReduceResult", "reduce"]

log = logging.getLogger("engine.pipeline")

#: `catalogue="gaia"` (`--catalogue gaia`): Gaia DR3 fetched for the runs' fields.
GAIA = "gaia"
#: Photometry columns the ensemble does not read (run_id: one run per file).
_NOT_FOR_THE_ENSEMBLE = ("run_id", "area", "background_std", "background_pixels")


@dataclass
class ReduceResult:
    """What `reduce` produced: the output folder, the runs that gave light curves, the light
    curves (lightcurves.parquet), the report (report.json) and each stage's time in seconds."""

    out_dir: Path
    runs: list[str]
    lightcurves: pa.Table
    report: dict
    timings_s: dict[str, float]

    def summary(self) -> str:
        lines = [f"reduced {len(self.runs)} run(s) into {self.out_dir}"]
        for run in self.runs:
            diag = self.report["runs"].get(run, {})
            if "skipped" in diag:
                lines.append(f"  {run}: skipped ({diag['skipped']})")
                continue
            ratio = diag.get("noise", {}).get("ratio")
            ratio_text = "n/a" if ratio is None else f"{ratio:.2f}"
            lines.append(f"  {run}: {diag.get('frames', '?')} frames, "
                         f"{len(diag.get('flagged_frames', []))} flagged, aperture "
                         f"{diag.get('aperture', {}).get('chosen', '?')}, "
                         f"achieved/expected scatter {ratio_text}")
        for product in self.report.get("rebuilt", []):
            lines.append(f"  rebuilt {product}: found missing or changed since it was written")
        lines.append("  stage times: " + ", ".join(f"{k} {v:.1f} s" for k, v in self.timings_s.items()))
        return "\n".join(lines)


def _run_frames(frames: pa.Table, run_id: str) -> pa.Table:
    rows = frames.filter(pc.and_(pc.equal(frames.column("run_id"), run_id),
                                 pc.equal(frames.column("status"), "ok")))
    return rows.sort_by("cube_index")


def _write_run_photometry(run_id: str, cube_path: str, recipe_path: str, frames: pa.Table,
                 config: PhotometryConfig, out_dir: str, threads, on_worker: bool = False) -> str:
    """Photometry of one run into photometry/RUN_ID.parquet (+ stars and registration tables),
    from its raw cube calibrated block by block with its recipe as the blocks are read.

    A plain function of paths and tables so that a Dask worker can run it (without progress
    bars there: the client shows one over the runs).
    """
    if on_worker:
        with quiet():
            return _write_run_photometry(run_id, cube_path, recipe_path, frames, config, out_dir, threads)
    own_masks = bad_pixel_cube_path(cube_path)
    data = CalibratedFrames(open_cube(cube_path), load_recipe(recipe_path),
                            frame_bad_pixels=open_cube(own_masks) if own_masks.is_dir() else None,
                            threads=threads)
    mask = data.mask
    result = measure_run(data, frames, mask=mask, config=config, threads=threads)
    run = pa.array([run_id] * result.photometry.num_rows)
    write_parquet(result.stars.append_column("run_id", pa.array([run_id] * result.stars.num_rows)),
                  run_stars(out_dir, run_id), schema=STARS_SCHEMA)
    write_parquet(result.registration, run_registration(out_dir, run_id),
                  schema=REGISTRATION_SCHEMA)
    meta = {"reference_frame": result.reference_frame, "fwhm": result.fwhm,
            "notes": result.notes, "settings": _settings(config)}
    if result.psf is not None:
        meta["psf"] = result.psf
    return str(write_parquet(result.photometry.append_column("run_id", run),
                             run_photometry(out_dir, run_id),
                             metadata={"engine": json.dumps(meta)}, schema=PHOTOMETRY_SCHEMA))


def _settings(config: PhotometryConfig) -> str:
    """What a run's photometry depends on besides its cube: a product made otherwise is redone."""
    settings = asdict(config)
    del settings["device"]  # where it was measured, not what: the same numbers to rounding
    # "extraction", the stage's old name, is part of every finished run's fingerprint: a new
    # key would redo the photometry of every output folder made before the rename.
    return json.dumps({"extraction": settings}, sort_keys=True)


def _photometry_products(out: Path, run_id: str) -> list[Path]:
    return [run_photometry(out, run_id), run_stars(out, run_id), run_registration(out, run_id)]


def _photometry_inputs(manifest: Manifest, cube_path: Path, recipe_path: Path,
                       run_frames: pa.Table, config: PhotometryConfig) -> str:
    """A run's photometry is made from its raw cube and the files' own bad-pixel masks (by
    content), its calibration recipe (which holds the masters' pixels it applies), its rows of
    the frames table and the photometry settings."""
    own_masks = bad_pixel_cube_path(cube_path)
    return fingerprint(_settings(config), manifest.hash_of(cube_path),
                       manifest.hash_of(own_masks) if own_masks.is_dir() else None,
                       manifest.hash_of(recipe_path), run_frames.to_pylist())


def reduce(paths, out_dir, *, target=None, target_xy=None, catalogue=None,
           config: PipelineConfig | None = None, workers: int | None = None,
           scheduler: str | None = None, threads: int | None = None,
           device: str | None = None) -> ReduceResult:
    """Reduce raw frames (files or folders, any mix of telescopes) to light curves.

    Parameters
    ----------
    paths
        FITS files and folders (searched recursively), lights and calibrations, any mix of
        telescopes, nights and filters.
    out_dir
        the output folder; a rerun on the same inputs resumes and skips finished work.
    config
        every stage's settings (default: PipelineConfig()).
    target
        (ra, dec) of the target (degrees or sexagesimal strings): BJD_TDB, and the target
        star in every run with a sky solution.
    target_xy
        (x, y) of the target in the first light frame (as stored, 0-based) of the
        night's first run, which the other runs find by matching their stars to that run's; or
        a dict run_id -> (x, y) (the configuration's `[sky] target_xy` also takes site names).
    catalogue
        a reference catalogue file (CSV or Parquet) or a ReferenceCatalogue, for sky
        solutions and standardisation (default: the configuration's `[sky] catalogue`). It is
        read before any other work: a bad file stops nothing half-done. The word "gaia" fetches
        Gaia DR3 for each run's field right after ingest (it needs the pointings), before any
        calibration; the answers are kept in catalogues/ and a rerun reads them from there.
    workers, scheduler
        measure runs in parallel on a local Dask cluster of `workers` processes, or on the
        cluster at `scheduler` (default: the configuration's `[pipeline] scheduler`, reached
        with its TLS files; a plain connection to another machine is warned about). Either one
        overrides the configuration's scheduler; both need the optional dask extra.
    threads
        threads inside each process (default: every core).
    device
        'cpu', 'cuda' or 'auto', where the photometry stage measures (default: the
        configuration's `[photometry] device`).

    Raises
    ------
    MissingToolError
        `workers` or `scheduler` given and dask.distributed not installed: checked before any
        work.
    DeviceUnavailableError
        device 'cuda' without a usable GPU, before any work.
    """
    config = PipelineConfig() if config is None else config
    # Checked before any product is written (a zero would otherwise hang or fail late).
    integer("workers", workers, least=1, allow_none=True)
    integer("threads", threads, least=1, allow_none=True)
    if workers is not None and scheduler is not None:
        raise EngineValueError("give workers (a local cluster) or a scheduler, not both")
    if scheduler is not None or workers is not None:  # the arguments override the file
        config = dataclasses.replace(config, cluster=dataclasses.replace(config.cluster,
                                                                         scheduler=scheduler))
    if config.cluster.scheduler is not None or workers is not None:
        require_dask()
    if config.cluster.plain_remote_scheduler():
        log.warning("the scheduler %s is on another machine and the connection is not "
                    "encrypted: use a tls:// address with TLS files", config.cluster.scheduler)
    device, said = resolve_device(config.photometry.device if device is None else device)
    config = dataclasses.replace(config, photometry=dataclasses.replace(config.photometry,
                                                                        device=device))
    catalogue = _catalogue(catalogue if catalogue is not None else config.sky.catalogue)
    out = Path(out_dir)
    with output_lock(out), _run_log(out / LOG_FILE):
        log.info(said)
        return _reduce(paths, out, target, target_xy, catalogue, config, workers, threads)


def _catalogue(source):
    """The reference catalogue from a path (read and checked now) or as given; GAIA stays the
    word until ingest has found the runs' fields."""
    if source is None or source == GAIA:
        return source
    from engine.io.catalogue import ReferenceCatalogue, read_catalogue

    return source if isinstance(source, ReferenceCatalogue) else read_catalogue(source)


class _PassOn(logging.Handler):
    """Hands a record to the root logger's handlers, as propagation would have."""

    def emit(self, record):
        logging.getLogger().handle(record)


@contextlib.contextmanager
def _run_log(path: Path):
    """Every engine message of level INFO and above, appended to the reduction's log file while
    the block runs (the runs measured on Dask workers log there, not here). Everyone else's
    handlers keep seeing only what they saw before: the engine's logger is lowered to INFO for
    the file, so its records go on to the root's handlers through a gate at the old level."""
    to_file = logging.FileHandler(path, encoding="utf-8")
    to_file.setLevel(logging.INFO)
    to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    engine_log = logging.getLogger("engine")
    saved = (engine_log.level, engine_log.propagate)
    pass_on = _PassOn(engine_log.getEffectiveLevel())
    engine_log.setLevel(min(logging.INFO, engine_log.getEffectiveLevel()))
    engine_log.propagate = False
    engine_log.addHandler(to_file)
    if saved[1]:
        engine_log.addHandler(pass_on)
    try:
        engine_log.info("reduce started")
        yield
        engine_log.info("reduce finished")
    except BaseException as exc:
        engine_log.error("reduce stopped: %s: %s", type(exc).__name__, exc)
        raise
    finally:
        engine_log.removeHandler(to_file)
        engine_log.removeHandler(pass_on)
        engine_log.setLevel(saved[0])
        engine_log.propagate = saved[1]
        to_file.close()


def _reduce(paths, out: Path, target, target_xy, catalogue, config: PipelineConfig, workers,
            threads) -> ReduceResult:
    timings: dict[str, float] = {}

    start = time.perf_counter()
    manifest = Manifest(out)
    ingested = ingest(paths, out, target=target, config=config.ingest, manifest=manifest)
    timings["ingest"] = time.perf_counter() - start
    log.info("ingest done in %.1f s:\n%s", timings["ingest"], ingested.summary())
    if catalogue == GAIA:
        start = time.perf_counter()
        catalogue = fetch_field_catalogue(ingested.frames, out / CATALOGUE_FOLDER,
                                          mag_limit=config.sky.gaia_mag_limit)
        timings["catalogue"] = time.perf_counter() - start
    start = time.perf_counter()
    calibrated = calibrate(ingested, out, threads=threads,
                           temperature_tolerance=config.calibration.temperature_tolerance,
                           uncertainty=config.calibration.uncertainty,
                           chunk_bytes=config.calibration.chunk_bytes, manifest=manifest,
                           write_calibrated=config.calibration.write_calibrated)
    timings["calibrate"] = time.perf_counter() - start
    log.info("calibrate done in %.1f s:\n%s", timings["calibrate"], calibrated.summary())
    frames = _with_camera_values(ingested, calibrated.camera)
    runs = sorted(calibrated.recipes)
    if not runs:
        raise EngineValueError("no light frames to reduce (only calibration frames were found)")

    # Work that does not feed the next stage runs on worker threads beside the main line:
    # during the sky and ensemble stages matplotlib is loaded and the runs' photometry is
    # combined into photometry.parquet (Arrow's own threads), and the plots are drawn as soon as
    # the light curves exist. (Loaded during the photometry, matplotlib slowed it as much.)
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="engine-reduce") as worker:
        start = time.perf_counter()
        _measure_runs(out, runs, frames, ingested.cubes, calibrated.recipes, manifest, config,
                      workers, threads)
        timings["photometry"] = time.perf_counter() - start
        log.info("photometry done in %.1f s", timings["photometry"])
        worker.submit(load_matplotlib)
        combined = worker.submit(concat_parquet, [run_photometry(out, run_id) for run_id in runs],
                                 out / PHOTOMETRY_TABLE, schema=PHOTOMETRY_SCHEMA)

        start = time.perf_counter()
        skies, stars = _locate(out, runs, frames, _target_radec(target, frames), target_xy,
                               catalogue, config)
        timings["sky"] = time.perf_counter() - start
        log.info("sky done in %.1f s", timings["sky"])

        start = time.perf_counter()
        lightcurves, report, target_photometry = _ensemble(out, runs, frames, skies, stars,
                                                           catalogue, config.ensemble, threads)
        timings["ensemble"] = time.perf_counter() - start
        log.info("ensemble done in %.1f s", timings["ensemble"])
        views = worker.submit(_timed, _write_views, out, lightcurves, report, target_photometry)
        start = time.perf_counter()
        combined.result()
        report["products"], timings["plots"] = views.result()
        log.info("plots done in %.1f s (%.1f s after the ensemble)", timings["plots"],
                 time.perf_counter() - start)
    report["timings_s"] = timings
    report["rebuilt"] = manifest.rebuilt
    for run_id in runs:
        report["runs"].setdefault(run_id, {})["camera"] = _camera_report(
            _run_frames(frames, run_id))
    write_report(report, out / REPORT)
    return ReduceResult(out_dir=out, runs=runs, lightcurves=lightcurves, report=report,
                        timings_s=timings)


def _measure_runs(out: Path, runs: list[str], frames: pa.Table, cubes: dict, recipes: dict,
                  manifest: Manifest, config: PipelineConfig, workers, threads) -> None:
    """The photometry of every run whose products are missing or were made from other inputs."""
    jobs, inputs = [], {}
    for run_id in runs:
        run_frames = _run_frames(frames, run_id)
        raw_cube, recipe = cubes[run_id], recipes[run_id]
        inputs[run_id] = _photometry_inputs(manifest, Path(raw_cube), recipe, run_frames,
                                            config.photometry)
        if manifest.is_current(_photometry_products(out, run_id), inputs[run_id]):
            continue
        jobs.append((run_id, str(raw_cube), str(recipe), run_frames, config.photometry,
                     str(out), threads))
    _run_jobs(jobs, workers, config.cluster, done=lambda run_id: manifest.record(
        _photometry_products(out, run_id), inputs[run_id]))


def _timed(function, *args):
    """function(*args) and the seconds it took."""
    start = time.perf_counter()
    return function(*args), time.perf_counter() - start


_CAMERA_COLUMNS = ("gain", "gain_source", "read_noise", "read_noise_source")


def _with_camera_values(ingested, camera: dict[str, dict]) -> pa.Table:
    """The frames table with each light run's measured gain and read noise (calibration's)
    where the headers and configuration gave none; written back to frames.parquet when that
    changes it, so the table says what the photometry used."""
    frames = ingested.frames
    rows = frames.to_pylist()
    changed = False
    for row in rows:
        values = camera.get(row["run_id"]) if row["status"] == "ok" else None
        if not values:
            continue
        for name in ("gain", "read_noise"):
            if row[name] is None and values[name] is not None:
                row[name], row[f"{name}_source"] = values[name], values[f"{name}_source"]
                changed = True
    if not changed:
        return frames
    table = pa.Table.from_pylist(rows, schema=frames.schema)
    # Keep ingest's settings stamp: its next run then reuses these rows.
    stamp = pq.read_schema(ingested.frames_path).metadata or {}
    write_parquet(table.replace_schema_metadata(stamp), ingested.frames_path, schema=FRAMES_SCHEMA)
    return table


def _camera_report(run_frames: pa.Table) -> dict:
    """The run's gain, read noise and saturation level with their sources (first light's; the
    saturation level is per frame, the lowest is given)."""
    if run_frames.num_rows == 0:
        return {}
    first = run_frames.slice(0, 1).to_pylist()[0]
    report = {name: first.get(name) for name in _CAMERA_COLUMNS}
    levels = [v for v in run_frames.column("saturation").to_pylist() if v is not None]
    report["saturation"] = min(levels) if levels else None
    report["saturation_source"] = first.get("saturation_source")
    return report


def _run_lightcurve(source: Path, run_id: str, stars: pa.Table, target: int,
                    run_frames: pa.Table, config: EnsembleConfig, threads):
    """One run's light curve from its photometry file: (RunLightCurve, its diagnostics, the
    target's aperture rows for the noise budget), or (None, why not, None). The run's
    photometry is read here and released on return."""
    schema = pq.read_schema(source)
    meta = json.loads((schema.metadata or {}).get(b"engine", b"{}"))
    # Only what the ensemble reads: a long run's photometry is millions of rows.
    photometry = read_parquet(source, columns=[name for name in schema.names
                                               if name not in _NOT_FOR_THE_ENSEMBLE])
    is_aperture = pc.equal(photometry.column("method"), "aperture")
    if pc.all(is_aperture).as_py():
        apertures, psf = photometry, None
    else:
        apertures = photometry.filter(is_aperture)
        psf = photometry.filter(pc.equal(photometry.column("method"), "psf"))
    del photometry
    frame_table = pa.table({
        "frame": pa.array(np.arange(run_frames.num_rows), pa.int64()),
        **{name: run_frames.column(name) for name in
           ("time_bjd_tdb", "time_err_s", "airmass", "exptime", "run_id", "site", "telescope",
            "filter")
           if name in run_frames.column_names},
    })
    try:
        result = build_run_lightcurve(apertures, frame_table, stars.drop_columns(["run_id"]),
                                      target=int(target), config=config,
                                      psf=psf if psf is not None and psf.num_rows else None,
                                      run_id=run_id, threads=threads)
    except EngineValueError as exc:  # one run that cannot be normalised stops no other
        log.warning("run %s: no light curve: %s", run_id, exc)
        return None, {"skipped": str(exc), "photometry": meta}, None
    result.diagnostics["photometry"] = meta
    # Kept now rather than read back from photometry.parquet for the plot.
    target_rows = apertures.filter(pc.equal(apertures.column("star"), int(target)))
    target_rows = target_rows.append_column(
        "run_id", pa.array([run_id] * target_rows.num_rows, pa.string()))
    return result, result.diagnostics, target_rows


def _target_radec(target, frames: pa.Table):
    """The target's (ra, dec) in degrees: the argument, else the one ingest recorded from the
    configuration; None when neither gave one (a header pointing is not a target)."""
    from engine.ingest import parse_target

    parsed = parse_target(target)
    if parsed is not None or "target_source" not in frames.column_names:
        return parsed
    for row in frames.select(["target_ra_deg", "target_dec_deg", "target_source"]).to_pylist():
        if row["target_source"] in ("argument", "configuration") and \
                row["target_ra_deg"] is not None:
            return (row["target_ra_deg"], row["target_dec_deg"])
    return None


def _run_stars(out: Path, run_id: str, frames: pa.Table) -> RunStars:
    """A measured run as the sky stage sees it: its star table, reference frame and FWHM, and
    the transform of its first frame (for target pixel positions)."""
    meta = json.loads((pq.read_schema(run_photometry(out, run_id)).metadata or {})
                      .get(b"engine", b"{}"))
    registration = read_parquet(run_registration(out, run_id)).slice(0, 1)
    first = registration.to_pylist()[0] if registration.num_rows else {}
    transform = None
    if first.get("status") == "ok":
        transform = Transform(first["a"], first["b"], first["tx"], first["ty"], first["parity"])
    return RunStars(run_id=run_id, stars=read_parquet(run_stars(out, run_id)),
                    frames=_run_frames(frames, run_id),
                    reference_frame=int(meta.get("reference_frame", 0)),
                    fwhm=float(meta.get("fwhm", math.nan)), first_transform=transform)


def _with_target(stars: pa.Table, target: int | None) -> pa.Table:
    """The run's star table with `is_target` where the sky stage found the target (by RA/Dec or
    from the other runs: the photometry stage knows it only from a target pixel)."""
    if target is None:
        return stars
    column = stars.column_names.index("is_target")
    return stars.set_column(column, stars.field(column), pa.array(np.arange(stars.num_rows) == target))


def _locate(out: Path, runs: list[str], frames: pa.Table, target_radec, target_xy, catalogue,
            config: PipelineConfig):
    """Sky solutions, targets and network star ids of every run (engine.sky); each solved run's
    WCS is written as sky/RUN.wcs.fits, and every run's stars with their ids as stars.parquet."""
    measured = [_run_stars(out, run_id, frames) for run_id in runs]
    skies = locate_runs(measured, catalogue=catalogue, target_radec=target_radec,
                        target_xy=target_xy, config=config.sky)
    stars = sky_star_columns(measured, skies, catalogue,
                             match_radius_arcsec=config.ensemble.match_radius_arcsec)
    stars = {run_id: _with_target(table, skies[run_id].target) for run_id, table in stars.items()}
    write_parquet(pa.concat_tables([stars[run_id] for run_id in runs], promote_options="default"),
                  out / STARS_TABLE, schema=STARS_SCHEMA)
    for run_id, sky in skies.items():
        if sky.solution is not None:
            with atomic_path(run_sky_header(out, run_id), ".fits") as temporary:
                from astropy.io import fits

                fits.PrimaryHDU(header=sky.solution.to_header()).writeto(temporary)
    return skies, stars


def _write_views(out: Path, lightcurves: pa.Table, report: dict,
                 target_photometry: pa.Table) -> list[str]:
    """The light curves as CSV and the diagnostic plots; returns the files written. The noise
    budget is drawn from `target_photometry`, each run's target's aperture rows. A plot the
    data cannot support (e.g. no comparison star in any run) is logged and left out."""
    from engine.io.exports import write_csv
    from engine.plots import plot_comparison_weights, plot_noise_budget, plot_transparency

    written = [write_csv(lightcurves, out / "lightcurves.csv")]
    plots = {
        "weights.png": lambda path: plot_comparison_weights(report, path),
        "transparency.png": lambda path: plot_transparency(lightcurves, path),
        "noise_budget.png": lambda path: plot_noise_budget(target_photometry, path,
                                                           lightcurves=lightcurves),
    }
    for name, draw in plots.items():
        try:
            written.append(draw(out / name))
        except EngineValueError as exc:
            log.warning("%s not drawn: %s", name, exc)
    return [Path(path).name for path in written]


def _run_jobs(jobs, workers, cluster_config, done) -> None:
    """Measure each job's run; `done(run_id)` is called here, in this process, as each ends."""
    if not jobs:
        return
    if workers is None and cluster_config.scheduler is None:
        for job in jobs:
            _write_run_photometry(*job)
            done(job[0])
        return
    from dask.distributed import Client, LocalCluster

    if cluster_config.scheduler is not None:
        client = Client(cluster_config.scheduler, security=cluster_config.security())
        cluster = None
    else:
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               dashboard_address=None)
        client = Client(cluster)
    try:
        from dask.distributed import as_completed

        futures = {client.submit(_write_run_photometry, *job, on_worker=True, pure=False): job[0]
                   for job in jobs}
        for future in progress(as_completed(futures), total=len(futures),
                               desc="photometry (runs)", unit="run"):
            future.result()  # raises a worker's error here
            done(futures[future])
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _ensemble(out: Path, runs: list[str], frames: pa.Table, skies, stars: dict, catalogue,
              config: EnsembleConfig, threads):
    """Each run's light curve, merged and written: (light curves, report, the targets'
    aperture rows)."""
    results, targets = [], []
    report: dict = {"runs": {}}
    for run_id in runs:
        sky = skies[run_id]
        if sky.skipped:
            report["runs"][run_id] = {"skipped": sky.skipped, "sky": sky.report()}
            continue
        result, diagnostics, target_rows = _run_lightcurve(
            run_photometry(out, run_id), run_id, stars[run_id], sky.target,
            _run_frames(frames, run_id), config, threads)
        diagnostics["sky"] = sky.report()
        report["runs"][run_id] = diagnostics
        if result is not None:
            results.append(result)
            targets.append(target_rows)
    if not results:
        reasons = "; ".join(f"{run_id}: {report['runs'][run_id].get('skipped', '?')}"
                            for run_id in runs)
        raise EngineValueError(f"no run gave a light curve ({reasons})")
    try:
        lightcurves, merge = merge_runs(results, config=config, reference_catalogue=(
            catalogue.to_table() if catalogue is not None else None))
        report["merge"] = merge
    except EngineValueError as exc:  # e.g. no shared stars between runs
        lightcurves = pa.concat_tables([r.table for r in results], promote_options="default")
        report["merge"] = {"skipped": str(exc)}
    write_lightcurves(lightcurves, out / LIGHTCURVES_TABLE)
    return lightcurves, report, pa.concat_tables(targets, promote_options="default")
