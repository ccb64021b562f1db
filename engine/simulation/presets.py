"""The named simulated nights: tiny, demo, variable, large, hotpixels.

The network presets (tiny, demo, large) watch one transit of a hot Jupiter ("SIM-1 b") around a
G = 12.2 Sun-like star at RA 06h18m, Dec +24d47m on the night of 2024 December 14/15, from:

- negev    (34.8 E, 30.6 N, 875 m; Asia): an observatory 0.6-m with a 1k CCD in R, IRAF-style
           headers, a 32-column overscan strip, fpack-compressed files, a TAN WCS; it catches
           the pre-ingress baseline and ingress before the target gets low;
- lapalma  (17.9 W, 28.8 N, 2326 m; Europe/Africa): a 0.2-m Newtonian with a 12-bit CMOS
           (ZWO ASI1600MM-like) under N.I.N.A. in V; it covers the middle of the transit, a
           meridian flip (the target crosses the meridian ~35 min into the run) and a cirrus
           band during the transit;
- florida  (81.2 W, 28.5 N, 20 m; Americas): a 0.28-m SCT with an SBIG STF-8300M binned 2x2
           under MaxIm DL in I; it covers egress and the post-egress baseline, with a PC clock
           2.5 s fast, tracking drift of ~90 px and a re-centring, and thick cirrus after egress.

The windows overlap by about an hour, every site observes at night (Sun below -27 deg) with the
target above 38 deg. `variable` is one site (a backyard in Germany, MaxIm DL, V) watching a
high-amplitude delta Scuti star through a winter night; `large` is the La Palma CMOS alone,
1000 frames of 2048 x 2048. `lco`, `lco_processed` and `jd_mid` are one tiny site each whose
files follow a convention that trips readers (see `_conventions`). `hotpixels` is the raw
night the calibration could not help: a warm, uncooled CMOS on a long-focus SCT (stars 7.5 px
wide) with thousands of bright hot pixels, frequent cosmic rays and no calibration frames.

Camera profiles, each the tiny La Palma night with another camera: `cmos12` (a 12-bit CMOS
stored as it counts, no gain in its headers), `mixed_bitpix` (a 16-bit CCD night with one
float32 light frame), `bayer` (a colour CMOS whose bright stars saturate).
"""

from __future__ import annotations

import dataclasses

from engine.simulation.config import (Camera, Cirrus, Field, Planet, SimulationConfig, Site,
                                      Variability)

__all__ = ["PRESETS"]

_REFERENCE_UTC = "2024-12-15T02:30:00"      # planned mid-transit
_T0_BJD_TDB = 2460659.61052                 # the transit's true mid-time (BJD_TDB)

# ----------------------------------------------------------------------------------------------
# Cameras (demo sizes; the other presets resize them). The demo's night is sized towards issue
# #14 (`python -m engine demo` in 30 s on a 2-core machine, products within 250 MB): 45 lights
# at Negev and La Palma (0.6 and 0.4 Mpx), 60 at Florida
# (0.3 Mpx: with 45 its constant stars scatter 0.89 of their stored errors, outside the 0.9-1.1
# that tests/test_network_night.py holds), 7 biases a site.
# ----------------------------------------------------------------------------------------------

CMOS_NINA = Camera(
    name="asi1600", model="ZWO ASI1600MM Pro", software="nina", sensor="cmos",
    width=768, height=576, binning=1, pixel_size_um=3.8,
    gain_e_per_adu=5.0 / 16.0, gain_setting=0, offset_setting=10, read_noise_e=3.6,
    adc_bits=12, full_well_e=20000.0, bias_level_adu=800.0, bias_jitter_adu=3.0,
    bias_column_rms_adu=4.0, bias_ramp_adu=0.0, dark_e_per_s=0.006, set_temp_c=-10.0,
    amp_glow_e=45.0, amp_glow_index=0.6, amp_glow_scale_px=70.0, hot_pixel_fraction=5e-4,
    prnu=0.004, vignetting=0.22, dust_donuts=4, readout_s=1.5)

