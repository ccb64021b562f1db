"""The analytic transit kernel against a direct disk integral, analytic answers and brute force."""

import math

import numpy as np
import pytest
from scipy import special

import reference
from engine.errors import EngineValueError
from engine.kernels import occultation
from engine.kernels.transit import occulted_flux, projected_separation, transit_light_curve

# (u1, u2): uniform, linear only, typical solar-type, strong, quadratic only, non-physical pair.
LIMB_DARKENING = [(0.0, 0.0), (0.6, 0.0), (0.4, 0.25), (1.0, 0.0), (0.0, 1.0), (0.9, -0.3)]
RADII = [0.01, 0.05, 0.1, 0.2, 0.5]


def _special_separations(p):
    """0, p, 1 - p, 1, 1 + p and points just either side of each (relative 1e-9 and 1e-4)."""
    zs = {0.0, 1e-9, 1e-4, 0.5 * p, 0.7, 1.0 + 0.5 * p, 1.0 + p + 1e-3}
    for centre in (p, abs(1.0 - p), 1.0, 1.0 + p):
        for step in (0.0, 1e-9, 1e-4):
            zs.update({centre * (1.0 - step), centre * (1.0 + step)})
    return np.array(sorted(zs))


def _lens_area(z, p):
    """Area shared by the unit disk and a disk of radius p at distance z (textbook formula)."""
    if z >= 1.0 + p:
        return 0.0
    if z <= abs(1.0 - p):
        return math.pi * min(1.0, p) ** 2
    kappa0 = math.acos((p * p + z * z - 1.0) / (2.0 * p * z))
    kappa1 = math.acos((1.0 - p * p + z * z) / (2.0 * z))
    return (p * p * kappa0 + kappa1
            - 0.5 * math.sqrt(4.0 * z * z - (1.0 + z * z - p * p) ** 2))


# ---------------------------------------------------------------------------- occulted_flux


@pytest.mark.parametrize("p", RADII)
def test_matches_disk_integral_at_every_special_separation(p):
    zs = _special_separations(p)
    worst = 0.0
    for u1, u2 in LIMB_DARKENING:
        fast = occulted_flux(zs, p, u1, u2)
        slow = np.array([reference.transit_occulted_flux(z, p, u1, u2) for z in zs])
        worst = max(worst, float(np.max(np.abs(fast - slow) / slow)))
    # Requirement 1e-6; the kernel is good to ~1e-16 and the reference to ~1e-13 (seen: 9e-15).
    assert worst < 1e-12


@pytest.mark.parametrize("p", [0.9, 1.0, 1.5, 3.0, 10.0])
def test_large_occulters_match_disk_integral(p):
    zs = np.concatenate([_special_separations(p), [p - 1.0 + 1e-6, 0.5 * (p + 1.0)]])
    zs = zs[zs >= 0.0]
    for u1, u2 in [(0.0, 0.0), (0.4, 0.25), (0.0, 1.0)]:
        fast = occulted_flux(zs, p, u1, u2)
        slow = np.array([reference.transit_occulted_flux(z, p, u1, u2) for z in zs])
        # The reference's own rounding grows with p (its arccos argument cancels): at p = 10 it is
        # off by 3.6e-12 where a 30-digit integral agrees with the kernel to 1e-16.
        np.testing.assert_allclose(fast, slow, rtol=0, atol=1e-12 if p < 5.0 else 1e-11)


def test_random_parity_with_disk_integral():
    rng = np.random.default_rng(20260512)
    worst = 0.0
    for _ in range(300):
        p = rng.choice([rng.uniform(0.003, 0.3), rng.uniform(0.3, 1.5)])
        z = rng.uniform(0.0, 1.0 + p + 0.05)
        u1 = rng.uniform(0.0, 1.0)
        u2 = rng.uniform(-0.4, 0.8)
        fast = occulted_flux(np.array([z]), p, u1, u2)[0]
        slow = reference.transit_occulted_flux(z, p, u1, u2)
        assert abs(fast - slow) < 1e-12, (z, p, u1, u2)
        if slow > 1e-3:
            worst = max(worst, abs(fast - slow) / slow)
    assert worst < 1e-12


