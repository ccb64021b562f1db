// Multi-radius aperture photometry: see include/engine/aperture.hpp for the contract.
#include "engine/aperture.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "engine/flags.hpp"
#include "engine/overlap.hpp"
#include "engine/parallel.hpp"

namespace engine {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::uint8_t kUnusable =
    flags::kPixelBad | flags::kPixelNonfinite | flags::kPixelCosmicRay;

// Floor and ceiling of a value well inside the int64 range (coordinates checked on entry),
// without the library call that std::floor costs where SSE4.1 is not assumed.
inline std::int64_t floor_int(double x) noexcept {
    const auto t = static_cast<std::int64_t>(x);  // rounds toward zero
    return static_cast<double>(t) > x ? t - 1 : t;
}
inline std::int64_t ceil_int(double x) noexcept {
    const auto t = static_cast<std::int64_t>(x);
    return static_cast<double>(t) < x ? t + 1 : t;
}

// Buckets of SigmaClipper's counting sort: about two values per bucket, at most this many; and
// how many values its bucket range is estimated from.
constexpr int kMaxBuckets = 1024;
constexpr std::int64_t kRangeSample = 16;

// Standard deviation (ddof = 0) from sums of (v - shift) and (v - shift)^2: exact enough when the
// shift is near the values' centre, as the median is.
inline double spread_from_sums(double sum, double sum2, std::int64_t n) noexcept {
    const double mean = sum / static_cast<double>(n);
    return std::sqrt(std::max(0.0, sum2 / static_cast<double>(n) - mean * mean));
}

// Sums of (v - shift) and (v - shift)^2 over values[0..n), as four interleaved partial sums so
// that the additions do not wait on each other.
void shifted_sums(const double* values, std::int64_t n, double shift, double* sum,
                  double* sum2) noexcept {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    double q[4] = {0.0, 0.0, 0.0, 0.0};
    std::int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        for (int l = 0; l < 4; ++l) {
            const double d = values[k + l] - shift;
            s[l] += d;
            q[l] += d * d;
        }
    }
    for (; k < n; ++k) {
        const double d = values[k] - shift;
        s[0] += d;
        q[0] += d * d;
    }
    *sum = (s[0] + s[1]) + (s[2] + s[3]);
    *sum2 = (q[0] + q[1]) + (q[2] + q[3]);
}

// Per-thread scratch space, sized before the threads start so workers never allocate.
struct Scratch {
    SigmaClipper annulus;  // gathers the annulus values
    std::vector<double> edge_primitive;  // RowOverlap::edge_primitive at column edges
    std::vector<double> row_sum;  // per row of the apertures' square, running sums along it
    std::vector<std::int32_t> row_bad;
    std::vector<std::int32_t> row_saturated;
    std::vector<RowOverlap::Chord> edge_chords;  // RowOverlap::chord at row edges
    std::vector<double> neighbour_x;
    std::vector<double> neighbour_y;
    std::vector<double> row_neighbour_x;  // the neighbours that reach the current row
    std::vector<double> row_neighbour_y;
};

template <typename T>
class Measurer {
   public:
    Measurer(const T* frames, const std::uint8_t* pixel_flags, std::int64_t ny, std::int64_t nx,
             const double* x, const double* y, std::int64_t n_stars, const ApertureConfig& config,
             const ApertureOutputs& out, const std::vector<std::int64_t>& order_by_y)
        : frames_(frames), pixel_flags_(pixel_flags), ny_(ny), nx_(nx), x_(x), y_(y),
          n_stars_(n_stars), config_(config), out_(out), order_by_y_(order_by_y) {
        r_max_ = *std::max_element(config.radii, config.radii + config.n_radii);
        has_annulus_ = config.annulus_outer > config.annulus_inner;
        reach_ = std::max(r_max_, has_annulus_ ? config.annulus_outer : 0.0);
        neighbour_reach_ = std::max(config.blend_radius,
                                    has_annulus_ && config.mask_radius > 0.0
                                        ? config.annulus_outer + config.mask_radius
                                        : 0.0);
    }

