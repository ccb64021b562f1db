// Multi-radius aperture photometry: see include/engine/aperture.hpp for the contract.
#include "engine/aperture.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <exception>
#include <limits>
#include <mutex>
#include <numeric>
#include <thread>
#include <vector>

#include "engine/flags.hpp"
#include "engine/overlap.hpp"

namespace engine {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr std::uint8_t kUnusable =
    flags::kPixelBad | flags::kPixelNonfinite | flags::kPixelCosmicRay;

// Median of values[0..n), n > 0; reorders the values. Exact, in three cheap passes instead of a
// branchy selection over all n: a histogram over [min, max] finds the buckets holding the middle
// ranks (the bucket index is monotone in the value, so those ranks lie in them), the values of
// those buckets are moved to the front, and the selection runs on them alone.
double median_in_place(double* values, std::int64_t n) noexcept {
    constexpr int kBuckets = 512;
    double lo = values[0];
    double hi = values[0];
    for (std::int64_t k = 1; k < n; ++k) {
        lo = std::min(lo, values[k]);
        hi = std::max(hi, values[k]);
    }
    if (!(hi > lo)) return lo;  // all equal
    const double scale = (kBuckets - 1) / (hi - lo);
    auto bucket = [lo, scale](double v) {
        return std::min(kBuckets - 1, static_cast<int>((v - lo) * scale));
    };
    std::int32_t counts[kBuckets] = {};
    for (std::int64_t k = 0; k < n; ++k) ++counts[bucket(values[k])];
    const std::int64_t rank_low = (n - 1) / 2;  // the middle rank(s): equal when n is odd
    const std::int64_t rank_high = n / 2;
    int first = 0;
    std::int64_t below = 0;  // values in buckets before `first`
    while (below + counts[first] <= rank_low) below += counts[first++];
    int last = first;
    std::int64_t through = below + counts[first];  // values in buckets up to `last`
    while (through <= rank_high) through += counts[++last];
    double* end = std::partition(values, values + n, [&](double v) {
        const int b = bucket(v);
        return b >= first && b <= last;
    });
    const std::int64_t k_low = rank_low - below;
    std::nth_element(values, values + k_low, end);
    const double lower = values[k_low];
    if (rank_high == rank_low) return lower;
    const double upper = *std::min_element(values + k_low + 1, end);
    return 0.5 * (lower + upper);
}

// Standard deviation (ddof = 0) from sums of (v - shift) and (v - shift)^2: exact enough when the
// shift is near the values' centre, as the median is.
inline double spread_from_sums(double sum, double sum2, std::int64_t n) noexcept {
    const double mean = sum / static_cast<double>(n);
    return std::sqrt(std::max(0.0, sum2 / static_cast<double>(n) - mean * mean));
}

// Per-thread scratch space, sized before the threads start so workers never allocate.
struct Scratch {
    std::vector<double> annulus;
    std::vector<double> row_sum;
    std::vector<std::int32_t> row_bad;
    std::vector<std::int32_t> row_saturated;
    std::vector<RowOverlap::Chord> edge_chords;  // per radius, the current row's lower edge
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

    std::size_t annulus_capacity() const {
        if (!has_annulus_) return 0;
        const double side = 2.0 * config_.annulus_outer + 2.0;
        return static_cast<std::size_t>(side * side);
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
            const std::int64_t kept =
                sigma_clipped_median(scratch.annulus.data(), n_annulus, config_.clip_sigma,
                                     config_.clip_iterations, &median, &spread);
            out_.background[index] = median;
            out_.background_std[index] = spread;
            out_.background_pixels[index] = kept;
            if (kept < config_.min_background_pixels) {
                for (std::int64_t k = 0; k < nr; ++k) flag[k] |= flags::kBackgroundFailed;
            }
        }
    }

