"""Checking calibration frames before they are combined: do they fit the lights (shape, binning,
sensor temperature), and does each one's level say it is broken (saturated, empty, far from its
siblings)? Both work on the frames table's records, so no pixel is read.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

__all__ = ["check_frames", "implausible_levels"]



def _binning(record: Mapping) -> tuple[int, int]:
    bx, by = record.get("binning_x"), record.get("binning_y")
    return (int(bx) if bx else 1, int(by) if by else 1)


def _temperature(record: Mapping) -> float | None:
    for key in ("set_temperature", "temperature"):
        value = record.get(key)
        if value is not None and math.isfinite(float(value)):
            return float(value)
    return None


def check_frames(records: Sequence[Mapping], reference: Mapping | None = None, *,
                 temperature_tolerance: float = 2.0, saturation: float | None = None,
                 level_tolerance: float = 0.1) -> tuple[list[int], list[tuple[str, str]]]:
    """Which calibration frames may calibrate frames like `reference`.

    records: one mapping per frame with 'path', 'shape' (rows, columns), 'binning_x',
    'binning_y', 'temperature' and/or 'set_temperature' (C) - the frames table's columns.
    reference: the same fields for the lights (default: the first record). A frame is rejected
    when its shape or binning differs, or when its sensor temperature (the set point when both
    have one, else the measured one) is more than `temperature_tolerance` C away; a frame or
    reference without a temperature is not judged on it. Records with a 'median_adu' (the
    frames table's) are also judged on their level (`implausible_levels`), against
    `saturation` (raw ADU; default: each record's 'saturation').
    Returns (accepted indices, [(path, reason), ...] for the rejected).
    """
    if not records:
        return [], []
    reference = reference if reference is not None else records[0]
    ref_shape = tuple(reference.get("shape") or ())
    ref_binning = _binning(reference)
    ref_temperature = _temperature(reference)
    accepted, rejected = [], []
    levels = implausible_levels(records, saturation=saturation, tolerance=level_tolerance)
    for index, record in enumerate(records):
        path = str(record.get("path", f"frame {index}"))
        shape = tuple(record.get("shape") or ())
        reasons = [levels[index]] if index in levels else []
        if ref_shape and shape and shape != ref_shape:
            reasons.append(f"shape {shape[0]}x{shape[1]} differs from {ref_shape[0]}x"
                           f"{ref_shape[1]}")
        if _binning(record) != ref_binning:
            b = _binning(record)
            reasons.append(f"binning {b[0]}x{b[1]} differs from {ref_binning[0]}x"
                           f"{ref_binning[1]}")
        temperature = _temperature(record)
        if (temperature is not None and ref_temperature is not None
                and abs(temperature - ref_temperature) > temperature_tolerance):
            gap = abs(temperature - ref_temperature)
            reasons.append(f"sensor at {temperature:.1f} C, {gap:.1f} C from "
                           f"{ref_temperature:.1f} C (tolerance {temperature_tolerance:g} C)")
        if reasons:
            rejected.append((path, "; ".join(reasons)))
        else:
            accepted.append(index)
    return accepted, rejected


def _level(record: Mapping) -> float | None:
    value = record.get("median_adu")
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def implausible_levels(records: Sequence[Mapping], *, saturation: float | None = None,
                       tolerance: float = 0.1) -> dict[int, str]:
    """Calibration frames whose level says they are broken: index -> reason.

    records carry 'median_adu' (the stored frame's median; frames without one are not judged),
    'frame_type', 'exptime', 'dtype' and 'saturation'. A frame is implausible when
    - its median reaches 90 % of the saturation level (`saturation`, else the record's): a
      saturated flat or a light-struck bias;
    - integer data have a median of 0: an empty readout (cameras add an offset so that the
      read noise is never clipped at zero);
    - a bias or dark lies further from the median of its siblings (the same type and, for
      darks, exposure; 3 or more of them) than 5 robust sigmas (1.4826 MAD) and than
      `tolerance` of that median. Flats are normalised one by one and their level follows the
      twilight, so they are judged on the first two tests only.
    """
    found: dict[int, str] = {}
    groups: dict[tuple, list[int]] = {}
    for index, record in enumerate(records):
        level = _level(record)
        if level is None:
            continue
        limit = saturation if saturation is not None else record.get("saturation")
        dtype = str(record.get("dtype") or "")
        if limit is not None and math.isfinite(float(limit)) and level >= 0.9 * float(limit):
            found[index] = f"median {level:.0f} ADU is at saturation ({float(limit):.0f})"
        elif level <= 0 and dtype.startswith(("uint", "int")):
            found[index] = f"median {level:.0f} ADU: an empty (all-zero) readout"
        elif record.get("frame_type") in ("bias", "dark"):
            key = (record["frame_type"], round(float(record.get("exptime") or 0.0), 3))
            groups.setdefault(key, []).append(index)
    for (frame_type, _), members in groups.items():
        if len(members) < 3:
            continue
        values = np.array([_level(records[i]) for i in members])
        centre = float(np.median(values))
        spread = 1.4826 * float(np.median(np.abs(values - centre)))
        allowed = max(5.0 * spread, tolerance * abs(centre))
        for i, value in zip(members, values):
            if abs(value - centre) > allowed:
                found[i] = (f"median {value:.0f} ADU is far from its {frame_type} siblings' "
                            f"{centre:.0f} (allowed +-{allowed:.0f})")
    return found
