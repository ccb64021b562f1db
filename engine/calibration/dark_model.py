"""The dark model: how to remove dark current, and the measurements that choose it.

`master_dark` (engine.calibration.masters) combines the darks of each exposure time; the steps
here fit a line through them per pixel (`fit_dark_line`), test whether the darks scale with
exposure in 32 x 32-pixel blocks (`linearity_test`), choose between a dark-current rate and
exposure-matched darks (`dark_mode`) and describe the choice in FITS cards (`dark_cards`).
`DarkModel` is the result the calibration applies to each light.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

import numpy as np

from engine.calibration.blocks import block_medians, block_noise

if TYPE_CHECKING:
    from engine.calibration.masters import Master

__all__ = ["DarkModel", "dark_cards", "dark_mode", "exposure_groups", "fit_dark_line",
           "line_evidence", "linearity_test"]


@dataclass(frozen=True)
class DarkModel:
    """How to remove dark current: a rate scaled by exposure, or darks matched in exposure.

    mode: 'rate' or 'matched'. rate: the dark-current master (ADU/s, bias removed), present in
    'rate' mode and whenever two or more exposure times allow a fit. matched: exposure time ->
    combined dark (bias removed; with the bias level in it when no bias was given).
    includes_bias: the matched darks still hold the bias (no bias frames were given).
    intercept: without bias frames but with two or more exposure times, the fitted dark at
    zero exposure, per pixel: it stands in for the bias.
    offset: in 'rate' mode with a bias, what the darks hold at zero exposure beyond the master
    bias (a bias level that drifted between the bias frames and the darks, or glow that grows
    from a floor), smoothed over 32 x 32-pixel blocks so that it adds no pixel noise (float32
    map, or None); the dark to subtract from a light of exposure t is offset + rate * t.
    evidence: the linearity test, exposure by exposure (see `master_dark`). notes: what a user
    should know.
    """

    mode: str
    rate: Master | None
    matched: Mapping[float, Master]
    includes_bias: bool
    evidence: Mapping[str, object]
    notes: tuple[str, ...] = ()
    intercept: np.ndarray | None = None
    offset: np.ndarray | None = None

    def for_exposure(self, exptime: float) -> tuple[np.ndarray, float, str | None]:
        """(dark, scale, note) to subtract from a light of `exptime` s: dark * scale."""
        if self.mode == "rate":
            return self.rate.data, float(exptime), None
        for t, master in self.matched.items():
            if abs(t - exptime) <= 1e-3 * max(t, 1.0):
                return master.data, 1.0, None
        if self.rate is not None and not self.includes_bias:
            return (self.rate.data, float(exptime),
                    f"no dark of {exptime:g} s: the dark rate is scaled although the darks "
                    f"failed the linearity test")
        nearest = min(self.matched, key=lambda t: abs(t - exptime))
        master = self.matched[nearest]
        if self.includes_bias:
            return (master.data, 1.0,
                    f"no dark of {exptime:g} s and no bias to scale one: the {nearest:g} s dark "
                    f"is subtracted as it is")
        return (master.data, exptime / nearest,
                f"no dark of {exptime:g} s: the {nearest:g} s dark is scaled by "
                f"{exptime / nearest:.4g}")

    def masters(self) -> list[Master]:
        if self.mode == "rate":
            return [self.rate]
        return [self.matched[t] for t in sorted(self.matched)]


def exposure_groups(frames: list[int], exptimes: np.ndarray) -> dict[float, list[int]]:
    """The frames grouped by exposure time, rounded to 1 ms: exptime -> frame indices."""
    groups: dict[float, list[int]] = {}
    for frame, t in zip(frames, np.round(exptimes, 3)):
        groups.setdefault(float(t), []).append(frame)
    return groups


def fit_dark_line(combined: Mapping[float, np.ndarray], counts: Mapping[float, int],
                  has_bias: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(rate, intercept) per pixel (float32) from the combined dark of each exposure time.

    Two or more exposure times: the line dark(t) = intercept + rate * t, least squares weighted
    by the frames in each group. One, with the bias removed: rate = dark / t, no intercept.
    One without a bias: nothing can be fitted, (None, None).
    """
    exposures = sorted(combined)
    if len(exposures) >= 2:
        weights = np.array([counts[t] for t in exposures], dtype=np.float64)
        t_arr = np.array(exposures)
        sw, st, stt = weights.sum(), np.sum(weights * t_arr), np.sum(weights * t_arr ** 2)
        sy = sum(w * combined[t].astype(np.float64) for w, t in zip(weights, t_arr))
        sty = sum(w * t * combined[t].astype(np.float64) for w, t in zip(weights, t_arr))
        det = sw * stt - st * st
        rate = ((sw * sty - st * sy) / det).astype(np.float32)
        intercept = ((stt * sy - st * sty) / det).astype(np.float32)
        return rate, intercept
    if has_bias:
        t = exposures[0]
        return (combined[t] / np.float32(t)).astype(np.float32), None
    return None, None