    std::size_t row_capacity() const { return static_cast<std::size_t>(2.0 * r_max_ + 5.0); }

    std::int64_t annulus_capacity() const {
        if (!has_annulus_) return 0;
        const double side = 2.0 * config_.annulus_outer + 2.0;
        return static_cast<std::int64_t>(side * side);
    }

    void measure(std::int64_t frame, std::int64_t star, Scratch& scratch) const {
        const std::int64_t index = frame * n_stars_ + star;
        const std::int64_t nr = config_.n_radii;
        double* sum = out_.sum + index * nr;
        double* area = out_.area + index * nr;
        std::uint32_t* flag = out_.flags + index * nr;
        for (std::int64_t k = 0; k < nr; ++k) {
            sum[k] = 0.0;
            area[k] = 0.0;
            flag[k] = 0;
        }
        out_.background[index] = kNaN;
        out_.background_std[index] = kNaN;
        out_.background_pixels[index] = 0;

        const double xc = x_[index];
        const double yc = y_[index];
        const double fx = static_cast<double>(nx_);
        const double fy = static_cast<double>(ny_);
        // Also guards the integer casts below against huge or non-finite coordinates.
        if (!(xc > -reach_ - 1.0 && xc < fx + reach_ && yc > -reach_ - 1.0 && yc < fy + reach_)) {
            for (std::int64_t k = 0; k < nr; ++k) {
                sum[k] = kNaN;
                flag[k] = flags::kOffFrame;
            }
            return;
        }
        const bool centre_on_frame = xc >= -0.5 && xc < fx - 0.5 && yc >= -0.5 && yc < fy - 0.5;
        for (std::int64_t k = 0; k < nr; ++k) {
            const double r = config_.radii[k];
            if (!centre_on_frame) flag[k] |= flags::kOffFrame;
            if (xc - r < -0.5 || xc + r > fx - 0.5 || yc - r < -0.5 || yc + r > fy - 0.5)
                flag[k] |= flags::kNearEdge;
        }

        const std::int64_t n_neighbours = find_neighbours(frame, star, xc, yc, scratch);
        const double blend2 = config_.blend_radius * config_.blend_radius;
        for (std::int64_t m = 0; m < n_neighbours; ++m) {
            const double dx = scratch.neighbour_x[m] - xc;
            const double dy = scratch.neighbour_y[m] - yc;
            if (dx * dx + dy * dy < blend2) {
                for (std::int64_t k = 0; k < nr; ++k) flag[k] |= flags::kBlended;
                break;
            }
        }

        const T* image = frames_ + frame * ny_ * nx_;
        const std::uint8_t* pflags = pixel_flags_ ? pixel_flags_ + frame * ny_ * nx_ : nullptr;
        measure_apertures(image, pflags, xc, yc, sum, area, flag, scratch);
        const std::int64_t n_annulus =
            has_annulus_ ? gather_annulus(image, pflags, xc, yc, n_neighbours, scratch) : 0;
        for (std::int64_t k = 0; k < nr; ++k) {
            if (area[k] <= 0.0) {
                sum[k] = kNaN;
                flag[k] |= flags::kOffFrame;
            }
        }
        if (has_annulus_) {
            double median = kNaN;
            double spread = kNaN;
            const std::int64_t kept = scratch.annulus.run(n_annulus, config_.clip_sigma,
                                                          config_.clip_iterations, &median, &spread);
            out_.background[index] = median;
            out_.background_std[index] = spread;
            out_.background_pixels[index] = kept;
            if (kept < config_.min_background_pixels) {
                for (std::int64_t k = 0; k < nr; ++k) flag[k] |= flags::kBackgroundFailed;
            }
        }
    }

