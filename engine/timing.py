"""Exact times for photometry: mid-exposure UTC to BJD_TDB, and airmass, offline.

The engine never downloads at run time: astropy is told not to fetch IERS tables and to accept
the tables it ships (outside their range UT1-UTC is extrapolated, which moves BJD_TDB by far
less than a millisecond: UT1 only enters through the observatory's position on the rotating
Earth). The solar-system ephemeris is astropy's built-in one (ERFA's epv00, ~km accuracy,
~10 microseconds of light time).
"""

from __future__ import annotations

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.time import Time
from astropy.utils import iers

iers.conf.auto_download = False
iers.conf.iers_degraded_accuracy = "warn"


def site_location(longitude_deg: float, latitude_deg: float, height_m: float) -> EarthLocation:
    """Observatory location from east longitude, latitude (degrees) and height (metres)."""
    return EarthLocation.from_geodetic(lon=longitude_deg * u.deg, lat=latitude_deg * u.deg,
                                       height=height_m * u.m)


def utc_to_bjd_tdb(jd_utc, ra_deg: float, dec_deg: float, location: EarthLocation) -> np.ndarray:
    """Barycentric Julian Date (TDB) of UTC Julian dates, for a target seen from `location`.

    `jd_utc` are the moments to convert (use mid-exposure times); the result has its shape.
    """
    times = Time(np.asarray(jd_utc, dtype=np.float64), format="jd", scale="utc", location=location)
    target = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    light_time = times.light_travel_time(target, kind="barycentric", ephemeris="builtin")
    return (times.tdb + light_time).jd


def airmass(jd_utc, ra_deg: float, dec_deg: float, location: EarthLocation) -> np.ndarray:
    """Airmass of a target at UTC Julian dates (Pickering 2002; NaN below the horizon).

    Pickering's formula holds to the horizon, unlike sec(z), which overestimates beyond ~70 deg.
    """
    times = Time(np.asarray(jd_utc, dtype=np.float64), format="jd", scale="utc")
    target = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    altitude = target.transform_to(AltAz(obstime=times, location=location)).alt.deg
    altitude = np.asarray(altitude, dtype=np.float64)
    result = 1.0 / np.sin(np.radians(altitude + 244.0 / (165.0 + 47.0 * altitude ** 1.1)))
    return np.where(altitude > 0.0, result, np.nan)
