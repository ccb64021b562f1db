"""The simulator against its own truth: headers, storage, times, positions, fluxes and noise.

One `tiny` night is simulated for the whole module; each test reads it back with astropy.
"""

import dataclasses
import json
import math
import re
import warnings
from datetime import datetime, timezone

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS, FITSFixedWarning

from engine import timing
from engine.cext import circle_overlap_grid
from engine.errors import EngineValueError
from engine.kernels import psf
from engine.noise import aperture_noise
from engine.simulation import PRESETS, simulate
from engine.simulation.detector import Detector

SEED = 3


@pytest.fixture(scope="module")
def night(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    return simulate(out, "tiny", seed=SEED)


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------

def _open(night, rel):
    with fits.open(night.out_dir / rel) as hdul:
        hdu = hdul[-1]
        return hdu.data.copy(), hdu.header.copy()


def _frames(night, **match):
    return [f for f in night.truth["frames"] if all(f.get(k) == v for k, v in match.items())]


def _run(night, site):
    return next(r for r in night.truth["runs"] if r["site"] == site)


def _utc(text):
    return datetime.fromisoformat(text).replace(tzinfo=timezone.utc)


def _section(text):
    x1, x2, y1, y2 = (int(v) for v in re.fullmatch(r"\[(\d+):(\d+),(\d+):(\d+)\]", text).groups())
    return slice(y1 - 1, y2), slice(x1 - 1, x2)


def _position(run, frame, star_id):
    """A star's position in a light frame from the first-frame position and the transform."""
    p = next(s for s in run["star_positions"] if s["id"] == star_id)
    cx, cy = run["rotation_center"]
    r = math.radians(frame["rotation_deg"])
    x = cx + math.cos(r) * (p["x"] - cx) - math.sin(r) * (p["y"] - cy) + frame["dx"]
    y = cy + math.sin(r) * (p["x"] - cx) + math.cos(r) * (p["y"] - cy) + frame["dy"]
    return x, y


def _centroid(image, x, y, fwhm):
    """Intensity-weighted centroid within 2 FWHM after removing a plane fitted to an annulus."""
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    for _ in range(3):
        rr = np.hypot(xx - x, yy - y)
        ring = (rr > 3 * fwhm) & (rr < 5 * fwhm)
        design = np.c_[np.ones(ring.sum()), xx[ring] - x, yy[ring] - y]
        coef, *_ = np.linalg.lstsq(design, image[ring], rcond=None)
        background = coef[0] + coef[1] * (xx - x) + coef[2] * (yy - y)
        w = np.clip(image - background, 0, None) * (rr < 2 * fwhm)
        x, y = (w * xx).sum() / w.sum(), (w * yy).sum() / w.sum()
    return x, y


class Calibrated:
    """Masters from a run's own calibration frames (median combines), and calibrated lights."""

    def __init__(self, night, run):
        self.night, self.run = night, run
        frames = {f["file"]: f for f in night.truth["frames"]}
        load = lambda rel: _open(night, rel)[0].astype(float)  # noqa: E731
        cal = run["calibration_files"]
        bias = np.median([load(f) for f in cal["bias"]], axis=0)
        darks = [f for f in cal["dark"] if frames[f]["exptime_s"] == run["exptime_s"]]
        self.dark = np.median([load(f) for f in darks], axis=0) if darks else bias
        flat_darks = [f for f in cal["dark"] if frames[f].get("purpose") == "flat-dark"]
        flat_zero = np.median([load(f) for f in flat_darks], axis=0) if flat_darks else bias
        flats = [load(f) - flat_zero for f in cal["flat"] if frames[f]["filter"] == run["filter"]]
        flat = np.median([f / np.median(f) for f in flats], axis=0)
        x0, nx = run["data_x0"], run["shape"][1] - run["overscan_columns"]
        self.mask = np.zeros(run["shape"], dtype=bool)
        self.mask[:, x0:x0 + nx] = True
        flat[~self.mask] = 1.0
        self.flat = flat

    def light(self, rel):
        data = _open(self.night, rel)[0].astype(float)
        return (data - self.dark) / self.flat * self.run["gain_e_per_adu"]


def _aperture_flux(image, x, y, fwhm, mask, others=()):
    """Flux in a circle of 2 FWHM less the median of an annulus (3-6 FWHM) that avoids the
    pixels within 3 FWHM of the `others` (positions of neighbouring stars)."""
    yy, xx = np.mgrid[0:image.shape[0], 0:image.shape[1]]
    rr = np.hypot(xx - x, yy - y)
    ring = (rr > 3 * fwhm) & (rr < 6 * fwhm) & mask
    for ox, oy in others:
        ring &= np.hypot(xx - ox, yy - oy) > 3 * fwhm
    weights = circle_overlap_grid(float(x), float(y), 2.0 * fwhm, image.shape)
    return (weights * image).sum() - np.median(image[ring]) * weights.sum()


# ----------------------------------------------------------------------------------------------
# Files, truth, summary
# ----------------------------------------------------------------------------------------------

def test_files_and_truth_agree(night):
    truth = night.truth
    assert len(night.files) == len(truth["frames"]) > 0
    assert {str(p.relative_to(night.out_dir)) for p in night.files} == \
        {f["file"] for f in truth["frames"]}
    on_disk = json.loads((night.out_dir / "truth.json").read_text())
    assert on_disk["frames"] == json.loads(json.dumps(truth["frames"]))
    assert on_disk["format"] == "engine-simulation-truth"
    assert not list(night.out_dir.rglob("*.part"))  # atomic writes leave nothing behind
    for run in truth["runs"]:
        lights = _frames(night, run_id=run["run_id"], frame_type="light")
        assert [f["file"] for f in lights] == run["light_files"]
        assert [f["index"] for f in lights] == list(range(len(lights)))
        assert 8 <= len(lights) <= 12
        assert run["frame_counts"]["bias"] >= 3 and run["frame_counts"]["flat"] >= 3


def test_summary_reads_well(night):
    text = night.summary()
    for word in ("tiny", "negev", "lapalma", "florida", "N.I.N.A.", "MaxIm DL", "observatory",
                 "mid-transit BJD_TDB", "florida +2.50 s", "frames/s", "meridian_flip",
                 "recentre"):
        assert word in text, word
    assert len(text.splitlines()) >= 8


# ----------------------------------------------------------------------------------------------
# Headers and storage, per program
# ----------------------------------------------------------------------------------------------

def test_nina_headers(night):
    run = _run(night, "lapalma")
    types = set()
    for frame in _frames(night, site="lapalma"):
        _, h = _open(night, frame["file"])
        types.add(h["IMAGETYP"])
        assert h["EXPOSURE"] == h["EXPTIME"] == pytest.approx(frame["exptime_s"])
        assert isinstance(h["GAIN"], int) and h["GAIN"] == 0      # a gain setting
        assert h["EGAIN"] == pytest.approx(run["gain_e_per_adu"])  # e-/ADU
        for key in ("OFFSET", "SET-TEMP", "CCD-TEMP", "XBINNING", "YBINNING", "XPIXSZ",
                    "FOCALLEN", "INSTRUME", "TELESCOP", "FILTER", "SITELAT", "SITELONG",
                    "SITEELEV", "DATE-OBS", "DATE-LOC", "RA", "DEC", "ROWORDER", "SWCREATE"):
            assert key in h, key
        assert "BAYERPAT" not in h
        assert h["XBINNING"] == 1 and h["SITELONG"] == pytest.approx(-17.879)
        if frame["frame_type"] == "light":
            assert h["IMAGETYP"] == "LIGHT" and h["OBJECT"] == "SIM-1"
            assert re.fullmatch(r"\d\d \d\d \d\d\.\d", h["OBJCTRA"])
            assert re.fullmatch(r"[+-]\d\d \d\d \d\d", h["OBJCTDEC"])
            assert h["PIERSIDE"] == frame["pier_side"]
            name = f"_V_{h['CCD-TEMP']:.2f}_60.00s_{frame['index']:04d}.fits"
            assert frame["file"].endswith(name)
    assert types == {"LIGHT", "DARK", "FLAT", "BIAS", "DARKFLAT"}


def test_maxim_headers(night):
    names = set()
    for frame in _frames(night, site="florida"):
        _, h = _open(night, frame["file"])
        names.add(frame["file"].rsplit("/", 1)[1])
        expected = {"light": "Light Frame", "bias": "Bias Frame", "dark": "Dark Frame",
                    "flat": "Flat Field"}[frame["frame_type"]]
        assert h["IMAGETYP"] == expected
        assert h["XBINNING"] == h["YBINNING"] == 2
        assert h["XPIXSZ"] == pytest.approx(2 * 5.4)   # MaxIm's pixel size is after binning
        assert h["EGAIN"] == pytest.approx(0.37)
        assert re.fullmatch(r"[+-]\d\d \d\d \d\d", h["SITELAT"])
        assert re.fullmatch(r"[+-]\d\d\d? \d\d \d\d", h["SITELONG"])
        assert h["JD"] == pytest.approx(Time(h["DATE-OBS"], scale="utc").jd, abs=2e-8)
    assert {"SIM-1-001I.fit", "Bias-001.fit", "Dark-001.fit", "Flat-001I.fit"} <= names


def test_observatory_headers_wcs_and_fpack(night):
    run = _run(night, "negev")
    for frame in _frames(night, site="negev"):
        path = night.out_dir / frame["file"]
        assert path.name.endswith(".fits.fz")
        with fits.open(path) as hdul:
            assert len(hdul) == 2 and hdul[0].data is None
            assert isinstance(hdul[1], fits.CompImageHDU)
            h = hdul[1].header
            data = hdul[1].data
        raw = fits.getheader(path, 1, disable_image_compression=True)
        assert raw["ZCMPTYPE"] == "RICE_1" and raw["ZBITPIX"] == 16
        assert data.dtype == np.uint16 and data.shape == tuple(run["shape"])
        kind = {"light": "object", "bias": "zero", "dark": "dark", "flat": "flat"}
        assert h["IMAGETYP"] == kind[frame["frame_type"]]
        assert h["GAIN"] == pytest.approx(1.6) and h["RDNOISE"] == pytest.approx(5.5)
        start = Time(f"{h['DATE-OBS']}T{h['UT']}", scale="utc")
        assert start.mjd == pytest.approx(h["MJD-OBS"], abs=1e-8)
        if frame["frame_type"] == "light":
            assert h["AIRMASS"] == pytest.approx(frame["airmass_start"], abs=1e-4)
            # The WCS puts the target where the truth says it is.
            with warnings.catch_warnings():  # date-only DATE-OBS + UT: wcslib says so
                warnings.simplefilter("ignore", FITSFixedWarning)
                x, y = WCS(h).all_world2pix([[94.5933, 24.7867]], 0)[0]
            assert (x, y) == pytest.approx(_position(run, frame, 0), abs=1e-6)
            assert (x, y) == pytest.approx((frame["target_x"], frame["target_y"]), abs=1e-6)


def test_storage_is_uint16_with_bzero(night):
    for site in ("lapalma", "florida"):
        rel = _run(night, site)["light_files"][0]
        with fits.open(night.out_dir / rel, do_not_scale_image_data=True) as hdul:
            assert hdul[0].header["BITPIX"] == 16 and hdul[0].header["BZERO"] == 32768
            assert hdul[0].data.dtype.kind == "i" and hdul[0].data.dtype.itemsize == 2
        data, _ = _open(night, rel)
        assert data.dtype == np.uint16


def test_cmos_values_are_12_bit_times_16(night):
    top = 0
    for frame in _frames(night, site="lapalma"):
        data, _ = _open(night, frame["file"])
        assert np.all(data % 16 == 0)
        top = max(top, int(data.max()))
    assert top <= 4095 * 16


def test_overscan_strip_and_sections(night):
    run = _run(night, "negev")
    for frame in _frames(night, site="negev"):
        data, h = _open(night, frame["file"])
        bias_rows, bias_cols = _section(h["BIASSEC"])
        trim_rows, trim_cols = _section(h["TRIMSEC"])
        assert bias_cols.stop - bias_cols.start == run["overscan_columns"] == run["data_x0"]
        assert trim_cols.start == run["data_x0"] and trim_cols.stop == data.shape[1]
        assert (bias_rows.stop, trim_rows.stop) == (data.shape[0], data.shape[0])
        overscan = data[bias_rows, bias_cols].astype(float)
        assert overscan.mean() == pytest.approx(frame["bias_level_adu"], abs=0.5)
        assert overscan.std() == pytest.approx(5.5 / 1.6, rel=0.1)
        if frame["frame_type"] == "light":
            sky_adu = np.median(data[trim_rows, trim_cols]) - overscan.mean()
            assert sky_adu == pytest.approx(frame["sky_e_per_px"] / 1.6, rel=0.25)


# ----------------------------------------------------------------------------------------------
# Times, sites, sky
# ----------------------------------------------------------------------------------------------

def test_times_are_consistent(night):
    truth = night.truth
    assert truth["clock_offsets_s"] == {"negev": 0.0, "lapalma": 0.0, "florida": 2.5}
    for frame in truth["frames"]:
        offset = truth["clock_offsets_s"][frame["site"]]
        start, header = _utc(frame["start_utc"]), _utc(frame["header_start_utc"])
        assert (header - start).total_seconds() == pytest.approx(offset, abs=1e-6)
        _, h = _open(night, frame["file"])
        written = (f"{h['DATE-OBS']}T{h['UT']}" if "UT" in h else h["DATE-OBS"])
        assert (_utc(written) - start).total_seconds() == pytest.approx(offset, abs=1e-6)
        if frame["frame_type"] != "light":
            continue
        mid = _utc(frame["mid_utc"])
        assert (mid - start).total_seconds() == pytest.approx(frame["exptime_s"] / 2, abs=1e-6)
    for site, data in truth["sites"].items():
        frame = _frames(night, site=site, frame_type="light")[3]
        location = timing.site_location(data["longitude_deg"], data["latitude_deg"],
                                        data["elevation_m"])
        bjd = timing.utc_to_bjd_tdb([frame["mid_jd_utc"]], 94.5933, 24.7867, location)[0]
        assert bjd == pytest.approx(frame["mid_bjd_tdb"], abs=1e-9)
        assert frame["mid_jd_utc"] == pytest.approx(Time(frame["mid_utc"], scale="utc").jd,
                                                    abs=1e-9)


def test_three_sites_cover_the_transit_in_pieces_at_night(night):
    truth = night.truth
    t1, t4 = truth["transit"]["t1_bjd_tdb"], truth["transit"]["t4_bjd_tdb"]
    mid = truth["transit"]["mid_bjd_tdb"]
    spans = {}
    for site in ("negev", "lapalma", "florida"):
        lights = _frames(night, site=site, frame_type="light")
        assert all(f["sun_altitude_deg"] < -18 for f in lights)
        assert all(1.0 <= f["airmass"] < 2.0 for f in lights)
        spans[site] = (lights[0]["mid_bjd_tdb"], lights[-1]["mid_bjd_tdb"])
    assert spans["negev"][0] < t1 < spans["negev"][1] < mid          # baseline and ingress
    assert t1 < spans["lapalma"][0] < mid < spans["lapalma"][1] < t4  # the middle
    assert mid < spans["florida"][0] < t4 < spans["florida"][1]       # egress and baseline
    assert spans["lapalma"][0] < spans["negev"][1]                    # overlaps
    assert spans["florida"][0] < spans["lapalma"][1]
    longitudes = sorted(s["longitude_deg"] for s in truth["sites"].values())
    assert min(np.diff(longitudes)) > 40


# ----------------------------------------------------------------------------------------------
# Stars and fluxes
# ----------------------------------------------------------------------------------------------

def _brightest_isolated(run, fwhm, shape):
    stars = run["star_positions"]
    saturated = [s for s in stars if s["saturated"]]
    for s in sorted(stars, key=lambda s: -s["flux_e_per_s"]):
        if s["saturated"] or s["peak_e_first_frame"] > 0.5 * run["saturation_e"]:
            continue
        if any(math.hypot(q["x"] - s["x"], q["y"] - s["y"]) < 12 * fwhm for q in saturated):
            continue
        if any(q is not s and q["flux_e_per_s"] > 0.01 * s["flux_e_per_s"]
               and math.hypot(q["x"] - s["x"], q["y"] - s["y"]) < 5 * fwhm for q in stars):
            continue
        margin = 5 * fwhm
        x_ok = run["data_x0"] + margin < s["x"] < shape[1] - margin
        if x_ok and margin < s["y"] < shape[0] - margin:
            return s
    raise AssertionError(f"no isolated star in {run['run_id']}")


@pytest.mark.parametrize("site", ["negev", "lapalma", "florida"])
def test_stars_sit_at_the_truth_positions(night, site):
    run = _run(night, site)
    lights = _frames(night, site=site, frame_type="light")
    cal = Calibrated(night, run)
    first = lights[0]
    image = cal.light(first["file"])
    star = _brightest_isolated(run, first["seeing_fwhm_px"], image.shape)
    x, y = _centroid(image, star["x"], star["y"], first["seeing_fwhm_px"])
    assert math.hypot(x - star["x"], y - star["y"]) < 0.3
    # Later frames (after drift, re-centring or the flip) follow the recorded transform.
    for frame in (lights[len(lights) // 2], lights[-1]):
        px, py = _position(run, frame, star["id"])
        x, y = _centroid(cal.light(frame["file"]), px, py, frame["seeing_fwhm_px"])
        assert math.hypot(x - px, y - py) < 0.3


@pytest.mark.parametrize("site", ["negev", "lapalma", "florida"])
def test_target_over_comparisons_follows_the_truth(night, site):
    run = _run(night, site)
    cal = Calibrated(night, run)
    stars = {s["id"]: s for s in night.truth["stars"]}
    on_frame = {s["id"] for s in run["star_positions"]}
    comps = [i for i, s in stars.items() if s["is_comparison_candidate"] and not s["is_variable"]
             and i in on_frame]
    assert len(comps) >= 2
    target_rate = next(s["flux_e_per_s"] for s in run["star_positions"] if s["id"] == 0)
    measured, true, noise = [], [], []
    for frame in _frames(night, site=site, frame_type="light"):
        image = cal.light(frame["file"])
        fwhm = frame["seeing_fwhm_px"]
        where = {s["id"]: _position(run, frame, s["id"]) for s in run["star_positions"]
                 if s["flux_e_per_s"] > 0.003 * target_rate}
        flux = {i: _aperture_flux(image, *where[i], fwhm, cal.mask,
                                  [p for j, p in where.items() if j != i])
                for i in [0] + comps}
        measured.append(flux[0] / sum(flux[i] for i in comps))
        true.append(frame["target_rel_flux"])
        noise.append(frame["expected_target_noise"]["total"])
    measured, true = np.array(measured), np.array(true)
    ratio = measured / true
    # Comparisons as bright as the target roughly add their own noise / sqrt(n) in quadrature.
    allowed = 3.0 * np.median(noise) * math.sqrt(1.0 + 1.0 / len(comps)) + 2e-3
    assert np.std(ratio) / np.mean(ratio) < allowed
    if np.ptp(true) > 0.005:  # the transit shows in the measured ratio
        assert np.corrcoef(measured, true)[0, 1] > 0.6


def test_truth_flux_follows_the_transit_model(night):
    from engine.kernels.transit import transit_light_curve

    p = night.truth["planet"]
    for site, info in night.truth["sites"].items():
        lights = _frames(night, site=site, frame_type="light")
        u1, u2 = p["limb_darkening"][info["filter"]]
        model = transit_light_curve(np.array([f["mid_bjd_tdb"] for f in lights]),
                                    p["t0_bjd_tdb"], p["period_days"], p["rp_rs"], p["a_rs"],
                                    p["inc_deg"], u1, u2,
                                    exptime=lights[0]["exptime_s"] / 86400.0)
        np.testing.assert_allclose([f["target_rel_flux"] for f in lights], model, rtol=1e-12)
    flux = [f["target_rel_flux"] for f in _frames(night, frame_type="light")]
    assert min(flux) < 1.0 - 0.01 and max(flux) == 1.0


def test_noise_of_a_constant_star_matches_the_ccd_equation():
    # Render one star many times with the simulator's own detector path; measure it with an
    # aperture and a background annulus; compare the scatter with engine.noise.
    base = PRESETS["tiny"].sites[1]  # the 12-bit CMOS (quantisation matters)
    camera = dataclasses.replace(base.camera, width=64, height=64, hot_pixel_fraction=0.0,
                                 cosmic_ray_rate=0.0)
    site = dataclasses.replace(base, camera=camera)
    detector = Detector(site, np.random.default_rng(1))
    flat = detector.flat(site.filter)
    exptime, fwhm, beta, flux, sky, scint = 30.0, 3.0, 3.0, 40000.0, 80.0, 0.003
    x, y, r = 31.7, 32.2, 6.0
    weights = circle_overlap_grid(x, y, r, (64, 64))
    yy, xx = np.mgrid[0:64, 0:64]
    ring = (np.hypot(xx - x, yy - y) > 12) & (np.hypot(xx - x, yy - y) < 28)
    dark = detector.dark_electrons(exptime)
    sums = []
    for k in range(400):
        rng = np.random.default_rng([7, k])
        light = sky * detector.sky_pattern
        f = flux * (1.0 + scint * rng.standard_normal())
        psf.add_stars(light, [x], [y], [f], fwhm, beta=beta, accuracy=1e-6)
        data, _ = detector.expose(light * flat, exptime, rng)
        electrons = (data / camera.adc_scale - detector.bias_structure
                     - detector.bias_level_native) * detector.gain_native
        calibrated = (electrons - dark) / flat
        sums.append((weights * calibrated).sum()
                    - calibrated[ring].mean() * weights.sum())
    sums = np.array(sums)
    ee = float(psf.moffat_encircled_energy(r, fwhm, beta))
    flat_t = float(flat[32, 32])
    expected = aperture_noise(flux * ee * flat_t, weights.sum(), sky * flat_t,
                              float(dark[ring].mean()), camera.read_noise_e, scint,
                              n_sky_pixels=ring.sum(), adc_step_e=camera.adc_step_e)
    assert np.std(sums) / np.mean(sums) == pytest.approx(expected.total, rel=0.1)
    assert np.mean(sums) == pytest.approx(flux * ee, rel=3e-3)


def test_truth_noise_terms_add_up(night):
    for frame in _frames(night, frame_type="light"):
        n = frame["expected_target_noise"]
        terms = [n[k] for k in ("star", "sky", "dark", "read", "quantisation", "scintillation")]
        assert n["total"] == pytest.approx(math.sqrt(sum(t * t for t in terms)))
        assert n["scintillation"] == pytest.approx(frame["scintillation_sigma"])
        assert 1e-4 < n["total"] < 0.05


# ----------------------------------------------------------------------------------------------
# The troubles: variable comparison, cirrus, drift, re-centring, flip, calibration frames
# ----------------------------------------------------------------------------------------------

def test_a_variable_hides_among_the_comparisons(night):
    stars = night.truth["stars"]
    variables = [s for s in stars if s["is_variable"]]
    assert len(variables) == 1
    v = variables[0]
    assert v["is_comparison_candidate"] and abs(v["mag_g"] - stars[0]["mag_g"]) < 1.5
    assert 0.01 <= v["variability"]["amplitudes_mag"][0] <= 0.05
    values = [f["variable_rel_flux"][str(v["id"])] for f in _frames(night, frame_type="light")]
    assert np.ptp(values) > 0.01
    assert sum(s["is_target"] for s in stars) == 1 and stars[0]["is_target"]


def test_cirrus_dims_the_frames(night):
    for site in ("lapalma", "florida"):
        depth = night.truth["config"]["sites"][[s["name"] for s in
                                                night.truth["config"]["sites"]].index(site)][
            "cirrus"][0]["depth"]
        transparency = [f["transparency"] for f in _frames(night, site=site, frame_type="light")]
        assert min(transparency) < 1.0 - 0.3 * depth
        assert max(transparency) > 0.99 and min(transparency) > 1.0 - 1.8 * depth


def test_drift_recentring_and_meridian_flip(night):
    florida = _frames(night, site="florida", frame_type="light")
    event = _run(night, "florida")["events"]
    assert event == [{"kind": "recentre", "frame": event[0]["frame"]}]
    k = event[0]["frame"]
    drift = [math.hypot(f["dx"], f["dy"]) for f in florida]
    assert drift[0] == 0.0 and drift[k - 1] > 8.0 and drift[k] < 0.5 * drift[k - 1]
    assert all(f["rotation_deg"] == 0.0 for f in florida)

    lapalma = _frames(night, site="lapalma", frame_type="light")
    events = _run(night, "lapalma")["events"]
    assert [e["kind"] for e in events] == ["meridian_flip"]
    k = events[0]["frame"]
    assert 0 < k < len(lapalma)
    assert [f["rotation_deg"] for f in lapalma] == [0.0] * k + [180.0] * (len(lapalma) - k)
    assert lapalma[k - 1]["hour_angle_h"] < 5 / 60 < lapalma[k]["hour_angle_h"] + 1e-9 + 0.5
    assert lapalma[k - 1]["pier_side"] != lapalma[k]["pier_side"]
    # After the flip the target is still near the middle: the mount re-centred it.
    run = _run(night, "lapalma")
    assert abs(lapalma[k]["target_x"] - run["rotation_center"][0]) < 60


def test_calibration_frames_per_camera(night):
    frames = {f["file"]: f for f in night.truth["frames"]}
    cmos = _run(night, "lapalma")
    darks = [frames[f] for f in cmos["calibration_files"]["dark"]]
    assert {d["exptime_s"] for d in darks} == {60.0, 2.0}  # light darks and flat darks
    # Amp glow is not linear in exposure time: exposure-matched darks are needed.
    bias = np.median([_open(night, f)[0] for f in cmos["calibration_files"]["bias"]], axis=0)
    long = np.median([_open(night, d["file"])[0] for d in darks if d["exptime_s"] == 60.0], axis=0)
    short = np.median([_open(night, d["file"])[0] for d in darks if d["exptime_s"] == 2.0], axis=0)
    glow_long = (long - bias)[10:40, -12:].mean()
    glow_short = (short - bias)[10:40, -12:].mean()
    assert glow_long > 3 * glow_short and glow_long < 0.5 * 30 * glow_short
    # Flats: every filter asked for, twilight-like levels, vignetting and dust.
    flat_filters = {frames[f]["filter"] for f in cmos["calibration_files"]["flat"]}
    assert flat_filters == {"V", "R"}
    for f in cmos["calibration_files"]["flat"]:
        data = _open(night, f)[0].astype(float)
        level = np.median(data) / 65520
        assert 0.2 < level < 0.7
        centre = data[80:112, 112:144].mean()
        corner = data[:24, :24].mean()
        assert corner < 0.92 * centre
    florida = _run(night, "florida")
    for f in florida["calibration_files"]["bias"]:
        data, h = _open(night, f)
        assert h["EXPTIME"] == 0.0 and data.shape == (120, 160)


def test_some_stars_saturate(night):
    for run in night.truth["runs"]:
        if not any(s["saturated"] for s in run["star_positions"]):
            continue
        data = _open(night, run["light_files"][0])[0]
        top = (run["saturation_e"] / run["gain_e_per_adu"]) * 0.9
        assert data.max() > top
    assert sum(any(s["saturated"] for s in run["star_positions"])
               for run in night.truth["runs"]) >= 2


# ----------------------------------------------------------------------------------------------
# Reproducibility and the API
# ----------------------------------------------------------------------------------------------

def test_same_seed_same_bytes(night, tmp_path):
    again = simulate(tmp_path / "again", "tiny", seed=SEED)
    assert len(again.files) == len(night.files)
    for a, b in zip(sorted(again.files), sorted(night.files)):
        assert a.read_bytes() == b.read_bytes(), a.name
    assert (tmp_path / "again" / "truth.json").read_bytes() == \
        (night.out_dir / "truth.json").read_bytes()
    other = simulate(tmp_path / "other", "tiny", seed=SEED + 1, n_lights=2, n_bias=1, n_dark=1,
                     n_flat=1, n_flat_dark=1)
    first = other.truth["runs"][0]["light_files"][0]
    assert (tmp_path / "other" / first).read_bytes() != \
        (night.out_dir / night.truth["runs"][0]["light_files"][0]).read_bytes()


def test_thread_count_does_not_change_the_files(tmp_path):
    # Frames large enough for the parallel kernels, from one site.
    tiny = PRESETS["tiny"]
    config = dataclasses.replace(tiny, sites=tiny.sites[1:2]).with_cameras(width=640, height=480)
    counts = dict(n_lights=1, n_bias=1, n_dark=0, n_flat=1, n_flat_dark=0, n_stars=30)
    one = simulate(tmp_path / "one", config, seed=2, threads=1, **counts)
    two = simulate(tmp_path / "two", config, seed=2, threads=2, **counts)
    assert [a.read_bytes() for a in one.files] == [b.read_bytes() for b in two.files]


def test_unknown_preset_and_override_are_refused(tmp_path):
    with pytest.raises(EngineValueError, match="tiny.*demo.*variable.*large"):
        simulate(tmp_path, "huge")
    with pytest.raises(EngineValueError, match="n_frames"):
        simulate(tmp_path, "tiny", n_frames=3)
    with pytest.raises(EngineValueError):
        simulate(tmp_path, "tiny", seed=-1)



@pytest.mark.parametrize("overrides, message", [
    ({"filter": "Z"}, "site '{site}'.*unknown filter 'Z'"),                # site
    ({"window_end_h": -10.0}, "site '{site}'.*window_end_h"),              # site
    ({"software": "sharpcap"}, "site '{site}'.*software"),                 # camera
    ({"processed": True}, "site '{site}'.*only lco cameras"),              # camera
    ({"adc_bits": 10}, "site '{site}'.*adc_bits"),                         # camera
    ({"n_stars": -1}, "star counts"),                                        # field
])
def test_each_section_of_the_configuration_is_validated(tmp_path, overrides, message):
    first = PRESETS["tiny"].sites[0].name
    with pytest.raises(EngineValueError, match=message.format(site=re.escape(first))):
        simulate(tmp_path, "tiny", **overrides)
    assert not list(tmp_path.iterdir())  # refused before anything is written


def test_an_impossible_planet_is_refused(tmp_path):
    planet = dataclasses.replace(PRESETS["tiny"].planet, a_rs=0.5)
    with pytest.raises(EngineValueError, match="a_rs > 1"):
        simulate(tmp_path, dataclasses.replace(PRESETS["tiny"], planet=planet))

def test_presets():
    assert set(PRESETS) == {"tiny", "demo", "variable", "large", "lco", "lco_processed", "jd_mid",
                            "cmos12", "mixed_bitpix", "bayer", "hotpixels"}
    assert {PRESETS[name].sites[0].camera.software for name in ("lco", "lco_processed")} == {"lco"}
    assert PRESETS["jd_mid"].sites[0].camera.jd_reference == "mid"
    hot = PRESETS["hotpixels"].sites[0]
    assert (hot.n_bias, hot.n_dark, hot.n_flat) == (0, 0, 0)  # nothing to calibrate with
    assert hot.camera.hot_pixel_fraction >= 1e-3
    demo = PRESETS["demo"]
    assert len(demo.sites) == 3 and all(40 <= s.n_lights <= 80 for s in demo.sites)
    assert {s.camera.software for s in demo.sites} == {"nina", "maxim", "observatory"}
    large = PRESETS["large"]
    assert len(large.sites) == 1 and large.sites[0].n_lights == 1000
    assert (large.sites[0].camera.width, large.sites[0].camera.height) == (2048, 2048)
    variable = PRESETS["variable"]
    assert variable.planet is None and variable.field.target_variability is not None
    assert len(variable.sites) == 1
    tiny = PRESETS["tiny"]
    assert all(max(s.camera.width, s.camera.height) <= 256 for s in tiny.sites)
    smaller = dataclasses.replace(tiny, sites=tiny.sites[:1]).with_sites(n_lights=4)
    assert smaller.sites[0].n_lights == 4 and PRESETS["tiny"].sites[0].n_lights == 10
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.name = "x"
