"""What a simulated night is made of: frozen dataclasses a user copies with `dataclasses.replace`.

A `SimulationConfig` holds the star field (`Field`), an optional transiting `Planet`, and the
`Site`s that observe it, each with its `Camera`. Presets live in `engine.simulation.presets`.

Units: angles in degrees unless a name says otherwise, times in seconds or hours as named,
fluxes in electrons, pixel sizes in micrometres, pixel coordinates 0-based (x = column).
Hours of a site's observing window, of cirrus passages and of events are counted from the
configuration's `reference_utc` (the planned mid-transit, or the middle of the night).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from engine.errors import EngineValueError

__all__ = [
    "FILTERS",
    "Camera",
    "Cirrus",
    "Field",
    "Planet",
    "Site",
    "SimulationConfig",
    "Variability",
    "filter_magnitude",
]


# ----------------------------------------------------------------------------------------------
# Photometric bands
# ----------------------------------------------------------------------------------------------

#: Bands the simulator knows. photon_rate: photons s^-1 m^-2 above the atmosphere from a star of
#: magnitude 0 in the band (Bessell 1998 zero points times the band's width d(lambda)/lambda);
#: from_gaia: polynomial in BP-RP giving (band - G) (Riello et al. 2021, Table C2, inverted sign);
#: limb_darkening: quadratic (u1, u2) for a Sun-like star (Claret-style values, rounded).
FILTERS = {
    "V": dict(photon_rate=8.8e9, from_gaia=(0.02704, -0.01424, 0.2156, -0.01426),
              limb_darkening=(0.44, 0.23)),
    "R": dict(photon_rate=1.0e10, from_gaia=(0.02275, -0.3961, 0.1243, 0.01396, -0.003775),
              limb_darkening=(0.36, 0.26)),
    "I": dict(photon_rate=7.3e9, from_gaia=(-0.01753, -0.76, 0.0991),
              limb_darkening=(0.28, 0.27)),
    "L": dict(photon_rate=2.6e10, from_gaia=(0.0,), limb_darkening=(0.36, 0.26)),
}


def filter_magnitude(band: str, mag_g, bp_rp):
    """A star's magnitude in `band` from its Gaia G magnitude and BP-RP colour."""
    if band not in FILTERS:
        raise EngineValueError(f"unknown filter {band!r}; known: {sorted(FILTERS)}")
    coeffs = FILTERS[band]["from_gaia"]
    total = 0.0
    for power, c in enumerate(coeffs):
        total = total + c * bp_rp ** power
    return mag_g + total


# ----------------------------------------------------------------------------------------------
# Configuration dataclasses
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    """A camera and the acquisition program that writes its files.

    software: 'nina' (CMOS, N.I.N.A. keywords), 'maxim' (MaxIm DL keywords), 'observatory'
    (IRAF-style keywords, overscan, fpack, WCS) or 'lco' (Las Cumbres Observatory: OBSTYPE
    'EXPOSE', DATE-OBS / UTSTART / MJD-OBS, RLEVEL, fpack'ed SCI extension).
    processed ('lco' only): the frames are the observatory pipeline's products (BANZAI,
    RLEVEL 91): bias-, dark- and flat-corrected float32 with BPM, ERR and CAT extensions.
    jd_reference ('maxim' only): what the JD keyword marks, 'start' (MaxIm DL's) or 'mid' (as
    some scripts write it, while DATE-OBS keeps the start).
    Sizes are of the *stored* imaging area, in binned pixels; an overscan strip adds
    `overscan_columns` columns on `overscan_side`.
    gain_e_per_adu is electrons per *stored* ADU (for a 12-bit ADC scaled to 16 bits, one ADC
    step is 16 stored ADU, i.e. 16 * gain_e_per_adu electrons).

    Traps of real cameras: `header_gain` False leaves the gain and read noise out of the headers
    (many CMOS programs write neither); `scaled_adc` False stores an ADC of fewer than 16 bits
    as it counts (a 12-bit camera's values stop at 4095) instead of multiplied up to 16 bits;
    `float_light_frames` are the indices of light frames stored as float32 (BITPIX -32), as a
    program that reprocessed a few frames writes them; `bayer_pattern` ('RGGB' ...) makes a
    colour sensor whose red, green and blue pixels respond `bayer_response` times the mono
    response (the pattern is that of pixel [0, 0] of the imaging area).
    """

    name: str
    model: str
    software: str
    sensor: str = "ccd"
    width: int = 512
    height: int = 512
    binning: int = 1
    pixel_size_um: float = 9.0
    gain_e_per_adu: float = 1.0
    gain_setting: int | None = None
    offset_setting: int | None = None
    read_noise_e: float = 8.0
    adc_bits: int = 16
    full_well_e: float = 80000.0
    bias_level_adu: float = 1000.0
    bias_jitter_adu: float = 1.0
    bias_column_rms_adu: float = 1.0
    bias_ramp_adu: float = 5.0
    dark_e_per_s: float = 0.02
    set_temp_c: float = -20.0
    amp_glow_e: float = 0.0
    amp_glow_index: float = 0.6
    amp_glow_scale_px: float = 40.0
    hot_pixel_fraction: float = 2e-4
    #: Dark current of the hot pixels, e-/s: drawn log-uniformly between these two.
    hot_pixel_e_per_s: tuple[float, float] = (0.2, 20.0)
    hot_columns: int = 0
    prnu: float = 0.005
    vignetting: float = 0.15
    dust_donuts: int = 3
    overscan_columns: int = 0
    overscan_side: str = "left"
    bloom: bool = False
    compress: bool = False
    wcs: bool = False
    readout_s: float = 3.0
    cosmic_ray_rate: float = 0.03
    processed: bool = False
    jd_reference: str = "start"
    header_gain: bool = True
    scaled_adc: bool = True
    float_light_frames: tuple[int, ...] = ()
    bayer_pattern: str | None = None
    bayer_response: tuple[float, float, float] = (0.55, 1.0, 0.45)

    @property
    def adc_scale(self) -> int:
        """Stored ADU per ADC step: 2^(16 - adc_bits) when scaled to 16 bits, else 1."""
        return 2 ** (16 - self.adc_bits) if self.scaled_adc else 1

    @property
    def adc_step_e(self) -> float:
        """Electrons per ADC step."""
        return self.gain_e_per_adu * self.adc_scale

    @property
    def stored_shape(self) -> tuple[int, int]:
        """(rows, columns) of a stored frame, overscan included."""
        return self.height, self.width + self.overscan_columns

    @property
    def data_x0(self) -> int:
        """Stored column of the imaging area's first column (0-based)."""
        return self.overscan_columns if self.overscan_side == "left" else 0


