"""The calibrate stage over an ingest's output: masters per camera, then the light runs.

`calibrate(ingested, out_dir)` reads the frames table and cubes an ingest wrote and:
1. groups frames by camera identity (site name and position, telescope, instrument, gain
   setting, binning, frame shape: `_camera`), frame by frame: an ingest run of calibration
   frames that holds several cameras (two sites with the same TELESCOP, say) is split into one
   set per camera (RUN_ID_camera1, ...). Calibration sets (bias, dark, flat per filter) serve
   the light runs of their camera, the set of the same night first, else of the nearest night;
2. checks every calibration frame against its set (shape, binning, sensor temperature within
   `temperature_tolerance` of the set's median, and a plausible level: not empty, not
   saturated, not far from its siblings; `check_frames`) and every set against the light run
   (its median set point); rejected frames and sets are listed with their reasons (report and
   log) and never combined;
3. builds the masters (bias; dark rate or matched darks, decided by measurement; flat per filter;
   bad-pixel mask) with the lights' trim and overscan sections (ingest's TRIMSEC / BIASSEC; a
   row-wise overscan strip is not used, and said) and writes them under `out_dir/masters/`;
4. writes each light run's calibration recipe (`out_dir/calibrated/RUN_ID.recipe.npz`:
   engine.calibration.recipe; the photometry stage calibrates raw blocks with it as it reads
   them) and, when asked (`write_calibrated`), calibrates the run chunk by chunk into
   `out_dir/calibrated/RUN_ID.zarr` (float32) and `RUN_ID_mask.zarr` (uint8 PixelFlag bits),
   skipping a run whose recipe (and cubes) the output folder's manifest lists as current
   (engine.io.manifest: made from the same raw cubes' content and settings, bytes unchanged);
5. writes `out_dir/calibration.json` (atomically): per run, the masters used, the dark decision
   and its evidence, the camera's gain, read noise and saturation level with their sources
   (measured by engine.calibration.camera where the headers and configuration are silent), the
   notes and the rejections. Saturation is flagged against each frame's own level.
Lights that were calibrated before ingest (the frames table's `calibrated_state`: CALSTAT, an
observatory pipeline's RLEVEL, HISTORY) do not get those steps again: a flat-fielded run passes
through untouched but for the float32 conversion and its mask. The files' own bad-pixel masks
(ingest's RUN_ID_bpm.zarr, from e.g. LCO's BPM extension) are flagged BAD in the run's mask.
Without light runs it builds (and writes) the masters alone. A missing calibration type is
skipped and said, never fatal.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine.calibration.camera import CameraNoise, measure_noise
from engine.calibration.masters import DarkModel, bad_pixel_mask, check_frames
from engine.calibration.recipe import CalibrationRecipe
from engine.calibration.runs import calibrate_cube
from engine.calibration.sets import (ASSUMED_SATURATION_FRACTION, CalibrationSets,
                                     assumed_saturation, finite_median, open_set_cube,
                                     reference_values)
from engine.errors import EngineFileError
from engine.io.atomic import write_text
from engine.io.headers import camera_identity, describe_camera
from engine.io.layout import (CALIBRATED_FOLDER, CALIBRATION_REPORT, CUBES_FOLDER, FRAMES_TABLE,
                              MASTERS_FOLDER, bad_pixel_cube_path, mask_cube_path,
                              run_recipe, sigma_cube_path)
from engine.io.manifest import Manifest

__all__ = ["CalibrationResult", "calibrate"]

log = logging.getLogger("engine.calibration")

_FORMAT = "calibrate-1"


@dataclass
class CalibrationResult:
    """What the stage produced.

    masters: file name -> path of every master written. recipes: light run id -> path of its
    calibration recipe (engine.calibration.recipe). runs: light run id -> path of its
    calibrated cube (the mask beside it as RUN_ID_mask.zarr), when written. skipped_runs: runs
    whose recipe (and calibrated cube) was already up to date. notes: run or set id -> what a
    user should know.
    rejected: (path or set, reason) of the calibration frames and sets left out.
    report_path: calibration.json. camera: light run id -> its gain, read noise and their
    sources (engine.calibration.camera.CameraNoise.as_dict).
    """

    masters: dict[str, Path] = field(default_factory=dict)
    recipes: dict[str, Path] = field(default_factory=dict)
    runs: dict[str, Path] = field(default_factory=dict)
    skipped_runs: list[str] = field(default_factory=list)
    notes: dict[str, list[str]] = field(default_factory=dict)
    rejected: list[tuple[str, str]] = field(default_factory=list)
    report_path: Path | None = None
    camera: dict[str, dict] = field(default_factory=dict)

    def summary(self) -> str:
        lines = [f"{len(self.masters)} masters in {MASTERS_FOLDER}/, {len(self.recipes)} "
                 f"calibrated runs in {CALIBRATED_FOLDER}/ ({len(self.runs)} written as cubes, "
                 f"{len(self.skipped_runs)} already up to date)"]
        for name in sorted(self.masters):
            lines.append(f"  master {name}")
        for run_id in sorted(self.recipes):
            lines.append(f"  run {run_id}")
        for key in sorted(self.notes):
            for text in self.notes[key]:
                lines.append(f"  {key}: {text}")
        for what, reason in self.rejected:
            lines.append(f"  rejected {what}: {reason}")
        return "\n".join(lines)


def _frames_table(ingested):
    from engine.io.tables import read_parquet

    if hasattr(ingested, "frames") and hasattr(ingested, "cubes"):
        return ingested.frames.to_pylist(), {k: Path(v) for k, v in ingested.cubes.items()}, \
            Path(ingested.out_dir)
    folder = Path(ingested)
    table_path = folder / FRAMES_TABLE
    if not table_path.is_file():
        raise EngineFileError(f"{folder}: no frames.parquet (run ingest first)")
    rows = read_parquet(table_path).to_pylist()
    cubes = {}
    for row in rows:
        if row.get("status") == "ok" and row.get("run_id"):
            path = folder / CUBES_FOLDER / f"{row['run_id']}.zarr"
            if path.is_dir():
                cubes[row["run_id"]] = path
    return rows, cubes, folder


def _split_by_camera(by_run: dict[str, list[dict]], cubes: dict, result) -> dict:
    """camera -> {set or run id -> rows}. A calibration run holding several cameras' frames
    becomes one set per camera (RUN_ID_cameraK), read from the run's cube (added to `cubes`)."""
    cameras: dict[tuple, dict[str, list[dict]]] = {}
    for run_id, run_rows in by_run.items():
        split: dict[tuple, list[dict]] = {}
        for row in run_rows:
            split.setdefault(camera_identity(row), []).append(row)
        if len(split) == 1 or run_rows[0]["frame_type"] == "light":
            cameras.setdefault(camera_identity(run_rows[0]), {})[run_id] = run_rows
            continue
        names = []
        for k, (camera, rows) in enumerate(sorted(split.items(), key=lambda c: str(c[0])), 1):
            set_id = f"{run_id}_camera{k}"
            cubes[set_id] = cubes[run_id]
            cameras.setdefault(camera, {})[set_id] = rows
            names.append(f"{set_id}: {len(rows)} frames of {describe_camera(camera)}")
        text = f"frames of {len(split)} cameras, one set each: " + "; ".join(names)
        result.notes.setdefault(run_id, []).append(text)
        log.warning("calibration run %s holds %s", run_id, text)
    return cameras


