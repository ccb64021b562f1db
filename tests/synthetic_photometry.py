"""Synthetic photometry tables from a known truth, for the ensemble's tests and end-to-end tests.

No images: each (frame, star, aperture radius) measurement is drawn directly from the same
physics the simulator renders, so thousands of frames cost milliseconds:

    flux = 10^(-0.4 (m_band + colour_term * c - zero_point)) * t          (above the air)
           * 10^(-0.4 (k + k'' c) X) * transparency * variability * (1 + sigma_scint N)
           * encircled_energy(radius, fwhm)

m_band from Gaia G and c = BP-RP with the simulator's band polynomials (V, R, I: Riello et al.
2021), plus Poisson noise of the star, sky and read noise over the aperture's area (with the
error of the sky estimate) as separate `var_*` columns, as the photometry stage will write them.

The night has a target with a transit, one variable comparison candidate (the constant-looking
star closest to the target's brightness), grey cirrus dips, saturated and blended stars, airmass
trends with a colour-dependent extinction, and several runs (sites, filters, zero points, colour
terms, fields of view that overlap only in part, star numbers in each run's own order).

`network_night(seed)` builds the standard three-site night; `make_field` and `simulate_run` are
the pieces, `reference_catalogue` a Gaia-like table of the field (G, BP-RP, ra, dec).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from engine.flags import MeasurementFlag

__all__ = ["BANDS", "Field", "Night", "RunSpec", "make_field", "network_night",
           "reference_catalogue", "simulate_run"]

#: (band - G) polynomials in BP-RP (the simulator's, from Riello et al. 2021, Table C2).
BANDS = {
    "V": (0.02704, -0.01424, 0.2156, -0.01426),
    "R": (0.02275, -0.3961, 0.1243, 0.01396, -0.003775),
    "I": (-0.01753, -0.76, 0.0991),
}

T0 = 2460659.61052          # the transit's mid-time (BJD_TDB)
PIXEL_ARCSEC = 1.0          # pixel scale of every run's star table (arcsec / px)


@dataclass
class Field:
    """The stars of the night (index = global star id; 0 is the target)."""

    g: np.ndarray
    colour: np.ndarray
    xi: np.ndarray            # arcsec east of the target
    eta: np.ndarray           # arcsec north
    ra: np.ndarray
    dec: np.ndarray
    variable: int             # the variable comparison candidate
    variable_amplitude: float
    variable_period: float
    field_variables: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    @property
    def n(self) -> int:
        return self.g.shape[0]

    def band(self, name: str) -> np.ndarray:
        return self.g + np.polyval(BANDS[name][::-1], self.colour)

    def variability(self, time: np.ndarray) -> np.ndarray:
        """(frames, stars) relative flux of the variable stars (1 for the others)."""
        out = np.ones((time.shape[0], self.n))
        phase = 2 * np.pi * (time - T0 + 0.03) / self.variable_period
        out[:, self.variable] = 10 ** (-0.4 * self.variable_amplitude * np.cos(phase))
        for n, j in enumerate(self.field_variables):
            out[:, j] = 10 ** (-0.4 * 0.05 * np.sin(2 * np.pi * (time - T0) / (0.1 + 0.05 * n)))
        return out


@dataclass(frozen=True)
class RunSpec:
    """One run: a site's telescope and camera through one filter over part of the night."""

    site: str = "lapalma"
    telescope: str = "0.2-m Newtonian"
    filter: str = "V"
    n_frames: int = 150
    start_h: float = -1.5           # hours from mid-transit
    end_h: float = 1.5
    exptime: float = 60.0
    aperture_m: float = 0.2
    altitude_m: float = 2326.0
    zero_point: float = 21.5        # magnitude giving 1 e-/s above the atmosphere
    extinction: float = 0.13
    extinction_colour: float = -0.03
    colour_term: float = 0.05
    hour_angle_start_h: float = -1.0
    latitude_deg: float = 28.8
    sky_e_per_px_per_s: float = 3.0
    read_noise: float = 3.6
    fwhm_px: float = 3.0
    radii: tuple = (2.0, 3.0, 4.5, 6.0)
    cirrus: tuple = ((0.3, 12.0, 0.08),)     # (centre_h, fwhm_min, depth)
    haze: float = 0.0                        # rms of a slow grey haze flicker (fraction)
    pointing_arcsec: tuple = (0.0, 0.0)      # centre of the field of view (xi, eta)
    field_arcsec: float = 900.0              # half-width of the field of view
    full_well_e: float = 60000.0
    scintillation_c_y: float = 1.5
    n_background: int = 300                  # annulus pixels of the sky estimate
    shared_systematic: float = 0.0           # rms (mag) of each star's response to a
    #                                          systematic many stars share (the seeing's)

    @property
    def run_id(self) -> str:
        return f"{self.site}_20241214_{self.filter}"


