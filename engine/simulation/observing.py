"""One site's night: when each frame is taken, through what sky, and where the stars fall.

`plan_run` turns a `Site` into a `RunPlan`: true exposure start times (UTC), the times written
in the headers (with the site's clock offset), mid-exposure BJD_TDB and airmass from
`engine.timing`, hour angles and the meridian flip, seeing, transparency with cirrus, sky
level, scintillation, and the pixel transform of every light frame relative to the first:

    x_k = cx + cos(rot_k) (x_0 - cx) - sin(rot_k) (y_0 - cy) + dx_k
    y_k = cy + sin(rot_k) (x_0 - cx) + cos(rot_k) (y_0 - cy) + dy_k

where (x_0, y_0) is a star's position in the run's first light frame and (cx, cy) the centre
of the imaging area, all in the stored pixel grid (0-based, overscan columns included).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, get_sun
from astropy.time import Time
from astropy.wcs import WCS

from engine import timing
from engine.errors import EngineValueError
from engine.noise import scintillation_sigma
from engine.simulation.config import SimulationConfig, Site

__all__ = ["CalibrationFrame", "RunPlan", "first_frame_wcs", "frame_wcs", "plan_run"]

_SECONDS_PER_DAY = 86400.0
_SIDEREAL_RATE = 1.00273790935   # sidereal hours per solar hour
# Header time resolution of each program (seconds): the true start times sit on this grid.
_TIME_RESOLUTION = {"nina": 0.001, "maxim": 0.01, "observatory": 0.001, "lco": 0.001}


@dataclass
class CalibrationFrame:
    frame_type: str          # 'bias', 'dark', 'flat'
    exptime_s: float
    start_s: float           # true start, seconds after the reference time
    filter: str | None
    purpose: str = ""        # 'flat-dark' for darks matched to flats


@dataclass
class RunPlan:
    """Times are kept as seconds after the reference time (exact to the microsecond, which a
    float Julian date is not); the *_jd_utc arrays are the same moments for astropy."""

    site: Site
    location: object
    start_s: np.ndarray                 # true exposure starts
    header_start_s: np.ndarray          # what the PC clock said (true + clock offset)
    start_jd_utc: np.ndarray
    mid_jd_utc: np.ndarray
    mid_bjd_tdb: np.ndarray
    airmass: np.ndarray                 # at mid-exposure
    airmass_start: np.ndarray           # at the start (what acquisition programs write)
    hour_angle_h: np.ndarray
    sun_altitude_deg: np.ndarray
    seeing_arcsec: np.ndarray
    ellipticity: np.ndarray
    ellipticity_angle: np.ndarray
    transparency: np.ndarray
    sky_e_per_px: np.ndarray            # before the flat, at the frame centre
    scintillation: np.ndarray           # relative sigma per frame
    rotation_deg: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    pier_side: list
    flip_index: int | None
    recentre_index: int | None
    rotation_center: tuple[float, float]
    calibrations: list = field(default_factory=list)

    @property
    def n(self) -> int:
        return self.start_jd_utc.shape[0]


def _ou(rng, times_h, tau_h, sigma):
    """Ornstein-Uhlenbeck process sampled at increasing times (stationary start)."""
    out = np.empty(times_h.shape[0])
    if out.size == 0:
        return out
    out[0] = rng.normal(0.0, sigma)
    for k in range(1, out.size):
        decay = math.exp(-(times_h[k] - times_h[k - 1]) / tau_h)
        kick = sigma * math.sqrt(max(1.0 - decay * decay, 0.0))
        out[k] = out[k - 1] * decay + kick * rng.normal()
    return out


def _local_sidereal_hours(jd_utc, longitude_deg):
    t = Time(np.atleast_1d(jd_utc), format="jd", scale="utc")
    return t.sidereal_time("apparent", longitude=longitude_deg * u.deg).hour


def plan_run(config: SimulationConfig, site: Site, reference_jd_utc: float,
             rng: np.random.Generator, reference_fraction_s: float = 0.0) -> RunPlan:
    """Schedule and atmosphere of one site's run (deterministic for a given generator).

    reference_fraction_s: the fractional second of the reference time, so that start times
    can be put on each program's header time grid.

    The generator is drawn from in a fixed order (start jitter, conditions, pointing), which
    keeps a seed's files unchanged.
    """
    cam = site.camera
    ra, dec = config.field.ra_deg, config.field.dec_deg
    location = timing.site_location(site.longitude_deg, site.latitude_deg, site.elevation_m)
    exptime = site.exptime_s
    start0 = reference_jd_utc + site.window_start_h / 24.0
    resolution = _TIME_RESOLUTION[cam.software]

    # Hour angle advances at the sidereal rate: one astropy call, then linear.
    lst0 = float(_local_sidereal_hours(start0, site.longitude_deg)[0])
    ha0 = (lst0 - ra / 15.0 + 12.0) % 24.0 - 12.0
    starts, flip_index, recentre_index = _exposure_starts(site, ha0, start0, rng)
    # True start times (seconds after the reference) such that header = true + offset lands
    # on the program's time grid.
    offset = site.clock_offset_s
    window0 = site.window_start_h * 3600.0
    start_s = _on_grid(window0 + starts, offset, resolution, reference_fraction_s)
    start_jd = reference_jd_utc + start_s / _SECONDS_PER_DAY
    mid_jd = reference_jd_utc + (start_s + 0.5 * exptime) / _SECONDS_PER_DAY
    bjd = timing.utc_to_bjd_tdb(mid_jd, ra, dec, location)
    airmass = timing.airmass(mid_jd, ra, dec, location)
    airmass_start = timing.airmass(start_jd, ra, dec, location)
    if not np.all(np.isfinite(airmass)):
        raise EngineValueError(
            f"site {site.name!r}: the target is below the horizon during its window")
    ha = _hour_angle(start_jd, ha0, start0)
    times = Time(mid_jd, format="jd", scale="utc")
    sun_alt = get_sun(times).transform_to(AltAz(obstime=times, location=location)).alt.deg
    hours = (mid_jd - reference_jd_utc) * 24.0

    conditions = _conditions(config, site, hours, airmass, rng)
    # A run that starts past the meridian began on the other side of the pier.
    past_meridian = ha0 >= site.flip_after_min / 60.0
    rotation, dx, dy, pier = _pointing(site, hours, flip_index, recentre_index, past_meridian,
                                       rng)
    cx = cam.data_x0 + 0.5 * (cam.width - 1)
    cy = 0.5 * (cam.height - 1)
    plan = RunPlan(
        site=site, location=location, start_s=start_s, header_start_s=start_s + offset,
        start_jd_utc=start_jd, mid_jd_utc=mid_jd, mid_bjd_tdb=np.asarray(bjd),
        airmass=np.asarray(airmass),
        airmass_start=np.asarray(airmass_start), hour_angle_h=np.asarray(ha),
        sun_altitude_deg=np.asarray(sun_alt, dtype=np.float64), **conditions,
        rotation_deg=rotation, dx=dx, dy=dy,
        pier_side=pier, flip_index=flip_index, recentre_index=recentre_index,
        rotation_center=(cx, cy))
    plan.calibrations = _calibration_schedule(site, start_s[0], start_s[-1] + exptime,
                                              resolution, offset, reference_fraction_s)
    return plan


def _hour_angle(t_jd, ha0: float, start0: float):
    """The target's hour angle (hours) at t_jd, from ha0 at start0 at the sidereal rate."""
    return ha0 + (t_jd - start0) * 24.0 * _SIDEREAL_RATE


