"""Times of ingested frames: mid-exposure UTC of each frame under its run's time convention,
the night it belongs to, and, for a run's lights, the target, BJD_TDB and airmass.

The header's time stamps are read in engine.io.timestamps and judged in engine.io.mid_exposure;
this module puts what they find into the frames table and computes BJD_TDB (engine.timing,
offline)."""

from __future__ import annotations

import collections
import datetime as _dt
import logging
import math

import numpy as np

from engine.ingest.table import note
from engine.io.mid_exposure import MidExposure, mid_from_stamps, run_convention

log = logging.getLogger(__name__)

_GEOCENTRE_NOTE = "site unknown: geocentric BJD_TDB (up to 0.021 s off)"


def night(jd_utc: float, longitude_deg: float | None) -> str:
    """Local date of the evening a night began (local mean solar time minus 12 h)."""
    mjd = jd_utc - 2400000.5 + (longitude_deg or 0.0) / 360.0 - 0.5
    return (_dt.date(1858, 11, 17) + _dt.timedelta(days=math.floor(mjd))).isoformat()


def _timestamp(jd_utc: tuple[float, float]) -> _dt.datetime:
    days = (jd_utc[0] - 2440587.5) + jd_utc[1]
    micro = round(days * 86400e6)
    return _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc) + _dt.timedelta(microseconds=micro)


def frame_time(scanned, convention) -> MidExposure:
    """The row's time columns from its stamps and the run's convention (None: the frame's own
    stamps alone); returns the MidExposure. Raises HeaderError when no stamp is usable."""
    row, site = scanned.row, scanned.site
    mid = mid_from_stamps(scanned.stamps, scanned.time_problems, row["exptime"],
                          clock_offset_s=site.clock_offset_s if site else 0.0,
                          clock_uncertainty_s=site.clock_uncertainty_s if site else 0.0,
                          time_reference=site.time_reference if site else None,
                          convention=convention, path=row["path"])
    row["jd_utc_mid"] = mid.jd_utc
    row["time_utc_mid"] = _timestamp(mid.jd)
    row["time_keyword"], row["time_reference"] = mid.keyword, mid.reference
    row["time_basis"], row["time_precision_s"] = mid.basis, mid.precision_s
    row["clock_offset_s"], row["time_err_s"] = mid.clock_offset_s, mid.time_err_s
    row["time_source"] = mid.provenance
    if site is not None and mid.clock_offset_s:
        row["time_source"] += f" (site {site.name!r})"
    return mid


def run_times(members: list) -> None:
    """One time convention for a run: what each keyword marks, read from how the run's
    keywords agree (engine.io.mid_exposure.run_convention), and one keyword for every frame."""
    site = members[0].site
    convention = run_convention([(m.stamps, m.row["exptime"]) for m in members],
                                time_reference=site.time_reference if site else None)
    for member in members:
        mid = frame_time(member, convention)
        for text in mid.notes:
            note(member.row, text)
        if convention.evidence:
            member.row["time_source"] += "; run: " + "; ".join(convention.evidence)


def light_times(run_id: str, lights: list[dict], target: tuple[float, float] | None,
                source: str | None) -> None:
    """The target of a run's light frames, and their BJD_TDB and airmass for it."""
    ra, dec, source = _run_target(run_id, lights, target, source)
    for row in lights:
        row["target_ra_deg"], row["target_dec_deg"] = ra, dec
        row["target_source"] = source
    if ra is not None:
        _barycentric_times(lights, ra, dec)
        return
    log.warning("run %s: no target coordinates and no pointing in the headers: "
                "BJD_TDB not computed (give --target-ra/--target-dec)", run_id)
    for row in lights:
        row["time_source"] += "; BJD_TDB not computed: no target coordinates"


def _run_target(run_id: str, lights: list[dict], target: tuple[float, float] | None,
                source: str | None) -> tuple[float | None, float | None, str | None]:
    if target is not None:
        return target[0], target[1], source
    pointed = [(r["ra_deg"], r["dec_deg"]) for r in lights if r["ra_deg"] is not None]
    if not pointed:
        return None, None, None
    ra = np.radians([p[0] for p in pointed])
    dec = np.radians([p[1] for p in pointed])
    # Median of unit vectors' components: robust, and right across RA = 0.
    x, y, z = (np.median(np.cos(dec) * np.cos(ra)), np.median(np.cos(dec) * np.sin(ra)),
               np.median(np.sin(dec)))
    ra_deg = float(np.degrees(np.arctan2(y, x)) % 360.0)
    dec_deg = float(np.degrees(np.arctan2(z, math.hypot(x, y))))
    keys = sorted({r["pointing_source"] for r in lights if r["pointing_source"]})
    log.warning("run %s: no target coordinates given; using the median header pointing (%s) "
                "RA %.5f, Dec %+.5f deg. Half a degree of pointing error moves BJD_TDB by ~4 s: "
                "give --target-ra/--target-dec", run_id, ", ".join(keys), ra_deg, dec_deg)
    return ra_deg, dec_deg, f"header pointing ({', '.join(keys)}), run median"


def _barycentric_times(lights: list[dict], ra: float, dec: float) -> None:
    """BJD_TDB and airmass of each light, one site at a time (geocentric without a site)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    from engine import timing

    by_site = collections.defaultdict(list)
    for row in lights:
        key = (row["site_longitude_deg"], row["site_latitude_deg"], row["site_height_m"])
        by_site[key if key[0] is not None else None].append(row)
    for key, rows in by_site.items():
        jd = np.array([r["jd_utc_mid"] for r in rows], dtype=np.float64)
        if key is None:
            location = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)
        else:
            location = timing.site_location(key[0], key[1], key[2] or 0.0)
        bjd = timing.utc_to_bjd_tdb(jd, ra, dec, location)
        airmass = None
        if key is not None:
            with np.errstate(invalid="ignore"):
                airmass = timing.airmass(jd, ra, dec, location)
        for k, row in enumerate(rows):
            row["time_bjd_tdb"] = float(bjd[k])
            row["time_source"] += (f"; BJD_TDB for RA {ra:.5f}, Dec {dec:+.5f} deg "
                                   f"({row['target_source']})")
            if key is None:
                row["time_source"] += f"; {_GEOCENTRE_NOTE}"
            if airmass is not None:
                value = float(airmass[k])
                row["airmass"] = value if math.isfinite(value) else None
                row["airmass_source"] = ("computed at mid-exposure" if math.isfinite(value)
                                         else "target below the horizon")
