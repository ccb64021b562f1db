// Internal to the PSF core (not part of its contract, include/engine/psf.hpp): the profiles'
// pixel integrals shared by the group fit (psf_group_fit.cpp), the shape fit (psf_shape_fit.cpp)
// and psf_pixel_grid (psf_profile.cpp). Gauss-Legendre rules on one pixel; a profile (shape set
// up once) and its pixel integrals with their derivatives; the exact erf form of an axis-aligned
// Gaussian.
#pragma once

#include <algorithm>
#include <array>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <limits>

#include "engine/flags.hpp"
#include "engine/psf.hpp"

namespace engine::psf_detail {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kPi = 3.14159265358979323846;
constexpr std::uint8_t kUnusable = flags::kPixelBad | flags::kPixelNonfinite |
                                   flags::kPixelCosmicRay | flags::kPixelSaturated;
constexpr std::uint8_t kBadBits = flags::kPixelBad | flags::kPixelNonfinite | flags::kPixelCosmicRay;

inline std::size_t at(std::int64_t v) noexcept { return static_cast<std::size_t>(v); }

// ----------------------------------------------------------------------------------------------
// Gauss-Legendre rules on one pixel, [-1/2, 1/2]: rule n (1..kMaxNodes) has nodes t and weights
// w (summing to 1), found by Newton's method on the Legendre polynomial P_n.
// ----------------------------------------------------------------------------------------------

constexpr int kMaxNodes = 24;

struct Rules {
    std::array<std::array<double, kMaxNodes>, kMaxNodes + 1> node{};
    std::array<std::array<double, kMaxNodes>, kMaxNodes + 1> weight{};
    Rules() {
        node[1][0] = 0.0;  // the midpoint rule
        weight[1][0] = 1.0;
        for (int n = 2; n <= kMaxNodes; ++n) {
            for (int k = 0; k < n; ++k) {
                double t = std::cos(kPi * (k + 0.75) / (n + 0.5));  // near the k-th root
                double derivative = 1.0;
                for (int step = 0; step < 100; ++step) {
                    double p0 = 1.0, p1 = t;  // P_{m-1}, P_m by the three-term recurrence
                    for (int m = 2; m <= n; ++m) {
                        const double p2 = ((2.0 * m - 1.0) * t * p1 - (m - 1.0) * p0) / m;
                        p0 = p1;
                        p1 = p2;
                    }
                    derivative = n * (t * p1 - p0) / (t * t - 1.0);  // P_n'(t)
                    const double dt = p1 / derivative;
                    t -= dt;
                    if (std::fabs(dt) < 1e-16) break;
                }
                node[at(n)][at(k)] = 0.5 * t;
                weight[at(n)][at(k)] = 1.0 / ((1.0 - t * t) * derivative * derivative);
            }
        }
    }
};

inline const Rules& rules() {
    static const Rules table;  // thread-safe initialisation (C++11 magic statics)
    return table;
}

// ----------------------------------------------------------------------------------------------
// Profiles and their pixel integrals
// ----------------------------------------------------------------------------------------------

// Relative accuracy aimed at per pixel (of the pixel's value), and the absolute floor (of the
// star's flux) below which a pixel's error is not worth more nodes.
constexpr double kRelativeDigits = 25.33;  // ln(1e11)
constexpr double kLogAbsoluteTolerance = -32.24;  // ln(1e-14)

// Terms of the Gauss-Legendre error bound on a few Bernstein ellipses of a unit interval (see
// Profile::node_count): (rho + 1/rho)/4 - 1/2, ((rho - 1/rho)/4)^2, log(64/15) - log(rho^2 - 1)
// and 2 log rho.
struct EllipseTerms {
    double stretch, height, constant, log_rho2;
};

inline const std::array<EllipseTerms, 15>& ellipses() {
    static const std::array<EllipseTerms, 15> table = [] {
        const double rhos[15] = {1.2, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 200};
        std::array<EllipseTerms, 15> t{};
        for (std::size_t k = 0; k < 15; ++k) {
            const double rho = rhos[k];
            const double h = (rho - 1.0 / rho) / 4.0;
            t[k] = {(rho + 1.0 / rho) / 4.0 - 0.5, h * h,
                    std::log(64.0 / 15.0) - std::log(rho * rho - 1.0), 2.0 * std::log(rho)};
        }
        return t;
    }();
    return table;
}

struct Profile {
    PsfProfile kind = PsfProfile::kMoffat;
    double a = 1.0, b = 0.0, c = 1.0, beta = 2.5;
    double det = 1.0;
    double norm = 1.0;   // peak surface brightness of a unit-flux profile
    double major = 1.0;  // widths along the principal axes (1 / sqrt(eigenvalue))
    double minor = 1.0;
    bool separable = false;
    double sx = 0.0, sy = 0.0;  // erf scales sqrt(a/2), sqrt(c/2) of the separable Gaussian
    double px = 0.0, py = 0.0;  // their densities' peaks sqrt(a / 2 pi), sqrt(c / 2 pi)