@dataclass
class Night:
    """Per run (photometry, frames, stars) Arrow tables, and the truth."""

    field: Field
    specs: list
    runs: list            # dicts with photometry, frames, stars, truth
    planet: dict


def make_field(rng: np.random.Generator, n_stars: int = 200, target_g: float = 12.2,
               target_colour: float = 0.85, radius_arcsec: float = 1200.0,
               variable_amplitude: float = 0.02, n_field_variables: int = 2) -> Field:
    """Target (id 0), five comparison candidates near its brightness (one variable), the
    rest a luminosity function dN/dm ~ 10^(0.3 m) from G 9 to 17."""
    g = [target_g]
    colour = [target_colour]
    xi, eta = [0.0], [0.0]
    for _ in range(5):
        r = rng.uniform(60, 350)
        a = rng.uniform(0, 2 * np.pi)
        g.append(target_g + rng.uniform(-1.0, 0.5))
        colour.append(float(np.clip(rng.normal(0.95, 0.3), 0.3, 2.2)))
        xi.append(r * np.cos(a))
        eta.append(r * np.sin(a))
    n_rest = n_stars - len(g)
    lo, hi = 10 ** (0.3 * 9.0), 10 ** (0.3 * 17.0)
    g += list(np.log10(lo + rng.uniform(0, 1, n_rest) * (hi - lo)) / 0.3)
    giants = rng.uniform(0, 1, n_rest) < 0.3
    colour += list(np.clip(np.where(giants, rng.normal(1.6, 0.45, n_rest),
                                    rng.normal(0.95, 0.3, n_rest)), 0.2, 3.2))
    xi += list(rng.uniform(-radius_arcsec, radius_arcsec, n_rest))
    eta += list(rng.uniform(-radius_arcsec, radius_arcsec, n_rest))
    g, colour, xi, eta = map(np.asarray, (g, colour, xi, eta))
    # Two saturating stars among the candidates' neighbours, one close pair (a blend).
    g[6], g[7] = 7.6, 7.9
    xi[9], eta[9] = xi[8] + 4.0, eta[8] + 1.0
    g[9] = g[8] + 0.5
    variable = 1 + int(np.argmin(np.abs(g[1:6] - target_g)))
    dec0 = 24.7867
    ra = 94.5933 + xi / 3600.0 / np.cos(np.radians(dec0))
    dec = dec0 + eta / 3600.0
    candidates = np.arange(10, n_stars)
    field_variables = rng.choice(candidates, size=min(n_field_variables, candidates.size),
                                 replace=False) if n_field_variables else np.zeros(0, np.int64)
    return Field(g=g, colour=colour, xi=xi, eta=eta, ra=ra, dec=dec, variable=variable,
                 variable_amplitude=variable_amplitude, variable_period=0.2513,
                 field_variables=np.asarray(field_variables, dtype=np.int64))


def _airmass(spec: RunSpec, hours: np.ndarray) -> np.ndarray:
    lat, dec = math.radians(spec.latitude_deg), math.radians(24.7867)
    ha = np.radians(15.0 * (spec.hour_angle_start_h + hours - hours[0]))
    return 1.0 / (math.sin(lat) * math.sin(dec) + math.cos(lat) * math.cos(dec) * np.cos(ha))


