"""Where each product of a reduction lives in its output folder: one home for the names.

    OUT/frames.parquet            ingest: one row per input file
    OUT/cubes/RUN.zarr            ingest: the run's raw frames (RUN_bpm.zarr: the files' own
                                  bad-pixel masks, when they carry one)
    OUT/masters/*.fits            calibration: master bias, dark, flat, bad-pixel mask
    OUT/calibrated/RUN.zarr       calibration: calibrated frames (RUN_mask.zarr: pixel flags,
                                  RUN_sigma.zarr: uncertainty when asked for)
    OUT/calibrated/RUN.recipe.npz calibration: how to calibrate each raw frame of the run
    OUT/calibration.json          calibration: what each run was calibrated with, and why
    OUT/photometry/RUN.parquet    photometry: the run's measurements (RUN.stars.parquet: its
                                  reference stars; RUN.registration.parquet: its transforms)
    OUT/sky/RUN.wcs.fits          sky: the run's sky solution as a FITS header
    OUT/catalogues/*.parquet      sky: Gaia DR3 answers for the runs' fields (`--catalogue gaia`)
    OUT/photometry.parquet, OUT/stars.parquet   every run's, concatenated
    OUT/lightcurves.parquet, OUT/report.json, OUT/reduce.log, plots and CSV   ensemble, merge
    OUT/manifest.json             every stage: each resumable product's content hash and the
                                  fingerprint of what it was made from (engine.io.manifest)
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CALIBRATED_FOLDER", "CALIBRATION_REPORT", "CATALOGUE_FOLDER", "CUBES_FOLDER", "FRAMES_TABLE",
           "LIGHTCURVES_TABLE", "LOG_FILE", "MANIFEST", "MASTERS_FOLDER", "PHOTOMETRY_FOLDER",
           "PHOTOMETRY_TABLE", "PRODUCT_FOLDERS", "REPORT", "SKY_FOLDER", "STARS_TABLE",
           "bad_pixel_cube_path", "mask_cube_path", "run_photometry", "run_recipe", "run_registration",
           "run_sky_header", "run_stars", "sigma_cube_path"]

FRAMES_TABLE = "frames.parquet"
CUBES_FOLDER = "cubes"
MASTERS_FOLDER = "masters"
CALIBRATED_FOLDER = "calibrated"
CALIBRATION_REPORT = "calibration.json"
PHOTOMETRY_FOLDER = "photometry"
SKY_FOLDER = "sky"
CATALOGUE_FOLDER = "catalogues"
PHOTOMETRY_TABLE = "photometry.parquet"
STARS_TABLE = "stars.parquet"
LIGHTCURVES_TABLE = "lightcurves.parquet"
REPORT = "report.json"
LOG_FILE = "reduce.log"
MANIFEST = "manifest.json"
#: Folders the stages write (never an input folder: ingest skips them when it scans OUT).
PRODUCT_FOLDERS = (CUBES_FOLDER, MASTERS_FOLDER, CALIBRATED_FOLDER, PHOTOMETRY_FOLDER,
                   SKY_FOLDER, CATALOGUE_FOLDER)


def _beside(cube_path, suffix: str) -> Path:
    cube_path = Path(cube_path)
    return cube_path.with_name(cube_path.name.removesuffix(".zarr") + suffix)


def mask_cube_path(cube_path: str | os.PathLike) -> Path:
    """A calibrated cube's pixel flags (uint8 PixelFlag bits): RUN_mask.zarr beside it."""
    return _beside(cube_path, "_mask.zarr")


def sigma_cube_path(cube_path: str | os.PathLike) -> Path:
    """A calibrated cube's uncertainty: RUN_sigma.zarr beside it."""
    return _beside(cube_path, "_sigma.zarr")


def bad_pixel_cube_path(cube_path: str | os.PathLike) -> Path:
    """A raw cube's own bad-pixel masks (the files' BPM extensions, frame by frame, uint8,
    1 = bad): RUN_bpm.zarr beside it."""
    return _beside(cube_path, "_bpm.zarr")


def run_recipe(out_dir, run_id: str) -> Path:
    """A light run's calibration recipe (engine.calibration.recipe)."""
    return Path(out_dir) / CALIBRATED_FOLDER / f"{run_id}.recipe.npz"


def run_photometry(out_dir, run_id: str) -> Path:
    return Path(out_dir) / PHOTOMETRY_FOLDER / f"{run_id}.parquet"


def run_stars(out_dir, run_id: str) -> Path:
    return Path(out_dir) / PHOTOMETRY_FOLDER / f"{run_id}.stars.parquet"


def run_registration(out_dir, run_id: str) -> Path:
    return Path(out_dir) / PHOTOMETRY_FOLDER / f"{run_id}.registration.parquet"


def run_sky_header(out_dir, run_id: str) -> Path:
    return Path(out_dir) / SKY_FOLDER / f"{run_id}.wcs.fits"
