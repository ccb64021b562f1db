"""Grouping ingested frames into runs (lights: site x telescope x night x filter x binning x
camera) and calibration sets (bias; dark; flat per filter), the run ids, and the checks that
need a whole run: one frame shape, one saturation level per camera."""

from __future__ import annotations

import collections
import hashlib
import json
import re

from engine.ingest.table import skip
from engine.io.headers import camera_identity

#: Stored with every cube and frames table: a change of format rebuilds them.
FORMAT_VERSION = "ingest-2"


def group_runs(scanned: list) -> list[tuple[str, list]]:
    """(run id, frames) of every run the readable frames make, in run-id order."""
    groups: dict[tuple, list] = collections.defaultdict(list)
    for item in scanned:
        if item.row["status"] == "ok":
            groups[_group_key(item.row)].append(item)
    ids = _run_ids(groups)
    return [(ids[key], groups[key]) for key in sorted(groups, key=lambda k: ids[k])]


def _sanitise(text: str, limit: int = 40) -> str:
    """A header string made safe as part of a file name."""
    cleaned = re.sub(r"[^A-Za-z0-9.+-]+", "-", str(text)).strip("-.")
    return cleaned[:limit].strip("-.") or "x"


def _group_key(row: dict) -> tuple:
    """(readable parts of the run id, camera): light runs are split by `camera_identity`, so
    two cameras never share one; calibration frames are split into sets per camera by the
    calibration stage (with the same identity), which names each set."""
    camera = camera_identity(row, shape=False) if row["frame_type"] == "light" else None
    return _readable_key(row), camera


def _readable_key(row: dict) -> tuple:
    frame_type = row["frame_type"]
    filter_name = row["filter"] or "nofilter"
    parts = []
    if row["site"] and row["site"] != row["telescope"]:
        parts.append(row["site"])
    parts += [row["telescope"], row["night"]]
    if frame_type != "light":
        parts.append(frame_type)
    if frame_type in ("light", "flat"):
        parts.append(filter_name)
    if (row["binning_x"], row["binning_y"]) != (1, 1):
        parts.append(f"bin{row['binning_x']}x{row['binning_y']}")
    return tuple(parts)


def _run_ids(keys) -> dict[tuple, str]:
    """Run id of each (readable parts, camera) key: the parts joined; a second key with the same
    id (another camera, or parts that sanitise alike) gets a suffix from its hash."""
    ids: dict[tuple, str] = {}
    taken: dict[str, tuple] = {}
    for key in sorted(set(keys), key=repr):
        run_id = "_".join(_sanitise(part) for part in key[0])
        if run_id in taken and taken[run_id] != key:
            run_id += "-" + hashlib.sha256(repr(key).encode()).hexdigest()[:6]
        taken[run_id] = key
        ids[key] = run_id
    return ids


def fingerprint(run_id: str, members: list[dict], settings: str) -> str:
    """What a run's cube was made from: its files (path, size, modification time), the
    settings, the format. A cube is reused only while this is unchanged."""
    items = [(r["path"], r["file_size"], r["file_mtime_ns"]) for r in members]
    text = json.dumps([FORMAT_VERSION, run_id, settings, items])
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def check_shapes(run_id: str, rows: list[dict]) -> None:
    """Skip frames whose stored shape differs from the run's (its most common; ties: the
    earliest frame's)."""
    shapes = [tuple(r["shape"]) for r in rows]
    counts = collections.Counter(shapes)
    best = max(counts.values())
    majority = next(s for s in shapes if counts[s] == best)
    for row, shape in zip(rows, shapes):
        if shape != majority:
            skip(row, "shape_mismatch",
                 f"{row['path']}: shape {shape[0]} x {shape[1]} differs from its run's "
                 f"({run_id}: {majority[0]} x {majority[1]})")


def camera_saturation(rows: list[dict]) -> None:
    """One measured level per camera where a frame alone cannot tell: a frame keeps the pile-up
    it shows; any other measured frame (or one whose values are not counts, e.g. float) takes
    the camera's lowest pile-up, else its highest ADC full scale (a faint frame of a 16-bit
    camera fits in 12 bits; its flats do not)."""
    cameras: dict[tuple, list[dict]] = collections.defaultdict(list)
    for row in rows:
        if row["status"] == "ok" and (row["saturation"] is None or
                                      row["saturation_source"].startswith("measured")):
            cameras[(row["site"], row["telescope"], row["instrument"], row["binning_x"],
                     row["binning_y"], tuple(row["shape"]), row["bayer_pattern"])].append(row)
    for members in cameras.values():
        measured = [r for r in members if r["saturation"] is not None]
        piled = [r for r in measured if "pile-up" in r["saturation_source"]]
        if not measured:
            continue
        best = (min(piled, key=lambda r: r["saturation"]) if piled
                else max(measured, key=lambda r: r["saturation"]))
        keep = {id(r) for r in piled}
        for row in members:
            if id(row) in keep or row["saturation"] == best["saturation"]:
                continue
            row["saturation"] = best["saturation"]
            row["saturation_source"] = (f"measured on the camera's frames ({best['path']}): "
                                        + best["saturation_source"].removeprefix("measured: "))
