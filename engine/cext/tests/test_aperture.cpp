// C++ tests of aperture photometry; run by ctest, and under ASan + UBSan in CI.
#include <cmath>
#include <limits>
#include <vector>

#include "engine/aperture.hpp"
#include "engine/flags.hpp"
#include "test_runner.hpp"

namespace {
constexpr double kPi = 3.14159265358979323846;

struct Result {
    std::vector<double> sum, area, background, background_std;
    std::vector<std::uint32_t> flags;
    std::vector<std::int64_t> background_pixels;
    engine::ApertureOutputs out;
    Result(std::int64_t frames, std::int64_t stars, std::int64_t radii)
        : sum(static_cast<std::size_t>(frames * stars * radii)), area(sum.size()),
          background(static_cast<std::size_t>(frames * stars)), background_std(background.size()),
          flags(sum.size()), background_pixels(background.size()) {
        out.sum = sum.data();
        out.area = area.data();
        out.flags = flags.data();
        out.background = background.data();
        out.background_std = background_std.data();
        out.background_pixels = background_pixels.data();
    }
};
}  // namespace

TEST(constant_image_and_hostile_coordinates) {
    const std::int64_t ny = 40, nx = 50;
    std::vector<float> image(static_cast<std::size_t>(ny * nx), 3.0f);
    const double inf = std::numeric_limits<double>::infinity();
    const double nan = std::numeric_limits<double>::quiet_NaN();
    std::vector<double> x = {20.0, 1e300, -1e300, nan, inf, 49.4, 0.0};
    std::vector<double> y = {20.0, 5.0, 5.0, 5.0, 5.0, 39.4, -0.6};
    const std::vector<double> radii = {2.0, 4.5};
    engine::ApertureConfig config;
    config.radii = radii.data();
    config.n_radii = 2;
    config.annulus_inner = 6.0;
    config.annulus_outer = 9.0;
    config.mask_radius = 2.0;
    config.blend_radius = 1.0;
    const auto ns = static_cast<std::int64_t>(x.size());
    Result r(1, ns, 2);
    engine::aperture_photometry<float>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), ns,
                                       config, r.out, 4);
    CHECK_CLOSE(r.area[0], 4.0 * kPi, 1e-12);
    CHECK_CLOSE(r.sum[1], 3.0 * 4.5 * 4.5 * kPi, 1e-10);
    CHECK(r.flags[0] == 0 && r.background[0] == 3.0);
    for (int s = 1; s <= 4; ++s) {
        CHECK(std::isnan(r.sum[static_cast<std::size_t>(2 * s)]));
        CHECK(r.flags[static_cast<std::size_t>(2 * s)] == engine::flags::kOffFrame);
    }
    CHECK(r.flags[10] & engine::flags::kNearEdge);
    CHECK(r.flags[12] & engine::flags::kOffFrame);  // centre just off the bottom edge
}

TEST(more_threads_than_work_and_pixel_flags) {
    const std::int64_t ny = 16, nx = 16;
    std::vector<double> image(static_cast<std::size_t>(ny * nx), 1.0);
    std::vector<std::uint8_t> pixel_flags(image.size(), 0);
    pixel_flags[8 * 16 + 8] = engine::flags::kPixelBad;
    std::vector<double> x = {8.0}, y = {8.0};
    const std::vector<double> radii = {1.0};
    engine::ApertureConfig config;
    config.radii = radii.data();
    config.n_radii = 1;
    Result r(1, 1, 1);
    engine::aperture_photometry<double>(image.data(), pixel_flags.data(), 1, ny, nx, x.data(),
                                        y.data(), 1, config, r.out, 64);
    CHECK(r.flags[0] & engine::flags::kBadPixel);
    CHECK_CLOSE(r.area[0], kPi - 1.0, 1e-12);
    CHECK(std::isnan(r.background[0]));  // no annulus asked for
}

TEST(many_crowded_stars_neighbour_search) {
    const std::int64_t ny = 64, nx = 64, ns = 500;
    std::vector<float> image(static_cast<std::size_t>(ny * nx), 2.0f);
    std::vector<double> x(ns), y(ns);
    for (std::int64_t s = 0; s < ns; ++s) {
        x[static_cast<std::size_t>(s)] = static_cast<double>((s * 37) % 64) + 0.25;
        y[static_cast<std::size_t>(s)] = static_cast<double>((s * 11) % 64) + 0.5;
    }
    const std::vector<double> radii = {1.5, 3.0};
    engine::ApertureConfig config;
    config.radii = radii.data();
    config.n_radii = 2;
    config.annulus_inner = 4.0;
    config.annulus_outer = 6.0;
    config.mask_radius = 3.0;
    config.blend_radius = 2.0;
    Result r(1, ns, 2);
    engine::aperture_photometry<float>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), ns,
                                       config, r.out, 3);
    int blended = 0;
    for (std::int64_t s = 0; s < ns; ++s)
        blended += (r.flags[static_cast<std::size_t>(2 * s)] & engine::flags::kBlended) != 0;
    CHECK(blended > 0);
}

TEST(sigma_clipped_median_basics) {
    std::vector<double> v = {1.0, 2.0, 3.0, 4.0, 1000.0, 2.5, 3.5, 1.5, 2.0, 3.0};
    double median = 0.0, spread = 0.0;
    const auto kept = engine::sigma_clipped_median(v.data(), static_cast<std::int64_t>(v.size()), 2.0,
                                                   5, &median, &spread);
    CHECK(kept == 9);
    CHECK_CLOSE(median, 2.5, 1e-15);
    CHECK(engine::sigma_clipped_median(v.data(), 0, 3.0, 5, &median, &spread) == 0);
    CHECK(std::isnan(median) && std::isnan(spread));
}
