// C++ tests of the overlap geometry; run by ctest, and under ASan + UBSan in CI.
#include <cmath>
#include <vector>

#include "engine/overlap.hpp"
#include "test_runner.hpp"

namespace {
constexpr double kPi = 3.14159265358979323846;

double grid_sum(double xc, double yc, double r, std::int64_t ny, std::int64_t nx) {
    std::vector<double> out(static_cast<std::size_t>(ny * nx), -1.0);
    engine::circle_overlap_grid(xc, yc, r, ny, nx, out.data());
    double total = 0.0;
    for (double v : out) {
        CHECK(v >= 0.0 && v <= 1.0);
        total += v;
    }
    return total;
}
}  // namespace

TEST(sum_over_grid_is_circle_area) {
    const double radii[] = {0.1, 0.5, 0.9, 1.0, 1.7, 3.0, 7.25, 20.0};
    for (double r : radii) {
        CHECK_CLOSE(grid_sum(30.3, 29.8, r, 64, 64), kPi * r * r, 1e-11 * (1.0 + r * r));
    }
}

TEST(small_circle_inside_one_pixel) {
    std::vector<double> out(9, -1.0);
    engine::circle_overlap_grid(1.1, 0.9, 0.3, 3, 3, out.data());
    CHECK_CLOSE(out[4], kPi * 0.09, 1e-14);
    for (int k = 0; k < 9; ++k) {
        if (k != 4) CHECK(out[k] == 0.0);
    }
}

TEST(centre_on_pixel_corner_splits_in_four) {
    std::vector<double> out(4, 0.0);
    engine::circle_overlap_grid(0.5, 0.5, 0.4, 2, 2, out.data());
    for (double v : out) CHECK_CLOSE(v, kPi * 0.16 / 4.0, 1e-14);
}

TEST(half_disk_off_grid_edge) {
    // Centre on the left edge of the grid: only the right half is counted.
    CHECK_CLOSE(grid_sum(-0.5, 20.0, 6.0, 41, 20), 0.5 * kPi * 36.0, 1e-11);
    // Centre far outside: nothing.
    CHECK(grid_sum(-50.0, -50.0, 5.0, 10, 10) == 0.0);
}

TEST(rectangle_area_special_cases) {
    CHECK_CLOSE(engine::disk_rectangle_area(-10, 10, -10, 10, 2.0), 4.0 * kPi, 1e-13);
    CHECK_CLOSE(engine::disk_rectangle_area(0, 10, 0, 10, 2.0), kPi, 1e-13);
    CHECK_CLOSE(engine::disk_rectangle_area(-0.5, 0.5, -0.5, 0.5, 100.0), 1.0, 1e-12);
    CHECK(engine::disk_rectangle_area(3, 4, 0, 1, 2.0) == 0.0);
    CHECK(engine::disk_rectangle_area(1, 1, 0, 1, 2.0) == 0.0);  // empty rectangle
}

TEST(empty_grid_writes_nothing) {
    engine::circle_overlap_grid(0.0, 0.0, 1.0, 0, 5, nullptr);
    engine::circle_overlap_grid(0.0, 0.0, 1.0, 5, 0, nullptr);
}



TEST(row_overlap_equals_rectangle_areas) {
    // Pseudo-random centres and radii (a fixed linear congruential sequence, no <random> state).
    unsigned long long seed = 12345;
    auto uniform = [&seed](double lo, double hi) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        return lo + (hi - lo) * static_cast<double>(seed >> 11) / 9007199254740992.0;
    };
    double worst = 0.0;
    for (int trial = 0; trial < 300; ++trial) {
        const double r = trial % 3 == 0 ? uniform(0.05, 1.0) : uniform(1.0, 25.0);
        const double y0 = uniform(-r - 1.0, r);
        const engine::RowOverlap row(r, y0, y0 + 1.0);
        for (double x0 = -r - 1.3; x0 < r + 1.0; x0 += 0.37) {
            const double want = engine::disk_rectangle_area(x0, x0 + 1.0, y0, y0 + 1.0, r);
            const double got = row.empty() ? 0.0 : row.cumulative(x0 + 1.0) - row.cumulative(x0);
            worst = std::max(worst, std::fabs(got - want) / std::max(1.0, r * r));
            if (!row.empty() && row.full_half_width() >= 0.0 && x0 >= -row.full_half_width() &&
                x0 + 1.0 <= row.full_half_width())
                CHECK_CLOSE(want, 1.0, 1e-12);
            if (row.empty() || x0 >= row.near_half_width() || x0 + 1.0 <= -row.near_half_width())
                CHECK_CLOSE(want, 0.0, 1e-13);
        }
    }
    CHECK(worst < 1e-14);
}

TEST(grid_with_centres_far_away) {
    std::vector<double> out(12, -1.0);
    engine::circle_overlap_grid(1e300, -1e300, 1e200, 3, 4, out.data());
    engine::circle_overlap_grid(-1e18, 2.0, 5.0, 3, 4, out.data());
    for (double v : out) CHECK(v == 0.0);
    engine::circle_overlap_grid(1.5, 1.0, 1e6, 3, 4, out.data());  // the grid wholly inside
    for (double v : out) CHECK(v == 1.0);
}

TEST(edge_primitive_matches_long_double) {
    // The engine's own arctangent: within a few ulps of r * r over the whole range of a / r,
    // the rim included, where the half chord is tiny.
    unsigned long long seed = 99;
    auto uniform = [&seed](double lo, double hi) {
        seed = seed * 6364136223846793005ULL + 1442695040888963407ULL;
        return lo + (hi - lo) * static_cast<double>(seed >> 11) / 9007199254740992.0;
    };
    double worst = 0.0;
    for (int trial = 0; trial < 200000; ++trial) {
        const double r = uniform(0.05, 40.0);
        double a = r * uniform(0.0, 1.0);
        if (trial % 3 == 1) a = r * (1.0 - uniform(0.0, 1e-9));  // near the rim
        if (trial % 3 == 2) a = r * uniform(0.0, 1e-6);           // near the centre
        const long double lr = r, la = a;
        const long double s = std::sqrt((lr - la) * (lr + la));
        const long double want = 0.5L * (la * s + lr * lr * std::atan2(la, s));
        const double got = engine::RowOverlap::edge_primitive(r, a);
        worst = std::max(worst, static_cast<double>(std::fabs(got - want) / (lr * lr)));
    }
    CHECK(worst < 1e-15);
    CHECK(engine::RowOverlap::edge_primitive(2.0, 0.0) == 0.0);
    CHECK_CLOSE(engine::RowOverlap::edge_primitive(2.0, 2.0), kPi, 1e-15);  // a quarter disk
}

TEST(row_overlap_with_tabulated_primitives) {
    // cumulative(x, edge_primitive(r, |x|)) is cumulative(x): the tabulated form aperture
    // photometry uses.
    const double radii[] = {0.4, 1.0, 3.0, 7.3};
    for (double r : radii) {
        for (double y0 = -r - 1.2; y0 < r + 0.5; y0 += 0.29) {
            const engine::RowOverlap row(r, y0, y0 + 1.0);
            for (double x = -r - 1.0; x <= r + 1.0; x += 0.113) {
                const double a = std::fabs(x);
                const double p = a < r ? engine::RowOverlap::edge_primitive(r, a) : 0.0;
                CHECK(row.cumulative(x, p) == row.cumulative(x));
            }
        }
    }
}