CCD_MAXIM = Camera(
    name="stf8300", model="SBIG STF-8300M", software="maxim", sensor="ccd",
    width=640, height=480, binning=2, pixel_size_um=5.4,
    gain_e_per_adu=0.37, read_noise_e=9.3, adc_bits=16, full_well_e=50000.0,
    bias_level_adu=1020.0, bias_jitter_adu=2.0, bias_column_rms_adu=1.5, bias_ramp_adu=8.0,
    dark_e_per_s=0.08, set_temp_c=-15.0, hot_pixel_fraction=3e-4, hot_columns=1,
    prnu=0.006, vignetting=0.25, dust_donuts=5, readout_s=6.0)

CCD_OBSERVATORY = Camera(
    name="imager", model="e2v CCD47-10 imager", software="observatory", sensor="ccd",
    width=768, height=768, binning=1, pixel_size_um=13.0,
    gain_e_per_adu=1.6, read_noise_e=5.5, adc_bits=16, full_well_e=100000.0,
    bias_level_adu=550.0, bias_jitter_adu=4.0, bias_column_rms_adu=0.6, bias_ramp_adu=12.0,
    dark_e_per_s=0.002, set_temp_c=-80.0, hot_pixel_fraction=1e-4, prnu=0.008,
    vignetting=0.08, dust_donuts=3, overscan_columns=32, overscan_side="left", bloom=True,
    compress=True, wcs=True, readout_s=12.0)

#: An uncooled planetary / guide camera (ZWO ASI290MM-like) at ambient temperature: a warm
#: sensor's hot pixels (0.2 % of them, 5-200 e-/s) and a cosmic-ray rate raised so that most
#: small frame holds several hits.
CMOS_UNCOOLED = Camera(
    name="asi290", model="ZWO ASI290MM", software="nina", sensor="cmos",
    width=400, height=300, binning=1, pixel_size_um=2.9,
    gain_e_per_adu=3.6 / 16.0, gain_setting=0, offset_setting=20, read_noise_e=3.2,
    adc_bits=12, full_well_e=14600.0, bias_level_adu=320.0, bias_jitter_adu=2.0,
    bias_column_rms_adu=2.0, bias_ramp_adu=0.0, dark_e_per_s=0.5, set_temp_c=25.0,
    hot_pixel_fraction=2e-3, hot_pixel_e_per_s=(5.0, 200.0), prnu=0.006, vignetting=0.1,
    dust_donuts=1, readout_s=0.5, cosmic_ray_rate=4.0)

# ----------------------------------------------------------------------------------------------
# Sites of the network night (demo counts)
# ----------------------------------------------------------------------------------------------

NEGEV = Site(
    name="negev", longitude_deg=34.763, latitude_deg=30.596, elevation_m=875.0,
    camera=CCD_OBSERVATORY, filter="R", telescope="0.6-m Ritchey-Chretien", aperture_m=0.6,
    central_obstruction=0.35, focal_length_mm=4800.0, throughput=0.5, extinction=0.10,
    extinction_colour=-0.01, colour_term=-0.04, sky_mag=20.6, sky_gradient=0.01,
    seeing_arcsec=1.6, moffat_beta=3.5, window_start_h=-2.5, window_end_h=-0.2, n_lights=45,
    exptime_s=20.0, n_bias=7, n_dark=5, n_flat=7, flat_exptime_s=4.0, flat_level=0.40,
    camera_angle_deg=0.3, parity=1, pointing_offset_arcsec=(6.0, -4.0),
    drift_px_per_hour=(0.8, -0.5), drift_jitter_px=0.1,
    cirrus=(Cirrus(centre_h=-1.9, fwhm_min=8.0, depth=0.03),), observer="Observatory staff")

LAPALMA = Site(
    name="lapalma", longitude_deg=-17.879, latitude_deg=28.760, elevation_m=2326.0,
    camera=CMOS_NINA, filter="V", telescope="0.2-m f/5 Newtonian", aperture_m=0.2,
    central_obstruction=0.33, focal_length_mm=1000.0, throughput=0.42, extinction=0.13,
    extinction_colour=-0.02, colour_term=0.05, sky_mag=21.7, sky_gradient=0.02,
    seeing_arcsec=1.8, moffat_beta=3.0, window_start_h=-1.2, window_end_h=1.3, n_lights=45,
    exptime_s=60.0, n_bias=7, n_dark=5, n_flat=7, n_flat_dark=5, flat_exptime_s=2.0,
    flat_level=0.45, extra_flat_filters=("R",), camera_angle_deg=2.5, parity=-1,
    pointing_offset_arcsec=(-15.0, 9.0), drift_px_per_hour=(4.0, 2.5), drift_jitter_px=0.4,
    meridian_flip=True, cirrus=(Cirrus(centre_h=0.3, fwhm_min=12.0, depth=0.08),),
    observer="A. Amateur")

