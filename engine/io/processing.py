"""What was done to a frame before it reached us: calibration steps, a pedestal, a bad-pixel map.

- `calibrated_state(header)`: the calibration steps (bias, dark, flat) a header says were applied,
  with the evidence. Read from MaxIm DL's CALSTAT ('BDF'), IRAF ccdproc's ZEROCOR / DARKCOR /
  FLATCOR, astropy ccdproc's SUBBIAS / SUBDARK / FLATCOR, Las Cumbres Observatory's BANZAI
  (RLEVEL > 0, L1STATBI / L1STATDA / L1STATFL, L1IDFLAT) and HISTORY lines that name a flat
  ('Flat=/data/Flat58.fits', 'flat-fielded', 'ImageCalibration.masterFlat'). A flat-fielded frame
  had its bias and dark removed first: nobody divides by a flat before subtracting them.
- `pedestal(header, configured)`: the constant a program added to every pixel (MaxIm DL writes
  PEDESTAL = -100 for an added 100, "correction to add for zero-based ADU"; PixInsight writes a
  positive value to subtract): either way its size is subtracted.
- `bad_pixel_hdu(path, shape)`: the HDU of an observatory's bad-pixel mask (LCO's processed files
  carry SCI, BPM, ERR and CAT extensions), or None.
"""

from __future__ import annotations

import re

from astropy.io import fits

__all__ = ["STEPS", "bad_pixel_hdu", "calibrated_state", "pedestal"]

STEPS = ("bias", "dark", "flat")
_KEYWORDS = (("ZEROCOR", "bias"), ("BIASCOR", "bias"), ("SUBBIAS", "bias"), ("DARKCOR", "dark"),
             ("SUBDARK", "dark"), ("FLATCOR", "flat"), ("L1IDFLAT", "flat"))
_LCO_STATUS = (("L1STATBI", "bias"), ("L1STATDA", "dark"), ("L1STATFL", "flat"))
_HISTORY = (
    (re.compile(r"\bflat\s*=|flat[- ]?field(ed|ing)?\b|flatcor|master\s*flat"
                r"|divided by (the )?flat", re.IGNORECASE), "flat"),
    (re.compile(r"\bdark\s*=|dark[- ](subtracted|corrected|removed)|master\s*dark|subdark",
                re.IGNORECASE), "dark"),
    (re.compile(r"\b(bias|zero)\s*=|(bias|zero)[- ](subtracted|corrected|removed)|master\s*bias"
                r"|subbias", re.IGNORECASE), "bias"),
)
_BAD_PIXEL_NAMES = ("BPM", "MASK", "BADPIX", "DQ")


def _present(header, key) -> bool:
    if key not in header:
        return False
    value = header.get(key)
    return value is not None and value is not False and str(value).strip() not in ("", "0")


def calibrated_state(header) -> tuple[tuple[str, ...], str]:
    """(steps applied, in STEPS order; evidence in words). ((), '') for a raw frame."""
    steps: set[str] = set()
    evidence: list[str] = []
    for read in (_calstat_steps, _correction_keywords, _pipeline_level):
        found, why = read(header)
        steps |= found
        evidence += why
    found, why = _history_steps(header, steps)
    steps |= found
    evidence += why
    if "flat" in steps:
        steps |= {"bias", "dark"}
    return tuple(s for s in STEPS if s in steps), "; ".join(evidence)


# Each reader below returns the steps a header's convention says were applied, and its evidence.

def _calstat_steps(header) -> tuple[set[str], list[str]]:
    """MaxIm DL's CALSTAT: one letter per step ('BDF')."""
    calstat = str(header.get("CALSTAT", "")).strip().upper() if "CALSTAT" in header else ""
    letters = {"B": "bias", "D": "dark", "F": "flat"}
    if calstat and set(calstat) <= set(letters):
        return {letters[c] for c in calstat}, [f"CALSTAT = {calstat!r}"]
    return set(), []


def _correction_keywords(header) -> tuple[set[str], list[str]]:
    """IRAF's and astropy ccdproc's keywords, one per step (ZEROCOR, SUBDARK, FLATCOR, ...)."""
    present = [(key, step) for key, step in _KEYWORDS if _present(header, key)]
    return {step for _, step in present}, [key for key, _ in present]


def _pipeline_level(header) -> tuple[set[str], list[str]]:
    """An observatory pipeline's product (LCO's RLEVEL > 0): its L1STAT* steps, else a flat."""
    try:
        level = int(header.get("RLEVEL", 0) or 0)
    except (TypeError, ValueError):
        level = 0
    if level <= 0:
        return set(), []
    lco = {step for key, step in _LCO_STATUS if key in header and _present(header, key)}
    return lco or {"flat"}, [f"RLEVEL = {level} (observatory pipeline product)"]


def _history_steps(header, found) -> tuple[set[str], list[str]]:
    """HISTORY lines naming a step not `found` otherwise; the first line per step is evidence."""
    history = [str(card) for card in header.get("HISTORY", [])] if "HISTORY" in header else []
    steps: set[str] = set()
    evidence: list[str] = []
    for line in history:
        for pattern, step in _HISTORY:
            if step not in found and step not in steps and pattern.search(line):
                steps.add(step)
                evidence.append(f"HISTORY {line.strip()[:60]!r}")
    return steps, evidence


def pedestal(header, configured: float | None = None) -> tuple[float, str | None]:
    """(ADU to subtract from every pixel, where that came from); (0.0, None) without one."""
    if configured is not None:
        return abs(float(configured)), "configured for the site"
    if "PEDESTAL" not in header:
        return 0.0, None
    try:
        value = float(header["PEDESTAL"])
    except (TypeError, ValueError):
        return 0.0, None
    return (abs(value), f"PEDESTAL = {value:g}") if value else (0.0, None)


def bad_pixel_hdu(path, shape: tuple[int, int]) -> int | None:
    """Index of the file's bad-pixel-mask HDU (named BPM, MASK, BADPIX or DQ, the image's
    shape), or None. Reads headers only."""
    with fits.open(path, memmap=False) as hdul:
        for index, hdu in enumerate(hdul):
            name = str(hdu.name or "").strip().upper()
            if name not in _BAD_PIXEL_NAMES or not isinstance(
                    hdu, (fits.ImageHDU, fits.CompImageHDU)):
                continue
            if tuple(int(v) for v in hdu.shape) == tuple(shape):
                return index
    return None
