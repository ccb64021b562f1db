// The annulus background of one star (annulus_background, aperture_steps.hpp): the usable annulus
// pixels not masked by a neighbouring star, gathered row by row, then sigma-clipped.
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "aperture_steps.hpp"

namespace engine::aperture_detail {
namespace {

constexpr std::uint8_t kLeftOut = kUnusable | flags::kPixelSaturated;

// The columns [*lo, *hi] of a row dy2 = (row - yc)^2 whose pixel centre has
// (i - xc)^2 + dy2 < radius2, decided by that very expression so that the span agrees with a
// per-pixel test; empty when *lo > *hi. The square root only estimates the ends.
inline void centre_span(double xc, double dy2, double radius2, std::int64_t* lo,
                 std::int64_t* hi) noexcept {
    if (!(dy2 < radius2)) return;  // (i - xc)^2 + dy2 >= dy2: no column qualifies
    auto inside = [xc, dy2, radius2](std::int64_t i) {
        const double dx = static_cast<double>(i) - xc;
        return dx * dx + dy2 < radius2;
    };
    const double half = std::sqrt(radius2 - dy2);
    std::int64_t a = ceil_int(xc - half);
    std::int64_t b = floor_int(xc + half);
    // The distance is monotone on each side of xc, so the qualifying columns are one run and
    // the estimate is off by a column at most.
    while (inside(a - 1)) --a;
    while (inside(b + 1)) ++b;
    while (a <= b && !inside(a)) ++a;
    while (b >= a && !inside(b)) --b;
    *lo = a;
    *hi = b;
}

// Copies the neighbours whose masked disk reaches row j into scratch.row_neighbour_x / _y;
// returns how many.
std::int64_t row_neighbours(std::int64_t j, double mask_radius, std::int64_t n_neighbours,
                            Scratch& scratch) noexcept {
    std::int64_t count = 0;
    for (std::int64_t m = 0; m < n_neighbours; ++m) {
        const double neighbour_row = scratch.neighbour_y[static_cast<std::size_t>(m)];
        if (std::abs(neighbour_row - static_cast<double>(j)) < mask_radius) {
            scratch.row_neighbour_x[static_cast<std::size_t>(count)] =
                scratch.neighbour_x[static_cast<std::size_t>(m)];
            scratch.row_neighbour_y[static_cast<std::size_t>(count)] = neighbour_row;
            ++count;
        }
    }
    return count;
}

bool masked_by_neighbour(double px, double py, std::int64_t n_neighbours, double mask2,
                         const Scratch& scratch) noexcept {
    for (std::int64_t m = 0; m < n_neighbours; ++m) {
        const double dx = px - scratch.row_neighbour_x[static_cast<std::size_t>(m)];
        const double dy = py - scratch.row_neighbour_y[static_cast<std::size_t>(m)];
        if (dx * dx + dy * dy < mask2) return true;
    }
    return false;
}

// Appends the usable pixels of row j, columns [from, to] clipped to the frame, to values[n..)
// (skipping those within the mask of the row's n_masking neighbours); returns the new count.
// Out of the neighbours' reach every pixel is stored, and counted only if usable: no branch.
template <typename T>
inline std::int64_t take_row(const Plane<T>& plane, std::int64_t j, std::int64_t from, std::int64_t to,
                      std::int64_t n_masking, double mask2, const Scratch& scratch,
                      double* values, std::int64_t n) noexcept {
    from = std::max<std::int64_t>(from, 0);
    to = std::min<std::int64_t>(to, plane.nx - 1);
    const T* row = plane.pixels + j * plane.nx;
    const std::uint8_t* row_flags = plane.flags ? plane.flags + j * plane.nx : nullptr;
    if (n_masking > 0) {
        for (std::int64_t i = from; i <= to; ++i) {
            const double v = static_cast<double>(row[i]);
            const std::uint8_t pf = row_flags ? row_flags[i] : std::uint8_t{0};
            if (!std::isfinite(v) || (pf & kLeftOut) != 0) continue;
            if (masked_by_neighbour(static_cast<double>(i), static_cast<double>(j), n_masking,
                                    mask2, scratch))
                continue;
            values[n++] = v;
        }
    } else if (row_flags) {
        for (std::int64_t i = from; i <= to; ++i) {
            const double v = static_cast<double>(row[i]);
            values[n] = v;
            n += std::isfinite(v) && (row_flags[i] & kLeftOut) == 0;
        }
    } else {
        for (std::int64_t i = from; i <= to; ++i) {
            const double v = static_cast<double>(row[i]);
            values[n] = v;
            n += std::isfinite(v);
        }
    }
    return n;
}

// Copies the annulus pixels the background is made of into scratch.annulus; returns how many.
template <typename T>
std::int64_t gather_annulus(const Plane<T>& plane, double xc, double yc,
                            const ApertureConfig& config, std::int64_t n_neighbours,
                            Scratch& scratch) noexcept {
    const double inner2 = config.annulus_inner * config.annulus_inner;
    const double outer2 = config.annulus_outer * config.annulus_outer;
    const double mask2 = config.mask_radius * config.mask_radius;
    const double outer = config.annulus_outer;
    const auto ja = std::max<std::int64_t>(0, ceil_int(yc - outer));
    const auto jb = std::min<std::int64_t>(plane.ny - 1, floor_int(yc + outer));
    double* values = scratch.annulus.values();
    std::int64_t n = 0;
    for (std::int64_t j = ja; j <= jb; ++j) {
        const double dy = static_cast<double>(j) - yc;
        const double dy2 = dy * dy;
        // Only neighbours whose masked disk reaches this row are tested on its pixels.
        const std::int64_t n_masking = row_neighbours(j, config.mask_radius, n_neighbours, scratch);
        std::int64_t lo = 0, hi = -1;
        centre_span(xc, dy2, outer2, &lo, &hi);
        std::int64_t hole_lo = 0, hole_hi = -1;
        centre_span(xc, dy2, inner2, &hole_lo, &hole_hi);
        if (hole_lo <= hole_hi) {
            n = take_row(plane, j, lo, hole_lo - 1, n_masking, mask2, scratch, values, n);
            n = take_row(plane, j, hole_hi + 1, hi, n_masking, mask2, scratch, values, n);
        } else {
            n = take_row(plane, j, lo, hi, n_masking, mask2, scratch, values, n);
        }
    }
    return n;
}

}  // namespace

template <typename T>
Background annulus_background(const Plane<T>& plane, double xc, double yc,
                              const ApertureConfig& config, std::int64_t n_neighbours,
                              Scratch& scratch) {
    const std::int64_t n = gather_annulus(plane, xc, yc, config, n_neighbours, scratch);
    Background background{};
    background.pixels = scratch.annulus.run(n, config.clip_sigma, config.clip_iterations,
                                            &background.median, &background.std_dev);
    return background;
}

template Background annulus_background<float>(const Plane<float>&, double, double,
                                              const ApertureConfig&, std::int64_t, Scratch&);
template Background annulus_background<double>(const Plane<double>&, double, double,
                                               const ApertureConfig&, std::int64_t, Scratch&);

}  // namespace engine::aperture_detail
