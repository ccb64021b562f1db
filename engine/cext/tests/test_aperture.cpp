// C++ tests of aperture photometry; run by ctest, and under ASan + UBSan in CI.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "engine/aperture.hpp"
#include "engine/flags.hpp"
#include "engine/overlap.hpp"
#include "test_runner.hpp"

namespace {
constexpr double kPi = 3.14159265358979323846;
constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// A fixed linear congruential sequence: reproducible on every platform, unlike <random>'s
// distributions.
struct Sequence {
    unsigned long long state;
    double uniform(double lo, double hi) {
        state = state * 6364136223846793005ULL + 1442695040888963407ULL;
        return lo + (hi - lo) * static_cast<double>(state >> 11) / 9007199254740992.0;
    }
    double normal() {  // roughly: the sum of four uniforms, scaled to unit variance
        double total = 0.0;
        for (int k = 0; k < 4; ++k) total += uniform(-1.0, 1.0);
        return total * std::sqrt(0.75);
    }
};

struct Clipped {
    double median;
    double spread;
    std::int64_t kept;
};

// The clipping rule written plainly: sort, take the middle, and the spread from scratch.
Clipped reference_clip(std::vector<double> v, double sigma, int iterations) {
    if (v.empty()) return {kNaN, kNaN, 0};
    auto median = [](std::vector<double> s) {
        std::sort(s.begin(), s.end());
        const std::size_t n = s.size();
        return n % 2 == 1 ? s[n / 2] : 0.5 * (s[n / 2 - 1] + s[n / 2]);
    };
    auto spread = [](const std::vector<double>& s) {
        long double mean = 0.0L;
        for (double x : s) mean += x;
        mean /= static_cast<long double>(s.size());
        long double var = 0.0L;
        for (double x : s) var += (x - mean) * (x - mean);
        return static_cast<double>(std::sqrt(var / static_cast<long double>(s.size())));
    };
    double centre = median(v);
    double sd = spread(v);
    for (int pass = 0; pass < iterations; ++pass) {
        std::vector<double> kept;
        for (double x : v) {
            if (x >= centre - sigma * sd && x <= centre + sigma * sd) kept.push_back(x);
        }
        if (kept.size() == v.size()) break;
        if (kept.empty()) return {kNaN, kNaN, 0};
        v = kept;
        sd = spread(v);
        centre = median(v);
    }
    return {centre, sd, static_cast<std::int64_t>(v.size())};
}

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

TEST(sigma_clipper_matches_sorting) {
    Sequence seq{7};
    engine::SigmaClipper clipper(5000);  // one workspace reused for every case
    const std::int64_t sizes[] = {1, 2, 3, 4, 5, 10, 33, 100, 565, 2100, 5000};
    int cases = 0;
    for (int trial = 0; trial < 400; ++trial) {
        const std::int64_t n = sizes[trial % 11];
        const int kind = (trial / 11) % 7;
        std::vector<double> v(static_cast<std::size_t>(n));
        for (std::int64_t k = 0; k < n; ++k) {
            double& x = v[static_cast<std::size_t>(k)];
            switch (kind) {
                case 0: x = 500.0 + 12.0 * seq.normal(); break;
                case 1:  // a tail of bright outliers
                    x = seq.uniform(0.0, 1.0) < 0.08 ? 500.0 + seq.uniform(50.0, 1e6)
                                                     : 500.0 + 12.0 * seq.normal();
                    break;
                case 2: x = std::floor(seq.uniform(0.0, 5.0)); break;  // many ties
                case 3: x = 3.25; break;                               // all equal
                case 4: x = k % 7 == 3 ? 1.0 : 0.0; break;             // two values
                case 5:  // ulps apart
                    x = 1.0 + static_cast<double>(k % 5) * 2.220446049250313e-16;
                    break;
                default: x = seq.uniform(-1.0, 1.0) * (k % 3 == 0 ? 1e6 : 1.0); break;
            }
        }
        if (kind == 3 && n > 2) v[1] = 4.0;  // the range sample misses the one different value
        const double sigma = 1.5 + 0.5 * static_cast<double>(trial % 4);
        const int iterations = trial % 5 == 0 ? 0 : 5;
        const Clipped want = reference_clip(v, sigma, iterations);
        std::copy(v.begin(), v.end(), clipper.values());
        double median = 0.0, spread = 0.0;
        const std::int64_t kept = clipper.run(n, sigma, iterations, &median, &spread);
        CHECK(kept == want.kept);
        CHECK(median == want.median || (std::isnan(median) && std::isnan(want.median)));
        CHECK_CLOSE(spread, want.spread, 1e-12 * std::max(1.0, std::fabs(want.spread)));
        ++cases;
    }
    CHECK(cases == 400);
}

TEST(sigma_clipper_extreme_values) {
    // Ranges that overflow a plain difference, and subnormal ones: the median is still exact.
    const double big = std::numeric_limits<double>::max();
    const double tiny = std::numeric_limits<double>::denorm_min();
    const std::vector<std::vector<double>> inputs = {
        {-big, big, 0.0, 1.0, -1.0},
        {big, big, -big, 3.0},
        {tiny, 0.0, 2.0 * tiny, tiny, 0.0, 3.0 * tiny},
        {-tiny, tiny},
        {1e300, -1e300, 1e-300, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0, 15.0, 16.0,
         17.0, 18.0, 19.0, 20.0, 21.0, 22.0, 23.0, 24.0, 25.0, 26.0, 27.0, 28.0, 29.0, 30.0},
    };
    engine::SigmaClipper clipper(64);
    for (const auto& v : inputs) {
        std::copy(v.begin(), v.end(), clipper.values());
        double median = 0.0, spread = 0.0;
        const auto n = static_cast<std::int64_t>(v.size());
        CHECK(clipper.run(n, 3.0, 0, &median, &spread) == n);
        CHECK(median == reference_clip(v, 3.0, 0).median);
        std::copy(v.begin(), v.end(), clipper.values());
        const std::int64_t kept = clipper.run(n, 3.0, 5, &median, &spread);  // must not misbehave
        CHECK(kept >= 0 && kept <= n);
    }
    double median = 0.0, spread = 0.0;
    const std::vector<double> one = {42.0};
    CHECK(engine::sigma_clipped_median(one.data(), 1, 3.0, 5, &median, &spread) == 1);
    CHECK(median == 42.0 && spread == 0.0);
}

namespace {
// Every measurement of aperture_photometry recomputed pixel by pixel: overlap weights from
// circle_overlap_grid over the whole image, the annulus by testing each pixel centre.
template <typename T>
void check_against_brute_force(const std::vector<T>& image, const std::vector<std::uint8_t>& pflags,
                               std::int64_t ny, std::int64_t nx, const std::vector<double>& x,
                               const std::vector<double>& y, const engine::ApertureConfig& config,
                               const Result& got) {
    const auto ns = static_cast<std::int64_t>(x.size());
    const std::int64_t nr = config.n_radii;
    std::vector<double> weight(static_cast<std::size_t>(ny * nx));
    const std::uint8_t unusable =
        engine::flags::kPixelBad | engine::flags::kPixelNonfinite | engine::flags::kPixelCosmicRay;
    for (std::int64_t s = 0; s < ns; ++s) {
        const auto su = static_cast<std::size_t>(s);
        for (std::int64_t k = 0; k < nr; ++k) {
            engine::circle_overlap_grid(x[su], y[su], config.radii[k], ny, nx, weight.data());
            double sum = 0.0, area = 0.0;
            bool bad = false, saturated = false;
            for (std::size_t p = 0; p < weight.size(); ++p) {
                if (weight[p] <= 0.0) continue;
                const double v = static_cast<double>(image[p]);
                if (!std::isfinite(v) || (pflags[p] & unusable) != 0) {
                    bad = true;
                    continue;
                }
                sum += weight[p] * v;
                area += weight[p];
                saturated = saturated || (pflags[p] & engine::flags::kPixelSaturated) != 0;
            }
            const auto at = static_cast<std::size_t>(s * nr + k);
            CHECK_CLOSE(got.area[at], area, 1e-11);
            if (area > 0.0) CHECK_CLOSE(got.sum[at], sum, 1e-11 * (1.0 + std::fabs(sum)));
            CHECK(((got.flags[at] & engine::flags::kBadPixel) != 0) == bad);
            CHECK(((got.flags[at] & engine::flags::kSaturated) != 0) == saturated);
        }
        std::vector<double> annulus;
        const double inner2 = config.annulus_inner * config.annulus_inner;
        const double outer2 = config.annulus_outer * config.annulus_outer;
        const double mask2 = config.mask_radius * config.mask_radius;
        for (std::int64_t j = 0; j < ny; ++j) {
            for (std::int64_t i = 0; i < nx; ++i) {
                const double dx = static_cast<double>(i) - x[su];
                const double dy = static_cast<double>(j) - y[su];
                const double d2 = dx * dx + dy * dy;
                if (d2 < inner2 || d2 >= outer2) continue;
                const auto p = static_cast<std::size_t>(j * nx + i);
                const double v = static_cast<double>(image[p]);
                if (!std::isfinite(v) || (pflags[p] & (unusable | engine::flags::kPixelSaturated)) != 0)
                    continue;
                bool masked = false;
                for (std::int64_t m = 0; m < ns; ++m) {
                    const auto mu = static_cast<std::size_t>(m);
                    if (m == s) continue;
                    const double mx = static_cast<double>(i) - x[mu];
                    const double my = static_cast<double>(j) - y[mu];
                    masked = masked || mx * mx + my * my < mask2;
                }
                if (!masked) annulus.push_back(v);
            }
        }
        const Clipped want = reference_clip(annulus, config.clip_sigma, config.clip_iterations);
        CHECK(got.background_pixels[su] == want.kept);
        CHECK(got.background[su] == want.median ||
              (std::isnan(got.background[su]) && std::isnan(want.median)));
        CHECK_CLOSE(got.background_std[su], want.spread, 1e-9);
    }
}

template <typename T>
void brute_force_case(unsigned long long seed, bool with_flags) {
    const std::int64_t ny = 70, nx = 90, ns = 30;
    Sequence seq{seed};
    std::vector<T> image(static_cast<std::size_t>(ny * nx));
    std::vector<std::uint8_t> pflags(image.size(), 0);
    for (std::size_t p = 0; p < image.size(); ++p) {
        image[p] = static_cast<T>(100.0 + 5.0 * seq.normal());
        const double u = seq.uniform(0.0, 1.0);
        if (u < 0.01) image[p] = std::numeric_limits<T>::quiet_NaN();
        if (with_flags && u > 0.97) pflags[p] = engine::flags::kPixelBad;
        if (with_flags && u > 0.94 && u <= 0.97) pflags[p] = engine::flags::kPixelSaturated;
    }
    std::vector<double> x(static_cast<std::size_t>(ns)), y(x.size());
    for (std::size_t s = 0; s < x.size(); ++s) {
        x[s] = seq.uniform(-3.0, static_cast<double>(nx) + 2.0);  // some hang over the edges
        y[s] = seq.uniform(-3.0, static_cast<double>(ny) + 2.0);
    }
    const std::vector<double> radii = {1.3, 3.0, 4.75};
    engine::ApertureConfig config;
    config.radii = radii.data();
    config.n_radii = 3;
    config.annulus_inner = 6.5;
    config.annulus_outer = 10.0;
    config.clip_sigma = 2.5;
    config.mask_radius = 4.0;
    config.blend_radius = 3.0;
    Result got(1, ns, 3);
    engine::aperture_photometry<T>(image.data(), with_flags ? pflags.data() : nullptr, 1, ny, nx,
                                   x.data(), y.data(), ns, config, got.out, 2);
    if (!with_flags) std::fill(pflags.begin(), pflags.end(), std::uint8_t{0});
    check_against_brute_force(image, pflags, ny, nx, x, y, config, got);
}
}  // namespace

TEST(apertures_and_annulus_match_brute_force) {
    brute_force_case<float>(11, false);
    brute_force_case<float>(12, true);
    brute_force_case<double>(13, true);
}