def _ou(rng, n, sigma, corr):
    out = np.zeros(n)
    out[0] = rng.normal(0, sigma)
    for k in range(1, n):
        out[k] = corr * out[k - 1] + sigma * math.sqrt(1 - corr * corr) * rng.normal()
    return out


def _transit(time: np.ndarray, planet: dict, band: str) -> np.ndarray:
    from engine.kernels.transit import transit_light_curve

    u1, u2 = {"V": (0.44, 0.23), "R": (0.36, 0.26), "I": (0.28, 0.27)}[band]
    return np.asarray(transit_light_curve(time, planet["t0"], planet["period"], planet["rp_rs"],
                                          planet["a_rs"], planet["inc_deg"], u1, u2), dtype=float)


def simulate_run(fld: Field, spec: RunSpec, rng: np.random.Generator, planet: dict | None = None,
                 *, star_ids: bool = False, noise_columns: bool = True,
                 order_seed: int = 0) -> dict:
    """One run's photometry, frames and star tables (pyarrow) and its truth.

    star_ids: give the star table a `star_id` column (the global id); else runs are tied by
    ra/dec. noise_columns: write var_poisson, var_sky, var_read, var_scintillation (else only
    flux_err, without scintillation). Stars get run-local numbers in a shuffled order.
    """
    n = spec.n_frames
    hours = np.linspace(spec.start_h, spec.end_h, n)
    time = T0 + hours / 24.0
    airmass = _airmass(spec, hours)
    transparency = np.ones(n)
    cirrus_loss = np.zeros(n)
    for centre, fwhm_min, depth in spec.cirrus:
        sigma_h = fwhm_min / 60.0 / 2.3548
        profile = np.exp(-0.5 * ((hours - centre) / sigma_h) ** 2)
        patchy = np.clip(1.0 + _ou(rng, n, 0.25, 0.5), 0.3, 1.7)
        cirrus_factor = 1.0 - np.clip(depth * profile * patchy, 0.0, 0.95)
        transparency *= cirrus_factor
    cirrus_loss = 1.0 - transparency
    if spec.haze:
        transparency *= 1.0 - np.abs(_ou(rng, n, spec.haze, 0.9))
    fwhm = spec.fwhm_px * airmass ** 0.6 * np.exp(_ou(rng, n, 0.08, 0.8))
    scint = spec.scintillation_c_y * np.sqrt(1e-5 * spec.aperture_m ** (-4 / 3) / spec.exptime
                                             * airmass ** 3 * math.exp(-2 * spec.altitude_m / 8000))
    sky = spec.sky_e_per_px_per_s * spec.exptime * (1 + 0.2 * (airmass - 1))

    inside = ((np.abs(fld.xi - spec.pointing_arcsec[0]) < spec.field_arcsec)
              & (np.abs(fld.eta - spec.pointing_arcsec[1]) < spec.field_arcsec))
    inside[0] = True
    ids = np.flatnonzero(inside)
    if order_seed:
        ids = ids[np.random.default_rng(order_seed).permutation(ids.size)]
    target = int(np.flatnonzero(ids == 0)[0])
    m = fld.band(spec.filter)[ids] + spec.colour_term * fld.colour[ids]
    rate0 = 10 ** (-0.4 * (m - spec.zero_point))
    extinction = 10 ** (-0.4 * np.outer(airmass, spec.extinction + spec.extinction_colour
                                        * fld.colour[ids]))
    relative = fld.variability(time)[:, ids]
    target_flux = np.ones(n)
    if planet is not None:
        target_flux = _transit(time, planet, spec.filter)
        relative[:, target] *= target_flux
    expected = rate0[None, :] * spec.exptime * extinction * transparency[:, None] * relative
    systematic = np.zeros(n)
    response = np.zeros(ids.size)
    if spec.shared_systematic:
        systematic = (fwhm - fwhm.mean()) / fwhm.std()
        response = rng.normal(0.0, spec.shared_systematic, ids.size)
        expected = expected * 10 ** (-0.4 * np.outer(systematic, response))
    scint_factor = 1.0 + scint[:, None] * rng.standard_normal(expected.shape)
    total = expected * scint_factor

    x0 = (fld.xi[ids] - spec.pointing_arcsec[0]) / PIXEL_ARCSEC + 1024.0
    y0 = (fld.eta[ids] - spec.pointing_arcsec[1]) / PIXEL_ARCSEC + 1024.0
    drift = np.cumsum(rng.normal(0, 0.2, (n, 2)), axis=0)
    x = x0[None, :] + drift[:, :1]
    y = y0[None, :] + drift[:, 1:]
    sigma_psf = fwhm / 2.3548
    peak = total / (2 * np.pi * sigma_psf[:, None] ** 2) + sky[:, None]
    saturated = peak > spec.full_well_e
    d2 = (x0[:, None] - x0[None, :]) ** 2 + (y0[:, None] - y0[None, :]) ** 2
    np.fill_diagonal(d2, np.inf)
    blended = np.sqrt(d2.min(axis=1)) < max(spec.radii)

    columns = {k: [] for k in ("frame", "star", "radius", "x", "y", "flux", "flux_err",
                               "background", "background_std", "background_pixels", "area",
                               "flags", "var_poisson", "var_sky", "var_read",
                               "var_scintillation")}
    shape = expected.shape
    # Apertures are nested: a larger one holds the smaller one's pixels, so its noise is the
    # smaller one's plus that of the ring between them; the sky estimate is shared by all.
    pixel_var = sky[:, None] + spec.read_noise ** 2
    sky_error = rng.standard_normal(shape) * np.sqrt(pixel_var / spec.n_background)
    star_noise = np.zeros(shape)
    pixel_noise = np.zeros(shape)
    previous_ee = np.zeros((n, 1))
    previous_area = 0.0
    for r in sorted(spec.radii):
        ee = 1.0 - np.exp(-r * r / (2 * sigma_psf ** 2))[:, None]
        area = math.pi * r * r
        star_noise = star_noise + rng.standard_normal(shape) * np.sqrt(
            np.maximum(expected * (ee - previous_ee), 0.0))
        pixel_noise = pixel_noise + rng.standard_normal(shape) * np.sqrt(
            (area - previous_area) * pixel_var)
        previous_ee, previous_area = ee, area
        signal = total * ee
        var_poisson = np.maximum(expected * ee, 0.0)
        var_sky = area * sky[:, None] * (1 + area / spec.n_background) * np.ones(shape)
        var_read = area * spec.read_noise ** 2 * (1 + area / spec.n_background) * np.ones(shape)
        var_scint = (scint[:, None] * expected * ee) ** 2
        flux = signal + star_noise + pixel_noise - area * sky_error
        flags = np.zeros(shape, dtype=np.uint32)
        flags[saturated] |= np.uint32(MeasurementFlag.SATURATED)
        flags[:, blended] |= np.uint32(MeasurementFlag.BLENDED)
        columns["frame"].append(np.repeat(np.arange(n), ids.size))
        columns["star"].append(np.tile(np.arange(ids.size), n))
        columns["radius"].append(np.full(n * ids.size, r))
        columns["x"].append(x.ravel())
        columns["y"].append(y.ravel())
        columns["flux"].append(flux.ravel())
        err2 = var_poisson + var_sky + var_read
        columns["flux_err"].append(np.sqrt(err2).ravel())
        columns["background"].append(np.repeat(sky, ids.size))
        columns["background_std"].append(np.repeat(np.sqrt(sky + spec.read_noise ** 2), ids.size))
        columns["background_pixels"].append(np.full(n * ids.size, spec.n_background))
        columns["area"].append(np.full(n * ids.size, area))
        columns["flags"].append(flags.ravel())
        columns["var_poisson"].append(var_poisson.ravel())
        columns["var_sky"].append(var_sky.ravel())
        columns["var_read"].append(var_read.ravel())
        columns["var_scintillation"].append(var_scint.ravel())
    arrays = {k: np.concatenate(v) for k, v in columns.items()}
    if not noise_columns:
        for k in ("var_poisson", "var_sky", "var_read", "var_scintillation"):
            arrays.pop(k)
    arrays["flags"] = pa.array(arrays["flags"], pa.uint32())
    photometry = pa.table(arrays)
    frames = pa.table({
        "frame": np.arange(n, dtype=np.int64), "time_bjd_tdb": time, "airmass": airmass,
        "exptime": np.full(n, spec.exptime), "fwhm": fwhm, "sky": sky,
        "run_id": [spec.run_id] * n, "site": [spec.site] * n,
        "telescope": [spec.telescope] * n, "filter": [spec.filter] * n})
    stars = {"star": np.arange(ids.size, dtype=np.int64), "x": x0, "y": y0,
             "ra": fld.ra[ids], "dec": fld.dec[ids], "colour": fld.colour[ids],
             "is_target": ids == 0}
    if star_ids:
        stars["star_id"] = ids.astype(np.int64)
    truth = {"ids": ids, "target": target, "transparency": transparency, "cirrus_loss": cirrus_loss,
             "airmass": airmass, "time": time, "target_flux": target_flux,
             "variable": int(np.flatnonzero(ids == fld.variable)[0])
             if fld.variable in ids else None,
             "scintillation": scint, "saturated_stars": np.flatnonzero(saturated.any(axis=0)),
             "blended_stars": np.flatnonzero(blended), "systematic": systematic,
             "response": response}
    return {"photometry": photometry, "frames": frames, "stars": pa.table(stars),
            "truth": truth, "spec": spec}


