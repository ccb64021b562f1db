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

// Median of values[0..n), n > 0; reorders the values.
double median_in_place(double* values, std::int64_t n) noexcept {
    const std::int64_t mid = n / 2;
    std::nth_element(values, values + mid, values + n);
    const double upper = values[mid];
    if (n % 2 == 1) return upper;
    const double lower = *std::max_element(values, values + mid);
    return 0.5 * (lower + upper);
}

double population_std(const double* values, std::int64_t n) noexcept {
    double mean = 0.0;
    for (std::int64_t k = 0; k < n; ++k) mean += values[k];
    mean /= static_cast<double>(n);
    double var = 0.0;
    for (std::int64_t k = 0; k < n; ++k) var += (values[k] - mean) * (values[k] - mean);
    return std::sqrt(var / static_cast<double>(n));
}

// Per-thread scratch space, sized before the threads start so workers never allocate.
struct Scratch {
    std::vector<double> annulus;
    std::vector<double> neighbour_x;
    std::vector<double> neighbour_y;
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

        const auto i0 = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(xc - reach_)));
        const auto i1 = std::min<std::int64_t>(nx_ - 1, static_cast<std::int64_t>(std::ceil(xc + reach_)));
        const auto j0 = std::max<std::int64_t>(0, static_cast<std::int64_t>(std::floor(yc - reach_)));
        const auto j1 = std::min<std::int64_t>(ny_ - 1, static_cast<std::int64_t>(std::ceil(yc + reach_)));
        const T* image = frames_ + frame * ny_ * nx_;
        const std::uint8_t* pflags = pixel_flags_ ? pixel_flags_ + frame * ny_ * nx_ : nullptr;
        const double inner2 = config_.annulus_inner * config_.annulus_inner;
        const double outer2 = config_.annulus_outer * config_.annulus_outer;
        const double mask2 = config_.mask_radius * config_.mask_radius;
        const double aperture_reach = r_max_ + 0.7072;  // half-diagonal of a pixel, rounded up
        std::int64_t n_annulus = 0;

        for (std::int64_t j = j0; j <= j1; ++j) {
            const double dy = static_cast<double>(j) - yc;
            for (std::int64_t i = i0; i <= i1; ++i) {
                const double dx = static_cast<double>(i) - xc;
                const double d2 = dx * dx + dy * dy;
                const double value = static_cast<double>(image[j * nx_ + i]);
                const std::uint8_t pf = pflags ? pflags[j * nx_ + i] : std::uint8_t{0};
                const bool usable = std::isfinite(value) && (pf & kUnusable) == 0;
                if (d2 < aperture_reach * aperture_reach) {
                    for (std::int64_t k = 0; k < nr; ++k) {
                        const double w = pixel_overlap(dx, dy, config_.radii[k]);
                        if (w <= 0.0) continue;
                        if (usable) {
                            sum[k] += w * value;
                            area[k] += w;
                            if (pf & flags::kPixelSaturated) flag[k] |= flags::kSaturated;
                        } else {
                            flag[k] |= flags::kBadPixel;
                        }
                    }
                }
                if (has_annulus_ && d2 >= inner2 && d2 < outer2 && usable &&
                    (pf & flags::kPixelSaturated) == 0 &&
                    !masked_by_neighbour(static_cast<double>(i), static_cast<double>(j),
                                         n_neighbours, mask2, scratch)) {
                    scratch.annulus[static_cast<std::size_t>(n_annulus++)] = value;
                }
            }
        }
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
            const double dx = px - scratch.neighbour_x[static_cast<std::size_t>(m)];
            const double dy = py - scratch.neighbour_y[static_cast<std::size_t>(m)];
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
    if (n <= 0) {
        *median = kNaN;
        *std_dev = kNaN;
        return 0;
    }
    for (int pass = 0; pass < iterations; ++pass) {
        const double centre = median_in_place(values, n);
        const double spread = population_std(values, n);
        const double lo = centre - sigma * spread;
        const double hi = centre + sigma * spread;
        std::int64_t kept = 0;
        for (std::int64_t k = 0; k < n; ++k) {
            if (values[k] >= lo && values[k] <= hi) values[kept++] = values[k];
        }
        const bool changed = kept != n;
        n = kept;
        if (!changed || n == 0) break;
    }
    if (n == 0) {
        *median = kNaN;
        *std_dev = kNaN;
        return 0;
    }
    *median = median_in_place(values, n);
    *std_dev = population_std(values, n);
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
        s.neighbour_x.resize(max_neighbours);
        s.neighbour_y.resize(max_neighbours);
    }

    const std::int64_t total = n_frames * n_stars;
    constexpr std::int64_t kChunk = 16;
    std::atomic<std::int64_t> next{0};
    auto work = [&](Scratch& s) noexcept {
        for (;;) {
            const std::int64_t start = next.fetch_add(kChunk);
            if (start >= total) return;
            const std::int64_t stop = std::min(total, start + kChunk);
            for (std::int64_t w = start; w < stop; ++w) measurer.measure(w / n_stars, w % n_stars, s);
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
