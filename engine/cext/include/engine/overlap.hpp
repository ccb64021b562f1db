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

#include <cstdint>

namespace engine {

// Area of the disk of radius r centred at the origin that lies inside the axis-aligned
// rectangle [x0, x1] x [y0, y1] (x0 <= x1, y0 <= y1). Exact up to rounding: the absolute
// error is a few ulps of max(1, r * r) at worst, much less for rectangles well inside the disk.
double disk_rectangle_area(double x0, double x1, double y0, double y1, double r) noexcept;

// Inputs : centre (xc, yc) in grid coordinates, radius r > 0, grid shape ny x nx (>= 0).
// Output : out[j * nx + i] = area of the disk inside pixel (j, i), in pixels (0..1).
//          The caller owns `out`, which must hold ny * nx doubles; every element is written.
void circle_overlap_grid(double xc, double yc, double r, std::int64_t ny, std::int64_t nx,
                         double* out) noexcept;

}  // namespace engine
