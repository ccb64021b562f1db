"""The flux of a limb-darkened star occulted by an opaque disk: Mandel & Agol's scalar cores.

What this module promises
-------------------------
- `_flux(z, p, u1, u2)` is the analytic Mandel & Agol (2002) flux for the quadratic law
  I(mu) = 1 - u1 (1 - mu) - u2 (1 - mu)^2, for every geometry of their Table 1 (no overlap,
  partial overlap, planet inside the disk, the contacts z = 1 - p and z = 1 + p, z = p, z = 0) and
  for 1 <= p <= 10 (a body larger than the star, hidden completely when z <= p - 1). Its accuracy
  is stated by `engine.kernels.transit.occulted_flux`, the validating entry point.
- `_cel` is Bulirsch's complete elliptic integral, which every elliptic term below calls.
- Every core is a pure scalar function: no global state, safe from any thread. They trust their
  arguments: engine.kernels.transit checks them and holds the array drivers.

How the flux is computed
------------------------
Write the law as I = c0 + c1 mu + c2 mu^2 with c0 = 1 - u1 - u2, c1 = u1 + 2 u2, c2 = -u2. The
blocked flux is c0 A0 + c1 A1 + c2 A2, where An is the integral of mu^n over the overlap O of the
two disks, and the total flux is pi (1 - u1/3 - u2/6).

- A0 is the lens area and A2 = A0 - (integral of r^2 over O). Both follow from Green's theorem
  with the boundary of O made of an arc of the unit circle (half-angle kappa1, seen from the star's
  centre) and an arc of the planet's circle (half-angle kappa0, seen from the planet's centre):
  (integral of r^2) = (1/2) [kappa1 + kappa0 p^2 (p^2 + 2 z^2) - D (1 + z^2 + 5 p^2) / 2], with D
  twice the area of the triangle (star centre, planet centre, an intersection point), computed with
  Kahan's stable formula. The angles come from atan2, never from an arccos of a rounded cosine.
- A1 needs complete elliptic integrals. We use the forms of Agol, Luger & Foreman-Mackey (2020,
  AJ 159, 123) for the linear term, which replace Mandel & Agol's Lambda/eta cases by one expression
  each for k^2 < 1 and k^2 > 1 (k^2 = (1 - (z - p)^2) / (4 z p)), every integral being one call of
  Bulirsch's general complete integral cel(kc, p, a, b), whose third-kind parameter stays > 0
  except exactly at z = p (handled by its own closed form, as are z = 0 and z + p = 1).
"""

from __future__ import annotations

import math

from engine.kernels._jit import jit

_PI = math.pi
_TWO_PI = 2.0 * math.pi
_HALF_PI = 0.5 * math.pi

# cel converges quadratically: once two successive means agree to _CEL_TOL the result is exact to
# rounding. _CEL_MAX_ITER is a guard that is never reached for kc in (0, 1].
_CEL_TOL = 1e-9
_CEL_MAX_ITER = 64

# The cores are compiled without fastmath: several expressions below are ordered on purpose
# ((z - 1)(z + 1) + p^2, Kahan's triangle) and reassociation would undo that.

@jit(fastmath=False)
def _cel(kc, p, a, b):
    """Bulirsch's complete elliptic integral cel(kc, p, a, b), for 0 < kc <= 1 and p > 0.

    cel = integral over [0, pi/2] of (a cos^2 t + b sin^2 t) /
          ((cos^2 t + p sin^2 t) sqrt(cos^2 t + kc^2 sin^2 t)) dt.
    K(k) = cel(kc, 1, 1, 1), E(k) = cel(kc, 1, 1, kc^2), (E - kc^2 K) / k^2 = cel(kc, 1, 1, 0).
    Bulirsch (1969), Numer. Math. 13, 305: a Gauss/Landen transformation that squares the
    error each step.
    """
    if kc <= 0.0:
        kc = 1e-300  # the caller never asks for kc = 0; keep the loop finite if rounding does
    root_p = math.sqrt(p)
    b = b / root_p
    e = kc
    m = 1.0
    for _ in range(_CEL_MAX_ITER):
        f = a
        a = a + b / root_p
        g = e / root_p
        b = 2.0 * (b + f * g)
        root_p = root_p + g
        g = m
        m = m + kc
        if abs(g - kc) <= g * _CEL_TOL:
            break
        kc = 2.0 * math.sqrt(e)
        e = kc * m
    return _HALF_PI * (a * m + b) / (m * (m + root_p))


@jit(fastmath=False)
def _triangle_twice_area(a, b, c):
    """Twice the area of a triangle with sides a, b, c (0 if they do not close), Kahan's way."""
    # Sort so that a >= b >= c; the parentheses below are essential to the stability.
    if a < b:
        a, b = b, a
    if b < c:
        b, c = c, b
    if a < b:
        a, b = b, a
    q = (a + (b + c)) * (c - (a - b)) * (c + (a - b)) * (a + (b - c))
    if q <= 0.0:
        return 0.0
    return 0.5 * math.sqrt(q)