FLORIDA = Site(
    name="florida", longitude_deg=-81.2, latitude_deg=28.5, elevation_m=20.0,
    camera=CCD_MAXIM, filter="I", telescope="0.28-m SCT f/6.3", aperture_m=0.28,
    central_obstruction=0.38, focal_length_mm=1764.0, throughput=0.28, extinction=0.09,
    extinction_colour=0.0, colour_term=-0.06, sky_mag=18.6, sky_gradient=0.05,
    seeing_arcsec=3.0, moffat_beta=2.5, window_start_h=0.2, window_end_h=2.7, n_lights=60,
    exptime_s=45.0, n_bias=7, n_dark=5, n_flat=7, flat_exptime_s=3.0, flat_level=0.40,
    clock_offset_s=2.5, camera_angle_deg=-88.0, parity=1, pointing_offset_arcsec=(20.0, 12.0),
    drift_px_per_hour=(45.0, -30.0), drift_jitter_px=0.5, recentre_at=0.6,
    cirrus=(Cirrus(centre_h=1.8, fwhm_min=20.0, depth=0.15),), observer="B. Backyard")

PLANET = Planet(
    t0_bjd_tdb=_T0_BJD_TDB, period_days=3.0, rp_rs=0.12, a_rs=9.0, inc_deg=87.5,
    limb_darkening=(("V", 0.44, 0.23), ("R", 0.36, 0.26), ("I", 0.28, 0.27)), name="SIM-1 b")

FIELD = Field(
    target_name="SIM-1", ra_deg=94.5933, dec_deg=24.7867, target_mag_g=12.2, target_bp_rp=0.85,
    n_stars=220, mag_bright=9.5, mag_faint=17.5, n_comparisons=5, comparison_range=1.0,
    variable=Variability(period_days=0.2513, epoch_bjd_tdb=_T0_BJD_TDB - 0.03,
                         amplitudes_mag=(0.02,), phases_rad=(0.0,), kind="pulsating"),
    n_saturated=2, saturated_mag=8.5)


def _tiny() -> SimulationConfig:
    sites = (
        dataclasses.replace(NEGEV, camera=dataclasses.replace(
            CCD_OBSERVATORY, width=192, height=192, overscan_columns=16), n_lights=10,
            n_bias=3, n_dark=3, n_flat=3),
        dataclasses.replace(LAPALMA, camera=dataclasses.replace(CMOS_NINA, width=256, height=192),
                            n_lights=10, n_bias=3, n_dark=3, n_flat=3, n_flat_dark=2,
                            drift_px_per_hour=(2.0, 1.0),
                            cirrus=(Cirrus(centre_h=0.3, fwhm_min=40.0, depth=0.08),)),
        dataclasses.replace(FLORIDA, camera=dataclasses.replace(CCD_MAXIM, width=160, height=120),
                            n_lights=10, n_bias=3, n_dark=3, n_flat=3,
                            drift_px_per_hour=(9.0, -6.0), pointing_offset_arcsec=(6.0, 4.0),
                            cirrus=(Cirrus(centre_h=1.8, fwhm_min=40.0, depth=0.15),)),
    )
    return SimulationConfig(
        name="tiny", reference_utc=_REFERENCE_UTC, planet=PLANET, sites=sites,
        field=dataclasses.replace(FIELD, n_stars=45, n_comparisons=4, saturated_mag=9.6),
        description="every feature of the network night on very small frames (unit tests)")


def _demo() -> SimulationConfig:
    return SimulationConfig(
        name="demo", reference_utc=_REFERENCE_UTC, planet=PLANET, sites=(NEGEV, LAPALMA, FLORIDA),
        field=FIELD, description="one transit covered in three pieces by three sites")


