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
    const double c = half_chord(std::min(std::abs(y), r), r);
    return Chord{c, primitive(r, c)};
}

RowOverlap::RowOverlap(double r, double y0, double y1, Chord at_y0, Chord at_y1) noexcept : r_(r) {
    // Fold the band onto y >= 0: a band across the centre becomes two bands starting at 0.
    struct Piece {
        double h0, h1;
        Chord c0, c1;
    };
    const Chord top{r, 0.25 * 3.14159265358979323846 * r * r};  // the chord through the centre
    Piece pieces[2];
    int n = 0;
    if (y0 >= 0.0) {
        pieces[n++] = Piece{y0, y1, at_y0, at_y1};
    } else if (y1 <= 0.0) {
        pieces[n++] = Piece{-y1, -y0, at_y1, at_y0};
    } else {
        pieces[n++] = Piece{0.0, y1, top, at_y1};
        pieces[n++] = Piece{0.0, -y0, top, at_y0};
    }
    double nearest = r;
    double farthest = 0.0;
    for (int k = 0; k < n; ++k) {
        const Piece& p = pieces[k];
        farthest = std::max(farthest, p.h1);
        if (p.h0 >= r || p.h1 <= p.h0) continue;
        nearest = std::min(nearest, p.h0);
        Band band;
        band.h0 = p.h0;
        band.h1 = p.h1;
        band.c0 = p.c0.half_width;
        band.c1 = p.h1 < r ? p.c1.half_width : 0.0;
        band.s_c1 = p.h1 < r ? p.c1.primitive : 0.0;
        band.total = band_area_to(band, band.c0, p.c0.primitive);
        bands_[n_bands_++] = band;
    }
    if (n_bands_ > 0) near_half_width_ = half_chord(nearest, r);
    full_half_width_ = farthest < r ? half_chord(farthest, r) : -1.0;
}

double RowOverlap::primitive(double r, double a) noexcept {
    // asin(a / r) as atan2(a, s): near the rim asin's slope would amplify the rounding of a / r,
    // while s = sqrt((r - a)(r + a)) stays exact there.
    const double s = half_chord(a, r);
    return 0.5 * (a * s + r * r * std::atan2(a, s));
}

// Area of the band between abscissae 0 and a, for 0 <= a <= c0, given s_a = primitive(a).
double RowOverlap::band_area_to(const Band& band, double a, double s_a) const noexcept {
    const double flat = band.h1 - band.h0;
    if (a <= band.c1) return flat * a;  // under the cap, the disk fills the band's height
    return flat * band.c1 + (s_a - band.s_c1) - band.h0 * (a - band.c1);
}

double RowOverlap::cumulative(double x) const noexcept {
    const double a = std::abs(x);
    double s_a = 0.0;
    bool have_s_a = false;
    double area = 0.0;
    for (int k = 0; k < n_bands_; ++k) {
        const Band& band = bands_[k];
        if (a >= band.c0) {
            area += band.total;
        } else if (a <= band.c1) {
            area += (band.h1 - band.h0) * a;
        } else {
            if (!have_s_a) {
                s_a = primitive(r_, a);
                have_s_a = true;
            }
            area += band_area_to(band, a, s_a);
        }
    }
    return x < 0.0 ? -area : area;
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