def _exposure_starts(site: Site, ha0: float, start0: float, rng):
    """Light-frame starts (seconds after the window opens, before the header-time grid) at the
    run's cadence, with the pauses of a meridian flip and a re-centring; and their frames."""
    n = site.n_lights
    window_s = (site.window_end_h - site.window_start_h) * 3600.0
    cadence = max(window_s / n, site.exptime_s + site.camera.readout_s)
    recentre_index = None
    if site.recentre_at is not None and n >= 3:
        recentre_index = min(n - 1, max(1, int(round(site.recentre_at * n))))
    flip_index = None
    flip_ha = site.flip_after_min / 60.0
    # A German mount flips once the target has crossed the meridian; a run that starts past
    # it began on the other side of the pier and never flips.
    may_flip = site.meridian_flip and ha0 < flip_ha
    starts = np.empty(n)
    t = 0.0  # seconds from the window's start
    for k in range(n):
        if (may_flip and flip_index is None and k > 0
                and _hour_angle(start0 + t / _SECONDS_PER_DAY, ha0, start0) >= flip_ha):
            flip_index = k
            t += site.flip_pause_s
        if k == recentre_index:
            t += 60.0
        jitter = rng.uniform(-0.4, 0.4) if k > 0 else 0.0
        starts[k] = t + jitter
        t += cadence
    return starts, flip_index, recentre_index