def _large() -> SimulationConfig:
    site = dataclasses.replace(
        LAPALMA, camera=dataclasses.replace(CMOS_NINA, width=2048, height=2048), n_lights=1000,
        exptime_s=20.0, window_start_h=-3.1, window_end_h=3.0, n_bias=10, n_dark=10, n_flat=10,
        n_flat_dark=10, extra_flat_filters=(), drift_px_per_hour=(6.0, 3.5),
        cirrus=(Cirrus(centre_h=0.3, fwhm_min=12.0, depth=0.08),
                Cirrus(centre_h=2.2, fwhm_min=25.0, depth=0.12)))
    return SimulationConfig(
        name="large", reference_utc=_REFERENCE_UTC, planet=PLANET, sites=(site,),
        # A rich field: over 500 stars on the frame above the default detection threshold.
        field=dataclasses.replace(FIELD, n_stars=2000, mag_faint=16.5),
        description="1000 frames of 2048 x 2048 from one site, 500+ stars (benchmarks)")


def _variable() -> SimulationConfig:
    epoch = 2460659.5268  # BJD_TDB near 2024-12-15 00:30 UTC
    site = Site(
        name="germany", longitude_deg=11.0, latitude_deg=49.5, elevation_m=400.0,
        camera=dataclasses.replace(CCD_MAXIM, width=640, height=480), filter="V",
        telescope="0.28-m SCT f/6.3", aperture_m=0.28, central_obstruction=0.38,
        focal_length_mm=1764.0, throughput=0.38, extinction=0.22, extinction_colour=-0.03,
        colour_term=0.04, sky_mag=20.4, sky_gradient=0.04, seeing_arcsec=2.8, moffat_beta=2.6,
        window_start_h=-3.5, window_end_h=3.5, n_lights=150, exptime_s=30.0, n_bias=10,
        n_dark=5, n_flat=7, flat_exptime_s=3.0, flat_level=0.40, camera_angle_deg=1.5,
        parity=1, pointing_offset_arcsec=(8.0, -10.0), drift_px_per_hour=(12.0, 7.0),
        drift_jitter_px=0.4, recentre_at=0.55,
        cirrus=(Cirrus(centre_h=-1.0, fwhm_min=15.0, depth=0.06),), observer="C. Garden")
    field = Field(
        target_name="SIM-DSCT", ra_deg=106.9717, dec_deg=32.4622, target_mag_g=11.6,
        target_bp_rp=0.45,
        target_variability=Variability(period_days=0.0893, epoch_bjd_tdb=epoch,
                                       amplitudes_mag=(0.14, 0.05, 0.02),
                                       phases_rad=(3.1416, 2.5, 1.9), kind="pulsating"),
        n_stars=180, mag_bright=9.5, mag_faint=17.0, n_comparisons=5, comparison_range=1.2,
        variable=Variability(period_days=0.41, epoch_bjd_tdb=epoch + 0.1, amplitudes_mag=(0.025,),
                             phases_rad=(0.0,), kind="rotational"),
        n_saturated=1, saturated_mag=8.0)
    return SimulationConfig(
        name="variable", reference_utc="2024-12-15T00:30:00", planet=None, sites=(site,),
        field=field, description="one backyard site following a delta Scuti star all night")


# ----------------------------------------------------------------------------------------------
# Camera profiles: one small site each (the tiny La Palma night), for the traps of real cameras
# ----------------------------------------------------------------------------------------------

def _camera_night(name: str, camera: Camera, description: str, **site) -> SimulationConfig:
    tiny = _tiny()
    site = {"n_lights": 40, "n_bias": 4, "n_flat": 8, **site}
    base = dataclasses.replace(tiny.sites[1], camera=camera, cirrus=(), meridian_flip=False,
                               **site)
    # No planet: the target's scatter is then all noise, to hold against the noise model.
    return SimulationConfig(name=name, reference_utc=_REFERENCE_UTC, planet=None,
                            sites=(base,), field=tiny.field, description=description)