def line_evidence(rate, intercept, counts: Mapping[float, int], gain) -> dict[str, object]:
    """The fit's evidence: exposure times, frames per group, the median rate (ADU/s, and e-/s
    per pixel with `gain` in e-/ADU) and the intercept's median and block range (ADU)."""
    exposures = sorted(counts)
    evidence: dict[str, object] = {"exptimes": exposures,
                                   "frames": [counts[t] for t in exposures]}
    if rate is not None:
        median_rate = float(np.nanmedian(rate))
        evidence["median_rate_adu_per_s"] = median_rate
        if gain:
            evidence["median_rate_e_per_s"] = median_rate * float(gain)
    if intercept is not None:
        blocks = block_medians(intercept)
        evidence["intercept_median_adu"] = float(np.nanmedian(intercept))
        evidence["intercept_block_range_adu"] = [float(np.nanmin(blocks)),
                                                 float(np.nanmax(blocks))]
    return evidence


def linearity_test(combined: Mapping[float, np.ndarray], counts: Mapping[float, int], rate,
                   intercept, *, significance: float, tolerance: float) -> list[dict] | None:
    """The linearity test of `master_dark`, one row per exposure time (None: fewer than three,
    nothing to test). A row's 'ok' says whether its worst block residual is within allowance."""
    if len(combined) < 3:
        return None
    rows = []
    for t in sorted(combined):
        # The line's residuals, in blocks. Each exposure's frame-wide level (which jitters
        # with the bias level from frame to frame) is taken out: what must scale is the
        # pattern, pixel by pixel, as amp glow often does not.
        residual = combined[t] - (intercept + rate.astype(np.float64) * t)
        blocks = block_medians(residual)
        level = float(np.nanmedian(blocks))
        spread = block_noise(residual)
        signal = float(np.nanmedian(combined[t] - intercept))
        allowed = max(significance * spread, tolerance * abs(signal), 1.0)
        worst = float(np.nanmax(np.abs(blocks - level)))
        rows.append({"exptime": t, "frames": counts[t], "signal_adu": signal,
                     "level_adu": level, "worst_block_residual_adu": worst,
                     "allowed_adu": allowed, "ok": worst <= allowed})
    return rows


def dark_mode(evidence: Mapping[str, object], has_bias: bool) -> tuple[str, str]:
    """('rate' or 'matched', the note that says why) from the evidence of a tested fit."""
    exposures = evidence["exptimes"]
    slope_text = ""
    if "median_rate_adu_per_s" in evidence:
        slope_text = f"; median dark current {evidence['median_rate_adu_per_s']:.4g} ADU/s"
        if "median_rate_e_per_s" in evidence:
            slope_text += f" = {evidence['median_rate_e_per_s']:.4g} e-/s/pixel"
    if evidence["tested"] and evidence["linear"]:
        return "rate", (f"darks scale linearly with exposure over {exposures[0]:g}-"
                        f"{exposures[-1]:g} s (block residuals within allowance): dark-current "
                        f"rate used{slope_text}")
    if evidence["tested"]:
        bad = [r for r in evidence["groups"] if not r["ok"]]
        return "matched", ("darks do not scale with exposure ("
                           + ", ".join(f"{r['exptime']:g} s off by "
                                       f"{r['worst_block_residual_adu']:.3g} ADU "
                                       f"> {r['allowed_adu']:.3g}" for r in bad)
                           + "): exposure-matched darks used")
    if has_bias:
        return "rate", (f"darks of {len(exposures)} exposure time"
                        f"{'s' if len(exposures) > 1 else ''} "
                        f"({', '.join(f'{t:g}' for t in exposures)} s): linearity untested (that "
                        f"needs three), the dark is scaled as a rate{slope_text}")
    return "matched", ("darks without bias frames and fewer than three exposure times: used as "
                       "exposure-matched darks that still hold the bias")


def dark_cards(mode: str, evidence: Mapping[str, object], with_offset: bool) -> tuple:
    """FITS cards (keyword, value, comment) of the dark model, then a HISTORY card per tested
    exposure time."""
    passed = evidence["linear"]
    cards = (("DARKMODE", mode.upper(), "RATE: ADU/s scaled by exposure; MATCHED: per exposure"),
             ("LINTEST", "PASS" if passed else ("FAIL" if passed is False else "UNTESTED"),
              "dark linearity over exposure times"))
    if "median_rate_adu_per_s" in evidence:
        cards += (("DCRATE", round(evidence["median_rate_adu_per_s"], 6),
                   "median dark current, ADU/s/pixel"),)
    if "median_rate_e_per_s" in evidence:
        cards += (("DCRATEE", round(evidence["median_rate_e_per_s"], 6),
                   "median dark current, e-/s/pixel"),)
    if with_offset:
        cards += (("DCOFFSET", round(evidence["offset_adu"], 4),
                   "median of the model's 0 s level (extension OFFSET), ADU"),)
    return cards + tuple(("HISTORY", f"{r['exptime']:g} s x{r['frames']}: signal "
                          f"{r['signal_adu']:.2f} ADU, worst block residual "
                          f"{r['worst_block_residual_adu']:.2f} <= {r['allowed_adu']:.2f}: "
                          f"{'ok' if r['ok'] else 'FAIL'}", "")
                         for r in evidence.get("groups", ()))
