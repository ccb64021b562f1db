"""The calibration sets of one camera (bias, dark and flat runs from ingest) and the masters
built from them, each once: which set serves a light run (the same night first, else the
nearest), which of its frames pass the checks (engine.calibration.masters.check_frames), and the
masters written under `out_dir/masters/`. Used by the calibrate stage (engine.calibration.stage).
"""

from __future__ import annotations

import json
import logging
import math
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.calibration.files import write_master
from engine.calibration.masters import (Master, check_frames, master_bias, master_dark,
                                        master_flat)
from engine.errors import EngineValueError
from engine.io.layout import MASTERS_FOLDER

if TYPE_CHECKING:  # the stage imports this module
    from engine.calibration.stage import CalibrationResult

__all__ = ["ASSUMED_SATURATION_FRACTION", "CalibrationSets", "assumed_saturation",
           "finite_median", "open_set_cube", "reference_values"]

log = logging.getLogger("engine.calibration")

#: Without SATURATE or DATAMAX in the headers, stored values above this fraction of an integer
#: format's range count as saturated: full wells and ADCs clip near the top of the range, and
#: few cameras stay linear through its last percent.
ASSUMED_SATURATION_FRACTION = 0.95


def _night_distance(a: str | None, b: str | None) -> float:
    try:
        return abs((date.fromisoformat(a) - date.fromisoformat(b)).days)
    except (TypeError, ValueError):
        return math.inf if a != b else 0.0


def finite_median(values) -> float | None:
    """The median of the finite values given, None without one."""
    values = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return float(np.median(values)) if values else None


def reference_values(rows) -> dict:
    """What a set's frames are checked against: shape, binning, temperatures."""
    return {"shape": rows[0].get("shape"), "binning_x": rows[0].get("binning_x"),
            "binning_y": rows[0].get("binning_y"),
            "set_temperature": finite_median(r.get("set_temperature") for r in rows),
            "temperature": finite_median(r.get("temperature") for r in rows)}


class CalibrationSets:
    """The calibration sets of one camera and the masters made from them (built once each)."""

    def __init__(self, sets, cubes, result: CalibrationResult, out: Path, threads,
                 temperature_tolerance):
        self.sets = sets  # set id -> rows (ok, sorted by cube index)
        self.cubes = cubes
        self.result = result
        self.out = out
        self.threads = threads
        self.tolerance = temperature_tolerance
        self.built: dict[tuple, object] = {}

    def nearest(self, frame_type, night, filter_name=None):
        candidates = [(sid, rows) for sid, rows in self.sets.items()
                      if rows[0]["frame_type"] == frame_type
                      and (filter_name is None or rows[0].get("filter") == filter_name)]
        if not candidates:
            return None
        return min(candidates, key=lambda c: (_night_distance(c[1][0].get("night"), night),
                                              c[0]))[0]

    def _accepted(self, set_id):
        rows = self.sets[set_id]
        saturation = finite_median(r.get("saturation") for r in rows)
        if saturation is None and rows[0].get("dtype"):
            saturation = assumed_saturation(rows[0]["dtype"])
        accepted, rejected = check_frames(rows, reference_values(rows),
                                          temperature_tolerance=self.tolerance,
                                          saturation=saturation)
        for path, reason in rejected:
            self.result.rejected.append((path, reason))
            log.warning("calibration frame %s rejected: %s", path, reason)
        return [rows[i] for i in accepted]

    def _notes(self, key, master_notes):
        if master_notes:
            self.result.notes.setdefault(key, [])
            for text in master_notes:
                if text not in self.result.notes[key]:
                    self.result.notes[key].append(text)

    def _write(self, master: Master, prefix: str) -> str:
        path = write_master(master, self.out / MASTERS_FOLDER, prefix=prefix)
        self.result.masters[path.name] = path
        return path.name

    def bias(self, set_id, geometry):
        key = ("bias", set_id, json.dumps(geometry))
        if key not in self.built:
            rows = self._accepted(set_id)
            master = None
            if rows:
                master = master_bias(
                    open_set_cube(self.cubes, set_id), frames=[r["cube_index"] for r in rows],
                    names=_names(rows), binning=_binning(rows),
                    temperatures=[r.get("temperature") for r in rows],
                    camera=rows[0].get("instrument"), threads=self.threads, **geometry)
                self._notes(set_id, master.notes)
                self._write(master, set_id)
            self.built[key] = master
        return self.built[key]

    def dark(self, set_id, bias, geometry):
        key = ("dark", set_id, id(bias), json.dumps(geometry))
        if key not in self.built:
            rows = self._accepted(set_id)
            model = None
            if rows:
                model = master_dark(
                    open_set_cube(self.cubes, set_id), [r["exptime"] for r in rows],
                    frames=[r["cube_index"] for r in rows], names=_names(rows),
                    bias=bias, gain=finite_median(r.get("gain") for r in rows),
                    binning=_binning(rows), temperatures=[r.get("temperature") for r in rows],
                    camera=rows[0].get("instrument"), threads=self.threads, **geometry)
                self._notes(set_id, model.notes)
                for master in model.masters():
                    self._write(master, set_id)
            self.built[key] = model
        return self.built[key]

    def flat(self, set_id, bias, dark, geometry, saturation):
        key = ("flat", set_id, id(bias), id(dark), json.dumps(geometry))
        if key not in self.built:
            rows = self._accepted(set_id)
            master = None
            if rows:
                try:
                    master = master_flat(
                        open_set_cube(self.cubes, set_id), frames=[r["cube_index"] for r in rows],
                        names=_names(rows), filter=rows[0].get("filter"),
                        exptimes=[r["exptime"] for r in rows], bias=bias, dark=dark,
                        saturation=saturation, binning=_binning(rows),
                        temperatures=[r.get("temperature") for r in rows],
                        camera=rows[0].get("instrument"), threads=self.threads, **geometry)
                except EngineValueError as exc:
                    self.result.rejected.append((set_id, str(exc)))
                    master = None
                if master is not None:
                    self._notes(set_id, master.notes)
                    self._write(master, set_id)
            self.built[key] = master
        return self.built[key]


def assumed_saturation(dtype) -> float | None:
    """Saturation level of raw integer data whose headers give none (None for float data)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        return None
    return ASSUMED_SATURATION_FRACTION * float(np.iinfo(dtype).max)


def open_set_cube(cubes, set_id, path=None):
    """The cube of a set or run (or the cube at `path`)."""
    from engine.io.cube import open_cube

    return open_cube(path or cubes[set_id])


def _names(rows) -> list[str]:
    """The frames' paths indexed by cube index, as the master builders read them (a set may
    be part of its cube: another camera's frames or rejected ones are not in it)."""
    names = [""] * (max(int(r["cube_index"]) for r in rows) + 1)
    for row in rows:
        names[int(row["cube_index"])] = row["path"]
    return names


def _binning(rows) -> tuple[int, int]:
    return (int(rows[0].get("binning_x") or 1), int(rows[0].get("binning_y") or 1))