@dataclass(frozen=True)
class Cirrus:
    """A thin cloud passing over one site: a grey dip in transparency.

    centre_h: hours from the reference time; fwhm_min: duration (FWHM, minutes); depth: the
    fraction of light lost at its thickest (0.01-0.2 for thin cirrus).
    """

    centre_h: float
    fwhm_min: float
    depth: float


@dataclass(frozen=True)
class Variability:
    """A periodic variable star: magnitude = mean + sum_k A_k cos(2 pi k phase + phi_k).

    period_days, epoch_bjd_tdb (phase 0); amplitudes_mag and phases_rad per harmonic (positive
    amplitudes make the star fainter at phase 0 for cosines). kind is a label for people:
    'pulsating', 'rotational', 'sinusoidal'.
    """

    period_days: float
    epoch_bjd_tdb: float
    amplitudes_mag: tuple[float, ...] = (0.02,)
    phases_rad: tuple[float, ...] = (0.0,)
    kind: str = "sinusoidal"


@dataclass(frozen=True)
class Planet:
    """A transiting planet (Mandel & Agol 2002, quadratic limb darkening).

    limb_darkening: ((filter, u1, u2), ...); a band missing here uses FILTERS' default.
    """

    t0_bjd_tdb: float
    period_days: float
    rp_rs: float
    a_rs: float
    inc_deg: float
    limb_darkening: tuple[tuple[str, float, float], ...] = ()
    name: str = "b"

    def limb_darkening_for(self, band: str) -> tuple[float, float]:
        for name, u1, u2 in self.limb_darkening:
            if name == band:
                return float(u1), float(u2)
        return tuple(float(u) for u in FILTERS[band]["limb_darkening"])

    @property
    def impact_parameter(self) -> float:
        return self.a_rs * math.cos(math.radians(self.inc_deg))

    @property
    def duration_days(self) -> float:
        """First to fourth contact (T14) of a circular orbit."""
        b = self.impact_parameter
        arg = math.sqrt(max((1.0 + self.rp_rs) ** 2 - b * b, 0.0)) / (
            self.a_rs * math.sin(math.radians(self.inc_deg)))
        return self.period_days / math.pi * math.asin(min(arg, 1.0))


@dataclass(frozen=True)
class Field:
    """The target and the stars around it.

    Stars are drawn with G magnitudes between mag_bright and mag_faint from a luminosity
    function dN/dm ~ 10^(0.3 m) and BP-RP colours around 1.0, uniformly inside a square of
    half-width `radius_arcmin` (None: just enough for every site's field of view and drift).
    `n_comparisons` stars of G in target +- comparison_range are placed where every site sees
    them; one of them is the `variable` (None: no variable comparison); `n_saturated` stars
    of G ~ saturated_mag (bright enough to saturate every camera) are placed away from them,
    inside some of the fields of view.
    """

    target_name: str = "TOI-0000"
    ra_deg: float = 94.5933
    dec_deg: float = 24.7867
    target_mag_g: float = 12.2
    target_bp_rp: float = 0.85
    target_variability: Variability | None = None
    n_stars: int = 200
    mag_bright: float = 9.5
    mag_faint: float = 17.5
    radius_arcmin: float | None = None
    n_comparisons: int = 5
    comparison_range: float = 1.0
    variable: Variability | None = None
    n_saturated: int = 2
    saturated_mag: float = 7.8