PLANET = {"t0": T0, "period": 3.0, "rp_rs": 0.12, "a_rs": 9.0, "inc_deg": 87.5}


def network_specs(n_frames: int = 120) -> list:
    """The three-site night: a 0.6-m in R (pre-ingress + ingress), a 0.2-m in V (mid-transit,
    cirrus), a 0.28-m in I (egress + post-egress, thick cirrus)."""
    return [
        RunSpec(site="negev", telescope="0.6-m RC", filter="R", n_frames=n_frames,
                start_h=-2.5, end_h=-0.2, exptime=20.0, aperture_m=0.6, altitude_m=875.0,
                zero_point=23.4, extinction=0.10, extinction_colour=-0.03, colour_term=-0.04,
                hour_angle_start_h=-0.5, latitude_deg=30.6, sky_e_per_px_per_s=6.0,
                read_noise=5.5, fwhm_px=2.6, cirrus=((-1.9, 8.0, 0.03),), full_well_e=400000.0,
                pointing_arcsec=(60.0, -40.0)),
        RunSpec(site="lapalma", telescope="0.2-m Newtonian", filter="V", n_frames=n_frames,
                start_h=-1.2, end_h=1.3, exptime=60.0, aperture_m=0.2, altitude_m=2326.0,
                zero_point=21.4, extinction=0.13, extinction_colour=-0.02, colour_term=0.05,
                hour_angle_start_h=-0.6, latitude_deg=28.8, sky_e_per_px_per_s=2.0,
                read_noise=3.6, fwhm_px=3.2, cirrus=((0.3, 12.0, 0.08),),
                pointing_arcsec=(-150.0, 90.0)),
        RunSpec(site="florida", telescope="0.28-m SCT", filter="I", n_frames=n_frames,
                start_h=0.2, end_h=2.7, exptime=45.0, aperture_m=0.28, altitude_m=20.0,
                zero_point=21.6, extinction=0.09, extinction_colour=0.0, colour_term=-0.06,
                hour_angle_start_h=-2.0, latitude_deg=28.5, sky_e_per_px_per_s=20.0,
                read_noise=9.3, fwhm_px=3.6, cirrus=((1.8, 20.0, 0.15),),
                pointing_arcsec=(200.0, 120.0)),
    ]


