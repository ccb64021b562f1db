// C++ tests of PSF photometry (include/engine/psf.hpp); run by ctest, and under ASan + UBSan.
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "engine/flags.hpp"
#include "engine/psf.hpp"
#include "test_runner.hpp"

namespace {

using engine::PsfBackground;
using engine::PsfProfile;
using engine::PsfShape;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

std::size_t at(std::int64_t v) { return static_cast<std::size_t>(v); }

// A circular profile of this FWHM: Gaussian sigma or Moffat alpha as 1 / sqrt(a).
PsfShape circular(PsfProfile profile, double fwhm, double beta = 2.5) {
    const double width = profile == PsfProfile::kMoffat
                             ? fwhm / (2.0 * std::sqrt(std::pow(2.0, 1.0 / beta) - 1.0))
                             : fwhm / (2.0 * std::sqrt(2.0 * std::log(2.0)));
    return PsfShape{1.0 / (width * width), 0.0, 1.0 / (width * width), beta};
}

// Adds a star rendered by psf_pixel_grid into image (ny x nx).
void add_star(std::vector<double>& image, std::int64_t ny, std::int64_t nx, PsfProfile profile,
              const PsfShape& shape, double x0, double y0, double flux) {
    std::vector<double> values(image.size());
    engine::psf_pixel_grid(profile, shape, x0, y0, ny, nx, true, values.data(), nullptr);
    for (std::size_t k = 0; k < image.size(); ++k) image[k] += flux * values[k];
}

struct Photometry {
    std::vector<double> flux, flux_err, x, y, x_err, y_err, background, chi2;
    std::vector<std::int32_t> iterations;
    std::vector<std::int64_t> pixels, group_pixels, group;
    std::vector<std::uint32_t> flags;
    engine::PsfPhotometryOutputs out;
    explicit Photometry(std::int64_t n)
        : flux(at(n)), flux_err(at(n)), x(at(n)), y(at(n)), x_err(at(n)), y_err(at(n)),
          background(at(n)), chi2(at(n)), iterations(at(n)), pixels(at(n)), group_pixels(at(n)),
          group(at(n)), flags(at(n)) {
        out = {flux.data(), flux_err.data(), x.data(), y.data(), x_err.data(), y_err.data(),
               background.data(), chi2.data(), iterations.data(), pixels.data(),
               group_pixels.data(), group.data(), flags.data()};
    }
};

std::vector<double> shapes_for(std::int64_t n, const PsfShape& s) {
    std::vector<double> shapes(at(4 * n));
    for (std::int64_t k = 0; k < n; ++k) {
        shapes[at(4 * k)] = s.a;
        shapes[at(4 * k + 1)] = s.b;
        shapes[at(4 * k + 2)] = s.c;
        shapes[at(4 * k + 3)] = s.beta;
    }
    return shapes;
}

}  // namespace

TEST(psf_pixel_grid_normalisation) {
    const std::int64_t n = 161;
    std::vector<double> values(at(n * n));
    // A Gaussian and a steep Moffat hold all but ~1e-14 of their flux on the grid.
    const PsfShape gaussian{0.6, 0.1, 0.4, 0.0};
    engine::psf_pixel_grid(PsfProfile::kGaussian, gaussian, 80.3, 79.6, n, n, true, values.data(), nullptr);
    double total = 0.0;
    for (double v : values) total += v;
    CHECK_CLOSE(total, 1.0, 1e-10);
    const PsfShape moffat{0.05, -0.01, 0.07, 8.0};
    engine::psf_pixel_grid(PsfProfile::kMoffat, moffat, 80.0, 80.4, n, n, true, values.data(), nullptr);
    total = 0.0;
    for (double v : values) total += v;
    CHECK_CLOSE(total, 1.0, 1e-10);
}

TEST(psf_separable_gaussian_equals_quadrature) {
    const std::int64_t ny = 21, nx = 23;
    std::vector<double> exact(at(ny * nx)), quadrature(exact.size());
    const PsfShape shape{0.5, 0.0, 0.8, 0.0};
    engine::psf_pixel_grid(PsfProfile::kGaussian, shape, 11.2, 9.7, ny, nx, true, exact.data(), nullptr);
    engine::psf_pixel_grid(PsfProfile::kGaussian, shape, 11.2, 9.7, ny, nx, false, quadrature.data(), nullptr);
    double worst = 0.0;
    for (std::size_t k = 0; k < exact.size(); ++k) worst = std::fmax(worst, std::fabs(exact[k] - quadrature[k]));
    CHECK(worst < 1e-12);
}

