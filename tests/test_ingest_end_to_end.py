"""A multi-site night written here in four acquisition programs' header styles (N.I.N.A.,
MaxIm DL, an observatory CCD with fpack, and a program stamping local time), with known true
mid-exposure times and clock errors: every frame classified, BJD_TDB within 0.01 s of truth once
the configured clock offsets are applied."""

import os

import astropy.units as u
import numpy as np
import pytest
from astropy.coordinates import EarthLocation, SkyCoord
from astropy.io import fits
from astropy.time import Time, TimeDelta

from engine.ingest import ingest
from engine.settings.ingest import IngestConfig, Site

TARGET = SkyCoord(300.1822 * u.deg, 22.7086 * u.deg)  # RA 20:00:43.7, Dec +22:42:31
SHAPE = (24, 32)
NIGHT_START = Time("2024-07-10T04:00:00", scale="utc")

SITES = {
    # name: (east longitude, latitude, height, clock offset s (clock ahead of UTC), style, filter)
    "nina": (-110.95, 32.42, 2510.0, 1.30, "nina", "V"),
    "maxim": (-105.53, 32.90, 2225.0, -0.80, "maxim", "R"),
    "observatory": (20.8107, -32.3792, 1798.0, 0.0, "observatory", "V"),
    "localclock": (-116.86, 33.36, 1712.0, 0.45, "local", "I"),
}


def _pixels(seed, level=1000.0):
    rng = np.random.default_rng(seed)
    return (level + rng.normal(0, 8, SHAPE)).clip(0, 65535).astype(np.uint16)


def _sexagesimal(value, hours=False):
    value = value / 15.0 if hours else value
    sign = "-" if value < 0 else "+"
    value = abs(value)
    d = int(value)
    m = int((value - d) * 60)
    s = (value - d - m / 60) * 3600
    return f"{'' if hours else sign}{d:02d} {m:02d} {s:05.2f}"


def _iso(moment: Time, digits: int) -> str:
    moment = moment.copy()
    moment.precision = digits
    return moment.isot


def _header(style, kind, site, start_stamped, exptime, filter_name):
    """The header a program of `style` writes for a frame whose clock read `start_stamped`."""
    lon, lat, height = site[:3]
    h = fits.Header()
    if style == "nina":
        h["IMAGETYP"] = {"light": "LIGHT", "bias": "BIAS", "flat": "FLAT", "dark": "DARK"}[kind]
        h["EXPOSURE"] = exptime
        h["EXPTIME"] = exptime
        h["DATE-LOC"] = (start_stamped - 7 * u.hour).isot
        h["DATE-OBS"] = _iso(start_stamped, 7)
        h["GAIN"] = 139
        h["OFFSET"] = 21
        h["EGAIN"] = 0.7716
        h["SITELAT"], h["SITELONG"], h["SITEELEV"] = lat, lon, height
        h["TELESCOP"] = "RC8 nina"
        h["OBJCTRA"] = _sexagesimal(TARGET.ra.deg, hours=True)
        h["OBJCTDEC"] = _sexagesimal(TARGET.dec.deg)
        h["SWCREATE"] = "N.I.N.A. 3.0.0.9001 (x64)"
        h["CCD-TEMP"] = -10.0
    elif style == "maxim":
        h["IMAGETYP"] = {"light": "Light Frame", "bias": "Bias Frame", "flat": "Flat Field",
                         "dark": "Dark Frame"}[kind]
        h["EXPTIME"] = exptime
        h["DATE-OBS"] = (start_stamped.isot[:19], "[ISO 8601] UTC date/time of exposure start")
        h["JD"] = float(f"{start_stamped.jd:.8f}")
        h["SITELAT"] = _sexagesimal(lat)
        h["SITELONG"] = _sexagesimal(lon)
        h["TELESCOP"] = "C14 maxim"
        h["EGAIN"] = 1.35
        h["XBINNING"], h["YBINNING"] = 1, 1
        h["SWCREATE"] = "MaxIm DL Version 6.40"
        h["OBJCTRA"] = _sexagesimal(TARGET.ra.deg, hours=True)
        h["OBJCTDEC"] = _sexagesimal(TARGET.dec.deg)
    elif style == "observatory":
        h["IMAGETYP"] = {"light": "object", "bias": "zero", "flat": "flat", "dark": "dark"}[kind]
        h["EXPTIME"] = exptime
        h["DATE-OBS"] = (start_stamped.isot[:10], "UT date")
        h["UT"] = (start_stamped.isot[11:23], "UT at exposure start")
        h["MJD-OBS"] = float(int(start_stamped.mjd))
        h["LATITUDE"] = (lat, "[deg] telescope latitude")
        h["LONGITUD"] = (-lon, "[deg] telescope longitude, west positive")
        h["HEIGHT"] = height
        h["TELESCOP"] = "1.0m obs"
        h["GAIN"] = (1.9, "e-/ADU")
        h["RDNOISE"] = (5.0, "e- (rms) read noise")
        h["BIASSEC"] = "[1:4,1:24]"
        h["TRIMSEC"] = "[5:32,1:24]"
        h["RA"] = _sexagesimal(TARGET.ra.deg, hours=True).replace(" ", ":")
        h["DEC"] = _sexagesimal(TARGET.dec.deg).replace(" ", ":")
    else:  # a program that stamps local time with its offset
        h["IMAGETYP"] = {"light": "Light", "bias": "Bias", "flat": "Flat", "dark": "Dark"}[kind]
        h["EXPTIME"] = exptime
        local = start_stamped - 7 * u.hour
        h["DATE-OBS"] = _iso(local, 3) + "-0700"
        h["OBSGEO-B"], h["OBSGEO-L"], h["OBSGEO-H"] = lat, lon, height
        h["TELESCOP"] = "Newt local"
    if kind in ("light", "flat"):
        h["FILTER"] = filter_name
    return h