def network_night(seed: int = 0, n_stars: int = 200, n_frames: int = 120, *,
                  star_ids: bool = False, noise_columns: bool = True, specs=None) -> Night:
    """The standard synthetic network night (see `network_specs`), deterministic per seed."""
    rng = np.random.default_rng(seed)
    fld = make_field(rng, n_stars)
    specs = network_specs(n_frames) if specs is None else specs
    runs = [simulate_run(fld, spec, np.random.default_rng([seed, k]), PLANET,
                         star_ids=star_ids, noise_columns=noise_columns, order_seed=seed + k + 1)
            for k, spec in enumerate(specs)]
    return Night(field=fld, specs=specs, runs=runs, planet=PLANET)


def reference_catalogue(fld: Field, rng: np.random.Generator | None = None,
                        error_mag: float = 0.002, limit_g: float = 16.5) -> pa.Table:
    """A Gaia-like catalogue of the field: source_id, ra, dec, G, BP_RP (G <= limit_g)."""
    rng = np.random.default_rng(1) if rng is None else rng
    keep = fld.g <= limit_g
    return pa.table({"source_id": np.flatnonzero(keep).astype(np.int64) + 10 ** 9,
                     "ra": fld.ra[keep], "dec": fld.dec[keep],
                     "G": fld.g[keep] + rng.normal(0, error_mag, keep.sum()),
                     "BP_RP": fld.colour[keep] + rng.normal(0, error_mag, keep.sum())})