def _conditions(config: SimulationConfig, site: Site, hours, airmass, rng) -> dict:
    """Seeing, PSF shape, transparency, sky and scintillation per light frame (RunPlan fields)."""
    exptime = site.exptime_s
    # Seeing: lognormal around seeing * X^0.6, correlated over ~25 minutes.
    seeing = site.seeing_arcsec * airmass ** 0.6 * np.exp(
        _ou(rng, hours, 0.4, site.seeing_variation))
    ellipticity = np.clip(0.04 + _ou(rng, hours, 0.3, 0.02), 0.0, 0.2)
    base_angle = rng.uniform(0.0, math.pi)
    ellipticity_angle = base_angle + _ou(rng, hours, 0.5, 0.2)

    # Transparency: grey cirrus dips (patchy inside), plus a faint haze flicker.
    transparency = np.ones(hours.shape[0])
    for cloud in site.cirrus:
        sigma_h = cloud.fwhm_min / 60.0 / 2.3548
        profile = np.exp(-0.5 * ((hours - cloud.centre_h) / sigma_h) ** 2)
        patchy = np.clip(1.0 + _ou(rng, hours, 0.05, 0.25), 0.3, 1.7)
        transparency *= 1.0 - np.clip(cloud.depth * profile * patchy, 0.0, 0.95)
    transparency *= 1.0 - np.abs(_ou(rng, hours, 0.2, 0.002))

    # Sky: zenith brightness, brighter with airmass and under cloud (city light scattered back).
    scale = site.pixel_scale_arcsec
    sky_rate = 10.0 ** (-0.4 * (site.sky_mag - site.zero_point)) * scale * scale
    sky = sky_rate * exptime * (1.0 + 0.2 * (airmass - 1.0)) * (1.0 + 1.5 * (1.0 - transparency))

    scint = np.asarray(scintillation_sigma(site.aperture_m, np.maximum(airmass, 1.0),
                                           site.elevation_m, exptime, config.c_y))
    return {"seeing_arcsec": seeing, "ellipticity": ellipticity,
            "ellipticity_angle": ellipticity_angle, "transparency": transparency,
            "sky_e_per_px": sky, "scintillation": scint}


def _pointing(site: Site, hours, flip_index, recentre_index, past_meridian: bool, rng):
    """Each light frame's rotation and offset from the first (drift, re-centring, flip) and the
    pier side the mount reports."""
    n = hours.shape[0]
    rotation = np.zeros(n)
    dx = np.zeros(n)
    dy = np.zeros(n)
    vx, vy = site.drift_px_per_hour
    jitter_x = _ou(rng, hours, 0.1, site.drift_jitter_px)
    jitter_y = _ou(rng, hours, 0.1, site.drift_jitter_px)
    segment_start = hours[0]
    seg_offset = np.zeros(2)
    seg_rot = 0.0
    jitter_ref = np.array([jitter_x[0], jitter_y[0]])
    pier = []
    for k in range(n):
        if flip_index is not None and k == flip_index:
            seg_rot = 180.0
            segment_start = hours[k]
            seg_offset = rng.normal(0.0, 6.0, 2)
        if recentre_index is not None and k == recentre_index:
            segment_start = hours[k]
            seg_offset = rng.normal(0.0, 2.0, 2)
        elapsed = hours[k] - segment_start
        drift = np.array([vx, vy]) * elapsed
        if seg_rot == 180.0:
            drift = -drift  # the same sky motion seen through a camera turned by 180 deg
        jit = np.array([jitter_x[k], jitter_y[k]]) - jitter_ref
        rotation[k] = seg_rot
        dx[k] = seg_offset[0] + drift[0] + jit[0]
        dy[k] = seg_offset[1] + drift[1] + jit[1]
        # The pier side a German mount reports: 'West' while the target is east of the
        # meridian, 'East' once it has been flipped (or when the run began past the meridian).
        pier.append("East" if (seg_rot or past_meridian) else "West")
    dx[0] = dy[0] = 0.0
    return rotation, dx, dy, pier