@dataclass(frozen=True)
class Site:
    """An observer: location, telescope, camera, filter, sky, schedule and troubles.

    Photometry: `throughput` (telescope x filter x quantum efficiency) and the aperture set the
    zero point; extinction (mag/airmass) has a colour part `extinction_colour` (mag/airmass per
    mag of BP-RP); `colour_term` (mag per mag of BP-RP) is the band mismatch of this system.
    Schedule: `n_lights` exposures of `exptime_s` spread over [window_start_h, window_end_h]
    (hours from the reference time; the cadence never drops below exposure + readout).
    Troubles: `clock_offset_s` (header time minus true time), tracking drift (stored pixels
    per hour, in the first frame's axes), a re-centring at `recentre_at` (fraction of the
    run), a meridian flip when the target crosses the meridian (`meridian_flip`), cirrus.
    """

    name: str
    longitude_deg: float
    latitude_deg: float
    elevation_m: float
    camera: Camera
    filter: str = "V"
    telescope: str = "0.2-m Newtonian"
    aperture_m: float = 0.2
    central_obstruction: float = 0.3
    focal_length_mm: float = 1000.0
    throughput: float = 0.45
    extinction: float = 0.15
    extinction_colour: float = -0.02
    colour_term: float = 0.03
    sky_mag: float = 21.0
    sky_gradient: float = 0.03
    seeing_arcsec: float = 2.0
    seeing_variation: float = 0.1
    moffat_beta: float = 3.0
    window_start_h: float = -1.0
    window_end_h: float = 1.0
    n_lights: int = 10
    exptime_s: float = 60.0
    n_bias: int = 5
    n_dark: int = 5
    n_flat: int = 5
    n_flat_dark: int = 0
    flat_exptime_s: float = 2.0
    flat_level: float = 0.45
    extra_flat_filters: tuple[str, ...] = ()
    clock_offset_s: float = 0.0
    camera_angle_deg: float = 0.0
    parity: int = 1
    pointing_offset_arcsec: tuple[float, float] = (0.0, 0.0)
    #: How far the pointing the headers write (RA/DEC, OBJCTRA/OBJCTDEC) misses the real one,
    #: (east, north) arcsec: mounts report where they think they point.
    header_pointing_error_arcsec: tuple[float, float] = (0.0, 0.0)
    drift_px_per_hour: tuple[float, float] = (0.0, 0.0)
    drift_jitter_px: float = 0.3
    recentre_at: float | None = None
    meridian_flip: bool = False
    flip_after_min: float = 5.0
    flip_pause_s: float = 240.0
    cirrus: tuple[Cirrus, ...] = ()
    observer: str = "Observer"

    @property
    def pixel_scale_arcsec(self) -> float:
        """Arcseconds per stored (binned) pixel."""
        return 206.264806 * self.camera.pixel_size_um * self.camera.binning / self.focal_length_mm

    @property
    def collecting_area_m2(self) -> float:
        return math.pi / 4.0 * self.aperture_m ** 2 * (1.0 - self.central_obstruction ** 2)

    @property
    def zero_point(self) -> float:
        """Magnitude (in this site's band, above the atmosphere) giving 1 detected e-/s."""
        rate = FILTERS[self.filter]["photon_rate"] * self.collecting_area_m2 * self.throughput
        return 2.5 * math.log10(rate)


@dataclass(frozen=True)
class SimulationConfig:
    """One simulated night: the field, an optional planet, the sites.

    reference_utc: ISO UTC time the sites' windows (hours) count from. noise_aperture_fwhm:
    radius, in FWHMs, of the aperture the truth's expected target noise is computed for.
    render_floor_e: each star is drawn out to where its profile falls below this many
    electrons per pixel (and at least to where 1e-3 of its flux lies outside), at most
    max_render_radius_px. c_y: Osborn et al.'s scintillation correction. threads: Numba
    threads for rendering (None: all).
    """

    name: str
    reference_utc: str
    field: Field = field(default_factory=Field)
    planet: Planet | None = None
    sites: tuple[Site, ...] = ()
    noise_aperture_fwhm: float = 2.0
    render_floor_e: float = 0.02
    max_render_radius_px: float = 120.0
    c_y: float = 1.5
    threads: int | None = None
    description: str = ""

    def with_sites(self, **changes) -> "SimulationConfig":
        """A copy with the same changes applied to every site (e.g. n_lights=5)."""
        return dataclasses.replace(
            self, sites=tuple(dataclasses.replace(s, **changes) for s in self.sites))

    def with_cameras(self, **changes) -> "SimulationConfig":
        """A copy with the same changes applied to every site's camera (e.g. width=64)."""
        return dataclasses.replace(self, sites=tuple(
            dataclasses.replace(s, camera=dataclasses.replace(s.camera, **changes))
            for s in self.sites))


