"""engine.timing (ERFA called directly, the IERS table read into arrays) against astropy's full
chain, kept here as the slow reference: Time.light_travel_time with a location, and the AltAz
frame, over random times 1990-2040, sites and targets."""

import time
import warnings

import erfa
import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import AltAz, EarthLocation, SkyCoord
from astropy.time import Time
from astropy.utils import iers

from engine import timing

MICROSECOND_DAYS = 1e-6 / 86400.0


def reference_bjd_tdb(jd_utc, ra_deg, dec_deg, location):
    times = Time(jd_utc, format="jd", scale="utc", location=location)
    target = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    light_time = times.light_travel_time(target, kind="barycentric", ephemeris="builtin")
    bjd = times.tdb + light_time
    return bjd.jd1, bjd.jd2


def microseconds_apart(parts, other_parts):
    """Difference of two times given as (day, fraction) pairs, in microseconds: exact where
    one float64 JD would round to ~40 us."""
    return ((parts[0] - other_parts[0]) + (parts[1] - other_parts[1])) / MICROSECOND_DAYS


def reference_altitude(jd_utc, ra_deg, dec_deg, location):
    times = Time(jd_utc, format="jd", scale="utc")
    target = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    return target.transform_to(AltAz(obstime=times, location=location)).alt.deg


def pickering(altitude):
    return 1.0 / np.sin(np.radians(altitude + 244.0 / (165.0 + 47.0 * altitude ** 1.1)))


def random_cases(seed, n_cases=12, n_times=40):
    """(jd_utc, ra, dec, site) cases: times spread over 1990-2040, sites anywhere on land
    heights, targets over the whole sky."""
    rng = np.random.default_rng(seed)
    start, end = Time("1990-01-01").jd, Time("2040-12-31").jd
    for _ in range(n_cases):
        jd = np.sort(rng.uniform(start, end, n_times))
        site = timing.site_location(rng.uniform(-180, 180), np.degrees(np.arcsin(
            rng.uniform(-1, 1))), rng.uniform(0, 4500))
        ra, dec = rng.uniform(0, 360), np.degrees(np.arcsin(rng.uniform(-1, 1)))
        yield jd, ra, dec, site


@pytest.fixture(autouse=True)
def offline_astropy():
    with iers.conf.set_temp("auto_download", False), iers.conf.set_temp("auto_max_age", None), \
            iers.conf.set_temp("iers_degraded_accuracy", "ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'dubious year' past the leap-second table
        yield


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_bjd_tdb_equals_astropy_full_chain(seed):
    for jd, ra, dec, site in random_cases(seed):
        mine = timing._bjd_tdb_parts(jd, ra, dec, site)
        reference = reference_bjd_tdb(jd, ra, dec, site)
        np.testing.assert_allclose(microseconds_apart(mine, reference), 0.0, atol=5.0)
        assert timing.utc_to_bjd_tdb(jd, ra, dec, site).shape == jd.shape


def test_bjd_tdb_at_the_geocentre_and_for_scalars():
    geocentre = EarthLocation.from_geocentric(0.0, 0.0, 0.0, unit=u.m)
    jd = Time("2024-05-02T05:13:44").jd
    assert np.shape(timing.utc_to_bjd_tdb(jd, 94.5933, 24.7867, geocentre)) == ()
    mine = timing._bjd_tdb_parts(jd, 94.5933, 24.7867, geocentre)
    assert abs(microseconds_apart(mine, reference_bjd_tdb(jd, 94.5933, 24.7867, geocentre))) < 5


def test_bjd_tdb_minus_utc_is_the_barycentric_delay():
    """An analytic bound, independent of astropy: BJD_TDB - JD_UTC is TT-UTC (leap seconds +
    32.184 s, from ERFA's table) plus the light time across the Earth's distance from the
    barycentre (at most 1.017 AU from the Sun, which is up to 0.01 AU from the barycentre)."""
    jd = Time("2024-05-02T05:13:44").jd + np.linspace(0, 365, 200)
    site = timing.site_location(-17.88, 28.76, 2396.0)
    difference = (timing.utc_to_bjd_tdb(jd, 94.5933, 24.7867, site) - jd) * 86400.0
    tt_minus_utc = 37.0 + 32.184
    assert np.all(np.abs(difference - tt_minus_utc) < 1.03 * erfa.DAU / erfa.CMPS)
    # The target lies 1.3 deg off the ecliptic: over a year the delay swings by ~2 AU / c.
    swing = (difference.max() - difference.min()) * erfa.CMPS / erfa.DAU
    assert 1.94 < swing < 2.06


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_airmass_equals_astropy_full_chain(seed):
    for jd, ra, dec, site in random_cases(seed, n_times=80):
        mine = timing.airmass(jd, ra, dec, site)
        altitude = reference_altitude(jd, ra, dec, site)
        high = altitude > 10.0
        np.testing.assert_allclose(mine[high], pickering(altitude[high]), rtol=0, atol=1e-4)
        assert np.all(np.isnan(mine[altitude < -0.01]))


def test_airmass_at_the_zenith_is_one():
    site = timing.site_location(34.76, 30.60, 875.0)
    jd = Time("2024-03-20T12:00:00").jd + np.linspace(0, 1, 2000)
    dec = 30.60
    values = timing.airmass(jd, 120.0, dec, site)
    assert np.nanmin(values) == pytest.approx(1.0, abs=2e-4)


def test_no_earth_rotation_table_parse():
    """The point of the module: converting a night does not make astropy parse its IERS
    tables (~1.5 s), and takes milliseconds."""
    iers.IERS_Auto.iers_table = iers.IERS_A.iers_table = iers.IERS_B.iers_table = None
    jd = 2460000.3 + np.arange(150) * 60 / 86400
    site = timing.site_location(34.76, 30.60, 875.0)
    timing.airmass(jd, 94.59, 24.78, site)  # reads the table into arrays once
    start = time.perf_counter()
    timing.utc_to_bjd_tdb(jd, 94.59, 24.78, site)
    timing.airmass(jd, 94.59, 24.78, site)
    elapsed = time.perf_counter() - start
    assert iers.IERS_Auto.iers_table is None and iers.IERS_A.iers_table is None
    assert iers.IERS_B.iers_table is None
    assert elapsed < 0.2