    // Asks the L2 cache for the pixels (and pixel flags) a star will read, so that measuring the
    // stars before it hides the memory latency: frames are far larger than the caches. (Into L1
    // measured slower: it evicts lines still in use. GCC deems a function that only prefetches
    // free of effects and drops calls to it, hence noipa.)
#if defined(__GNUC__) && !defined(__clang__)
    [[gnu::noipa]]
#endif
    void prefetch(std::int64_t frame, std::int64_t star) const noexcept {
#if defined(__GNUC__) || defined(__clang__)
        const std::int64_t index = frame * n_stars_ + star;
        const double xc = x_[index];
        const double yc = y_[index];
        if (!(xc > -reach_ - 1.0 && xc < static_cast<double>(nx_) + reach_ &&
              yc > -reach_ - 1.0 && yc < static_cast<double>(ny_) + reach_))
            return;
        const auto ia = std::max<std::int64_t>(0, static_cast<std::int64_t>(xc - reach_ - 1.0));
        const auto ib = std::min<std::int64_t>(nx_ - 1, static_cast<std::int64_t>(xc + reach_ + 1.0));
        const auto ja = std::max<std::int64_t>(0, static_cast<std::int64_t>(yc - reach_ - 1.0));
        const auto jb = std::min<std::int64_t>(ny_ - 1, static_cast<std::int64_t>(yc + reach_ + 1.0));
        if (ia > ib) return;
        constexpr std::int64_t kLine = 64;  // bytes
        auto lines = [](const auto* from, const auto* to) {
            const char* first = reinterpret_cast<const char*>(from);
            const auto bytes = reinterpret_cast<const char*>(to + 1) - first;
            for (std::int64_t b = 0; b < bytes; b += kLine) __builtin_prefetch(first + b, 0, 2);
            __builtin_prefetch(reinterpret_cast<const char*>(to), 0, 2);
        };
        const std::int64_t plane = frame * ny_ * nx_;
        for (std::int64_t j = ja; j <= jb; ++j) {
            const std::int64_t row = plane + j * nx_;
            lines(frames_ + row + ia, frames_ + row + ib);
            if (pixel_flags_) lines(pixel_flags_ + row + ia, pixel_flags_ + row + ib);
        }
#else
        (void)frame;
        (void)star;
#endif
    }

