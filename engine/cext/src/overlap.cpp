// Exact circle-pixel overlap: see include/engine/overlap.hpp for the contract.
//
// The disk is centred at the origin. The area inside a rectangle is an integral over x of the
// height of the disk's vertical chord clipped to [y0, y1]. Splitting x where the chord crosses
// y0 and y1 leaves pieces that are either plain rectangles (exact) or integrals of
// s(x) = sqrt(r^2 - x^2), whose primitive is (x s(x) + r^2 asin(x / r)) / 2. The asin
// difference is taken as one atan2 so that narrow pieces near the rim lose no precision.
#include "engine/overlap.hpp"

#include <algorithm>
#include <cmath>

namespace engine {
namespace {

// Half chord length of the disk at abscissa x (|x| <= r), written to avoid cancellation.
inline double half_chord(double x, double r) noexcept {
    const double d = (r - x) * (r + x);
    return d > 0.0 ? std::sqrt(d) : 0.0;
}

// Integral of s(x) over [a, b], with -r <= a <= b <= r.
inline double chord_integral(double a, double b, double r) noexcept {
    if (b <= a) return 0.0;
    const double sa = half_chord(a, r);
    const double sb = half_chord(b, r);
    // asin(b / r) - asin(a / r) as the angle between the unit vectors (sa, a) and (sb, b).
    const double angle = std::atan2(b * sa - a * sb, sa * sb + a * b);
    return 0.5 * ((b * sb - a * sa) + r * r * angle);
}

// Length of [a, b] intersected with [lo, hi].
inline double overlap_length(double a, double b, double lo, double hi) noexcept {
    return std::max(0.0, std::min(b, hi) - std::max(a, lo));
}

// Integral of (s(x) - h) over [a, b] intersected with [lo, hi].
inline double rim_piece(double a, double b, double lo, double hi, double h, double r) noexcept {
    const double u = std::max(a, lo);
    const double v = std::min(b, hi);
    if (v <= u) return 0.0;
    return chord_integral(u, v, r) - h * (v - u);
}

// Area of the disk inside [x0, x1] x [h0, h1] with 0 <= h0 <= h1.
double band_area(double x0, double x1, double h0, double h1, double r) noexcept {
    if (h0 >= r || h1 <= h0) return 0.0;
    const double c0 = half_chord(h0, r);  // the chord at height h0 spans [-c0, c0]
    if (h1 >= r) {
        // The band reaches over the top of the disk: the chord height is clipped only at h0.
        return rim_piece(x0, x1, -c0, c0, h0, r);
    }
    const double c1 = half_chord(h1, r);  // over [-c1, c1] the disk fills the whole band height
    return overlap_length(x0, x1, -c1, c1) * (h1 - h0) + rim_piece(x0, x1, -c0, -c1, h0, r) +
           rim_piece(x0, x1, c1, c0, h0, r);
}

}  // namespace

double disk_rectangle_area(double x0, double x1, double y0, double y1, double r) noexcept {
    if (!(x1 > x0) || !(y1 > y0) || !(r > 0.0)) return 0.0;
    if (y0 >= 0.0) return band_area(x0, x1, y0, y1, r);
    if (y1 <= 0.0) return band_area(x0, x1, -y1, -y0, r);  // mirror the lower half up
    return band_area(x0, x1, 0.0, y1, r) + band_area(x0, x1, 0.0, -y0, r);
}

void circle_overlap_grid(double xc, double yc, double r, std::int64_t ny, std::int64_t nx,
                         double* out) noexcept {
    for (std::int64_t j = 0; j < ny; ++j) {
        const double dy = static_cast<double>(j) - yc;
        double* row = out + j * nx;
        for (std::int64_t i = 0; i < nx; ++i) {
            row[i] = pixel_overlap(static_cast<double>(i) - xc, dy, r);
        }
    }
}

}  // namespace engine