def write_night(folder):
    """Raw frames of four sites; returns {file name: (site, kind, true mid-exposure UTC)}."""
    folder.mkdir()
    truth = {}
    seed = 0
    for s, (name, site) in enumerate(SITES.items()):
        style, filter_name = site[4], site[5]
        site_dir = folder / name
        site_dir.mkdir()
        plan = [("bias", 0.0, 0.0), ("flat", 5.0, 0.1)] + [
            ("light", 45.0 + 7.5 * s, 0.5 + 0.13 * s + 0.02 * k) for k in range(4)]
        for k, (kind, exptime, hours) in enumerate(plan):
            start_true = NIGHT_START + TimeDelta(hours * 3600.0 + 0.123 * k, format="sec")
            if style == "maxim":
                # MaxIm writes DATE-OBS to the second and a precise JD: start on a whole second
                # of its clock, so the truth is exact too.
                stamped = Time(round(start_true.unix + site[3]), format="unix", scale="utc")
                start_true = stamped - TimeDelta(site[3], format="sec")
            stamped = start_true + TimeDelta(site[3], format="sec")
            header = _header(style, kind, site, stamped, exptime, filter_name)
            seed += 1
            level = 20000.0 if kind == "flat" else 1000.0
            data = _pixels(seed, level)
            name_on_disk = f"{name}_{k:03d}.fits"
            if style == "observatory":
                fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header,
                                                                   compression_type="RICE_1")]
                             ).writeto(site_dir / (name_on_disk + ".fz"))
                name_on_disk += ".fz"
            else:
                fits.PrimaryHDU(data, header).writeto(site_dir / name_on_disk)
            truth[name_on_disk] = (name, kind, start_true + TimeDelta(exptime / 2, format="sec"))
    return truth


def true_bjd(mid: Time, site) -> float:
    location = EarthLocation.from_geodetic(site[0] * u.deg, site[1] * u.deg, site[2] * u.m)
    t = Time(mid.jd1, mid.jd2, format="jd", scale="utc", location=location)
    return (t.tdb + t.light_travel_time(TARGET, kind="barycentric", ephemeris="builtin")).jd


def night_config(with_offsets=True):
    sites = []
    for name, site in SITES.items():
        telescope = {"nina": "RC8 nina", "maxim": "C14 maxim", "observatory": "1.0m obs",
                     "localclock": "Newt local"}[name]
        sites.append(Site(name, longitude_deg=site[0], latitude_deg=site[1], height_m=site[2],
                          clock_offset_s=site[3] if with_offsets else 0.0, match=(telescope,)))
    return IngestConfig(sites=tuple(sites))


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    base = tmp_path_factory.mktemp("night")
    truth = write_night(base / "raw")
    target = ("20:00:43.728", "+22:42:30.96")
    result = ingest([base / "raw"], base / "out", target=target, config=night_config(), workers=2)
    return base, truth, target, result


def test_every_frame_classified_and_grouped(night):
    _, truth, _, result = night
    rows = {os.path.basename(r["path"]): r for r in result.frames.to_pylist()}
    assert set(rows) == set(truth)
    for name, (site, kind, _) in truth.items():
        row = rows[name]
        assert row["status"] == "ok", (name, row["reason"])
        assert row["frame_type"] == kind, (name, row["frame_type_evidence"])
        assert row["site"] == site
    light_runs = {r["run_id"] for r in rows.values() if r["frame_type"] == "light"}
    assert len(light_runs) == 4  # one per site (telescope x night x filter)
    for run_id in light_runs:
        assert result.cube(run_id).shape == (4,) + SHAPE
    calibration = {r["run_id"] for r in rows.values() if r["frame_type"] != "light"}
    assert len(calibration) == 8