TEST(psf_jacobian_matches_finite_differences) {
    const std::int64_t ny = 9, nx = 9;
    for (PsfProfile profile : {PsfProfile::kGaussian, PsfProfile::kMoffat}) {
        const double p[6] = {4.3, 3.8, 0.3, 0.05, 0.25, 2.7};
        std::vector<double> values(at(ny * nx)), jac(at(6 * ny * nx)), up(values.size()), down(values.size());
        auto shape_of = [](const double* q) { return PsfShape{q[2], q[3], q[4], q[5]}; };
        engine::psf_pixel_grid(profile, shape_of(p), p[0], p[1], ny, nx, false, values.data(), jac.data());
        const int n_params = profile == PsfProfile::kMoffat ? 6 : 5;
        for (int d = 0; d < n_params; ++d) {
            double hi[6], lo[6];
            for (int k = 0; k < 6; ++k) hi[k] = lo[k] = p[k];
            const double h = 1e-5 * std::fmax(std::fabs(p[d]), 0.1);
            hi[d] += h;
            lo[d] -= h;
            engine::psf_pixel_grid(profile, shape_of(hi), hi[0], hi[1], ny, nx, false, up.data(), nullptr);
            engine::psf_pixel_grid(profile, shape_of(lo), lo[0], lo[1], ny, nx, false, down.data(), nullptr);
            double worst = 0.0, scale = 0.0;
            for (std::int64_t k = 0; k < ny * nx; ++k) {
                const double numeric = (up[at(k)] - down[at(k)]) / (2.0 * h);
                worst = std::fmax(worst, std::fabs(numeric - jac[at(d * ny * nx + k)]));
                scale = std::fmax(scale, std::fabs(numeric));
            }
            CHECK(worst <= 1e-6 * scale);
        }
    }
}

TEST(psf_noiseless_star_recovers_flux_and_position) {
    const std::int64_t ny = 40, nx = 44;
    for (PsfProfile profile : {PsfProfile::kGaussian, PsfProfile::kMoffat}) {
        PsfShape shape = circular(profile, 3.1);
        shape.b = 0.02;
        std::vector<double> image(at(ny * nx), 25.0);
        add_star(image, ny, nx, profile, shape, 20.37, 18.81, 12345.0);
        const auto shapes = shapes_for(1, shape);
        for (bool fit_positions : {false, true}) {
            engine::PsfPhotometryConfig config;
            config.profile = profile;
            config.shapes = shapes.data();
            config.box = 6;
            config.fit_positions = fit_positions;
            config.read_noise = 3.0;
            config.tolerance = 1e-16;
            Photometry r(1);
            const double x = fit_positions ? 20.1 : 20.37;
            const double y = fit_positions ? 19.2 : 18.81;
            engine::psf_photometry<double>(image.data(), nullptr, 1, ny, nx, &x, &y, 1, config, r.out, 1);
            CHECK(r.flags[0] == 0);
            CHECK_CLOSE(r.flux[0], 12345.0, 1e-8 * 12345.0);
            CHECK_CLOSE(r.background[0], 25.0, 1e-8);
            CHECK_CLOSE(r.x[0], 20.37, 1e-8);
            CHECK_CLOSE(r.y[0], 18.81, 1e-8);
            CHECK(r.chi2[0] < 1e-12);
            CHECK(r.group[0] == 0 && r.pixels[0] == 13 * 13 && r.group_pixels[0] == 13 * 13);
        }
    }
}

TEST(psf_hostile_coordinates_and_edges) {
    const std::int64_t ny = 30, nx = 30;
    std::vector<float> image(at(ny * nx), 10.0f);
    std::vector<double> x = {kNaN, kInf, -kInf, 1e300, -1e300, 30.0, -0.6, 15.0, 0.2, 29.4};
    std::vector<double> y = {5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, kNaN, 0.3, 29.4};
    const auto ns = static_cast<std::int64_t>(x.size());
    const auto shapes = shapes_for(ns, circular(PsfProfile::kMoffat, 2.5));
    for (bool fit_positions : {false, true}) {
        engine::PsfPhotometryConfig config;
        config.shapes = shapes.data();
        config.box = 3;
        config.fit_positions = fit_positions;
        Photometry r(ns);
        engine::psf_photometry<float>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), ns, config, r.out, 3);
        for (std::int64_t s = 0; s < 8; ++s) {
            CHECK(r.flags[at(s)] == engine::flags::kOffFrame);
            CHECK(std::isnan(r.flux[at(s)]) && r.group[at(s)] == -1);
        }
        for (std::int64_t s = 8; s < 10; ++s) {
            CHECK((r.flags[at(s)] & engine::flags::kNearEdge) != 0);
            CHECK((r.flags[at(s)] & engine::flags::kOffFrame) == 0);
            CHECK(std::isfinite(r.flux[at(s)]) && std::fabs(r.flux[at(s)]) < 1e-6);
        }
    }
}