def validate(config: SimulationConfig) -> None:
    """Raise EngineValueError for a configuration the simulator cannot honour."""
    if not config.sites:
        raise EngineValueError("a simulation needs at least one site")
    names = [s.name for s in config.sites]
    if len(set(names)) != len(names):
        raise EngineValueError(f"site names must be unique, got {names}")
    for site in config.sites:
        _validate_site(site)
    if config.field.n_stars < 0 or config.field.n_comparisons < 0:
        raise EngineValueError("star counts must be >= 0")
    if config.planet is not None:
        _validate_planet(config.planet)


def _validate_site(s: Site) -> None:
    """A site's filters, camera, frame counts, observing window, optics and sky."""
    where = f"site {s.name!r}"
    if s.filter not in FILTERS:
        raise EngineValueError(
            f"{where}: unknown filter {s.filter!r}; known: {sorted(FILTERS)}")
    for band in s.extra_flat_filters:
        if band not in FILTERS:
            raise EngineValueError(f"{where}: unknown flat filter {band!r}")
    _validate_camera(s.camera, where)
    if s.n_lights < 1 or s.exptime_s <= 0:
        raise EngineValueError(f"{where}: needs n_lights >= 1 and exptime_s > 0")
    if min(s.n_bias, s.n_dark, s.n_flat, s.n_flat_dark) < 0:
        raise EngineValueError(f"{where}: calibration frame counts must be >= 0")
    if s.window_end_h <= s.window_start_h:
        raise EngineValueError(f"{where}: window_end_h must be after window_start_h")
    if s.moffat_beta <= 1.0:
        raise EngineValueError(f"{where}: moffat_beta must be > 1")
    if s.parity not in (1, -1):
        raise EngineValueError(f"{where}: parity must be 1 or -1")
    if s.recentre_at is not None and not (0.0 < s.recentre_at < 1.0):
        raise EngineValueError(f"{where}: recentre_at must be a fraction in (0, 1)")
    for cloud in s.cirrus:
        if not (0.0 <= cloud.depth < 1.0) or cloud.fwhm_min <= 0:
            raise EngineValueError(f"{where}: cirrus depth must be in [0, 1), fwhm_min > 0")


def _validate_camera(c: Camera, where: str) -> None:
    """The acquisition program and file conventions, then the sensor's geometry and electronics."""
    if c.software not in ("nina", "maxim", "observatory", "lco"):
        raise EngineValueError(
            f"{where}: camera software must be nina, maxim, observatory or lco")
    if c.processed and c.software != "lco":
        raise EngineValueError(f"{where}: only lco cameras write processed frames")
    if c.jd_reference not in ("start", "mid", "end"):
        raise EngineValueError(f"{where}: jd_reference must be start, mid or end")
    if c.width < 16 or c.height < 16:
        raise EngineValueError(f"{where}: camera frames must be at least 16 x 16 pixels")
    if c.binning not in (1, 2, 3, 4):
        raise EngineValueError(f"{where}: binning must be 1-4")
    if c.adc_bits not in (12, 14, 16):
        raise EngineValueError(f"{where}: adc_bits must be 12, 14 or 16")
    if c.bayer_pattern is not None and (c.bayer_pattern not in ("RGGB", "BGGR", "GRBG", "GBRG")
                                        or c.overscan_columns):
        raise EngineValueError(f"{where}: bayer_pattern must be RGGB, BGGR, GRBG or GBRG "
                               "(and a colour camera has no overscan strip)")
    if c.overscan_side not in ("left", "right"):
        raise EngineValueError(f"{where}: overscan_side must be 'left' or 'right'")
    if not 0.0 < c.hot_pixel_e_per_s[0] <= c.hot_pixel_e_per_s[1]:
        raise EngineValueError(f"{where}: hot_pixel_e_per_s must be (low, high) with "
                               f"0 < low <= high")
    if c.gain_e_per_adu <= 0 or c.read_noise_e < 0 or c.full_well_e <= 0:
        raise EngineValueError(f"{where}: gain and full well must be > 0, read noise >= 0")


def _validate_planet(p: Planet) -> None:
    if p.period_days <= 0 or p.rp_rs <= 0 or p.a_rs <= 1 or not (0 < p.inc_deg <= 90):
        raise EngineValueError("planet needs period > 0, rp_rs > 0, a_rs > 1, 0 < inc <= 90")