@pytest.mark.parametrize("p", RADII + [0.9, 1.0, 1.7])
def test_uniform_source_blocks_the_lens_area(p):
    zs = np.array([0.0, 0.3 * p, p, abs(1.0 - p) * 0.999, abs(1.0 - p) * 1.001, 1.0,
                   0.5 * (abs(1 - p) + 1 + p), (1.0 + p) * 0.9999, 1.0 + p, 2.0 + p])
    expected = np.array([1.0 - _lens_area(z, p) / math.pi for z in zs])
    np.testing.assert_allclose(occulted_flux(zs, p, 0.0, 0.0), expected, rtol=0, atol=1e-13)


@pytest.mark.parametrize("p", RADII + [0.7])
@pytest.mark.parametrize("u1, u2", LIMB_DARKENING)
def test_centred_planet_analytic(p, u1, u2):
    # At z = 0 rings r < p are blocked: integral of mu^n 2 pi r dr in closed form.
    c0, c1, c2 = 1.0 - u1 - u2, u1 + 2.0 * u2, -u2
    blocked = math.pi * (c0 * p**2 + c1 * 2.0 / 3.0 * (1.0 - (1.0 - p * p) ** 1.5)
                         + c2 * (p**2 - 0.5 * p**4))
    expected = 1.0 - blocked / (math.pi * (1.0 - u1 / 3.0 - u2 / 6.0))
    assert occulted_flux(0.0, p, u1, u2) == pytest.approx(expected, rel=0, abs=1e-15)
    if (u1, u2) == (0.0, 0.0):
        assert 1.0 - occulted_flux(0.0, p, 0.0, 0.0) == pytest.approx(p * p, rel=1e-14)


def test_flux_is_exactly_one_without_overlap_and_zero_when_hidden():
    z = np.array([1.1, 1.1 + 1e-16, 5.0, 1e300, np.inf, -np.inf, -3.0])
    assert np.all(occulted_flux(z, 0.1, 0.4, 0.25) == 1.0)
    assert np.all(occulted_flux([0.0, 0.5, 1.0], 2.0, 0.4, 0.25) == 0.0)
    assert 0.0 < occulted_flux(1.0 + 1e-9, 2.0, 0.4, 0.25) < 1e-6
    # p = 1 and z so small that z^2 underflows: the star is hidden to double precision.
    assert occulted_flux([1e-300, 0.0], 1.0, 0.4, 0.25).tolist() == [0.0, 0.0]
    assert occulted_flux(1e-300, 0.3, 0.4, 0.25) == occulted_flux(0.0, 0.3, 0.4, 0.25)


def test_negative_separation_and_shapes():
    z = np.linspace(-1.2, 1.2, 24).reshape(2, 3, 4)
    flux = occulted_flux(z, 0.15, 0.3, 0.2)
    assert flux.shape == z.shape
    np.testing.assert_array_equal(flux, occulted_flux(np.abs(z), 0.15, 0.3, 0.2))
    assert occulted_flux(0.5, 0.1, 0.3, 0.2).shape == ()
    assert occulted_flux([], 0.1, 0.3, 0.2).shape == (0,)


def test_flux_is_continuous_across_special_points():
    for p in (0.1, 0.5, 0.9):
        for centre in (p, 1.0 - p):
            zs = centre + np.array([-1e-13, -1e-15, 0.0, 1e-15, 1e-13])
            flux = occulted_flux(zs, p, 0.4, 0.25)
            assert np.ptp(flux) < 1e-12


