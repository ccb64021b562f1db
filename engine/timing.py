"""Exact times for photometry: mid-exposure UTC to BJD_TDB, and airmass, offline.

The engine never downloads at run time. The chain is ERFA's (pyerfa, astropy's own engine),
called directly: leap seconds from ERFA's table (erfa.dat), the solar-system ephemeris ERFA's
built-in one (epv00, ~km accuracy, ~10 microseconds of light time), and the Earth's rotation
(UT1-UTC, polar motion) from the IERS Bulletin A table astropy ships (astropy-iers-data),
read straight into arrays: astropy's own reader takes ~1.5 s to parse it, longer than the rest
of a night's ingest. Outside the table's range the nearest value is kept, which moves BJD_TDB
by far less than a millisecond (UT1 only enters through the observatory's position on the
rotating Earth) and the airmass by ~1e-3 at the horizon. The results equal astropy's full chain
(`Time.light_travel_time`, the AltAz frame) to microseconds and 1e-5 in airmass
(tests/test_timing.py holds them together).
"""

from __future__ import annotations

import functools

import erfa
import numpy as np

#: Speed of light (m/s) and the astronomical unit (m), as ERFA defines them.
SPEED_OF_LIGHT = erfa.CMPS
ASTRONOMICAL_UNIT = erfa.DAU
ARCSEC = np.pi / (180.0 * 3600.0)


def site_location(longitude_deg: float, latitude_deg: float, height_m: float):
    """Observatory location (astropy EarthLocation) from east longitude, latitude (degrees)
    and height (metres)."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    return EarthLocation.from_geodetic(lon=longitude_deg * u.deg, lat=latitude_deg * u.deg,
                                       height=height_m * u.m)


@functools.lru_cache(maxsize=1)
def _earth_orientation_table() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(MJD, UT1-UTC s, x_p, y_p arcsec) from the bundled IERS finals2000A.all: fixed-width
    lines (format in its ReadMe.finals2000A), Bulletin A values, rows without UT1-UTC (the
    blank future) left out."""
    # The file itself, not astropy.utils.iers, whose import alone takes ~1 s.
    from astropy_iers_data import IERS_A_FILE

    with open(IERS_A_FILE, "rb") as handle:
        lines = handle.read().splitlines()
    width = 187
    text = np.frombuffer(b"".join(line.ljust(width)[:width] for line in lines),
                         dtype=f"S{width}")
    chars = text.view("S1").reshape(len(lines), width)

    def column(first: int, last: int) -> np.ndarray:  # 1-based, inclusive, as in the ReadMe
        field = np.ascontiguousarray(chars[:, first - 1:last]).view(f"S{last - first + 1}")
        return field.ravel()

    known = np.char.strip(column(59, 68)) != b""
    numbers = [column(*span)[known].astype(np.float64)
               for span in ((8, 15), (59, 68), (19, 27), (38, 46))]
    return tuple(numbers)


def _earth_orientation(mjd_utc: np.ndarray):
    """UT1-UTC (s) and polar motion x_p, y_p (radians) at UTC MJDs, interpolated linearly.
    UT1-UTC jumps by a second at each leap second: UT1-TAI, which does not, is interpolated."""
    mjd, dut1, xp, yp = _earth_orientation_table()
    ut1_minus_tai = dut1 - _tai_minus_utc(mjd)
    return (np.interp(mjd_utc, mjd, ut1_minus_tai) + _tai_minus_utc(mjd_utc),
            np.interp(mjd_utc, mjd, xp) * ARCSEC, np.interp(mjd_utc, mjd, yp) * ARCSEC)


def _tai_minus_utc(mjd_utc: np.ndarray) -> np.ndarray:
    """TAI-UTC (s; leap seconds) at UTC MJDs, from ERFA's table."""
    year, month, day, fraction = erfa.jd2cal(erfa.DJM0, mjd_utc)
    return erfa.dat(year, month, day, fraction)