TEST(psf_flagged_pixels_and_singular_fits) {
    const std::int64_t ny = 32, nx = 32;
    const PsfShape shape = circular(PsfProfile::kGaussian, 3.0);
    std::vector<double> image(at(ny * nx), 5.0);
    add_star(image, ny, nx, PsfProfile::kGaussian, shape, 8.0, 8.0, 5000.0);
    add_star(image, ny, nx, PsfProfile::kGaussian, shape, 24.0, 8.0, 5000.0);
    std::vector<std::uint8_t> pixel_flags(image.size(), 0);
    pixel_flags[at(8 * nx + 8)] = engine::flags::kPixelSaturated;  // the first star's peak
    image[at(8 * nx + 8)] = 1e300;                                   // must never reach the fit
    image[at(9 * nx + 24)] = kNaN;                                   // a NaN in the second's box
    for (std::int64_t j = 20; j < 29; ++j)                           // the third's box: all bad
        for (std::int64_t i = 4; i < 13; ++i) pixel_flags[at(j * nx + i)] = engine::flags::kPixelBad;
    // Stars 3 and 4 coincide: their fluxes are not separable.
    std::vector<double> x = {8.0, 24.0, 8.0, 24.0, 24.0};
    std::vector<double> y = {8.0, 8.0, 24.0, 24.0, 24.0};
    const auto shapes = shapes_for(5, shape);
    engine::PsfPhotometryConfig config;
    config.profile = PsfProfile::kGaussian;
    config.shapes = shapes.data();
    config.box = 4;
    Photometry r(5);
    engine::psf_photometry<double>(image.data(), pixel_flags.data(), 1, ny, nx, x.data(), y.data(), 5, config, r.out, 2);
    CHECK((r.flags[0] & engine::flags::kSaturated) != 0);
    CHECK_CLOSE(r.flux[0], 5000.0, 1e-6);
    CHECK((r.flags[1] & engine::flags::kBadPixel) != 0);
    CHECK_CLOSE(r.flux[1], 5000.0, 1e-6);
    CHECK(r.pixels[1] == 80);
    CHECK((r.flags[2] & engine::flags::kFitFailed) != 0 && std::isnan(r.flux[2]));
    CHECK((r.flags[3] & engine::flags::kFitFailed) != 0 && std::isnan(r.flux[3]));
    CHECK((r.flags[4] & engine::flags::kFitFailed) != 0 && std::isnan(r.flux[4]));
}

TEST(psf_threads_chunked_groups_and_limits) {
    const std::int64_t ny = 64, nx = 64, ns = 120;
    const PsfShape shape = circular(PsfProfile::kMoffat, 2.8, 3.0);
    std::vector<double> image(at(ny * nx), 100.0);
    std::vector<double> x(at(ns)), y(at(ns));
    for (std::int64_t s = 0; s < ns; ++s) {
        x[at(s)] = 3.0 + static_cast<double>((s * 37) % 58) + 0.1 * static_cast<double>(s % 7);
        y[at(s)] = 3.0 + static_cast<double>((s * 11) % 58) + 0.05 * static_cast<double>(s % 5);
        add_star(image, ny, nx, PsfProfile::kMoffat, shape, x[at(s)], y[at(s)], 1000.0 + 10.0 * static_cast<double>(s));
    }
    const auto shapes = shapes_for(ns, shape);
    engine::PsfPhotometryConfig config;
    config.shapes = shapes.data();
    config.box = 3;
    config.fit_positions = true;
    config.max_group = 8;
    config.max_iterations = 4;
    Photometry one(ns), many(ns);
    engine::psf_photometry<double>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), ns, config, one.out, 1);
    engine::psf_photometry<double>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), ns, config, many.out, 6);
    int blended = 0, not_converged = 0;
    bool same = true;
    for (std::int64_t s = 0; s < ns; ++s) {
        const std::size_t k = at(s);
        same = same && one.flags[k] == many.flags[k] && one.group[k] == many.group[k] &&
               (one.flux[k] == many.flux[k] || (std::isnan(one.flux[k]) && std::isnan(many.flux[k])));
        blended += (one.flags[k] & engine::flags::kBlended) != 0;
        not_converged += (one.flags[k] & engine::flags::kFitNotConverged) != 0;
        CHECK(one.iterations[k] <= 5);
    }
    CHECK(same);
    CHECK(blended > 0);
    CHECK(not_converged > 0);
}