def test_bulirsch_cel_matches_scipy():
    for m in (1e-6, 0.1, 0.5, 0.9, 0.999999):
        kc = math.sqrt(1.0 - m)
        assert occultation._cel(kc, 1.0, 1.0, 1.0) == pytest.approx(special.ellipk(m), rel=1e-14)
        assert occultation._cel(kc, 1.0, 1.0, kc * kc) == pytest.approx(special.ellipe(m), rel=1e-14)
        for n in (-3.0, -0.2, 0.4, 0.95):   # Pi(n, m) = R_F + n/3 R_J, 1 - n = cel's p
            pi_nm = (special.elliprf(0.0, 1.0 - m, 1.0)
                     + n / 3.0 * special.elliprj(0.0, 1.0 - m, 1.0, 1.0 - n))
            assert occultation._cel(kc, 1.0 - n, 1.0, 1.0) == pytest.approx(pi_nm, rel=1e-13)


def test_out_argument_is_filled_in_place():
    z = np.linspace(0.0, 1.3, 7)
    out = np.full(7, -1.0)
    assert occulted_flux(z, 0.1, 0.4, 0.25, out=out) is out
    np.testing.assert_array_equal(out, occulted_flux(z, 0.1, 0.4, 0.25))


def _read_only(a):
    a.flags.writeable = False
    return a


BAD_OUT = [np.zeros(5, dtype=np.float32), np.zeros(4), np.zeros(10)[::2], _read_only(np.zeros(5)),
           [0.0] * 5]


@pytest.mark.parametrize("kwargs", [
    dict(z=[0.1, np.nan]), dict(z=["a"]), dict(z=[1j]), dict(p=0.0), dict(p=-0.1),
    dict(p=np.nan), dict(p=np.inf), dict(p="big"), dict(p=10.5), dict(u1=np.nan), dict(u2=np.inf),
    dict(u1=3.0), dict(u1=2.5, u2=2.0),
])
def test_occulted_flux_rejects_bad_arguments(kwargs):
    args = dict(z=[0.1, 0.2], p=0.1, u1=0.4, u2=0.25) | kwargs
    with pytest.raises(EngineValueError):
        occulted_flux(**args)


@pytest.mark.parametrize("out", BAD_OUT)
def test_occulted_flux_rejects_bad_out(out):
    with pytest.raises(EngineValueError):
        occulted_flux(np.zeros(5), 0.1, 0.4, 0.25, out=out)


# ---------------------------------------------------------------------- projected_separation


def test_separation_matches_numpy_formula():
    time = np.linspace(-2.0, 5.0, 2001) + 1e-3 * math.pi   # no sample exactly at quadrature
    fast = projected_separation(time, 0.3, 1.7, 6.2, 86.5)
    slow = reference.transit_projected_separation(time, 0.3, 1.7, 6.2, 86.5)
    np.testing.assert_array_equal(np.isinf(fast), np.isinf(slow))
    finite = np.isfinite(slow)
    np.testing.assert_allclose(fast[finite], slow[finite], rtol=1e-12)


def test_separation_at_mid_transit_is_impact_parameter_and_behind_is_inf():
    a_rs, inc = 8.8, 87.0
    z = projected_separation([2450000.0, 2450000.0 + 3.0 * 7, 2450001.5, 2450000.75 - 1e-9],
                             2450000.0, 3.0, a_rs, inc)
    b = a_rs * math.cos(math.radians(inc))
    assert z[0] == pytest.approx(b, rel=1e-12)
    assert z[1] == pytest.approx(b, rel=1e-12)   # seven periods later
    assert z[2] == np.inf                         # half a period: behind the star
    assert z[3] == pytest.approx(a_rs, rel=1e-12)  # just before quadrature: still in front
    assert projected_separation(0.0, 0.0, 1.0, 5.0, 90.0) == 0.0


