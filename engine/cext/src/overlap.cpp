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

// A column index computed in floating point, clamped into [-1, n] before the cast: a centre far
// off the grid must not overflow the integer conversion, and an empty range must stay empty.
inline std::int64_t clamped_index(double value, std::int64_t n) noexcept {
    return static_cast<std::int64_t>(std::min(std::max(value, -1.0), static_cast<double>(n)));
}

// atan(k / 16) for k = 0..16, correctly rounded; and pi / 2 as a sum of two doubles.
constexpr double kAtanSixteenths[17] = {
    0.0,                 0.06241880999595735, 0.12435499454676144, 0.18534794999569476,
    0.24497866312686414, 0.3028848683749714,  0.35877067027057225, 0.4124104415973873,
    0.4636476090008061,  0.5123894603107377,  0.5585993153435624,  0.6022873461349642,
    0.6435011087932844,  0.6823165548747481,  0.7188299996216245,  0.7531512809621944,
    0.7853981633974483};
constexpr double kHalfPiHigh = 1.5707963267948966;
constexpr double kHalfPiLow = 6.123233995736766e-17;

// atan2(y, x) for x, y >= 0, within about two ulps, at a fraction of std::atan2's cost (row
// loops call it tens of times per star). The ratio t of the smaller coordinate to the larger is
// reduced by the nearest tabulated angle: atan(t) = atan(c) + atan(u), u = (t - c) / (1 + t c),
// |u| <= 1/32, where atan's series to u^11 is exact to rounding. t - c is exact (Sterbenz).
inline double quadrant_angle(double y, double x) noexcept {
    const bool steep = y > x;
    const double low = steep ? x : y;
    const double high = steep ? y : x;
    if (!(high > 0.0)) return 0.0;  // the origin, as std::atan2(0, 0)
    const double t = low / high;
    const int k = static_cast<int>(t * 16.0 + 0.5);
    const double c = static_cast<double>(k) * 0.0625;
    const double u = (t - c) / (1.0 + t * c);
    const double u2 = u * u;
    const double tail = -1.0 / 7.0 + u2 * (1.0 / 9.0 - u2 * (1.0 / 11.0));
    const double series = u + u * u2 * (-1.0 / 3.0 + u2 * (1.0 / 5.0 + u2 * tail));
    const double angle = kAtanSixteenths[k] + series;
    return steep ? (kHalfPiHigh - angle) + kHalfPiLow : angle;
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

RowOverlap::Chord RowOverlap::chord(double r, double y) noexcept {
    if (std::abs(y) >= r) return Chord{0.0, 0.0};  // what the formulas give, without an atan2
    const double c = half_chord(std::abs(y), r);
    return Chord{c, edge_primitive(r, c)};
}

double RowOverlap::edge_primitive(double r, double a) noexcept {
    // asin(a / r) as atan2(a, s): near the rim asin's slope would amplify the rounding of a / r,
    // while s = sqrt((r - a)(r + a)) stays exact there.
    const double s = half_chord(a, r);
    return 0.5 * (a * s + r * r * quadrant_angle(a, s));
}

double RowOverlap::cumulative(double x) const noexcept {
    // The primitive at |x| is needed only where some band's rim lies over x.
    const double a = std::abs(x);
    bool on_rim = false;
    for (int k = 0; k < n_bands_; ++k) on_rim = on_rim || (a > bands_[k].c1 && a < bands_[k].c0);
    return cumulative(x, on_rim ? edge_primitive(r_, a) : 0.0);
}

void circle_overlap_grid(double xc, double yc, double r, std::int64_t ny, std::int64_t nx,
                         double* out) noexcept {
    if (nx <= 0 || ny <= 0) return;
    for (std::int64_t j = 0; j < ny; ++j) {
        double* row = out + j * nx;
        std::fill(row, row + nx, 0.0);
        const double y0 = static_cast<double>(j) - 0.5 - yc;
        const RowOverlap overlap(r, y0, y0 + 1.0);
        if (overlap.empty()) continue;
        // Pixels [first, last] touch the disk; [full_first, full_last] lie wholly inside it.
        const double near = overlap.near_half_width();
        const double full = overlap.full_half_width();
        const auto first = std::max<std::int64_t>(0, clamped_index(std::floor(xc - 0.5 - near) + 1.0, nx));
        const auto last = std::min<std::int64_t>(nx - 1, clamped_index(std::ceil(xc + 0.5 + near) - 1.0, nx));
        if (first > last) continue;
        std::int64_t full_first = last + 1;
        std::int64_t full_last = last;
        if (full >= 0.5) {
            full_first = std::max(first, clamped_index(std::ceil(xc + 0.5 - full), nx));
            full_last = std::min(last, clamped_index(std::floor(xc - 0.5 + full), nx));
            if (full_first > full_last) full_first = last + 1, full_last = last;
        }
        for (std::int64_t i = full_first; i <= full_last; ++i) row[i] = 1.0;
        // Rim pixels: the difference of their edges' cumulative areas, adjacent pixels sharing one.
        auto rim = [&](std::int64_t from, std::int64_t to) {
            if (from > to) return;
            double left = overlap.cumulative(static_cast<double>(from) - 0.5 - xc);
            for (std::int64_t i = from; i <= to; ++i) {
                const double right = overlap.cumulative(static_cast<double>(i) + 0.5 - xc);
                row[i] = std::min(1.0, std::max(0.0, right - left));
                left = right;
            }
        };
        rim(first, std::min(last, full_first - 1));
        rim(std::max(first, full_last + 1), last);
    }
}

}  // namespace engine