def test_mid_exposure_bjd_within_10_ms_of_truth(night):
    _, truth, _, result = night
    rows = {os.path.basename(r["path"]): r for r in result.frames.to_pylist()}
    worst = 0.0
    for name, (site, kind, mid_true) in truth.items():
        row = rows[name]
        utc_error = (row["jd_utc_mid"] - mid_true.jd) * 86400.0
        assert abs(utc_error) < 0.01, (name, utc_error, row["time_source"])
        if kind != "light":
            assert row["time_bjd_tdb"] is None
            continue
        error = (row["time_bjd_tdb"] - true_bjd(mid_true, SITES[site])) * 86400.0
        worst = max(worst, abs(error))
        assert abs(error) < 0.01, (name, error, row["time_source"])
    assert worst < 0.01


def test_each_style_is_read_its_own_way(night):
    _, _, _, result = night
    rows = {os.path.basename(r["path"]): r for r in result.frames.to_pylist()}
    nina, maxim = rows["nina_002.fits"], rows["maxim_002.fits"]
    obs, local = rows["observatory_002.fits.fz"], rows["localclock_002.fits"]
    assert nina["gain"] == pytest.approx(0.7716) and nina["gain_setting"] == 139
    assert nina["time_keyword"] == "DATE-OBS" and nina["time_precision_s"] < 1e-6
    assert nina["clock_offset_s"] == 1.30 and "clock offset +1.300 s" in nina["time_source"]
    assert maxim["time_keyword"] == "JD" and maxim["gain"] == 1.35
    assert obs["time_keyword"] == "DATE-OBS+UT" and obs["compression"] == "RICE_1"
    assert obs["overscan_section"] == [0, 24, 0, 4] and obs["trim_section"] == [0, 24, 4, 32]
    assert obs["read_noise"] == 5.0 and obs["gain"] == 1.9
    assert local["time_keyword"] == "DATE-OBS" and "local time converted" in local["time_source"]
    for row in (nina, maxim, obs, local):
        assert row["target_source"] == "argument"
        assert row["airmass"] is not None or row["airmass_source"] == "target below the horizon"


def test_without_the_clock_offsets_the_times_are_off_by_them(night, tmp_path):
    base, truth, target, _ = night
    plain = ingest([base / "raw" / "nina"], tmp_path, target=target,
                   config=night_config(with_offsets=False), workers=1)
    for row in plain.frames.to_pylist():
        name = os.path.basename(row["path"])
        _, kind, mid_true = truth[name]
        if kind == "light":
            error = (row["time_bjd_tdb"] - true_bjd(mid_true, SITES["nina"])) * 86400.0
            assert error == pytest.approx(1.30, abs=0.01)


# --------------------------------------------------------------------------- the simulator


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    simulation = pytest.importorskip("engine.simulation")
    base = tmp_path_factory.mktemp("simulated")
    result = simulation.simulate(base / "raw", preset="tiny", seed=0)
    return base, result.truth


def simulated_config(truth, with_offsets=True, aperture_of=()):
    sites = tuple(
        Site(name, longitude_deg=s["longitude_deg"], latitude_deg=s["latitude_deg"],
             height_m=s["elevation_m"], match=(s["telescope"],),
             clock_offset_s=truth["clock_offsets_s"][name] if with_offsets else 0.0,
             aperture_diameter_m=s["aperture_m"] if name in aperture_of else None)
        for name, s in truth["sites"].items())
    return IngestConfig(sites=sites)


def test_simulated_night_classified_and_timed_against_truth(simulated):
    base, truth = simulated
    target = (truth["target"]["ra_hms"], truth["target"]["dec_dms"])
    configured = [s for s in sorted(truth["sites"]) if s != "florida"][:1]  # MaxIm: APTDIA
    result = ingest([base / "raw"], base / "out", target=target,
                    config=simulated_config(truth, aperture_of=configured), workers=2)
    rows = {os.path.relpath(r["path"], base / "raw"): r for r in result.frames.to_pylist()}
    assert len(rows) == len(truth["frames"])
    assert any(offset != 0 for offset in truth["clock_offsets_s"].values())
    worst = 0.0
    for frame in truth["frames"]:
        row = rows[frame["file"]]
        assert row["status"] == "ok", (frame["file"], row["reason"])
        assert row["frame_type"] == frame["frame_type"], (frame["file"], row["frame_type_evidence"])
        assert row["site"] == frame["site"]
        assert row["exptime"] == pytest.approx(frame["exptime_s"])
        if frame["frame_type"] == "light":
            error = (row["time_bjd_tdb"] - frame["mid_bjd_tdb"]) * 86400.0
            worst = max(worst, abs(error))
            assert abs(error) < 0.01, (frame["file"], error, row["time_source"])
            assert row["airmass"] == pytest.approx(frame["airmass"], abs=0.01)
            # Configured, or read from APTDIA where the camera software writes it.
            if frame["site"] in configured or row["aperture_diameter_m"] is not None:
                assert row["aperture_diameter_m"] == pytest.approx(
                    truth["sites"][frame["site"]]["aperture_m"])
    assert worst < 0.01
    assert any(r["aperture_diameter_m"] is not None and r["site"] not in configured
               for r in rows.values())  # one site's header says it
    for run in truth["runs"]:
        light = [rows[f] for f in run["light_files"]]
        run_ids = {r["run_id"] for r in light}
        assert len(run_ids) == 1, run["run_id"]
        cube = result.cube(run_ids.pop())
        assert cube.shape == (len(run["light_files"]),) + tuple(run["shape"])
        assert [r["cube_index"] for r in light] == list(range(len(light)))  # in time order


