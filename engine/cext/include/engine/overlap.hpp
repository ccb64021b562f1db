// Exact circle-pixel overlap geometry for aperture photometry.
//
// Pure C++17, no Python headers. Conventions shared by every caller:
//   * pixel (row j, column i) is the unit square [i - 0.5, i + 0.5] x [j - 0.5, j + 0.5],
//     so pixel centres sit on integer coordinates (the sep / photutils convention);
//   * x is the column coordinate, y the row coordinate;
//   * arrays are row-major (C order), y slowest.
//
// These functions do no argument checking: callers (the pybind11 bindings, which are in turn
// called only through engine/cext/__init__.py) guarantee finite coordinates, r > 0, and output
// buffers of the stated size. They never throw and never allocate.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace engine {

// Area of the disk of radius r centred at the origin that lies inside the axis-aligned
// rectangle [x0, x1] x [y0, y1] (x0 <= x1, y0 <= y1). Exact up to rounding: the absolute
// error is a few ulps of max(1, r * r) at worst, much less for rectangles well inside the disk.
double disk_rectangle_area(double x0, double x1, double y0, double y1, double r) noexcept;

// Area of the disk of radius r centred at the origin inside the unit pixel centred at (dx, dy),
// i.e. dx, dy = pixel centre minus circle centre. Pixels wholly inside or outside the disk take
// a fast path; only rim pixels pay for the exact area.
inline double pixel_overlap(double dx, double dy, double r) noexcept {
    const double ax = std::abs(dx);  // the disk is symmetric: fold into the first quadrant
    const double ay = std::abs(dy);
    const double r2 = r * r;
    const double near_x = std::max(ax - 0.5, 0.0);
    const double near_y = std::max(ay - 0.5, 0.0);
    if (near_x * near_x + near_y * near_y >= r2) return 0.0;
    const double far_x = ax + 0.5;
    const double far_y = ay + 0.5;
    if (far_x * far_x + far_y * far_y <= r2) return 1.0;
    return disk_rectangle_area(ax - 0.5, ax + 0.5, ay - 0.5, ay + 0.5, r);
}

// Inputs : centre (xc, yc) in grid coordinates, radius r > 0, grid shape ny x nx (>= 0).
// Output : out[j * nx + i] = area of the disk inside pixel (j, i), in pixels (0..1).
//          The caller owns `out`, which must hold ny * nx doubles; every element is written.
void circle_overlap_grid(double xc, double yc, double r, std::int64_t ny, std::int64_t nx,
                         double* out) noexcept;

}  // namespace engine
