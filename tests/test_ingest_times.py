"""Exposure times: every header convention to mid-exposure UTC, then BJD_TDB, checked
independently (ERFA's Earth ephemeris by hand, not engine.timing)."""

import logging
import math
import zlib

import erfa
import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time

from engine.errors import HeaderError
from engine.ingest import _night, ingest
from engine.io.mid_exposure import exposure_mid
from engine.io.timestamps import header_timestamps
from engine.settings.ingest import IngestConfig, Site

DAY = 86400.0


def card_header(*cards):
    h = fits.Header()
    for key, value, *comment in cards:
        h[key] = (value, comment[0]) if comment else value
    return h


def seconds_between(mid, iso, scale="utc"):
    reference = Time(iso, format="isot", scale=scale).utc
    return ((mid.jd[0] - reference.jd1) + (mid.jd[1] - reference.jd2)) * DAY


# --------------------------------------------------------------------------- stamps


def test_date_obs_is_the_start_by_assumption():
    mid = exposure_mid(card_header(("DATE-OBS", "2024-05-02T05:13:14.123")), 60.0)
    assert seconds_between(mid, "2024-05-02T05:13:44.123") == pytest.approx(0, abs=1e-5)
    assert (mid.keyword, mid.reference, mid.basis) == ("DATE-OBS", "start", "assumed")
    assert mid.precision_s == pytest.approx(0.001)


@pytest.mark.parametrize("time_key", ["TIME-OBS", "UT", "UTSTART", "UT-START"])
def test_date_only_plus_time_of_day(time_key):
    h = card_header(("DATE-OBS", "2013-07-13"), (time_key, "00:57:33"))
    mid = exposure_mid(h, 150.04)
    assert seconds_between(mid, "2013-07-13T00:58:48.020") == pytest.approx(0, abs=1e-5)
    assert mid.keyword == f"DATE-OBS+{time_key}" and mid.precision_s == 1.0


def test_old_date_form():
    h = card_header(("DATE-OBS", "13/07/98"), ("UT", "01:02:03.5"))
    mid = exposure_mid(h, 10.0)
    assert seconds_between(mid, "1998-07-13T01:02:08.5") == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize("stamp, utc", [
    ("2024-05-01T22:13:14.5-0700", "2024-05-02T05:13:14.5"),
    ("2024-05-01T22:13:14.5-07:00", "2024-05-02T05:13:14.5"),
    ("2024-05-02T07:13:14.5+02:00", "2024-05-02T05:13:14.5"),
    ("2024-05-02T05:13:14.5Z", "2024-05-02T05:13:14.5"),
])
def test_offset_suffixes_are_local_time(stamp, utc):
    mid = exposure_mid(card_header(("DATE-OBS", stamp)), 0.0)
    assert seconds_between(mid, utc) == pytest.approx(0, abs=1e-5)
    assert mid.local == (not stamp.endswith("Z"))


def test_local_date_obs_without_offset_is_caught_by_jd():
    utc_start = Time("2024-05-02T05:13:14", scale="utc")
    h = card_header(("DATE-OBS", "2024-05-01T22:13:14"), ("JD", round(utc_start.jd, 8)))
    mid = exposure_mid(h, 60.0)
    assert mid.keyword == "JD"
    assert seconds_between(mid, "2024-05-02T05:13:44") == pytest.approx(0, abs=1e-3)
    assert any("local-time" in note and "-7.00 h" in note for note in mid.notes)


def test_most_precise_stamp_wins_and_disagreements_are_noted():
    start = Time("2024-05-02T05:13:14.374", scale="utc")
    h = card_header(("DATE-OBS", "2024-05-02T05:13:14"), ("JD", f"{start.jd:.9f}"))
    h["JD"] = float(f"{start.jd:.9f}")
    mid = exposure_mid(h, 10.0)
    assert mid.keyword == "JD"
    assert any("DATE-OBS is written to 1 s" in n for n in mid.notes)
    # A low-precision MJD-OBS (a whole day) never beats DATE-OBS + UT, and is not "disagreeing".
    h = card_header(("DATE-OBS", "2013-07-13"), ("UT", "00:57:33"), ("MJD-OBS", 56486.0))
    mid = exposure_mid(h, 150.04)
    assert mid.keyword == "DATE-OBS+UT" and not any("disagree" in n for n in mid.notes)
    # Two precise stamps 3 s apart are reported.
    h = card_header(("DATE-OBS", "2024-05-02T05:13:14.000"),
                    ("MJD-OBS", round(start.mjd + 3 / DAY, 9)))
    mid = exposure_mid(h, 10.0)
    assert any("disagree" in n for n in mid.notes)


def test_precision_comes_from_the_written_digits():
    stamps, _ = header_timestamps(card_header(("JD", 2460432.7175), ("MJD-OBS", 56486.0)))
    precision = {s.keyword: s.precision_s for s in stamps}
    assert precision["JD"] == pytest.approx(8.64)
    assert precision["MJD-OBS"] == pytest.approx(86400.0)  # a date written as a number
    stamps, _ = header_timestamps(card_header(("MJD-OBS", 56486.5)))
    assert stamps[0].precision_s == pytest.approx(8640.0)