    Profile() = default;
    Profile(PsfProfile k, const PsfShape& s, bool allow_separable) { set(k, s, allow_separable); }

    void set(PsfProfile k, const PsfShape& s, bool allow_separable) noexcept {
        kind = k;
        a = s.a;
        b = s.b;
        c = s.c;
        beta = s.beta;
        det = a * c - b * b;
        const double root = std::sqrt(det);
        norm = kind == PsfProfile::kMoffat ? (beta - 1.0) * root / kPi : root / (2.0 * kPi);
        const double mean = 0.5 * (a + c);
        const double spread = std::sqrt(0.25 * (a - c) * (a - c) + b * b);
        const double low = std::max(mean - spread, 1e-300);
        const double high = mean + spread;
        major = 1.0 / std::sqrt(low);
        minor = 1.0 / std::sqrt(high);
        separable = allow_separable && kind == PsfProfile::kGaussian && b == 0.0;
        sx = std::sqrt(0.5 * a);
        sy = std::sqrt(0.5 * c);
        px = std::sqrt(a / (2.0 * kPi));
        py = std::sqrt(c / (2.0 * kPi));
    }

    // Nodes per axis for a pixel whose centre lies at least d pixels from the star: the fewest
    // that meet the relative target on the pixel's value (or the absolute floor on the flux).
    // Two error estimates, both from the Gauss-Legendre bound |E_n| <= 64/15 M rho^(-2n) /
    // (rho^2 - 1) on the Bernstein ellipses rho of a unit interval:
    //  * the integrand, locally exp(-rate t - gamma t^2) along any line through the pixel (rate
    //    and gamma bound the first and half the second derivative of its log), grows on the
    //    ellipse by exp(rate ((rho + 1/rho)/4 - 1/2) + gamma ((rho - 1/rho)/4)^2): this governs
    //    the Gaussian everywhere and a steep Moffat's wings;
    //  * the Moffat is analytic except where q = -1, about `minor` away in the imaginary
    //    direction; seen from a pixel centred d away that point lies on the ellipse of parameter
    //    rho ~ |z| + sqrt(|z|^2 + 1), |z| = 2 sqrt(d^2 + minor^2), and bounds rho.
    // At least 2 nodes unless the pixel holds less than the absolute floor.
    int node_count(double d) const noexcept {
        const double near = std::max(d - 0.7072, 0.0);
        const double far = d + 0.7072;
        const double t = near / major;
        const bool moffat = kind == PsfProfile::kMoffat;
        const double log_local = std::log(norm) + (moffat ? -beta * std::log1p(t * t) : -0.5 * t * t);
        const double digits = std::min(log_local - kLogAbsoluteTolerance, kRelativeDigits);
        if (!(digits > 0.0)) return 1;
        const double high = 1.0 / (minor * minor);  // the quadratic form's eigenvalues
        const double low = 1.0 / (major * major);
        double rate, gamma;
        if (moffat) {
            // |grad beta log(1 + q)| <= 2 beta high r / (1 + low r^2), largest at r = 1/sqrt(low).
            const double r = std::clamp(major, near, far);
            rate = 2.0 * beta * high * r / (1.0 + low * near * near);
            gamma = beta * high;
        } else {
            rate = high * far;
            gamma = 0.5 * high;
        }
        double n = kMaxNodes;
        for (const EllipseTerms& e : ellipses())
            n = std::min(n, (rate * e.stretch + gamma * e.height + e.constant + digits) / e.log_rho2);
        if (moffat) {
            const double z = 2.0 * std::sqrt(d * d + minor * minor);
            const double rho = z + std::sqrt(z * z + 1.0);
            n = std::max(n, digits / (2.0 * std::log(rho)));
        }
        return static_cast<int>(std::min<double>(kMaxNodes, std::max(2.0, std::ceil(n))));
    }
};

// The pixel integral of a unit-flux profile over the pixel whose centre lies at (dx, dy) from the
// star, and its derivatives with respect to the star's position (x0, y0).
struct PixelValue {
    double value = 0.0;
    double dx0 = 0.0;
    double dy0 = 0.0;
};

template <PsfProfile K, bool kGradient>
inline PixelValue integrate(const Profile& p, double dx, double dy, int n) noexcept {
    const Rules& r = rules();
    const double* t = r.node[at(n)].data();
    const double* w = r.weight[at(n)].data();
    double s0 = 0.0, sx = 0.0, sy = 0.0;
    for (int i = 0; i < n; ++i) {
        const double ex = dx + t[i];
        const double ax = p.a * ex;
        const double bx = p.b * ex;
        double r0 = 0.0, rx = 0.0, ry = 0.0;
        for (int j = 0; j < n; ++j) {
            const double ey = dy + t[j];
            const double q = ex * (ax + 2.0 * p.b * ey) + p.c * ey * ey;
            double g, slope;  // the integrand, and minus its derivative with respect to q
            if constexpr (K == PsfProfile::kMoffat) {
                // log(1 + q) rather than log1p(q): the rounding of 1 + q costs at most ~1e-16 of
                // the log, i.e. of g's relative accuracy, and log is about twice as fast.
                const double one_q = 1.0 + q;
                g = std::exp(-p.beta * std::log(one_q));
                slope = p.beta * g / one_q;
            } else {
                g = std::exp(-0.5 * q);
                slope = 0.5 * g;
            }
            r0 += w[j] * g;
            if constexpr (kGradient) {
                rx += w[j] * slope * (ax + p.b * ey);
                ry += w[j] * slope * (bx + p.c * ey);
            }
        }
        s0 += w[i] * r0;
        if constexpr (kGradient) {
            sx += w[i] * rx;
            sy += w[i] * ry;
        }
    }
    // d/dx0 of the integrand = -dg/dq * dq/dx0 = slope * (-2 (a ex + b ey)) * (-1)
    return {p.norm * s0, 2.0 * p.norm * sx, 2.0 * p.norm * sy};
}

// Value and all six derivatives (x0, y0, a, b, c, beta) of a pixel integral.
template <PsfProfile K>
inline void integrate_all(const Profile& p, double dx, double dy, int n, double* out) noexcept {
    const Rules& r = rules();
    const double* t = r.node[at(n)].data();
    const double* w = r.weight[at(n)].data();
    double s0 = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0, syy = 0.0, slog = 0.0;
    for (int i = 0; i < n; ++i) {
        const double ex = dx + t[i];
        double r0 = 0.0, rx = 0.0, ry = 0.0, rxx = 0.0, rxy = 0.0, ryy = 0.0, rlog = 0.0;
        for (int j = 0; j < n; ++j) {
            const double ey = dy + t[j];
            const double q = p.a * ex * ex + 2.0 * p.b * ex * ey + p.c * ey * ey;
            double g, slope;
            if constexpr (K == PsfProfile::kMoffat) {
                const double log_term = std::log1p(q);
                g = std::exp(-p.beta * log_term);
                slope = p.beta * g / (1.0 + q);
                rlog += w[j] * g * log_term;
            } else {
                g = std::exp(-0.5 * q);
                slope = 0.5 * g;
            }
            r0 += w[j] * g;
            rx += w[j] * slope * (p.a * ex + p.b * ey);
            ry += w[j] * slope * (p.b * ex + p.c * ey);
            rxx += w[j] * slope * ex * ex;
            rxy += w[j] * slope * ex * ey;
            ryy += w[j] * slope * ey * ey;
        }
        s0 += w[i] * r0;
        sx += w[i] * rx;
        sy += w[i] * ry;
        sxx += w[i] * rxx;
        sxy += w[i] * rxy;
        syy += w[i] * ryy;
        slog += w[i] * rlog;
    }
    const double value = p.norm * s0;
    out[0] = value;
    out[1] = 2.0 * p.norm * sx;
    out[2] = 2.0 * p.norm * sy;
    // d norm / d(a, b, c) = norm * (c, -2 b, a) / (2 det); dq / d(a, b, c) = (ex^2, 2 ex ey, ey^2)
    out[3] = value * p.c / (2.0 * p.det) - p.norm * sxx;
    out[4] = -value * p.b / p.det - 2.0 * p.norm * sxy;
    out[5] = value * p.a / (2.0 * p.det) - p.norm * syy;
    out[6] = K == PsfProfile::kMoffat ? value / (p.beta - 1.0) - p.norm * slog : 0.0;
}

// One axis of a separable (axis-aligned) Gaussian: for `count` consecutive pixels starting at
// pixel centre offset d0 (pixel centre minus star), the integral of the unit 1-d Gaussian over
// each pixel and its derivative with respect to the star's coordinate. Accurate in the tails:
// differences of erfc on the side away from the centre.
inline void gaussian_axis(double d0, std::int64_t count, double scale, double peak, double* value,
                          double* derivative) noexcept {
    // Edge k sits at d0 - 1/2 + k; Phi(e) = erfc(-e scale) / 2 is the 1-d cumulative.
    double e_prev = d0 - 0.5;
    double tail_prev = std::erfc(std::fabs(e_prev) * scale);
    double density_prev = peak * std::exp(-(e_prev * scale) * (e_prev * scale));
    for (std::int64_t k = 0; k < count; ++k) {
        const double e = e_prev + 1.0;
        const double tail = std::erfc(std::fabs(e) * scale);
        const double density = peak * std::exp(-(e * scale) * (e * scale));
        double v;
        if (e_prev >= 0.0) {
            v = 0.5 * (tail_prev - tail);
        } else if (e <= 0.0) {
            v = 0.5 * (tail - tail_prev);
        } else {
            v = 1.0 - 0.5 * (tail + tail_prev);
        }
        value[k] = v;
        derivative[k] = density_prev - density;  // d/dx0 of Phi(e - x0) differences
        e_prev = e;
        tail_prev = tail;
        density_prev = density;
    }
}


}  // namespace engine::psf_detail