def _geometry(rows, notes: list[str]) -> dict:
    """Trim and overscan (columns) from the frames' sections, as the kernels take them."""
    row = rows[0]
    shape = tuple(row.get("shape") or ())
    trim = tuple(row["trim_section"]) if row.get("trim_section") else None
    overscan = None
    section = row.get("overscan_section")
    if section and shape:
        r0, r1, c0, c1 = section
        if r1 - r0 >= 0.9 * shape[0]:
            overscan = (c0, c1)
            if trim is None and c0 == 0:
                trim = (0, shape[0], c1, shape[1])  # BIASSEC without TRIMSEC: the rest
            elif trim is None and c1 == shape[1]:
                trim = (0, shape[0], 0, c0)
            if trim is None or (c0 < trim[3] and trim[2] < c1):
                notes.append("the overscan columns overlap the data: overscan not used")
                overscan = None
        else:
            notes.append(f"overscan section {list(section)} is a row strip: not used (only "
                         f"column strips are subtracted row by row)")
    return {"trim": trim, "overscan": overscan}


def _fingerprint(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _write_json(path: Path, payload) -> None:
    write_text(path, json.dumps(payload, indent=2, default=_jsonable) + "\n")


def _jsonable(value):
    if isinstance(value, (np.floating, np.integer, np.bool_)):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def _first(values):
    return next((v for v in values if v), None)


def _saturation_levels(rows, dtype, notes: list[str]) -> list[float | None]:
    """Each light frame's saturation level (ingest's: header, configuration or measured on its
    raw pixels); frames without one take the integer format's assumed level, and it is said."""
    levels = [r.get("saturation") for r in rows]
    if any(level is None for level in levels):
        assumed = assumed_saturation(dtype)
        if assumed is not None:
            notes.append(f"no saturation level for {sum(v is None for v in levels)} frame(s): "
                         f"{assumed:.0f} ADU assumed ({ASSUMED_SATURATION_FRACTION:.0%} of the "
                         f"stored range)")
        levels = [assumed if level is None else level for level in levels]
    return levels


def _camera_noise(light_rows, cubes, run_id, sets, bias_id, flat_id) -> CameraNoise:
    """The run's gain and read noise: the headers' or configuration's, else measured on the
    raw frames of the run and of the bias and flat sets chosen for it (at most 8 of each)."""
    gain = finite_median(r.get("gain") for r in light_rows)
    read_noise = finite_median(r.get("read_noise") for r in light_rows)
    given = dict(gain=gain, gain_source=_first(r.get("gain_source") for r in light_rows),
                 read_noise=read_noise,
                 read_noise_source=_first(r.get("read_noise_source") for r in light_rows))
    if gain is not None and read_noise is not None:
        return CameraNoise(**given)

    def frames(set_id, limit):
        if set_id is None:
            return []
        cube = open_set_cube(cubes, set_id)
        return [np.asarray(cube[r["cube_index"]]) for r in sets.get(set_id, light_rows)[:limit]]

    return measure_noise(frames(run_id, 5), frames(bias_id, 8),
                         frames(flat_id, 8) if gain is None else [], **given)


def _already_applied(rows, notes: list[str]) -> set[str]:
    """The calibration steps every frame of a light run had before ingest (frames table's
    calibrated_state); a run that mixes states is calibrated from what all its frames share."""
    states = [set(filter(None, str(r.get("calibrated_state") or "raw").split(",")))
              - {"raw"} for r in rows]
    done = set.intersection(*states) if states else set()
    if done:
        notes.append(f"already calibrated before ingest ({', '.join(sorted(done))}: "
                     f"{rows[0].get('calibrated_evidence')}): not applied again")
    if any(state != done for state in states):
        notes.append("the run mixes raw and already-calibrated frames: only the steps all "
                     "share are skipped")
    return done


def _dark_report(model: DarkModel | None):
    if model is None:
        return None
    return {"mode": model.mode, "evidence": model.evidence}


def calibrate(ingested, out_dir=None, *, threads: int | None = None,
              temperature_tolerance: float = 2.0, uncertainty: bool = False,
              chunk_bytes: int | None = None, manifest=None,
              write_calibrated: bool = True) -> CalibrationResult:
    """Build the masters and calibrate the light runs of an ingest (see the module docstring).

    ingested: an engine.ingest.IngestResult, or the folder an ingest wrote. out_dir: where the
    masters, calibrated cubes and report go (default: the ingest's folder). uncertainty: also
    write RUN_ID_sigma.zarr (with the run's gain and read noise). manifest: the output folder's
    engine.io.manifest.Manifest (default: read from it); a calibrated cube is reused only when
    it lists it as current. write_calibrated: also write the calibrated cubes (the recipes
    alone let the photometry stage calibrate the raw frames as it reads them).
    """
    rows, cubes, ingest_dir = _frames_table(ingested)
    out = Path(out_dir) if out_dir is not None else ingest_dir
    manifest = Manifest(out) if manifest is None else manifest
    (out / MASTERS_FOLDER).mkdir(parents=True, exist_ok=True)
    (out / CALIBRATED_FOLDER).mkdir(parents=True, exist_ok=True)
    result = CalibrationResult()
    ok = [r for r in rows if r.get("status") == "ok" and r.get("run_id") in cubes]
    by_run: dict[str, list[dict]] = {}
    for row in ok:
        by_run.setdefault(row["run_id"], []).append(row)
    for run_rows in by_run.values():
        run_rows.sort(key=lambda r: r["cube_index"])
    cubes = dict(cubes)
    cameras = _split_by_camera(by_run, cubes, result)
    report: dict[str, object] = {"format": _FORMAT, "runs": {}, "masters_only": {}}
    _reject_other_shapes(cameras, result)
    for camera, runs in sorted(cameras.items(), key=lambda c: str(c[0])):
        sets = {k: v for k, v in runs.items() if v[0]["frame_type"] != "light"}
        lights = {k: v for k, v in runs.items() if v[0]["frame_type"] == "light"}
        library = CalibrationSets(sets, cubes, result, out, threads, temperature_tolerance)
        if not lights:
            _masters_only(library, sets, result, report)
            continue
        for run_id, light_rows in sorted(lights.items()):
            _calibrate_run(run_id, light_rows, library, sets, cubes, out, result, report,
                           threads=threads, temperature_tolerance=temperature_tolerance,
                           uncertainty=uncertainty, chunk_bytes=chunk_bytes, manifest=manifest,
                           write_calibrated=write_calibrated)
    report["masters"] = sorted(result.masters)
    report["rejected"] = [list(item) for item in result.rejected]
    result.report_path = out / CALIBRATION_REPORT
    _write_json(result.report_path, report)
    return result


def _reject_other_shapes(cameras, result) -> None:
    """Calibration sets of the same telescope but another frame shape or binning cannot serve a
    light run: say why they are left out."""
    for camera, runs in cameras.items():
        for run_id, light_rows in runs.items():
            if light_rows[0]["frame_type"] != "light":
                continue
            for other, other_runs in cameras.items():
                if other == camera or other[:-3] != camera[:-3]:  # same camera, other shape
                    continue
                for set_id, set_rows in other_runs.items():
                    if set_rows[0]["frame_type"] == "light":
                        continue
                    _, rejected = check_frames([reference_values(set_rows)], reference_values(light_rows))
                    if rejected:
                        result.rejected.append((set_id, f"not used for {run_id}: "
                                                        f"{rejected[0][1]}"))


def _choose_set(library: CalibrationSets, sets, frame_type, filter_name, *, night, reference, run_id,
                result, notes: list[str], temperature_tolerance: float):
    """The calibration set of `frame_type` (and filter) nearest the run's night that fits its
    lights, or None; why one is missing or left out goes into notes (and result.rejected)."""
    set_id = library.nearest(frame_type, night, filter_name)
    if set_id is None:
        what = frame_type if filter_name is None else f"{frame_type} ({filter_name})"
        notes.append(f"no {what} frames for this camera: calibrated without")
        return None
    _, rejected = check_frames([reference_values(sets[set_id])], reference,
                               temperature_tolerance=temperature_tolerance)
    if rejected:
        result.rejected.append((set_id, f"not used for {run_id}: {rejected[0][1]}"))
        notes.append(f"{frame_type} set {set_id} left out: {rejected[0][1]}")
        return None
    if sets[set_id][0].get("night") != night:
        notes.append(f"{frame_type} from {sets[set_id][0].get('night')} (none of "
                     f"this night)")
    return set_id


@dataclass
class _RunMasters:
    """The masters chosen for one light run and what the choice found."""

    geometry: dict
    notes: list[str]
    done: set[str]            # steps the frames' own processing already applied
    used: dict                # role -> master set id or file name, for the report
    bias_id: str | None
    dark_id: str | None
    flat_id: str | None
    bias: object
    dark: DarkModel | None
    flat: object
    bad: object               # the bad-pixel mask from the dark and flat, or None
    levels: list              # each frame's saturation level (None: unknown)
    saturation: float | None  # their median


def _run_masters(run_id, light_rows, library: CalibrationSets, sets, cubes, result,
                 temperature_tolerance) -> _RunMasters:
    """Choose one light run's bias, dark and flat (each skipped when the frames say it was
    applied already) and write its bad-pixel mask."""
    notes: list[str] = []
    geometry = _geometry(light_rows, notes)
    night = light_rows[0].get("night")
    reference = reference_values(light_rows)
    used: dict[str, str | None] = {}

    def choose(frame_type, filter_name=None):
        return _choose_set(library, sets, frame_type, filter_name, night=night,
                           reference=reference, run_id=run_id, result=result, notes=notes,
                           temperature_tolerance=temperature_tolerance)

    done = _already_applied(light_rows, notes)
    bias_id = choose("bias") if "bias" not in done else None
    bias = library.bias(bias_id, geometry) if bias_id else None
    dark_id = choose("dark") if "dark" not in done else None
    dark = library.dark(dark_id, bias, geometry) if dark_id else None
    flat_id = choose("flat", light_rows[0].get("filter")) if "flat" not in done else None
    levels = _saturation_levels(light_rows, open_set_cube(cubes, run_id).dtype, notes)
    saturation = finite_median(levels)
    flat = library.flat(flat_id, bias, dark, geometry, saturation) if flat_id else None
    bad = None
    if dark is not None or flat is not None:
        bad = bad_pixel_mask(dark=dark, flat=flat)
        used["bad_pixels"] = library._write(bad, run_id)
    used.update(bias=bias_id, dark=dark_id, flat=flat_id)
    return _RunMasters(geometry, notes, done, used, bias_id, dark_id, flat_id, bias, dark, flat,
                       bad, levels, saturation)


def _calibrate_run(run_id, light_rows, library: CalibrationSets, sets, cubes, out, result, report, *,
                   threads, temperature_tolerance, uncertainty, chunk_bytes, manifest,
                   write_calibrated) -> None:
    """Write one light run's calibration recipe (and, when asked, its calibrated cubes) unless
    the manifest lists them as current; record it in result and report."""
    m = _run_masters(run_id, light_rows, library, sets, cubes, result, temperature_tolerance)
    notes = m.notes
    exptimes = [float(r["exptime"]) for r in light_rows]
    own_masks = bad_pixel_cube_path(cubes[run_id])
    own_masks = own_masks if own_masks.is_dir() else None
    if own_masks is not None:
        m.used["own_bad_pixels"] = own_masks.name
    # The raw cubes by content: one rebuilt differently recalibrates the run.
    fingerprint = _fingerprint(
        _FORMAT, manifest.hash_of(cubes[run_id]),
        [manifest.hash_of(cubes[s]) if s else None
         for s in (m.bias_id, m.dark_id, m.flat_id)], m.geometry, m.levels, uncertainty,
        temperature_tolerance, sorted(m.done),
        manifest.hash_of(own_masks) if own_masks is not None else None)
    noise = _camera_noise(light_rows, cubes, run_id, sets, m.bias_id, m.flat_id)
    notes.extend(noise.notes)
    result.camera[run_id] = noise.as_dict()
    recipe = CalibrationRecipe.build(
        open_set_cube(cubes, run_id).shape[1:], exptimes, bias=m.bias, dark=m.dark, flat=m.flat,
        bad_pixels=m.bad, saturation=m.levels, gain=noise.gain,
        read_noise=noise.read_noise, **m.geometry)
    notes.extend(n for n in recipe.notes if n not in notes)
    recipe_path = run_recipe(out, run_id)
    target = out / CALIBRATED_FOLDER / f"{run_id}.zarr"
    cubes_asked = [target, mask_cube_path(target)] + (
        [sigma_cube_path(target)] if uncertainty else [])
    products = [recipe_path] + (cubes_asked if write_calibrated else [])
    if manifest.is_current(products, fingerprint):
        result.skipped_runs.append(run_id)
    else:
        recipe.save(recipe_path)
        if write_calibrated:
            calibrate_cube(
                open_set_cube(cubes, run_id), exptimes, bias=m.bias, dark=m.dark, flat=m.flat,
                bad_pixels=m.bad, saturation=m.levels, gain=noise.gain,
                read_noise=noise.read_noise, uncertainty=uncertainty, out=target,
                attributes={"run_id": run_id, "fingerprint": fingerprint,
                            "masters": m.used, "format": _FORMAT},
                chunk_bytes=chunk_bytes or 256 * 1024 * 1024, threads=threads,
                frame_bad_pixels=open_set_cube(cubes, run_id, own_masks) if own_masks else None,
                **m.geometry)
        manifest.record(products, fingerprint)
    result.recipes[run_id] = recipe_path
    if write_calibrated:
        result.runs[run_id] = target
    result.notes.setdefault(run_id, []).extend(notes)
    report["runs"][run_id] = {
        "recipe": str(recipe_path), "cube": str(target) if write_calibrated else None,
        "frames": len(light_rows), "masters": m.used,
        "geometry": m.geometry, "dark": _dark_report(m.dark), "notes": notes,
        "camera": {**noise.as_dict(), "saturation": m.saturation,
                   "saturation_source": _first(r.get("saturation_source")
                                               for r in light_rows)},
        "up_to_date": run_id in result.skipped_runs}


def _masters_only(library: CalibrationSets, sets, result, report) -> None:
    """No lights for this camera: every set's masters, each with its own geometry."""
    for set_id, rows in sorted(sets.items()):
        frame_type = rows[0]["frame_type"]
        notes: list[str] = []
        geometry = _geometry(rows, notes)
        night = rows[0].get("night")
        bias_id = library.nearest("bias", night)
        bias = library.bias(bias_id, geometry) if bias_id else None
        entry = {"frame_type": frame_type}
        if frame_type == "dark":
            entry["dark"] = _dark_report(library.dark(set_id, bias, geometry))
        elif frame_type == "flat":
            dark_id = library.nearest("dark", night)
            dark = library.dark(dark_id, bias, geometry) if dark_id else None
            saturation = finite_median(r.get("saturation") for r in rows)
            flat = library.flat(set_id, bias, dark, geometry, saturation)
            if bias is None:
                notes.append("no bias frames: the flat keeps the bias level")
            if flat is not None:
                bad = bad_pixel_mask(dark=dark, flat=flat)
                entry["bad_pixels"] = library._write(bad, set_id)
        if notes:
            result.notes.setdefault(set_id, []).extend(notes)
        report["masters_only"][set_id] = entry
