// Multi-radius aperture photometry (contract in include/engine/aperture.hpp): the frame driver.
// Every (frame, star) pair is one item of the thread pool (parallel.hpp), taken in y order; per
// star it sets the edge flags, finds the neighbouring stars (blending, annulus masks) and calls
// the steps of aperture_steps.hpp: the exact sums (aperture_sums.cpp) and the annulus background
// (aperture_annulus.cpp).
#include "engine/aperture.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <numeric>
#include <vector>

#include "aperture_steps.hpp"
#include "engine/flags.hpp"
#include "engine/parallel.hpp"

namespace engine {
namespace {

using namespace aperture_detail;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

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
        std::fill(sum, sum + nr, 0.0);
        std::fill(area, area + nr, 0.0);
        std::fill(flag, flag + nr, std::uint32_t{0});
        out_.background[index] = kNaN;
        out_.background_std[index] = kNaN;
        out_.background_pixels[index] = 0;

        const double xc = x_[index];
        const double yc = y_[index];
        if (!reaches_frame(xc, yc)) {
            std::fill(sum, sum + nr, kNaN);
            std::fill(flag, flag + nr, flags::kOffFrame);
            return;
        }
        add_edge_flags(xc, yc, flag);
        const std::int64_t n_neighbours = find_neighbours(frame, star, xc, yc, scratch);
        if (blended(xc, yc, n_neighbours, scratch)) {
            for (std::int64_t k = 0; k < nr; ++k) flag[k] |= flags::kBlended;
        }

        const Plane<T> plane{frames_ + frame * ny_ * nx_,
                             pixel_flags_ ? pixel_flags_ + frame * ny_ * nx_ : nullptr, ny_, nx_};
        add_aperture_sums(plane, xc, yc, config_, r_max_, sum, area, flag, scratch);
        for (std::int64_t k = 0; k < nr; ++k) {
            if (area[k] <= 0.0) {
                sum[k] = kNaN;
                flag[k] |= flags::kOffFrame;
            }
        }
        if (has_annulus_) {
            const Background background =
                annulus_background(plane, xc, yc, config_, n_neighbours, scratch);
            out_.background[index] = background.median;
            out_.background_std[index] = background.std_dev;
            out_.background_pixels[index] = background.pixels;
            if (background.pixels < config_.min_background_pixels) {
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
        if (!reaches_frame(xc, yc)) return;
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
    // Whether anything the star measures can lie on the frame. Also guards the integer casts
    // that follow against huge or non-finite coordinates.
    bool reaches_frame(double xc, double yc) const noexcept {
        return xc > -reach_ - 1.0 && xc < static_cast<double>(nx_) + reach_ &&
               yc > -reach_ - 1.0 && yc < static_cast<double>(ny_) + reach_;
    }

    // OFF_FRAME for a centre off the frame, NEAR_EDGE for each aperture that crosses its edge.
    void add_edge_flags(double xc, double yc, std::uint32_t* flag) const noexcept {
        const double fx = static_cast<double>(nx_);
        const double fy = static_cast<double>(ny_);
        const bool centre_on_frame = xc >= -0.5 && xc < fx - 0.5 && yc >= -0.5 && yc < fy - 0.5;
        for (std::int64_t k = 0; k < config_.n_radii; ++k) {
            const double r = config_.radii[k];
            if (!centre_on_frame) flag[k] |= flags::kOffFrame;
            if (xc - r < -0.5 || xc + r > fx - 0.5 || yc - r < -0.5 || yc + r > fy - 0.5)
                flag[k] |= flags::kNearEdge;
        }
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

    // Whether a neighbour's centre lies within blend_radius.
    bool blended(double xc, double yc, std::int64_t n_neighbours, const Scratch& scratch) const {
        const double blend2 = config_.blend_radius * config_.blend_radius;
        for (std::int64_t m = 0; m < n_neighbours; ++m) {
            const double dx = scratch.neighbour_x[static_cast<std::size_t>(m)] - xc;
            const double dy = scratch.neighbour_y[static_cast<std::size_t>(m)] - yc;
            if (dx * dx + dy * dy < blend2) return true;
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

// Each frame's stars in y order (NaN last), frame after frame: for the neighbour search, and so
// that consecutive stars share image rows, which then stay in cache.
std::vector<std::int64_t> stars_by_y(const double* y, std::int64_t n_frames,
                                     std::int64_t n_stars) {
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
    return order;
}

// One Scratch per thread, sized for the measurer's largest star so that workers never allocate.
template <typename T>
std::vector<Scratch> sized_scratch(const Measurer<T>& measurer, std::int64_t n_stars,
                                   int n_threads) {
    std::vector<Scratch> scratch(static_cast<std::size_t>(n_threads));
    const std::size_t max_neighbours = static_cast<std::size_t>(std::min<std::int64_t>(n_stars, 4096));
    const std::size_t rows = measurer.row_capacity();  // also the most columns
    for (auto& s : scratch) {
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
    return scratch;
}

}  // namespace

template <typename T>
void aperture_photometry(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                         std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                         std::int64_t n_stars, const ApertureConfig& config,
                         const ApertureOutputs& out, int threads) {
    if (n_frames <= 0 || n_stars <= 0 || config.n_radii <= 0) return;
    const std::vector<std::int64_t> order = stars_by_y(y, n_frames, n_stars);
    const Measurer<T> measurer(frames, pixel_flags, ny, nx, x, y, n_stars, config, out, order);
    const std::int64_t total = n_frames * n_stars;
    std::vector<Scratch> scratch = sized_scratch(measurer, n_stars, worker_count(total, threads));

    constexpr std::int64_t kChunk = 16;
    constexpr std::int64_t kAhead = 2;  // how many stars ahead pixels are prefetched
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