   private:
    // Adds every aperture's pixels to sum / area / flag, row by row: pixels wholly inside an
    // aperture come from running sums along the row, and only rim pixels pay for exact geometry.
    void measure_apertures(const T* image, const std::uint8_t* pflags, double xc, double yc,
                           double* sum, double* area, std::uint32_t* flag, Scratch& scratch) const {
        const std::int64_t nr = config_.n_radii;
        const auto ia = std::max<std::int64_t>(0, floor_int(xc - r_max_ - 0.5));
        const auto ib = std::min<std::int64_t>(nx_ - 1, ceil_int(xc + r_max_ + 0.5));
        const auto ja = std::max<std::int64_t>(0, floor_int(yc - r_max_ - 0.5));
        const auto jb = std::min<std::int64_t>(ny_ - 1, ceil_int(yc + r_max_ + 0.5));
        if (ia > ib || ja > jb) return;
        // Running sums along every row, first: the rows' chains of additions overlap.
        const auto width = static_cast<std::size_t>(ib - ia + 2);
        for (std::int64_t j = ja; j <= jb; ++j) {
            const T* row = image + j * nx_;
            const std::size_t at = static_cast<std::size_t>(j - ja) * width;
            double* values = scratch.row_sum.data() + at;  // running sums of usable values
            std::int32_t* unusable = scratch.row_bad.data() + at;  // running counts of unusable pixels
            std::int32_t* saturated = scratch.row_saturated.data() + at;
            // Running totals kept in registers: the arrays may alias as far as the compiler knows.
            double total = 0.0;
            std::int32_t n_unusable = 0;
            std::int32_t n_saturated = 0;
            values[0] = 0.0;
            unusable[0] = 0;
            saturated[0] = 0;
            if (pflags) {
                const std::uint8_t* row_flags = pflags + j * nx_;
                for (std::int64_t i = ia; i <= ib; ++i) {
                    const auto t = static_cast<std::size_t>(i - ia);
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
                for (std::int64_t i = ia; i <= ib; ++i) {
                    const auto t = static_cast<std::size_t>(i - ia);
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
        for (std::int64_t k = 0; k < nr; ++k) {
            const double r = config_.radii[k];
            // Each column edge's primitive serves every row, and each row edge's chord two rows:
            // tables for the star, filled in loops of independent evaluations.
            double* primitive = scratch.edge_primitive.data();
            for (std::int64_t e = ia; e <= ib + 1; ++e) {
                const double a = std::abs(static_cast<double>(e) - 0.5 - xc);
                primitive[e - ia] = a < r ? RowOverlap::edge_primitive(r, a) : 0.0;
            }
            RowOverlap::Chord* chords = scratch.edge_chords.data();
            for (std::int64_t e = ja; e <= jb + 1; ++e)
                chords[e - ja] = RowOverlap::chord(r, static_cast<double>(e) - 0.5 - yc);
            double aperture_sum = 0.0;
            double aperture_area = 0.0;
            std::uint32_t aperture_flags = 0;
            for (std::int64_t j = ja; j <= jb; ++j) {
                const double y0 = static_cast<double>(j) - 0.5 - yc;
                if (y0 >= r || y0 + 1.0 <= -r) continue;  // the row misses this disk
                const RowOverlap overlap(r, y0, y0 + 1.0, chords[j - ja], chords[j - ja + 1]);
                if (overlap.empty()) continue;
                const double near = overlap.near_half_width();
                const std::int64_t na = std::max(ia, floor_int(xc - 0.5 - near) + 1);
                const std::int64_t nb = std::min(ib, ceil_int(xc + 0.5 + near) - 1);
                if (na > nb) continue;
                std::int64_t fa = nb + 1;  // wholly inside: [fa, fb]
                std::int64_t fb = nb;
                const double full = overlap.full_half_width();
                if (full >= 0.5) {
                    fa = std::max(na, ceil_int(xc + 0.5 - full));
                    fb = std::min(nb, floor_int(xc - 0.5 + full));
                    if (fa > fb) fa = nb + 1, fb = nb;
                }
                const std::size_t at = static_cast<std::size_t>(j - ja) * width;
                const double* values = scratch.row_sum.data() + at;
                const std::int32_t* unusable = scratch.row_bad.data() + at;
                const std::int32_t* saturated = scratch.row_saturated.data() + at;
                if (fa <= fb) {
                    const auto a = static_cast<std::size_t>(fa - ia);
                    const auto b = static_cast<std::size_t>(fb - ia + 1);
                    const std::int32_t bad = unusable[b] - unusable[a];
                    aperture_sum += values[b] - values[a];
                    aperture_area += static_cast<double>((fb - fa + 1) - bad);
                    if (bad > 0) aperture_flags |= flags::kBadPixel;
                    if (saturated[b] > saturated[a]) aperture_flags |= flags::kSaturated;
                }
                // Rim pixels: [na, fa) and (fb, nb], each the difference of its edges' areas.
                auto rim = [&](std::int64_t from, std::int64_t to) {
                    if (from > to) return;
                    double left = overlap.cumulative(static_cast<double>(from) - 0.5 - xc,
                                                     primitive[from - ia]);
                    for (std::int64_t i = from; i <= to; ++i) {
                        const double right = overlap.cumulative(static_cast<double>(i) + 0.5 - xc,
                                                                 primitive[i + 1 - ia]);
                        const double w = std::min(1.0, right - left);
                        left = right;
                        if (w <= 0.0) continue;
                        const auto t = static_cast<std::size_t>(i - ia);
                        if (unusable[t + 1] == unusable[t]) {
                            aperture_sum += w * (values[t + 1] - values[t]);
                            aperture_area += w;
                            if (saturated[t + 1] != saturated[t]) aperture_flags |= flags::kSaturated;
                        } else {
                            aperture_flags |= flags::kBadPixel;
                        }
                    }
                };
                rim(na, std::min(nb, fa - 1));
                rim(std::max(na, fb + 1), nb);
            }
            sum[k] += aperture_sum;
            area[k] += aperture_area;
            flag[k] |= aperture_flags;
        }
    }

    // Copies the usable, unsaturated annulus pixels (centre within [inner, outer)) not masked by
    // a neighbouring star into scratch.annulus; returns how many.
    std::int64_t gather_annulus(const T* image, const std::uint8_t* pflags, double xc, double yc,
                                std::int64_t n_neighbours, Scratch& scratch) const {
        const double inner2 = config_.annulus_inner * config_.annulus_inner;
        const double outer2 = config_.annulus_outer * config_.annulus_outer;
        const double mask2 = config_.mask_radius * config_.mask_radius;
        const double outer = config_.annulus_outer;
        const auto ja = std::max<std::int64_t>(0, ceil_int(yc - outer));
        const auto jb = std::min<std::int64_t>(ny_ - 1, floor_int(yc + outer));
        double* values = scratch.annulus.values();
        std::int64_t n = 0;
        std::int64_t row_neighbours = 0;
        // Out of the neighbours' reach every pixel is stored, and counted only if usable: no
        // branch.
        auto take = [&](std::int64_t j, std::int64_t from, std::int64_t to) {
            from = std::max<std::int64_t>(from, 0);
            to = std::min<std::int64_t>(to, nx_ - 1);
            const T* row = image + j * nx_;
            if (row_neighbours > 0) {
                const std::uint8_t* row_flags = pflags ? pflags + j * nx_ : nullptr;
                for (std::int64_t i = from; i <= to; ++i) {
                    const double v = static_cast<double>(row[i]);
                    const std::uint8_t pf = row_flags ? row_flags[i] : std::uint8_t{0};
                    if (!std::isfinite(v) || (pf & (kUnusable | flags::kPixelSaturated)) != 0) continue;
                    if (masked_by_neighbour(static_cast<double>(i), static_cast<double>(j),
                                            row_neighbours, mask2, scratch))
                        continue;
                    values[n++] = v;
                }
            } else if (pflags) {
                const std::uint8_t* row_flags = pflags + j * nx_;
                for (std::int64_t i = from; i <= to; ++i) {
                    const double v = static_cast<double>(row[i]);
                    values[n] = v;
                    n += std::isfinite(v) && (row_flags[i] & (kUnusable | flags::kPixelSaturated)) == 0;
                }
            } else {
                for (std::int64_t i = from; i <= to; ++i) {
                    const double v = static_cast<double>(row[i]);
                    values[n] = v;
                    n += std::isfinite(v);
                }
            }
        };
        for (std::int64_t j = ja; j <= jb; ++j) {
            const double dy = static_cast<double>(j) - yc;
            const double dy2 = dy * dy;
            // Only neighbours whose masked disk reaches this row are tested on its pixels.
            row_neighbours = 0;
            for (std::int64_t m = 0; m < n_neighbours; ++m) {
                const double neighbour_row = scratch.neighbour_y[static_cast<std::size_t>(m)];
                if (std::abs(neighbour_row - static_cast<double>(j)) < config_.mask_radius) {
                    scratch.row_neighbour_x[static_cast<std::size_t>(row_neighbours)] =
                        scratch.neighbour_x[static_cast<std::size_t>(m)];
                    scratch.row_neighbour_y[static_cast<std::size_t>(row_neighbours)] = neighbour_row;
                    ++row_neighbours;
                }
            }
            std::int64_t lo = 0, hi = -1;
            centre_span(xc, dy2, outer2, &lo, &hi);
            std::int64_t hole_lo = 0, hole_hi = -1;
            centre_span(xc, dy2, inner2, &hole_lo, &hole_hi);
            if (hole_lo <= hole_hi) {
                take(j, lo, hole_lo - 1);
                take(j, hole_hi + 1, hi);
            } else {
                take(j, lo, hi);
            }
        }
        return n;
    }

    // The columns [*lo, *hi] of a row dy2 = (row - yc)^2 whose pixel centre has
    // (i - xc)^2 + dy2 < radius2, decided by that very expression so that the span agrees with a
    // per-pixel test; empty when *lo > *hi. The square root only estimates the ends.
    static void centre_span(double xc, double dy2, double radius2, std::int64_t* lo,
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

    // Collects the other stars of this frame within neighbour_reach_ of (xc, yc).
    std::int64_t find_neighbours(std::int64_t frame, std::int64_t star, double xc, double yc,
                                 Scratch& scratch) const {
        if (neighbour_reach_ <= 0.0) return 0;
        const std::int64_t* order = order_by_y_.data() + frame * n_stars_;
        const double* fx = x_ + frame * n_stars_;
        const double* fy = y_ + frame * n_stars_;
        // First star (in y order) with y >= yc - reach; NaN positions were sorted to the end.
        std::int64_t lo = 0;
        std::int64_t hi = n_stars_;
        while (lo < hi) {
            const std::int64_t mid = (lo + hi) / 2;
            const double ym = fy[order[mid]];
            if (ym < yc - neighbour_reach_) lo = mid + 1; else hi = mid;
        }
        std::int64_t count = 0;
        const double reach2 = neighbour_reach_ * neighbour_reach_;
        for (std::int64_t p = lo; p < n_stars_; ++p) {
            const std::int64_t s = order[p];
            const double ys = fy[s];
            if (!(ys <= yc + neighbour_reach_)) break;
            if (s == star) continue;
            const double dx = fx[s] - xc;
            const double dy = ys - yc;
            if (dx * dx + dy * dy >= reach2) continue;
            if (static_cast<std::size_t>(count) >= scratch.neighbour_x.size()) break;
            scratch.neighbour_x[static_cast<std::size_t>(count)] = fx[s];
            scratch.neighbour_y[static_cast<std::size_t>(count)] = ys;
            ++count;
        }
        return count;
    }

    static bool masked_by_neighbour(double px, double py, std::int64_t n_neighbours, double mask2,
                                    const Scratch& scratch) {
        for (std::int64_t m = 0; m < n_neighbours; ++m) {
            const double dx = px - scratch.row_neighbour_x[static_cast<std::size_t>(m)];
            const double dy = py - scratch.row_neighbour_y[static_cast<std::size_t>(m)];
            if (dx * dx + dy * dy < mask2) return true;
        }
        return false;
    }

    const T* frames_;
    const std::uint8_t* pixel_flags_;
    std::int64_t ny_, nx_;
    const double* x_;
    const double* y_;
    std::int64_t n_stars_;
    const ApertureConfig& config_;
    const ApertureOutputs& out_;
    const std::vector<std::int64_t>& order_by_y_;
    double r_max_ = 0.0;
    bool has_annulus_ = false;
    double reach_ = 0.0;
    double neighbour_reach_ = 0.0;
};

}  // namespace

void SigmaClipper::reserve(std::int64_t capacity) {
    const auto size = static_cast<std::size_t>(std::max<std::int64_t>(capacity, 0));
    values_.resize(size);
    sorted_.resize(size);
    bucket_.resize(size);
    edge_.resize(kMaxBuckets + 2);
}

// The value of rank `index` (0-based) among sorted_[first, last): since buckets are in value
// order, it is the value of that rank within its own bucket.
double SigmaClipper::select(std::int64_t index, std::int64_t first, std::int64_t last) noexcept {
    const std::int64_t* edge = edge_.data();
    const auto b = std::upper_bound(edge, edge + n_buckets_ + 1, index) - edge - 1;
    double* from = sorted_.data() + std::max(first, edge[b]);
    double* to = sorted_.data() + std::min(last, edge[b + 1]);
    double* nth = sorted_.data() + index;
    std::nth_element(from, nth, to);
    return *nth;
}

double SigmaClipper::median_of(std::int64_t first, std::int64_t last) noexcept {
    const std::int64_t n = last - first;
    const double lower = select(first + (n - 1) / 2, first, last);
    if (n % 2 == 1) return lower;
    return 0.5 * (lower + select(first + n / 2, first, last));
}

std::int64_t SigmaClipper::run(std::int64_t n, double sigma, int iterations, double* median,
                               double* std_dev) noexcept {
    *median = kNaN;
    *std_dev = kNaN;
    if (n <= 0) return 0;
    const double* values = values_.data();
    // A counting sort into buckets by value. The bucket is monotone in the value, so a rank is
    // found inside one bucket, and clipping, which removes only the smallest and largest values,
    // inspects only the buckets at the ends. Values outside the bucket range are clamped into
    // the end buckets, which keeps the bucket monotone: the range only steers speed, so a
    // sample's range, widened, serves.
    double lo = values[0];
    double hi = values[0];
    const std::int64_t step = std::max<std::int64_t>(1, n / kRangeSample);
    for (std::int64_t k = step; k < n; k += step) {
        lo = std::min(lo, values[k]);
        hi = std::max(hi, values[k]);
    }
    if (!(hi > lo)) {  // the sample is all one value: take the full range
        for (std::int64_t k = 0; k < n; ++k) {
            lo = std::min(lo, values[k]);
            hi = std::max(hi, values[k]);
        }
        if (!(hi > lo)) {  // all equal: nothing is ever clipped
            *median = lo;
            *std_dev = 0.0;
            return n;
        }
    } else {
        constexpr double kMax = std::numeric_limits<double>::max();
        const double margin = 0.5 * hi - 0.5 * lo;
        lo = std::max(lo - margin, -kMax);
        hi = std::min(hi + margin, kMax);
    }
    n_buckets_ = static_cast<int>(std::min<std::int64_t>(std::max<std::int64_t>(n / 2, 1), kMaxBuckets));
    // Halving keeps every difference finite; the cap keeps the scale finite for a tiny range.
    const double top = static_cast<double>(n_buckets_ - 1);
    const double half_lo = 0.5 * lo;
    const double scale = std::min(top / (0.5 * hi - half_lo), 1e300);
    auto bucket_of = [half_lo, scale, top](double v) {
        const double t = (0.5 * v - half_lo) * scale;
        return static_cast<std::int32_t>(std::min(t > 0.0 ? t : 0.0, top));
    };
    std::int32_t* bucket = bucket_.data();
    for (std::int64_t k = 0; k < n; ++k) bucket[k] = bucket_of(values[k]);
    std::int64_t* edge = edge_.data();
    std::fill(edge, edge + n_buckets_ + 2, std::int64_t{0});
    for (std::int64_t k = 0; k < n; ++k) ++edge[bucket[k] + 2];
    for (int b = 2; b <= n_buckets_; ++b) edge[b] += edge[b - 1];
    // edge[b + 1] is now where bucket b starts; filling moves it to where bucket b ends.
    double* sorted = sorted_.data();
    for (std::int64_t k = 0; k < n; ++k) sorted[edge[bucket[k] + 1]++] = values[k];

    std::int64_t first = 0;  // the values kept are sorted[first, last)
    std::int64_t last = n;
    double centre = median_of(first, last);
    // Sums about `shift`, a median, so that the spread does not lose digits to cancellation.
    double shift = centre;
    double sum = 0.0;
    double sum2 = 0.0;
    shifted_sums(sorted, n, shift, &sum, &sum2);
    double spread = spread_from_sums(sum, sum2, n);
    for (int pass = 0; pass < iterations; ++pass) {
        const double low = centre - sigma * spread;
        const double high = centre + sigma * spread;
        if (!(low <= high)) return 0;  // NaN bounds keep nothing
        double removed = 0.0;
        double removed2 = 0.0;
        auto remove = [&](std::int64_t from, std::int64_t to) {
            std::swap(sorted[from], sorted[to]);
            const double d = sorted[to] - shift;
            removed += d;
            removed2 += d * d;
        };
        // Values below `low` lie in its bucket or before: move them out at the front.
        std::int64_t new_first = first;
        const std::int64_t low_end = std::min(last, edge[bucket_of(low) + 1]);
        for (std::int64_t k = first; k < low_end; ++k) {
            if (sorted[k] < low) remove(k, new_first++);
        }
        // Values above `high` lie in its bucket or after: move them out at the back.
        std::int64_t new_last = last;
        const std::int64_t high_begin = std::max(new_first, edge[bucket_of(high)]);
        for (std::int64_t k = last - 1; k >= high_begin; --k) {
            if (sorted[k] > high) remove(k, --new_last);
        }
        if (new_first == first && new_last == last) break;  // converged
        first = new_first;
        last = new_last;
        if (first == last) return 0;
        // Taking the removed values off the sums is exact enough unless they dominated them.
        if (removed2 <= 0.5 * sum2) {
            sum -= removed;
            sum2 -= removed2;
        } else {
            shift = centre;
            shifted_sums(sorted + first, last - first, shift, &sum, &sum2);
        }
        spread = spread_from_sums(sum, sum2, last - first);
        centre = median_of(first, last);
    }
    *median = centre;
    *std_dev = spread;
    return last - first;
}

std::int64_t sigma_clipped_median(const double* values, std::int64_t n, double sigma,
                                  int iterations, double* median, double* std_dev) {
    SigmaClipper clipper(n);
    if (n > 0) std::copy(values, values + n, clipper.values());
    return clipper.run(n, sigma, iterations, median, std_dev);
}

template <typename T>
void aperture_photometry(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                         std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                         std::int64_t n_stars, const ApertureConfig& config,
                         const ApertureOutputs& out, int threads) {
    if (n_frames <= 0 || n_stars <= 0 || config.n_radii <= 0) return;
    // Stars of each frame sorted by y (NaN last), for the neighbour search.
    std::vector<std::int64_t> order(static_cast<std::size_t>(n_frames * n_stars));
    for (std::int64_t f = 0; f < n_frames; ++f) {
        auto first = order.begin() + f * n_stars;
        std::iota(first, first + n_stars, std::int64_t{0});
        const double* fy = y + f * n_stars;
        std::stable_sort(first, first + n_stars, [fy](std::int64_t a, std::int64_t b) {
            const bool a_nan = std::isnan(fy[a]);
            const bool b_nan = std::isnan(fy[b]);
            if (a_nan || b_nan) return !a_nan && b_nan;
            return fy[a] < fy[b];
        });
    }
    const Measurer<T> measurer(frames, pixel_flags, ny, nx, x, y, n_stars, config, out, order);
    const std::int64_t total = n_frames * n_stars;
    std::vector<Scratch> scratch(static_cast<std::size_t>(worker_count(total, threads)));
    const std::size_t max_neighbours = static_cast<std::size_t>(std::min<std::int64_t>(n_stars, 4096));
    for (auto& s : scratch) {
        const std::size_t rows = measurer.row_capacity();  // also the most columns
        s.annulus.reserve(measurer.annulus_capacity());
        s.edge_primitive.resize(rows);
        s.edge_chords.resize(rows);
        s.row_sum.resize(rows * rows);
        s.row_bad.resize(rows * rows);
        s.row_saturated.resize(rows * rows);
        s.neighbour_x.resize(max_neighbours);
        s.neighbour_y.resize(max_neighbours);
        s.row_neighbour_x.resize(max_neighbours);
        s.row_neighbour_y.resize(max_neighbours);
    }

    constexpr std::int64_t kChunk = 16;
    constexpr std::int64_t kAhead = 2;  // how many stars ahead pixels are prefetched
    // Stars in y order: consecutive stars share image rows, which then stay in cache.
    auto star_at = [&](std::int64_t w) {
        const std::int64_t frame = w / n_stars;
        return order[static_cast<std::size_t>(frame * n_stars + w % n_stars)];
    };
    parallel_for(total, threads, scratch, [&](std::int64_t w, Scratch& s) {
        if (w + kAhead < total) measurer.prefetch((w + kAhead) / n_stars, star_at(w + kAhead));
        measurer.measure(w / n_stars, star_at(w), s);
    }, kChunk);
}

template void aperture_photometry<float>(const float*, const std::uint8_t*, std::int64_t,
                                         std::int64_t, std::int64_t, const double*, const double*,
                                         std::int64_t, const ApertureConfig&,
                                         const ApertureOutputs&, int);
template void aperture_photometry<double>(const double*, const std::uint8_t*, std::int64_t,
                                          std::int64_t, std::int64_t, const double*, const double*,
                                          std::int64_t, const ApertureConfig&,
                                          const ApertureOutputs&, int);

}  // namespace engine