def _on_grid(seconds, offset, resolution, fraction):
    """Times t (seconds after the reference) moved so that t + offset falls on the grid."""
    absolute = np.asarray(seconds, dtype=np.float64) + fraction + offset
    return np.round(absolute / resolution) * resolution - fraction - offset


def _calibration_schedule(site: Site, first_light_s, last_light_end_s, resolution, offset,
                          fraction):
    """Flats before the lights (twilight), biases and darks after them (dawn, or dome closed)."""
    cam = site.camera
    frames = []
    flat_filters = (site.filter,) + tuple(b for b in site.extra_flat_filters if b != site.filter)
    n_flats = site.n_flat * len(flat_filters)
    step = site.flat_exptime_s + cam.readout_s + 2.0
    t = first_light_s - 0.6 * 3600.0 - n_flats * step
    for band in flat_filters:
        for _ in range(site.n_flat):
            frames.append(CalibrationFrame("flat", site.flat_exptime_s, t, band))
            t += step
    bias_exptime = 3.2e-5 if cam.sensor == "cmos" else 0.0
    t = last_light_end_s + 360.0
    for _ in range(site.n_bias):
        frames.append(CalibrationFrame("bias", bias_exptime, t, site.filter))
        t += cam.readout_s + 1.0
    for _ in range(site.n_dark):
        frames.append(CalibrationFrame("dark", site.exptime_s, t, site.filter))
        t += site.exptime_s + cam.readout_s + 1.0
    for _ in range(site.n_flat_dark):
        frames.append(CalibrationFrame("dark", site.flat_exptime_s, t, site.filter, "flat-dark"))
        t += site.flat_exptime_s + cam.readout_s + 1.0
    for frame in frames:
        frame.start_s = float(_on_grid(frame.start_s, offset, resolution, fraction))
    return frames


def first_frame_wcs(config: SimulationConfig, site: Site) -> WCS:
    """The TAN WCS of a run's first light frame (stored pixel grid, FITS 1-based CRPIX).

    Pointing centre = target + the site's pointing offset; the imaging area's centre is the
    reference pixel; CD = scale * R(camera angle) * diag(-parity, 1) maps pixel offsets to
    (xi east, eta north) in degrees: parity 1 is north up, east left.
    """
    from engine.simulation.field import tangent_to_sky

    cam = site.camera
    ra0, dec0 = tangent_to_sky(config.field.ra_deg, config.field.dec_deg,
                               [site.pointing_offset_arcsec[0]], [site.pointing_offset_arcsec[1]])
    scale = site.pixel_scale_arcsec / 3600.0
    theta = math.radians(site.camera_angle_deg)
    rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    cd = scale * rot @ np.diag([-float(site.parity), 1.0])
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [float(ra0[0]), float(dec0[0])]
    w.wcs.crpix = [cam.data_x0 + 0.5 * (cam.width - 1) + 1.0, 0.5 * (cam.height - 1) + 1.0]
    w.wcs.cd = cd
    w.wcs.radesys = "ICRS"
    w.wcs.equinox = 2000.0
    return w


def frame_wcs(first: WCS, rotation_deg: float, dx: float, dy: float,
              center: tuple[float, float]) -> WCS:
    """The WCS of a frame whose pixels are the first frame's moved by (rotation, dx, dy)."""
    theta = math.radians(rotation_deg)
    r = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
    c = np.array(center)
    crpix0 = np.array(first.wcs.crpix) - 1.0          # 0-based
    crpix = c + r @ (crpix0 - c) + np.array([dx, dy])
    w = first.deepcopy()
    w.wcs.crpix = crpix + 1.0
    w.wcs.cd = np.array(first.wcs.cd) @ r.T            # pixel offsets rotate with the frame
    return w
