"""The plate scale and the sky solution a FITS header carries: its celestial WCS, checked before it
is trusted (failed astrometric fits, singular or zero CD matrices, impossible pixel scales), and
the pixel scale from scale keywords, the WCS, or pixel size and focal length.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

import numpy as np

from engine.io.header_values import first_header_number, header_comment, header_number

if TYPE_CHECKING:
    from engine.io.headers import HeaderRecord

__all__ = ["pixel_scale", "read_wcs"]

_PIXEL_SCALE_KEYS = ("PIXSCALE", "SECPIX", "SCALE", "IM_SCALE", "PIXSCAL1")
_PIXEL_SIZE_KEYS = ("XPIXSZ", "PIXSIZE1", "PIXSIZE")
_WCS_ERROR_KEYS = ("WCSERR", "WCS_ERR")
_PIXEL_SCALE_LIMITS = (0.01, 100.0)  # arcsec/px: anything else is a broken WCS or keyword


def _wcs_header_problem(header) -> str | None:
    """Why a header's WCS cannot be trusted before reading it (astropy would refuse a singular
    CD matrix with a cryptic error, or silently replace a zero one by the unit matrix)."""
    for key in _WCS_ERROR_KEYS:
        value = header_number(header, key)
        if value is not None and value != 0:
            return f"{key} = {value:g} (the observatory's astrometric fit failed)"
    cd = [header_number(header, f"CD{i}_{j}") for i in (1, 2) for j in (1, 2)]
    if any(v is not None for v in cd):
        a, b, c, d = (v or 0.0 for v in cd)
        if a * d - b * c == 0.0:
            return "its CD matrix is zero or singular"
    return None


def _wcs_scale_problem(wcs) -> str | None:
    """Why a read WCS cannot be true: a singular PC x CDELT matrix, an impossible pixel scale."""
    determinant = float(np.linalg.det(wcs.celestial.pixel_scale_matrix))
    if not math.isfinite(determinant) or determinant == 0.0:
        return "its PC x CDELT matrix is zero or singular"
    scale = math.sqrt(abs(determinant)) * 3600.0
    low, high = _PIXEL_SCALE_LIMITS
    if not low <= scale <= high:
        return f"its pixel scale {scale:.4g} arcsec/px is outside {low:g}-{high:g}"
    return None


def read_wcs(header, shape, record: HeaderRecord) -> None:
    """The header's celestial WCS into record.wcs (and the pixel scale, and the pointing when
    no keyword gave one), unless it cannot be true; notes say why one is ignored."""
    ctype1, ctype2 = str(header.get("CTYPE1", "")), str(header.get("CTYPE2", ""))
    if not (ctype1.upper().startswith("RA") and ctype2.upper().startswith("DEC")):
        return
    problem = _wcs_header_problem(header)
    if problem is not None:
        record.notes.append(f"WCS not trusted: {problem}; ignored")
        return
    try:
        from astropy.wcs import WCS, FITSFixedWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            wcs = WCS(header, naxis=2, relax=True)
            if not wcs.has_celestial:
                return
            problem = _wcs_scale_problem(wcs)
            if problem is not None:
                record.notes.append(f"WCS not trusted: {problem}; ignored")
                return
            record.wcs = wcs.to_header_string(relax=True)
            record.sources["wcs"] = f"{ctype1.strip()}/{ctype2.strip()}"
            scale = math.sqrt(abs(np.linalg.det(wcs.celestial.pixel_scale_matrix))) * 3600.0
            record.pixel_scale_arcsec = scale
            record.sources["pixel_scale"] = "CD matrix" if wcs.wcs.has_cd() else "CDELT"
            if record.ra_deg is None:  # no pointing keywords: the WCS's centre pixel
                rows, columns = shape
                ra, dec = wcs.celestial.all_pix2world([[(columns - 1) / 2, (rows - 1) / 2]], 0)[0]
                if math.isfinite(ra) and math.isfinite(dec) and -90 <= dec <= 90:
                    record.ra_deg, record.dec_deg = float(ra) % 360.0, float(dec)
                    record.sources["pointing"] = "WCS centre"
    except Exception as exc:  # astropy.wcs raises a zoo of types on broken WCS
        record.notes.append(f"WCS present but not usable ({exc}); ignored")


def pixel_scale(header, record: HeaderRecord) -> None:
    """Arcsec per stored pixel from scale keywords, else the WCS (already read), else the
    pixel size and focal length."""
    low, high = _PIXEL_SCALE_LIMITS
    value, key = first_header_number(header, _PIXEL_SCALE_KEYS, record)
    if value is not None and value != 0:
        if low <= abs(value) <= high:
            record.pixel_scale_arcsec, record.sources["pixel_scale"] = abs(value), key
            return
        record.notes.append(f"{key} = {value:g} arcsec/px is outside {low:g}-{high:g}; ignored")
    if record.pixel_scale_arcsec is not None:
        return
    pixel_um, key = first_header_number(header, _PIXEL_SIZE_KEYS, record)
    focal_mm = header_number(header, "FOCALLEN", record)
    if pixel_um is None or focal_mm is None or pixel_um <= 0 or focal_mm <= 0:
        return
    source = f"{key}/FOCALLEN"
    comment = header_comment(header, key).lower()
    if "unbinned" in comment or "before binning" in comment:
        pixel_um *= record.binning[0]
        source += " x binning"
    scale = 206.265 * pixel_um / focal_mm
    if low <= scale <= high:
        record.pixel_scale_arcsec, record.sources["pixel_scale"] = scale, source
    else:
        record.notes.append(f"{source} gives {scale:.4g} arcsec/px, outside {low:g}-{high:g}; "
                            "ignored")