@pytest.mark.parametrize("kwargs", [
    dict(time=[0.0, np.nan]), dict(time=[np.inf]), dict(t0=np.nan), dict(period=0.0),
    dict(period=-1.0), dict(a_rs=1.0), dict(a_rs=0.5), dict(inc_deg=-0.1), dict(inc_deg=90.5),
    dict(inc_deg=np.nan),
])
def test_projected_separation_rejects_bad_arguments(kwargs):
    args = dict(time=[0.0, 0.1], t0=0.0, period=3.0, a_rs=8.0, inc_deg=88.0) | kwargs
    with pytest.raises(EngineValueError):
        projected_separation(**args)


# ----------------------------------------------------------------------- transit_light_curve

# (name, period, rp_rs, a_rs, impact parameter, u1, u2)
SYSTEMS = [
    ("hot Jupiter", 3.0, 0.1, 8.8, 0.3, 0.4, 0.25),
    ("grazing hot Jupiter", 3.0, 0.1, 8.8, 1.03, 0.4, 0.25),
    ("small planet, ingress 2.3 min", 10.0, 0.01, 20.0, 0.0, 0.45, 0.2),
    ("deep, p = 0.3", 1.5, 0.3, 5.0, 0.5, 0.3, 0.3),
]


def _inclination(a_rs, b):
    return math.degrees(math.acos(b / a_rs))


@pytest.mark.parametrize("name, period, p, a_rs, b, u1, u2", SYSTEMS)
def test_exposure_average_matches_brute_force(name, period, p, a_rs, b, u1, u2):
    inc = _inclination(a_rs, b)
    exptime = 10.0 / 1440.0
    depth = 1.0 - occulted_flux(b, p, u1, u2)

    def flux_of_time(t):
        return occulted_flux(projected_separation(t, 0.0, period, a_rs, inc), p, u1, u2)

    # Mid-exposure times sweeping across ingress, the bottom and egress of one transit.
    half_duration = period / (2.0 * math.pi) * math.asin(
        math.sqrt(max((1.0 + p) ** 2 - b * b, 0.0)) / a_rs / math.sin(math.radians(inc)))
    time = np.linspace(-half_duration - exptime, half_duration + exptime, 41) + 0.37e-3
    fast = transit_light_curve(time, 0.0, period, p, a_rs, inc, u1, u2, exptime=exptime)
    slow = reference.transit_exposure_average(flux_of_time, time, exptime)
    # The documented bound: integration error below 1e-6 of the depth (so < 1e-6 relative flux).
    assert np.max(np.abs(fast - slow)) < 1e-6 * depth
    # Supersampling more converges to the same answer.
    fine = transit_light_curve(time, 0.0, period, p, a_rs, inc, u1, u2, exptime=exptime,
                               supersample=32)
    assert np.max(np.abs(fine - slow)) < 1e-9 * depth + 1e-12


def test_zero_exposure_is_the_instantaneous_flux():
    time = np.linspace(-0.1, 0.1, 301)
    inc = _inclination(8.8, 0.4)
    z = projected_separation(time, 0.0, 3.0, 8.8, inc)
    np.testing.assert_array_equal(
        transit_light_curve(time, 0.0, 3.0, 0.1, 8.8, inc, 0.4, 0.25),
        occulted_flux(z, 0.1, 0.4, 0.25))


def test_light_curve_is_symmetric_about_mid_transit():
    dt = np.linspace(0.0, 0.09, 200)
    inc = _inclination(8.8, 0.2)
    for exptime in (0.0, 2.0 / 1440.0, 10.0 / 1440.0):
        before = transit_light_curve(-dt, 0.0, 3.0, 0.1, 8.8, inc, 0.4, 0.25, exptime=exptime)
        after = transit_light_curve(dt, 0.0, 3.0, 0.1, 8.8, inc, 0.4, 0.25, exptime=exptime)
        np.testing.assert_allclose(before, after, rtol=0, atol=1e-14)


def test_depth_of_central_transit_without_limb_darkening_is_p_squared():
    for p in (0.01, 0.1, 0.3):
        flux = transit_light_curve(5.0, 5.0, 2.0, p, 7.0, 90.0, 0.0, 0.0)
        assert 1.0 - flux == pytest.approx(p * p, rel=1e-13)