# ------------------------------------------------------------------------------------------------
# The simulator's night, measured without images
# ------------------------------------------------------------------------------------------------

def _simulator_rng(*key: int) -> np.random.Generator:
    """The simulator's random streams (engine.simulation.night._rng): same seeds, same night."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence(list(key))))


def from_simulation(preset: str = "demo", seed: int = 0, radii_fwhm=(1.0, 1.5, 2.0, 3.0),
                    **overrides) -> dict:
    """Photometry tables of the simulator's night (engine.simulation), drawn without images.

    The field, the schedule and the atmosphere (airmass, seeing, cirrus and haze, sky,
    scintillation), the variable comparison, the transit, every site's zero point, extinction,
    colour term and filter are the simulator's own (`make_field`, `plan_run`, the flux formula
    of engine.simulation.night); the measurement is a Moffat aperture sum at `radii_fwhm` times
    the run's median FWHM with Poisson, sky, dark and read noise, star positions following the
    simulated drift, re-centring and meridian flip (OFF_FRAME / NEAR_EDGE / SATURATED / BLENDED
    flags). Returns {'runs': [dict(photometry, frames, stars, truth, site)], 'stars': StarField,
    'config': SimulationConfig, 'catalogue': Gaia-like pa.Table}.
    """
    from astropy.time import Time

    from engine.kernels.transit import transit_light_curve
    from engine.simulation import resolve_config
    from engine.simulation.config import filter_magnitude
    from engine.simulation.field import make_field as simulator_field
    from engine.simulation.field import variability_flux
    from engine.simulation.observing import first_frame_wcs, plan_run

    config = resolve_config(preset, overrides or None)
    field_ = simulator_field(config, _simulator_rng(seed, 0))
    reference_jd = float(Time(config.reference_utc, format="isot", scale="utc").jd)
    runs = []
    for index, site in enumerate(config.sites):
        cam = site.camera
        plan = plan_run(config, site, reference_jd, _simulator_rng(seed, 1, index))
        rng = np.random.default_rng([seed, 99, index])
        n = plan.n
        wcs = first_frame_wcs(config, site)
        x0, y0 = wcs.wcs_world2pix(field_.ra_deg, field_.dec_deg, 0)
        inside = ((x0 >= cam.data_x0) & (x0 <= cam.data_x0 + cam.width - 1)
                  & (y0 >= 0) & (y0 <= cam.height - 1))
        ids = np.flatnonzero(inside)
        t = site.exptime_s
        mag_band = filter_magnitude(site.filter, field_.mag_g[ids], field_.bp_rp[ids])
        rate0 = 10 ** (-0.4 * (mag_band + site.colour_term * field_.bp_rp[ids] - site.zero_point))
        relative = np.ones((n, ids.size))
        for star_id, v in field_.variability.items():
            if star_id in ids:
                relative[:, np.flatnonzero(ids == star_id)[0]] *= variability_flux(
                    v, plan.mid_bjd_tdb)
        transit = np.ones(n)
        if config.planet is not None and 0 in ids:
            p = config.planet
            u1, u2 = p.limb_darkening_for(site.filter)
            transit = np.asarray(transit_light_curve(
                plan.mid_bjd_tdb, p.t0_bjd_tdb, p.period_days, p.rp_rs, p.a_rs, p.inc_deg, u1,
                u2, exptime=t / 86400.0), dtype=float)
            relative[:, np.flatnonzero(ids == 0)[0]] *= transit
        extinction = 10 ** (-0.4 * np.outer(plan.airmass, site.extinction + site.extinction_colour
                                            * field_.bp_rp[ids]))
        expected = rate0[None, :] * t * extinction * plan.transparency[:, None] * relative
        total = expected * np.maximum(
            1.0 + plan.scintillation[:, None] * rng.standard_normal(expected.shape), 0.0)

        fwhm = plan.seeing_arcsec / site.pixel_scale_arcsec
        beta = site.moffat_beta
        alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
        radii = tuple(float(f) * float(np.median(fwhm)) for f in radii_fwhm)
        cx, cy = plan.rotation_center
        theta = np.radians(plan.rotation_deg)[:, None]
        xs = cx + np.cos(theta) * (x0[ids] - cx) - np.sin(theta) * (y0[ids] - cy) + plan.dx[:, None]
        ys = cy + np.sin(theta) * (x0[ids] - cx) + np.cos(theta) * (y0[ids] - cy) + plan.dy[:, None]
        sky = plan.sky_e_per_px[:, None] * np.ones((1, ids.size))
        dark = cam.dark_e_per_s * t
        pixel_var = sky + dark + cam.read_noise_e ** 2
        n_background = 400
        sky_error = rng.standard_normal(expected.shape) * np.sqrt(pixel_var / n_background)
        peak = total * (beta - 1.0) / (np.pi * alpha[:, None] ** 2) + sky
        saturation = min(cam.full_well_e, (2 ** cam.adc_bits - 1) * cam.adc_step_e
                         - cam.bias_level_adu * cam.gain_e_per_adu)
        d2 = (x0[ids][:, None] - x0[ids][None, :]) ** 2 + (y0[ids][:, None] - y0[ids][None, :]) ** 2
        np.fill_diagonal(d2, np.inf)
        blended = np.sqrt(d2.min(axis=1)) < max(radii)
        columns = {k: [] for k in ("frame", "star", "radius", "x", "y", "flux", "flux_err",
                                   "background", "area", "flags", "var_poisson", "var_sky",
                                   "var_read", "var_dark", "var_scintillation")}
        star_noise = np.zeros(expected.shape)
        pixel_noise = np.zeros(expected.shape)
        previous_ee, previous_area = np.zeros((n, 1)), 0.0
        for r in radii:
            ee = (1.0 - (1.0 + (r / alpha) ** 2) ** (1.0 - beta))[:, None]
            area = np.pi * r * r
            star_noise = star_noise + rng.standard_normal(expected.shape) * np.sqrt(
                np.maximum(expected * (ee - previous_ee), 0.0))
            pixel_noise = pixel_noise + rng.standard_normal(expected.shape) * np.sqrt(
                (area - previous_area) * pixel_var)
            previous_ee, previous_area = ee, area
            flux = total * ee + star_noise + pixel_noise - area * sky_error
            grow = 1.0 + area / n_background
            var = {"var_poisson": np.maximum(expected * ee, 0.0), "var_sky": area * sky * grow,
                   "var_read": np.full(expected.shape, area * cam.read_noise_e ** 2 * grow),
                   "var_dark": np.full(expected.shape, area * dark * grow),
                   "var_scintillation": (plan.scintillation[:, None] * expected * ee) ** 2}
            flags = np.zeros(expected.shape, dtype=np.uint32)
            off = ((xs < cam.data_x0 - 0.5) | (xs > cam.data_x0 + cam.width - 0.5)
                   | (ys < -0.5) | (ys > cam.height - 0.5))
            edge = ((xs - r < cam.data_x0 - 0.5) | (xs + r > cam.data_x0 + cam.width - 0.5)
                    | (ys - r < -0.5) | (ys + r > cam.height - 0.5))
            flags[edge] |= np.uint32(MeasurementFlag.NEAR_EDGE)
            flags[off] |= np.uint32(MeasurementFlag.OFF_FRAME)
            flags[peak > 0.9 * saturation] |= np.uint32(MeasurementFlag.SATURATED)
            flags[:, blended] |= np.uint32(MeasurementFlag.BLENDED)
            flux = np.where(off, np.nan, flux)
            columns["frame"].append(np.repeat(np.arange(n), ids.size))
            columns["star"].append(np.tile(np.arange(ids.size), n))
            columns["radius"].append(np.full(n * ids.size, r))
            columns["x"].append(xs.ravel())
            columns["y"].append(ys.ravel())
            columns["flux"].append(flux.ravel())
            columns["flux_err"].append(np.sqrt(sum(v for k, v in var.items()
                                                   if k != "var_scintillation")).ravel())
            columns["background"].append(sky.ravel())
            columns["area"].append(np.full(n * ids.size, area))
            columns["flags"].append(flags.ravel())
            for k, v in var.items():
                columns[k].append(v.ravel())
        arrays = {k: np.concatenate(v) for k, v in columns.items()}
        arrays["flags"] = pa.array(arrays["flags"], pa.uint32())
        run_id = f"{site.name}_{site.filter}"
        frames = pa.table({
            "frame": np.arange(n, dtype=np.int64), "time_bjd_tdb": plan.mid_bjd_tdb,
            "airmass": plan.airmass, "exptime": np.full(n, t), "fwhm": fwhm,
            "sky": plan.sky_e_per_px, "run_id": [run_id] * n, "site": [site.name] * n,
            "telescope": [site.telescope] * n, "filter": [site.filter] * n})
        stars = pa.table({"star": np.arange(ids.size, dtype=np.int64), "x": x0[ids],
                          "y": y0[ids], "ra": field_.ra_deg[ids], "dec": field_.dec_deg[ids],
                          "colour": field_.bp_rp[ids], "is_target": ids == 0})
        variable = [int(np.flatnonzero(ids == i)[0]) for i in np.flatnonzero(field_.is_variable)
                    if i in ids]
        truth = {"ids": ids, "transparency": plan.transparency, "airmass": plan.airmass,
                 "time": plan.mid_bjd_tdb, "target_flux": transit,
                 "target": int(np.flatnonzero(ids == 0)[0]) if 0 in ids else None,
                 "variable": variable[0] if variable else None,
                 "scintillation": plan.scintillation, "radii": radii}
        runs.append({"photometry": pa.table(arrays), "frames": frames, "stars": stars,
                     "truth": truth, "site": site})
    keep = field_.mag_g <= 17.0
    catalogue = pa.table({"source_id": np.flatnonzero(keep).astype(np.int64),
                          "ra": field_.ra_deg[keep], "dec": field_.dec_deg[keep],
                          "G": field_.mag_g[keep], "BP_RP": field_.bp_rp[keep]})
    return {"runs": runs, "stars": field_, "config": config, "catalogue": catalogue}