   private:
    // Adds every aperture's pixels to sum / area / flag, row by row: pixels wholly inside an
    // aperture come from running sums along the row, and only rim pixels pay for exact geometry.
    void measure_apertures(const T* image, const std::uint8_t* pflags, double xc, double yc,
                           double* sum, double* area, std::uint32_t* flag, Scratch& scratch) const {
        const std::int64_t nr = config_.n_radii;
        const auto ia = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(xc - r_max_ - 0.5)));
        const auto ib = std::min<std::int64_t>(nx_ - 1, static_cast<std::int64_t>(std::ceil(xc + r_max_ + 0.5)));
        const auto ja = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(yc - r_max_ - 0.5)));
        const auto jb = std::min<std::int64_t>(ny_ - 1, static_cast<std::int64_t>(std::ceil(yc + r_max_ + 0.5)));
        if (ia > ib || ja > jb) return;
        double* values = scratch.row_sum.data();           // running sums of usable values
        std::int32_t* unusable = scratch.row_bad.data();   // running counts of unusable pixels
        std::int32_t* saturated = scratch.row_saturated.data();
        for (std::int64_t j = ja; j <= jb; ++j) {
            const T* row = image + j * nx_;
            const std::uint8_t* row_flags = pflags ? pflags + j * nx_ : nullptr;
            values[0] = 0.0;
            unusable[0] = 0;
            saturated[0] = 0;
            for (std::int64_t i = ia; i <= ib; ++i) {
                const auto t = static_cast<std::size_t>(i - ia);
                const double v = static_cast<double>(row[i]);
                const std::uint8_t pf = row_flags ? row_flags[i] : std::uint8_t{0};
                const bool usable = std::isfinite(v) && (pf & kUnusable) == 0;
                values[t + 1] = values[t] + (usable ? v : 0.0);
                unusable[t + 1] = unusable[t] + (usable ? 0 : 1);
                saturated[t + 1] = saturated[t] + ((usable && (pf & flags::kPixelSaturated)) ? 1 : 0);
            }
            const double y0 = static_cast<double>(j) - 0.5 - yc;
            for (std::int64_t k = 0; k < nr; ++k) {
                // The row's lower edge is the previous row's upper edge: reuse its chord.
                RowOverlap::Chord* chords = scratch.edge_chords.data() + k;
                const double r = config_.radii[k];
                if (j == ja) chords[0] = RowOverlap::chord(r, y0);
                const RowOverlap::Chord lower = chords[0];
                chords[0] = RowOverlap::chord(r, y0 + 1.0);
                const RowOverlap overlap(r, y0, y0 + 1.0, lower, chords[0]);
                if (overlap.empty()) continue;
                const double near = overlap.near_half_width();
                const std::int64_t na = std::max(ia, static_cast<std::int64_t>(std::floor(xc - 0.5 - near)) + 1);
                const std::int64_t nb = std::min(ib, static_cast<std::int64_t>(std::ceil(xc + 0.5 + near)) - 1);
                if (na > nb) continue;
                std::int64_t fa = nb + 1;  // wholly inside: [fa, fb]
                std::int64_t fb = nb;
                const double full = overlap.full_half_width();
                if (full >= 0.5) {
                    fa = std::max(na, static_cast<std::int64_t>(std::ceil(xc + 0.5 - full)));
                    fb = std::min(nb, static_cast<std::int64_t>(std::floor(xc - 0.5 + full)));
                    if (fa > fb) fa = nb + 1, fb = nb;
                }
                if (fa <= fb) {
                    const auto a = static_cast<std::size_t>(fa - ia);
                    const auto b = static_cast<std::size_t>(fb - ia + 1);
                    const std::int32_t bad = unusable[b] - unusable[a];
                    sum[k] += values[b] - values[a];
                    area[k] += static_cast<double>((fb - fa + 1) - bad);
                    if (bad > 0) flag[k] |= flags::kBadPixel;
                    if (saturated[b] > saturated[a]) flag[k] |= flags::kSaturated;
                }
                // Rim pixels: [na, fa) and (fb, nb], each the difference of its edges' areas.
                auto rim = [&](std::int64_t from, std::int64_t to) {
                    if (from > to) return;
                    double left = overlap.cumulative(static_cast<double>(from) - 0.5 - xc);
                    for (std::int64_t i = from; i <= to; ++i) {
                        const double right = overlap.cumulative(static_cast<double>(i) + 0.5 - xc);
                        const double w = std::min(1.0, right - left);
                        left = right;
                        if (w <= 0.0) continue;
                        const auto t = static_cast<std::size_t>(i - ia);
                        if (unusable[t + 1] == unusable[t]) {
                            sum[k] += w * (values[t + 1] - values[t]);
                            area[k] += w;
                            if (saturated[t + 1] != saturated[t]) flag[k] |= flags::kSaturated;
                        } else {
                            flag[k] |= flags::kBadPixel;
                        }
                    }
                };
                rim(na, std::min(nb, fa - 1));
                rim(std::max(na, fb + 1), nb);
            }
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
        const auto ja = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::ceil(yc - outer)));
        const auto jb = std::min<std::int64_t>(ny_ - 1, static_cast<std::int64_t>(std::floor(yc + outer)));
        std::int64_t n = 0;
        std::int64_t row_neighbours = 0;
        auto take = [&](std::int64_t j, std::int64_t from, std::int64_t to, double dy2) {
            from = std::max<std::int64_t>(from, 0);
            to = std::min<std::int64_t>(to, nx_ - 1);
            const T* row = image + j * nx_;
            const std::uint8_t* row_flags = pflags ? pflags + j * nx_ : nullptr;
            for (std::int64_t i = from; i <= to; ++i) {
                const double dx = static_cast<double>(i) - xc;
                const double d2 = dx * dx + dy2;
                if (d2 < inner2 || d2 >= outer2) continue;  // the row's ends and hole, exactly
                const double v = static_cast<double>(row[i]);
                const std::uint8_t pf = row_flags ? row_flags[i] : std::uint8_t{0};
                if (!std::isfinite(v) || (pf & (kUnusable | flags::kPixelSaturated)) != 0) continue;
                if (row_neighbours > 0 && masked_by_neighbour(static_cast<double>(i),
                                                              static_cast<double>(j),
                                                              row_neighbours, mask2, scratch))
                    continue;
                scratch.annulus[static_cast<std::size_t>(n++)] = v;
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
            const double half_outer = std::sqrt(std::max(0.0, outer2 - dy2));
            const auto lo = static_cast<std::int64_t>(std::floor(xc - half_outer));
            const auto hi = static_cast<std::int64_t>(std::ceil(xc + half_outer));
            if (inner2 > dy2) {  // the row crosses the hole: take its two sides
                const double half_inner = std::sqrt(inner2 - dy2);
                const auto left_end = static_cast<std::int64_t>(std::ceil(xc - half_inner));
                take(j, lo, left_end, dy2);
                take(j, std::max(left_end + 1, static_cast<std::int64_t>(std::floor(xc + half_inner))),
                     hi, dy2);
            } else {
                take(j, lo, hi, dy2);
            }
        }
        return n;
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

std::int64_t sigma_clipped_median(double* values, std::int64_t n, double sigma, int iterations,
                                  double* median, double* std_dev) noexcept {
    *median = kNaN;
    *std_dev = kNaN;
    if (n <= 0) return 0;
    double centre = median_in_place(values, n);
    double sum = 0.0;
    double sum2 = 0.0;
    for (std::int64_t k = 0; k < n; ++k) {
        const double d = values[k] - centre;
        sum += d;
        sum2 += d * d;
    }
    double spread = spread_from_sums(sum, sum2, n);
    for (int pass = 0; pass < iterations; ++pass) {
        const double lo = centre - sigma * spread;
        const double hi = centre + sigma * spread;
        // One pass keeps the values within bounds and sums them about the old centre.
        std::int64_t kept = 0;
        sum = 0.0;
        sum2 = 0.0;
        for (std::int64_t k = 0; k < n; ++k) {
            const double v = values[k];
            if (v >= lo && v <= hi) {
                values[kept++] = v;
                const double d = v - centre;
                sum += d;
                sum2 += d * d;
            }
        }
        if (kept == n) break;  // converged: the statistics in hand describe the values kept
        n = kept;
        if (n == 0) return 0;
        spread = spread_from_sums(sum, sum2, n);
        centre = median_in_place(values, n);
    }
    *median = centre;
    *std_dev = spread;
    return n;
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
    const int n_threads = static_cast<int>(
        std::max<std::int64_t>(1, std::min<std::int64_t>(threads, n_frames * n_stars)));
    std::vector<Scratch> scratch(static_cast<std::size_t>(n_threads));
    const std::size_t max_neighbours = static_cast<std::size_t>(std::min<std::int64_t>(n_stars, 4096));
    for (auto& s : scratch) {
        s.annulus.resize(measurer.annulus_capacity());
        s.row_sum.resize(measurer.row_capacity());
        s.row_bad.resize(measurer.row_capacity());
        s.row_saturated.resize(measurer.row_capacity());
        s.edge_chords.resize(static_cast<std::size_t>(config.n_radii));
        s.neighbour_x.resize(max_neighbours);
        s.neighbour_y.resize(max_neighbours);
        s.row_neighbour_x.resize(max_neighbours);
        s.row_neighbour_y.resize(max_neighbours);
    }

    const std::int64_t total = n_frames * n_stars;
    constexpr std::int64_t kChunk = 16;
    std::atomic<std::int64_t> next{0};
    auto work = [&](Scratch& s) noexcept {
        for (;;) {
            const std::int64_t start = next.fetch_add(kChunk);
            if (start >= total) return;
            const std::int64_t stop = std::min(total, start + kChunk);
            // Stars in y order: consecutive stars share image rows, which then stay in cache.
            for (std::int64_t w = start; w < stop; ++w) {
                const std::int64_t frame = w / n_stars;
                measurer.measure(frame, order[static_cast<std::size_t>(frame * n_stars + w % n_stars)], s);
            }
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < n_threads; ++t) {
        try {
            pool.emplace_back(work, std::ref(scratch[static_cast<std::size_t>(t)]));
        } catch (const std::exception&) {
            break;  // could not start another thread: the ones running share the work
        }
    }
    work(scratch[0]);
    for (auto& th : pool) th.join();
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