def test_flux_is_exactly_one_out_of_transit_and_behind_the_star():
    time = np.array([0.2, -0.2, 1.5, 0.75, 2.25, -1.0 + 0.15])
    for exptime in (0.0, 10.0 / 1440.0, 0.05):
        flux = transit_light_curve(time, 0.0, 3.0, 0.1, 8.8, 89.0, 0.4, 0.25, exptime=exptime)
        assert np.all(flux == 1.0)
    # A planet whose path misses the star never dims it.
    flux = transit_light_curve(np.linspace(-0.1, 0.1, 51), 0.0, 3.0, 0.1, 8.8, 80.0, 0.4, 0.25,
                               exptime=0.01)
    assert np.all(flux == 1.0)


def test_light_curve_is_periodic():
    time = np.linspace(-0.08, 0.08, 97)
    inc = _inclination(8.8, 0.5)
    args = (0.0, 3.0, 0.1, 8.8, inc, 0.4, 0.25)
    first = transit_light_curve(time, *args, exptime=0.004)
    later = transit_light_curve(time + 3.0 * 11, *args, exptime=0.004)
    np.testing.assert_allclose(first, later, rtol=0, atol=1e-12)


def test_per_point_exposures_threads_and_shapes():
    time = np.linspace(-0.07, 0.07, 600)                   # enough to take the parallel driver
    exptime = np.linspace(0.0, 0.01, 600)
    args = (0.0, 3.0, 0.1, 8.8, 88.0, 0.4, 0.25)
    flux = transit_light_curve(time, *args, exptime=exptime, threads=1)
    np.testing.assert_array_equal(flux, transit_light_curve(time, *args, exptime=exptime,
                                                            threads=2))
    each = [transit_light_curve(t, *args, exptime=e) for t, e in zip(time[::20], exptime[::20])]
    np.testing.assert_array_equal(flux[::20], np.array(each))
    grid = time.reshape(20, 30)
    out = np.empty((20, 30))
    result = transit_light_curve(grid, *args, exptime=exptime.reshape(20, 30), out=out)
    assert result is out
    np.testing.assert_array_equal(out.ravel(), flux)


def test_supersample_one_uses_the_middle_of_each_piece():
    args = (0.0, 3.0, 0.1, 8.8, 90.0, 0.4, 0.25)
    flux = transit_light_curve(0.0, *args, exptime=0.001, supersample=1)  # no contact inside
    assert flux == transit_light_curve(0.0, *args)


@pytest.mark.parametrize("kwargs", [
    dict(time=[0.0, np.nan]), dict(t0=np.inf), dict(period=0.0), dict(rp_rs=0.0),
    dict(rp_rs=-0.1), dict(rp_rs=np.nan), dict(rp_rs=11.0), dict(a_rs=1.0), dict(a_rs=1.05),
    dict(inc_deg=91.0), dict(inc_deg=-1.0), dict(u1=np.nan), dict(u1=3.0), dict(exptime=-0.001),
    dict(exptime=[0.01, 0.02, 0.03]), dict(exptime=[0.01, np.nan]), dict(exptime=4.0),
    dict(supersample=0), dict(supersample=65), dict(supersample=2.5), dict(supersample=True),
    dict(threads=0),
])
def test_light_curve_rejects_bad_arguments(kwargs):
    args = dict(time=[0.0, 0.01], t0=0.0, period=3.0, rp_rs=0.1, a_rs=8.8, inc_deg=89.0,
                u1=0.4, u2=0.25) | kwargs
    with pytest.raises(EngineValueError):
        transit_light_curve(**args)


@pytest.mark.parametrize("out", BAD_OUT)
def test_light_curve_rejects_bad_out(out):
    with pytest.raises(EngineValueError):
        transit_light_curve(np.zeros(5), 0.0, 3.0, 0.1, 8.8, 89.0, 0.4, 0.25, out=out)
