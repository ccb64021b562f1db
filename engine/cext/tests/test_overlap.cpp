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


