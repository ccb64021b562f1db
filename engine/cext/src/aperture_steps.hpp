// Internal to aperture photometry (not part of its contract, include/engine/aperture.hpp): the
// steps of one star's measurement, shared by the frame driver (aperture.cpp, which finds each
// star's neighbours and calls the steps on every (frame, star) pair over the thread pool) and
// the steps: the exact aperture sums (aperture_sums.cpp) and the annulus background
// (aperture_annulus.cpp, clipped by SigmaClipper, sigma_clip.cpp). Like the contract, nothing
// here checks its arguments.
#pragma once

#include <cstdint>
#include <vector>

#include "engine/aperture.hpp"
#include "engine/flags.hpp"
#include "engine/overlap.hpp"

namespace engine::aperture_detail {

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

// One frame: its pixels and pixel flags, row-major [ny, nx].
template <typename T>
struct Plane {
    const T* pixels = nullptr;
    const std::uint8_t* flags = nullptr;  // nullptr: no pixel flags
    std::int64_t ny = 0, nx = 0;
};

// Per-thread scratch space, sized before the threads start so workers never allocate.
struct Scratch {
    SigmaClipper annulus;  // gathers the annulus values
    std::vector<double> edge_primitive;  // RowOverlap::edge_primitive at column edges
    std::vector<double> row_sum;  // per row of the apertures' square, running sums along it
    std::vector<std::int32_t> row_bad;
    std::vector<std::int32_t> row_saturated;
    std::vector<RowOverlap::Chord> edge_chords;  // RowOverlap::chord at row edges
    std::vector<double> neighbour_x;  // the other stars near this one (the driver's search)
    std::vector<double> neighbour_y;
    std::vector<double> row_neighbour_x;  // the neighbours that reach the current row
    std::vector<double> row_neighbour_y;
};

// Adds every aperture (config.radii; r_max the largest) of the star at (xc, yc) to sum / area /
// flag [n_radii]: overlap-weighted usable pixels, BAD_PIXEL and SATURATED. The star reaches the
// frame; scratch's row tables hold 2 r_max + 5 rows and columns.
template <typename T>
void add_aperture_sums(const Plane<T>& plane, double xc, double yc, const ApertureConfig& config,
                       double r_max, double* sum, double* area, std::uint32_t* flag,
                       Scratch& scratch);

struct Background {
    double median;
    double std_dev;
    std::int64_t pixels;  // kept after clipping
};

// The sigma-clipped annulus background of the star at (xc, yc): its usable, unsaturated pixels
// with centres within [annulus_inner, annulus_outer), less those within mask_radius of the
// n_neighbours stars in scratch.neighbour_x / neighbour_y.
template <typename T>
Background annulus_background(const Plane<T>& plane, double xc, double yc,
                              const ApertureConfig& config, std::int64_t n_neighbours,
                              Scratch& scratch);

}  // namespace engine::aperture_detail