def test_stated_references():
    avg = exposure_mid(card_header(("DATE-AVG", "2024-05-02T05:13:44")), 60.0)
    assert (avg.reference, avg.basis) == ("mid", "stated")
    assert seconds_between(avg, "2024-05-02T05:13:44") == pytest.approx(0, abs=1e-5)
    end = exposure_mid(card_header(("DATE-END", "2024-05-02T05:14:14")), 60.0)
    assert seconds_between(end, "2024-05-02T05:13:44") == pytest.approx(0, abs=1e-5)
    by_comment = exposure_mid(card_header(("DATE-OBS", "2024-05-02T05:13:44", "mid-exposure")),
                              60.0)
    assert (by_comment.reference, by_comment.basis) == ("mid", "stated")
    mid_jd = exposure_mid(card_header(("JD-MID", 2460432.5)), 60.0)
    assert mid_jd.reference == "mid"


def test_configured_reference_applies_to_unstated_stamps_only():
    mid = exposure_mid(card_header(("DATE-OBS", "2024-05-02T05:13:44")), 60.0, time_reference="mid")
    assert (mid.reference, mid.basis) == ("mid", "configured")
    assert seconds_between(mid, "2024-05-02T05:13:44") == pytest.approx(0, abs=1e-5)
    mid = exposure_mid(card_header(("DATE-END", "2024-05-02T05:14:14")), 60.0,
                       time_reference="start")
    assert mid.reference == "end"


def test_time_scales():
    tt = exposure_mid(card_header(("DATE-OBS", "2024-05-02T05:13:14"), ("TIMESYS", "TT")), 0.0)
    expected = Time("2024-05-02T05:13:14", scale="tt").utc.isot
    assert seconds_between(tt, expected) == pytest.approx(0, abs=1e-5)
    assert seconds_between(tt, "2024-05-02T05:13:14") == pytest.approx(-69.184, abs=1e-5)
    gps = exposure_mid(card_header(("DATE-OBS", "2024-05-02T05:13:14"), ("TIMESYS", "GPS")), 0.0)
    assert seconds_between(gps, "2024-05-02T05:13:14") == pytest.approx(-18.0, abs=1e-5)


def test_local_timesys_needs_the_site_offset():
    h = card_header(("DATE-OBS", "2024-05-01T22:13:14"), ("TIMESYS", "LOCAL"))
    with pytest.raises(HeaderError, match="UTC offset"):
        exposure_mid(h, 0.0)
    mid = exposure_mid(h, 0.0, utc_offset_hours=-7.0)
    assert seconds_between(mid, "2024-05-02T05:13:14") == pytest.approx(0, abs=1e-5)
    nina = card_header(("DATE-LOC", "2024-05-01T22:13:14.25"))
    mid = exposure_mid(nina, 0.0, utc_offset_hours=-7.0)
    assert mid.keyword == "DATE-LOC" and mid.local
    assert seconds_between(mid, "2024-05-02T05:13:14.25") == pytest.approx(0, abs=1e-5)


def test_clock_offset_is_subtracted():
    mid = exposure_mid(card_header(("DATE-OBS", "2024-05-02T05:13:14")), 0.0, clock_offset_s=2.5)
    assert seconds_between(mid, "2024-05-02T05:13:11.5") == pytest.approx(0, abs=1e-5)
    assert "clock offset +2.500 s" in mid.provenance


@pytest.mark.parametrize("cards", [
    [],
    [("DATE-OBS", "yesterday")],
    [("DATE-OBS", "2024-05-02")],  # a date without a time of day
    [("DATE-OBS", "2024-13-02T00:00:00")],
    [("JD", "soon")],
    [("JD", 12.5)],
])
def test_missing_or_unparseable_times_raise(cards):
    with pytest.raises(HeaderError) as info:
        exposure_mid(card_header(*cards), 1.0, path="frame.fits")
    assert "frame.fits" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_leap_second_stamp():
    mid = exposure_mid(card_header(("DATE-OBS", "2016-12-31T23:59:60.5")), 1.0)
    assert seconds_between(mid, "2017-01-01T00:00:00.0") == pytest.approx(0.0, abs=1e-5)


def test_night_is_the_local_evening_date():
    jd = Time("2024-05-02T05:00:00", scale="utc").jd  # 22:00 the evening before in Arizona
    assert _night(jd, -111.0) == "2024-05-01"
    assert _night(jd, 0.0) == "2024-05-01"
    late = Time("2024-05-02T14:00:00", scale="utc").jd  # 00:00 the next night in Japan
    assert _night(late, 135.0) == "2024-05-02"


# --------------------------------------------------------------------------- BJD_TDB end to end