def _split_utc(jd_utc) -> tuple[np.ndarray, np.ndarray]:
    """UTC Julian dates as ERFA's two parts: the preceding midnight and the fraction (exact)."""
    jd = np.asarray(jd_utc, dtype=np.float64)
    midnight = np.floor(jd - 0.5) + 0.5
    return midnight, jd - midnight


def _direction(ra_deg: float, dec_deg: float) -> np.ndarray:
    return erfa.s2c(np.radians(ra_deg), np.radians(dec_deg))


def utc_to_bjd_tdb(jd_utc, ra_deg: float, dec_deg: float, location) -> np.ndarray:
    """Barycentric Julian Date (TDB) of UTC Julian dates, for a target seen from `location`
    (an astropy EarthLocation; the geocentre is allowed).

    `jd_utc` are the moments to convert (use mid-exposure times); the result has its shape.
    BJD_TDB = TDB + (observatory's barycentric position . target direction) / c: the Roemer
    delay, as astropy's `Time.light_travel_time` computes it.
    """
    day, fraction = _bjd_tdb_parts(jd_utc, ra_deg, dec_deg, location)
    return day + fraction


def _bjd_tdb_parts(jd_utc, ra_deg, dec_deg, location) -> tuple[np.ndarray, np.ndarray]:
    """BJD_TDB as two parts (day, fraction): their sum as one float64 rounds to ~40 us."""
    utc1, utc2 = _split_utc(jd_utc)
    tt1, tt2 = erfa.taitt(*erfa.utctai(utc1, utc2))
    itrs = np.array([location.x.to_value("m"), location.y.to_value("m"),
                     location.z.to_value("m")], dtype=np.float64)
    # TDB - TT with the observatory's topocentric term; UTC stands for UT1 there (as astropy).
    delta_tdb = erfa.dtdb(tt1, tt2, utc2, np.arctan2(itrs[1], itrs[0]),
                          np.hypot(itrs[0], itrs[1]) / 1e3, itrs[2] / 1e3)
    tdb2 = tt2 + delta_tdb / 86400.0
    earth = erfa.epv00(tt1, tdb2)[1]["p"] * ASTRONOMICAL_UNIT  # barycentric, metres
    dut1, xp, yp = _earth_orientation(utc1 - erfa.DJM0 + utc2)
    ut1 = erfa.utcut1(utc1, utc2, dut1)
    celestial_to_terrestrial = erfa.c2t06a(tt1, tt2, *ut1, xp, yp)
    observatory = earth + np.einsum("...ji,j->...i", celestial_to_terrestrial, itrs)
    light_time = observatory @ _direction(ra_deg, dec_deg) / SPEED_OF_LIGHT
    return tt1, tdb2 + light_time / 86400.0


def airmass(jd_utc, ra_deg: float, dec_deg: float, location) -> np.ndarray:
    """Airmass of a target at UTC Julian dates (Pickering 2002; NaN below the horizon).

    The altitude is the target's apparent one, without refraction (as astropy's AltAz frame
    at zero pressure): ERFA's ICRS -> observed chain (atco13). Pickering's formula holds to the
    horizon, unlike sec(z), which overestimates beyond ~70 deg.
    """
    utc1, utc2 = _split_utc(jd_utc)
    dut1, xp, yp = _earth_orientation(utc1 - erfa.DJM0 + utc2)
    longitude, latitude, height = location.to_geodetic()
    observed = erfa.atco13(np.radians(ra_deg), np.radians(dec_deg), 0.0, 0.0, 0.0, 0.0,
                           utc1, utc2, dut1, longitude.to_value("rad"),
                           latitude.to_value("rad"), height.to_value("m"), xp, yp,
                           0.0, 0.0, 0.0, 1.0)
    altitude = 90.0 - np.degrees(observed[1])
    result = 1.0 / np.sin(np.radians(altitude + 244.0 / (165.0 + 47.0 * altitude ** 1.1)))
    return np.where(altitude > 0.0, result, np.nan)