def _cmos12() -> SimulationConfig:
    # A 12-bit CMOS stored as it counts (0..4095), 5 e- per ADU, and no gain in its headers;
    # the ADC's top comes before the full well, so saturated pixels pile up at 4095.
    camera = dataclasses.replace(
        CMOS_NINA, width=256, height=192, scaled_adc=False, header_gain=False,
        gain_e_per_adu=5.0, full_well_e=30000.0, bias_level_adu=50.0, bias_jitter_adu=0.2,
        bias_column_rms_adu=0.25, amp_glow_e=0.0)
    return _camera_night("cmos12", camera, "a 12-bit CMOS without GAIN in its headers "
                         "(values up to 4095)")


def _mixed_bitpix() -> SimulationConfig:
    # A 16-bit CCD (MaxIm DL) whose fourth light frame was rewritten as float32.
    camera = dataclasses.replace(CCD_MAXIM, width=160, height=120, float_light_frames=(3,))
    return _camera_night("mixed_bitpix", camera, "one float32 light frame among uint16 ones",
                         filter="I", telescope=FLORIDA.telescope, aperture_m=0.28,
                         focal_length_mm=1764.0, throughput=0.28, sky_mag=18.6,
                         seeing_arcsec=3.0, exptime_s=15.0)


def _bayer() -> SimulationConfig:
    # A colour CMOS (RGGB), 12 bits stored x16, whose brightest stars saturate green pixels.
    camera = dataclasses.replace(CMOS_NINA, width=256, height=192, bayer_pattern="RGGB",
                                 amp_glow_e=0.0)
    return _camera_night("bayer", camera, "a colour (Bayer RGGB) CMOS with saturated stars")
def _hotpixels() -> SimulationConfig:
    site = dataclasses.replace(
        LAPALMA, name="backyard", camera=CMOS_UNCOOLED, filter="V", telescope="0.2-m SCT f/10",
        aperture_m=0.2, central_obstruction=0.34, focal_length_mm=2000.0, seeing_arcsec=1.8,
        seeing_variation=0.05, window_start_h=-0.4, window_end_h=0.4, n_lights=12,
        exptime_s=60.0, n_bias=0, n_dark=0, n_flat=0, n_flat_dark=0, extra_flat_filters=(),
        camera_angle_deg=0.0, parity=1, pointing_offset_arcsec=(3.0, -2.0),
        drift_px_per_hour=(3.0, 2.0), meridian_flip=False, cirrus=(), observer="D. Warm")
    return SimulationConfig(
        name="hotpixels", reference_utc=_REFERENCE_UTC, planet=PLANET, sites=(site,),
        field=dataclasses.replace(FIELD, n_stars=120, n_comparisons=4, n_saturated=0),
        description="raw frames of an uncooled CMOS: hot pixels and cosmic rays, no calibration")


#: Named configurations; copy one with dataclasses.replace (or .with_sites / .with_cameras).
def _conventions(name: str) -> SimulationConfig:
    """One tiny site whose files follow a convention that trips readers: LCO raw ('lco'), LCO
    pipeline products ('lco_processed': calibrated, BPM extension, no calibration frames) and
    a MaxIm DL night whose JD marks mid-exposure while DATE-OBS marks the start ('jd_mid')."""
    tiny = _tiny()
    negev, _, florida = tiny.sites
    if name == "jd_mid":
        site = dataclasses.replace(florida, camera=dataclasses.replace(
            florida.camera, jd_reference="mid"), clock_offset_s=0.0, exptime_s=80.0)
    else:
        camera = dataclasses.replace(negev.camera, name="fa03", model="Sinistro fa03",
                                     software="lco", overscan_columns=0, wcs=False,
                                     processed=name == "lco_processed")
        site = dataclasses.replace(negev, camera=camera, telescope="1m0-10", clock_offset_s=0.0)
        if camera.processed:
            site = dataclasses.replace(site, n_bias=0, n_dark=0, n_flat=0)
    return dataclasses.replace(tiny, name=name, sites=(site,))


PRESETS: dict[str, SimulationConfig] = {
    "tiny": _tiny(),
    "demo": _demo(),
    "variable": _variable(),
    "large": _large(),
    "lco": _conventions("lco"),
    "lco_processed": _conventions("lco_processed"),
    "jd_mid": _conventions("jd_mid"),
    "cmos12": _cmos12(),
    "mixed_bitpix": _mixed_bitpix(),
    "bayer": _bayer(),
    "hotpixels": _hotpixels(),
}