def independent_bjd(jd_utc: float, ra_deg: float, dec_deg: float, lon: float, lat: float,
                    height: float) -> float:
    """BJD_TDB by hand: ERFA's Earth barycentre + the site's GCRS position, projected on the
    target direction, over c; TDB from TT without the topocentric term (< 2 microseconds)."""
    t = Time(jd_utc, format="jd", scale="utc")
    tdb = t.tdb
    pv_helio, pv_bary = erfa.epv00(tdb.jd1, tdb.jd2)
    earth = pv_bary["p"]  # au
    import astropy.units as u
    from astropy.coordinates import EarthLocation

    site = EarthLocation.from_geodetic(lon * u.deg, lat * u.deg, height * u.m)
    gcrs = site.get_gcrs_posvel(t)[0].xyz.to_value(u.au)
    n = np.array([math.cos(math.radians(dec_deg)) * math.cos(math.radians(ra_deg)),
                  math.cos(math.radians(dec_deg)) * math.sin(math.radians(ra_deg)),
                  math.sin(math.radians(dec_deg))])
    light_s = float(np.dot(earth + gcrs, n)) * erfa.DAU / erfa.CMPS
    return tdb.jd1 + tdb.jd2 + light_s / DAY


def write_light(path, date_obs, exptime, **cards):
    h = fits.Header()
    h["IMAGETYP"] = "Light Frame"
    h["DATE-OBS"] = date_obs
    h["EXPTIME"] = exptime
    h["FILTER"] = "V"
    h["TELESCOP"] = "T1"
    for key, value in cards.items():
        h[key] = value
    seed = zlib.crc32(str(path).encode())
    data = np.random.default_rng(seed).integers(900, 1100, (16, 20)).astype(np.uint16)
    fits.PrimaryHDU(data, h).writeto(path)


def test_bjd_matches_an_independent_computation(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    stamps = ["2024-05-02T10:00:00.250", "2024-05-02T11:30:10.500", "2024-05-02T12:30:00.000"]
    for k, stamp in enumerate(stamps):
        write_light(raw / f"wasp_{k}.fits", stamp, 90.0, SITELAT=31.9583, SITELONG=-111.5967,
                    SITEELEV=2096.0)
    target = ("19:50:47.0", "+08:52:06")
    result = ingest([raw], tmp_path / "out", target=target, workers=1)
    rows = sorted(result.frames.to_pylist(), key=lambda r: r["path"])
    ra = (19 + 50 / 60 + 47 / 3600) * 15
    dec = 8 + 52 / 60 + 6 / 3600
    for row, stamp in zip(rows, stamps):
        assert row["status"] == "ok"
        mid = Time(stamp, scale="utc").jd + 45.0 / DAY
        assert row["jd_utc_mid"] == pytest.approx(mid, abs=1e-8)
        expected = independent_bjd(mid, ra, dec, -111.5967, 31.9583, 2096.0)
        assert abs(row["time_bjd_tdb"] - expected) * DAY < 1e-3
        assert row["target_source"] == "argument"
        assert 1.0 <= row["airmass"] < 3.0 and row["airmass_source"] == "computed at mid-exposure"
        assert "DATE-OBS (start, assumed" in row["time_source"]


def test_configured_site_and_clock_offset_drive_bjd(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_light(raw / "a.fits", "2024-05-02T04:30:10.500", 30.0, SITELAT=10.0, SITELONG=10.0)
    site = Site("kitt", longitude_deg=-111.5967, latitude_deg=31.9583, height_m=2096.0,
                clock_offset_s=1.75, match=("T1",))
    config = IngestConfig(sites=(site,), target_ra_deg=297.6958, target_dec_deg=8.8683)
    row = ingest([raw], tmp_path / "out", config=config, workers=1).frames.to_pylist()[0]
    mid = Time("2024-05-02T04:30:10.500", scale="utc").jd + (15.0 - 1.75) / DAY
    assert row["jd_utc_mid"] == pytest.approx(mid, abs=1e-8)
    expected = independent_bjd(mid, 297.6958, 8.8683, -111.5967, 31.9583, 2096.0)
    assert abs(row["time_bjd_tdb"] - expected) * DAY < 1e-3
    assert row["clock_offset_s"] == 1.75 and row["site"] == "kitt"
    assert row["target_source"] == "configuration"
    assert "disagrees with the configured site" in row["notes"]


def test_header_pointing_as_target_warns(tmp_path, caplog):
    raw = tmp_path / "raw"
    raw.mkdir()
    write_light(raw / "a.fits", "2024-05-02T04:30:10", 30.0, OBJCTRA="19 50 47",
                OBJCTDEC="+08 52 06")
    write_light(raw / "b.fits", "2024-05-02T04:31:10", 30.0, OBJCTRA="19 50 49",
                OBJCTDEC="+08 52 00")
    with caplog.at_level(logging.WARNING, logger="engine.ingest"):
        rows = ingest([raw], tmp_path / "out", workers=1).frames.to_pylist()
    assert any("BJD_TDB by ~4 s" in r.message for r in caplog.records)
    assert rows[0]["target_ra_deg"] == rows[1]["target_ra_deg"]  # one target per run
    assert "header pointing (OBJCTRA/OBJCTDEC)" in rows[0]["target_source"]
    assert "geocentric BJD_TDB" in rows[0]["time_source"]  # no site anywhere
    assert rows[0]["airmass"] is None