TEST(psf_position_bound_flags_centroid_failed) {
    const std::int64_t ny = 30, nx = 30;
    const PsfShape shape = circular(PsfProfile::kGaussian, 2.5);
    std::vector<double> image(at(ny * nx), 0.0);
    add_star(image, ny, nx, PsfProfile::kGaussian, shape, 15.9, 15.0, 1e4);
    const auto shapes = shapes_for(1, shape);
    engine::PsfPhotometryConfig config;
    config.profile = PsfProfile::kGaussian;
    config.shapes = shapes.data();
    config.box = 4;
    config.fit_positions = true;
    config.max_shift = 0.25;
    config.background = PsfBackground::kNone;
    Photometry r(1);
    const double x = 15.0, y = 15.0;
    engine::psf_photometry<double>(image.data(), nullptr, 1, ny, nx, &x, &y, 1, config, r.out, 1);
    CHECK((r.flags[0] & engine::flags::kCentroidFailed) != 0);
    CHECK_CLOSE(r.x[0], 15.25, 1e-12);
}

TEST(psf_fit_shape_recovers_a_noiseless_psf) {
    // Stars ~100 px apart: a Moffat's wings then add < 1e-9 of the background to another's box.
    const std::int64_t ny = 128, nx = 128;
    for (PsfProfile profile : {PsfProfile::kGaussian, PsfProfile::kMoffat}) {
        const PsfShape truth{0.30, 0.04, 0.24, 3.2};
        std::vector<double> image(at(ny * nx), 40.0);
        std::vector<double> x = {10.2, 116.6, 11.3, 115.8, kNaN, 1.0};
        std::vector<double> y = {10.7, 11.4, 117.1, 116.9, 30.0, 30.0};
        for (std::size_t s = 0; s < 4; ++s) add_star(image, ny, nx, profile, truth, x[s], y[s], 1e4 * static_cast<double>(s + 1));
        const PsfShape start = circular(profile, 2.5);
        const double initial[4] = {start.a, start.b, start.c, start.beta};
        engine::PsfShapeFitConfig config;
        config.profile = profile;
        config.initial = initial;
        config.box = 7;
        config.tolerance = 1e-16;
        std::vector<double> coefficients(10), errors(10), flux(6);
        double chi2 = 0.0;
        std::int32_t iterations = 0;
        std::int64_t used_count = 0;
        std::uint32_t flags = 0;
        std::vector<std::uint8_t> used(6);
        engine::PsfShapeFitOutputs out{coefficients.data(), errors.data(), &chi2, &iterations,
                                       &used_count, &flags, used.data(), flux.data()};
        engine::psf_fit_shape<double>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), 6, config, out, 1);
        CHECK(flags == 0 && used_count == 4);
        CHECK(used[4] == 0 && used[5] == 0);  // NaN position; box off the image
        CHECK_CLOSE(coefficients[0], truth.a, 1e-9);
        CHECK_CLOSE(coefficients[3], truth.b, 1e-9);
        CHECK_CLOSE(coefficients[6], truth.c, 1e-9);
        if (profile == PsfProfile::kMoffat) CHECK_CLOSE(coefficients[9], truth.beta, 1e-8);
        CHECK_CLOSE(flux[3], 4e4, 4e4 * 1e-9);
    }
}

TEST(psf_fit_shape_without_stars_fails_cleanly) {
    const std::int64_t ny = 20, nx = 20;
    std::vector<float> image(at(ny * nx), 1.0f);
    std::vector<double> x = {kNaN, 1e300, 10.0}, y = {3.0, 3.0, 10.0};
    const PsfShape start = circular(PsfProfile::kMoffat, 3.0);
    const double initial[4] = {start.a, start.b, start.c, start.beta};
    engine::PsfShapeFitConfig config;
    config.initial = initial;
    config.box = 6;
    std::vector<double> coefficients(10), errors(10), flux(3);
    double chi2 = 0.0;
    std::int32_t iterations = 0;
    std::int64_t used_count = 0;
    std::uint32_t flags = 0;
    std::vector<std::uint8_t> used(3);
    engine::PsfShapeFitOutputs out{coefficients.data(), errors.data(), &chi2, &iterations,
                                   &used_count, &flags, used.data(), flux.data()};
    engine::psf_fit_shape<float>(image.data(), nullptr, 1, ny, nx, x.data(), y.data(), 3, config, out, 4);
    CHECK(flags == engine::flags::kFitFailed);
    CHECK(std::isnan(coefficients[0]));
    CHECK(used_count == 0);  // a flat image: no positive flux to start from
}
