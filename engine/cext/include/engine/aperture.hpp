// Exact multi-radius aperture photometry with a sigma-clipped annulus background.
//
// Pure C++17, no Python headers. Conventions as in overlap.hpp: pixel (j, i) is the unit square
// centred on (x = i, y = j); arrays are row-major. One call measures every star on every frame
// of a block of frames, in parallel over (frame, star) pairs on `threads` std::threads.
//
// The functions do no argument checking beyond what memory safety within the stated sizes
// needs: the Python wrapper (engine.photometry, through engine/cext/__init__.py) guarantees the
// shapes, dtypes and value ranges below. Non-finite star coordinates are allowed and give
// OFF_FRAME results. Nothing here aborts; allocation failures surface as std::bad_alloc in the
// calling thread.
#pragma once

#include <cstdint>
#include <vector>

namespace engine {

struct ApertureConfig {
    const double* radii = nullptr;  // [n_radii] aperture radii in pixels, each > 0
    std::int64_t n_radii = 0;
    double annulus_inner = 0.0;  // background annulus; used when annulus_outer > annulus_inner
    double annulus_outer = 0.0;
    double clip_sigma = 3.0;      // sigma clipping of annulus pixels about their median
    int clip_iterations = 5;      // at most this many clipping passes (astropy's maxiters)
    double mask_radius = 0.0;     // annulus pixels closer than this to another star are left out
    double blend_radius = 0.0;    // another star's centre closer than this sets the BLENDED flag
    std::int64_t min_background_pixels = 5;  // fewer usable annulus pixels: BACKGROUND_FAILED
};

// All outputs are allocated and owned by the caller; every element is written.
struct ApertureOutputs {
    double* sum = nullptr;             // [frames, stars, radii] sum of overlap * value, usable pixels
    double* area = nullptr;            // [frames, stars, radii] sum of overlap over usable pixels
    std::uint32_t* flags = nullptr;    // [frames, stars, radii] engine::flags measurement bits
    double* background = nullptr;      // [frames, stars] clipped median per pixel (NaN if none)
    double* background_std = nullptr;  // [frames, stars] clipped standard deviation per pixel
    std::int64_t* background_pixels = nullptr;  // [frames, stars] annulus pixels kept after clipping
};

// Inputs : frames [n_frames, ny, nx] of T (float or double); pixel_flags the same shape of
//          engine::flags pixel bits, or nullptr; x, y [n_frames, n_stars] star centres per frame.
// Output : `out`, see ApertureOutputs. A pixel is usable when finite and not flagged BAD,
//          NONFINITE or COSMIC_RAY; unusable pixels inside an aperture set BAD_PIXEL and are left
//          out of both sum and area. threads >= 1.
template <typename T>
void aperture_photometry(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                         std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                         std::int64_t n_stars, const ApertureConfig& config,
                         const ApertureOutputs& out, int threads);

// Sigma-clipped statistics as astropy's sigma_clipped_stats(cenfunc='median', stdfunc='std'): up
// to `iterations` passes, each removing values outside median +- sigma * std of those left,
// stopping early when none is removed (or all are). This is the engine's one sigma-clipping rule,
// engine/kernels/sigma_clip.py, with one sigma and maxiters = iterations; tests/test_sigma_clip.py
// holds the two equal. The median is exact. A reusable workspace: fill values() then call run();
// it allocates only when constructed or reserved.
class SigmaClipper {
   public:
    explicit SigmaClipper(std::int64_t capacity = 0) { reserve(capacity); }
    void reserve(std::int64_t capacity);  // may throw std::bad_alloc
    double* values() noexcept { return values_.data(); }

    // Statistics of values()[0..n), 0 <= n <= capacity, all finite (left unchanged): writes the
    // median and standard deviation of the values kept (NaN when none) and returns how many.
    std::int64_t run(std::int64_t n, double sigma, int iterations, double* median,
                     double* std_dev) noexcept;

   private:
    // Groups values()[0..n), n >= 1, by bucket into sorted_; false, with *constant set, when they
    // are all one value (then there is nothing to sort and nothing is ever clipped).
    bool sort_into_buckets(std::int64_t n, double* constant) noexcept;
    double select(std::int64_t index, std::int64_t first, std::int64_t last) noexcept;
    double median_of(std::int64_t first, std::int64_t last) noexcept;

    std::vector<double> values_;
    std::vector<double> sorted_;           // the values grouped by bucket, buckets in value order
    std::vector<std::int32_t> bucket_;     // each value's bucket
    std::vector<std::int64_t> edge_;       // bucket b holds sorted_[edge_[b], edge_[b + 1])
    int n_buckets_ = 0;
    double bucket_half_low_ = 0.0;  // a value v's bucket: (v / 2 - bucket_half_low_) *
    double bucket_scale_ = 0.0;     // bucket_scale_, clamped into [0, bucket_top_]
    double bucket_top_ = 0.0;
};

// One-off sigma_clipped_median of values[0..n) (finite; not modified) through a SigmaClipper.
// Allocates: may throw std::bad_alloc.
std::int64_t sigma_clipped_median(const double* values, std::int64_t n, double sigma,
                                  int iterations, double* median, double* std_dev);

}  // namespace engine