def test_simulated_night_without_clock_offsets_is_off_by_them(simulated, tmp_path):
    base, truth = simulated
    target = (truth["target"]["ra_hms"], truth["target"]["dec_dms"])
    result = ingest([base / "raw"], tmp_path, target=target,
                    config=simulated_config(truth, with_offsets=False), workers=2)
    rows = {os.path.relpath(r["path"], base / "raw"): r for r in result.frames.to_pylist()}
    for frame in truth["frames"]:
        if frame["frame_type"] == "light":
            error = (rows[frame["file"]]["time_bjd_tdb"] - frame["mid_bjd_tdb"]) * 86400.0
            offset = truth["clock_offsets_s"][frame["site"]]
            assert error == pytest.approx(offset, abs=0.01)


# ----------------------------------------------------------------------------------------------
# Light runs follow the camera identity (engine.io.headers.camera_identity)

def _camera_light(path, k, seed=None, **cards):
    h = fits.Header()
    h["IMAGETYP"], h["EXPTIME"], h["FILTER"] = "Light Frame", 30.0, "R"
    h["DATE-OBS"] = f"2024-05-02T04:{10 + k:02d}:00.000"
    h["TELESCOP"], h["INSTRUME"] = "C14", "ZWO ASI2600MM Pro"
    h["SITELAT"], h["SITELONG"] = 31.9583, -111.5967
    h.update(cards)
    data = np.random.default_rng(k if seed is None else seed).integers(
        900, 1100, (24, 32)).astype(np.uint16)
    fits.PrimaryHDU(data, h).writeto(path)


def _light_runs(folder, out):
    table = ingest([folder], out).frames
    rows = [r for r in table.to_pylist() if r["frame_type"] == "light"]
    return {r["path"].rsplit("/", 1)[1]: r for r in rows}


def test_one_camera_per_site_keeps_its_run_id(tmp_path):
    (tmp_path / "raw").mkdir()
    for k in range(3):
        _camera_light(tmp_path / "raw" / f"a{k}.fits", k)
    rows = _light_runs(tmp_path / "raw", tmp_path / "out")
    assert {r["run_id"] for r in rows.values()} == {"C14_2024-05-01_R"}
    assert all(r["readout_mode"] is None for r in rows.values())


def test_same_telescope_name_at_two_sites_or_two_readout_modes_never_shares_a_run(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for k in range(3):
        _camera_light(raw / f"arizona{k}.fits", k)
        # The same TELESCOP and camera 1,200 km away, the same night.
        _camera_light(raw / f"texas{k}.fits", k, 20 + k, SITELAT=30.6714, SITELONG=-104.0225)
        # Back in Arizona with the camera in another readout mode (N.I.N.A.'s READOUTM).
        _camera_light(raw / f"mode{k}.fits", 10 + k, READOUTM="High Gain Mode")
    rows = _light_runs(raw, tmp_path / "out")
    assert len(rows) == 9 and all(r["status"] == "ok" for r in rows.values())
    runs = {name: r["run_id"] for name, r in rows.items()}
    groups = {prefix: {runs[f"{prefix}{k}.fits"] for k in range(3)}
              for prefix in ("arizona", "texas", "mode")}
    assert all(len(ids) == 1 for ids in groups.values()), groups
    assert len(set.union(*groups.values())) == 3, groups
    assert all(run_id.startswith("C14_2024-05-01_R") for run_id in runs.values())
    assert rows["mode0.fits"]["readout_mode"] == "High Gain Mode"
    # Run ids are stable: a rerun on the same files gives the same ones.
    again = _light_runs(raw, tmp_path / "out2")
    assert {name: r["run_id"] for name, r in again.items()} == runs
