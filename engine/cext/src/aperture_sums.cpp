// The exact aperture sums of one star (add_aperture_sums, aperture_steps.hpp), row by row: pixels
// wholly inside an aperture come from running sums along the row, and only rim pixels pay for the
// exact circle-pixel overlap (RowOverlap, include/engine/overlap.hpp).
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "aperture_steps.hpp"

namespace engine::aperture_detail {
namespace {

// The pixels [ia, ib] x [ja, jb] the largest aperture can touch, clipped to the frame; each row's
// running sums take `width` = ib - ia + 2 entries in the scratch tables.
struct Window {
    std::int64_t ia, ib, ja, jb;
    std::size_t width;
};

// One row's running sums over the window's columns: entry t is the total over the first t pixels.
struct RowSums {
    const double* values;          // of usable values
    const std::int32_t* unusable;  // counts of unusable pixels
    const std::int32_t* saturated;  // counts of usable saturated pixels
};

// One aperture's totals over its pixels.
struct Totals {
    double sum = 0.0;
    double area = 0.0;
    std::uint32_t flags = 0;
};

// Running sums along every row of the window, all first: the rows' chains of additions overlap.
template <typename T>
void fill_row_sums(const Plane<T>& plane, const Window& w, Scratch& scratch) noexcept {
    for (std::int64_t j = w.ja; j <= w.jb; ++j) {
        const T* row = plane.pixels + j * plane.nx;
        const std::size_t at = static_cast<std::size_t>(j - w.ja) * w.width;
        double* values = scratch.row_sum.data() + at;
        std::int32_t* unusable = scratch.row_bad.data() + at;
        std::int32_t* saturated = scratch.row_saturated.data() + at;
        // Running totals kept in registers: the arrays may alias as far as the compiler knows.
        double total = 0.0;
        std::int32_t n_unusable = 0;
        std::int32_t n_saturated = 0;
        values[0] = 0.0;
        unusable[0] = 0;
        saturated[0] = 0;
        if (plane.flags) {
            const std::uint8_t* row_flags = plane.flags + j * plane.nx;
            for (std::int64_t i = w.ia; i <= w.ib; ++i) {
                const auto t = static_cast<std::size_t>(i - w.ia);
                const double v = static_cast<double>(row[i]);
                const std::uint8_t pf = row_flags[i];
                const bool usable = std::isfinite(v) && (pf & kUnusable) == 0;
                total += usable ? v : 0.0;
                n_unusable += usable ? 0 : 1;
                n_saturated += (usable && (pf & flags::kPixelSaturated)) ? 1 : 0;
                values[t + 1] = total;
                unusable[t + 1] = n_unusable;
                saturated[t + 1] = n_saturated;
            }
        } else {
            for (std::int64_t i = w.ia; i <= w.ib; ++i) {
                const auto t = static_cast<std::size_t>(i - w.ia);
                const double v = static_cast<double>(row[i]);
                const bool usable = std::isfinite(v);
                total += usable ? v : 0.0;
                n_unusable += usable ? 0 : 1;
                values[t + 1] = total;
                unusable[t + 1] = n_unusable;
                saturated[t + 1] = 0;
            }
        }
    }
}

// Adds the rim pixels [from, to] of one row (weights below 1), each weight the difference of its
// edges' cumulative areas; primitive[e - ia] is the column edge e's RowOverlap::edge_primitive.
inline void add_rim(const RowOverlap& overlap, const RowSums& row, const double* primitive,
                    std::int64_t ia, double xc, std::int64_t from, std::int64_t to,
                    Totals& totals) noexcept {
    if (from > to) return;
    double left = overlap.cumulative(static_cast<double>(from) - 0.5 - xc, primitive[from - ia]);
    for (std::int64_t i = from; i <= to; ++i) {
        const double right =
            overlap.cumulative(static_cast<double>(i) + 0.5 - xc, primitive[i + 1 - ia]);
        const double w = std::min(1.0, right - left);
        left = right;
        if (w <= 0.0) continue;
        const auto t = static_cast<std::size_t>(i - ia);
        if (row.unusable[t + 1] == row.unusable[t]) {
            totals.sum += w * (row.values[t + 1] - row.values[t]);
            totals.area += w;
            if (row.saturated[t + 1] != row.saturated[t]) totals.flags |= flags::kSaturated;
        } else {
            totals.flags |= flags::kBadPixel;
        }
    }
}

// Adds row j of the aperture of radius r: the pixels wholly inside from the running sums, then
// the rim pixels on either side.
inline void add_row(const Window& w, std::int64_t j, double xc, double yc, double r,
                    const RowOverlap::Chord* chords, const double* primitive,
                    const Scratch& scratch, Totals& totals) noexcept {
    const double y0 = static_cast<double>(j) - 0.5 - yc;
    if (y0 >= r || y0 + 1.0 <= -r) return;  // the row misses this disk
    const RowOverlap overlap(r, y0, y0 + 1.0, chords[j - w.ja], chords[j - w.ja + 1]);
    if (overlap.empty()) return;
    const double near = overlap.near_half_width();
    const std::int64_t na = std::max(w.ia, floor_int(xc - 0.5 - near) + 1);
    const std::int64_t nb = std::min(w.ib, ceil_int(xc + 0.5 + near) - 1);
    if (na > nb) return;
    std::int64_t fa = nb + 1;  // wholly inside: [fa, fb]
    std::int64_t fb = nb;
    const double full = overlap.full_half_width();
    if (full >= 0.5) {
        fa = std::max(na, ceil_int(xc + 0.5 - full));
        fb = std::min(nb, floor_int(xc - 0.5 + full));
        if (fa > fb) fa = nb + 1, fb = nb;
    }
    const std::size_t at = static_cast<std::size_t>(j - w.ja) * w.width;
    const RowSums row{scratch.row_sum.data() + at, scratch.row_bad.data() + at,
                      scratch.row_saturated.data() + at};
    if (fa <= fb) {
        const auto a = static_cast<std::size_t>(fa - w.ia);
        const auto b = static_cast<std::size_t>(fb - w.ia + 1);
        const std::int32_t bad = row.unusable[b] - row.unusable[a];
        totals.sum += row.values[b] - row.values[a];
        totals.area += static_cast<double>((fb - fa + 1) - bad);
        if (bad > 0) totals.flags |= flags::kBadPixel;
        if (row.saturated[b] > row.saturated[a]) totals.flags |= flags::kSaturated;
    }
    // Rim pixels: [na, fa) and (fb, nb].
    add_rim(overlap, row, primitive, w.ia, xc, na, std::min(nb, fa - 1), totals);
    add_rim(overlap, row, primitive, w.ia, xc, std::max(na, fb + 1), nb, totals);
}

// The totals of the aperture of radius r over the window's rows.
Totals aperture_totals(const Window& w, double xc, double yc, double r, Scratch& scratch) noexcept {
    // Each column edge's primitive serves every row, and each row edge's chord two rows: tables
    // for the star, filled in loops of independent evaluations.
    double* primitive = scratch.edge_primitive.data();
    for (std::int64_t e = w.ia; e <= w.ib + 1; ++e) {
        const double a = std::abs(static_cast<double>(e) - 0.5 - xc);
        primitive[e - w.ia] = a < r ? RowOverlap::edge_primitive(r, a) : 0.0;
    }
    RowOverlap::Chord* chords = scratch.edge_chords.data();
    for (std::int64_t e = w.ja; e <= w.jb + 1; ++e)
        chords[e - w.ja] = RowOverlap::chord(r, static_cast<double>(e) - 0.5 - yc);
    Totals totals;
    for (std::int64_t j = w.ja; j <= w.jb; ++j)
        add_row(w, j, xc, yc, r, chords, primitive, scratch, totals);
    return totals;
}

}  // namespace

template <typename T>
void add_aperture_sums(const Plane<T>& plane, double xc, double yc, const ApertureConfig& config,
                       double r_max, double* sum, double* area, std::uint32_t* flag,
                       Scratch& scratch) {
    Window w;
    w.ia = std::max<std::int64_t>(0, floor_int(xc - r_max - 0.5));
    w.ib = std::min<std::int64_t>(plane.nx - 1, ceil_int(xc + r_max + 0.5));
    w.ja = std::max<std::int64_t>(0, floor_int(yc - r_max - 0.5));
    w.jb = std::min<std::int64_t>(plane.ny - 1, ceil_int(yc + r_max + 0.5));
    if (w.ia > w.ib || w.ja > w.jb) return;
    w.width = static_cast<std::size_t>(w.ib - w.ia + 2);
    fill_row_sums(plane, w, scratch);
    for (std::int64_t k = 0; k < config.n_radii; ++k) {
        const Totals totals = aperture_totals(w, xc, yc, config.radii[k], scratch);
        sum[k] += totals.sum;
        area[k] += totals.area;
        flag[k] |= totals.flags;
    }
}

template void add_aperture_sums<float>(const Plane<float>&, double, double, const ApertureConfig&,
                                       double, double*, double*, std::uint32_t*, Scratch&);
template void add_aperture_sums<double>(const Plane<double>&, double, double,
                                        const ApertureConfig&, double, double*, double*,
                                        std::uint32_t*, Scratch&);

}  // namespace engine::aperture_detail