@jit(fastmath=False)
def _linear_term(z, p):
    """Lambda(z, p) of Agol, Luger & Foreman-Mackey (2020), for 0 < z and p - 1 < z < 1 + p.

    The integral of mu over the overlap of the two disks is A1 = (2 pi [p > z] + Lambda) / 3.
    Lambda is continuous in z; the jump of [p > z] at z = p is that of the third-kind integral.
    Mandel & Agol's Table 1 maps onto the branches below as: cases 5, 6, 7 (z = p, below, at and
    above p = 1/2) -> z == p; case 4 (z = 1 - p) -> z + p == 1; cases 2, 8 (partial) -> k^2 < 1;
    cases 3, 9 (inside) -> k^2 > 1. Cases 1 (no overlap), 10 (z = 0) and 11 (star hidden) are
    handled in `_flux`.
    """
    if z == p:
        # The third-kind parameter vanishes on this line; closed forms in E and (E - kc^2 K)/k^2.
        if p == 0.5:
            return _PI - 4.0 / 3.0
        m = 4.0 * p * p
        if p < 0.5:
            kc = math.sqrt((1.0 - 2.0 * p) * (1.0 + 2.0 * p))
            e_k = _cel(kc, 1.0, 1.0, kc * kc)
            d_k = _cel(kc, 1.0, 1.0, 0.0)
            return _PI + 2.0 / 3.0 * ((2.0 * m - 3.0) * e_k - m * d_k)
        kc = math.sqrt((2.0 * p - 1.0) * (2.0 * p + 1.0)) / (2.0 * p)
        e_k = _cel(kc, 1.0, 1.0, kc * kc)
        d_k = _cel(kc, 1.0, 1.0, 0.0)
        return _PI + (-m * e_k + (2.0 * m - 3.0) * d_k) / (3.0 * p)

    one_minus_dm2 = (1.0 - (z - p)) * (1.0 + (z - p))   # 1 - (z - p)^2, > 0 here
    s_m1 = (z + p) - 1.0
    if s_m1 == 0.0:
        # z + p = 1 (k = 1): the elliptic integrals reduce to elementary functions.
        lam = 2.0 * math.acos(1.0 - 2.0 * p) - 4.0 / 3.0 * (3.0 + 2.0 * p - 8.0 * p * p) * \
            math.sqrt(p * (1.0 - p))
        if p > 0.5:
            lam -= _TWO_PI
        return lam
    if s_m1 > 0.0:
        # Partial overlap, k^2 < 1 (modulus k^2 itself).
        kc2 = s_m1 * ((z + p) + 1.0) / (4.0 * z * p)
        kc = math.sqrt(kc2)
        e_k = _cel(kc, 1.0, 1.0, kc2)
        d_k = _cel(kc, 1.0, 1.0, 0.0)
        zmp = z - p
        pi_k = _cel(kc, zmp * zmp * kc2, 0.0, 3.0 * kc2 * zmp * (z + p))
        return one_minus_dm2 * (pi_k + (-3.0 + 6.0 * p * p + 2.0 * z * p) * d_k
                                - 4.0 * z * p * e_k) / (3.0 * math.sqrt(z * p))
    # Planet inside the disk, k^2 > 1 (modulus 1 / k^2).
    one_minus_sp2 = -s_m1 * (1.0 + (z + p))              # 1 - (z + p)^2, > 0 here
    kc2 = one_minus_sp2 / one_minus_dm2
    kc = math.sqrt(kc2)
    ratio = (z - p) / (z + p)
    n = ratio * ratio * kc2
    mu = 3.0 * ratio / one_minus_dm2
    e_k = _cel(kc, 1.0, 1.0, kc2)
    pi_k = _cel(kc, n, 1.0 + mu, n + mu)
    return 2.0 / 3.0 * math.sqrt(one_minus_dm2) * (
        one_minus_sp2 * pi_k - (4.0 - 7.0 * p * p - z * z) * e_k)


@jit(fastmath=False)
def _flux(z, p, u1, u2):
    """Relative flux for separation z >= 0 (may be inf) and radius ratio p > 0. Scalar core."""
    if not z < 1.0 + p:
        return 1.0                      # no overlap (also z = inf)
    if z * z == 0.0:
        z = 0.0                         # z < 1.5e-154: concentric to double precision
    if z <= p - 1.0:
        return 0.0                      # the star is hidden completely
    c0 = 1.0 - u1 - u2
    c1 = u1 + 2.0 * u2
    c2 = -u2
    total = _PI * (1.0 - u1 / 3.0 - u2 / 6.0)
    p2 = p * p
    if z == 0.0:
        # Concentric, p < 1 here: rings of radius r < p are blocked.
        area = _PI * p2
        a1 = -_TWO_PI / 3.0 * math.expm1(1.5 * math.log1p(-p2))
        a2 = _PI * p2 * (1.0 - 0.5 * p2)
        return 1.0 - (c0 * area + c1 * a1 + c2 * a2) / total
    if z <= 1.0 - p:
        # The planet's disk lies inside the star's.
        area = _PI * p2
        r2_integral = 0.5 * _PI * p2 * (p2 + 2.0 * z * z)
    else:
        # Partial overlap: the lens bounded by two arcs.
        twice_area = _triangle_twice_area(1.0, z, p)   # = z p sin(kappa0) = z sin(kappa1)
        # cos(kappa0) = (z^2 + p^2 - 1) / (2 z p), cos(kappa1) = (1 + z^2 - p^2) / (2 z); the
        # numerators are written so that they keep their relative accuracy where they are small
        # near a contact (v - 1 is exact for v near 1).
        v, w = (z, p) if z > p else (p, z)
        kappa0 = math.atan2(2.0 * twice_area, (v - 1.0) * (v + 1.0) + w * w)
        kappa1 = math.atan2(2.0 * twice_area, (1.0 - p) * (1.0 + p) + z * z)
        area = kappa1 + p2 * kappa0 - twice_area
        r2_integral = 0.5 * (kappa1 + kappa0 * p2 * (p2 + 2.0 * z * z)
                             - 0.5 * twice_area * (1.0 + z * z + 5.0 * p2))
    lam = _linear_term(z, p)
    a1 = (lam + _TWO_PI) / 3.0 if p > z else lam / 3.0
    a2 = area - r2_integral
    return 1.0 - (c0 * area + c1 * a1 + c2 * a2) / total
