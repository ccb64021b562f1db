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

// Exact overlap of a disk with the pixels of one row, for loops that walk rows.
//
// For the disk of radius r centred at the origin and the horizontal band [y0, y1] (a pixel row,
// relative to the centre), G(x) = signed area of disk & band between abscissae 0 and x is odd
// in x, so the area inside the pixel [x0, x1] of that row is G(x1) - G(x0). An evaluation may
// need the edge's primitive (a sqrt and an arctangent), which depends on the column alone, and
// adjacent pixels share their edge. Pixels within
// +-full_half_width are wholly inside the disk (weight 1: no evaluation needed); pixels outside
// +-near_half_width are wholly outside. Absolute error: a few ulps of r * r.
class RowOverlap {
   public:
    // The disk's half chord at height y and the integral of the chord from 0 to it: what a row
    // needs of each of its two edges. Rows that share an edge can share its Chord.
    struct Chord {
        double half_width;
        double primitive;
    };
    static Chord chord(double r, double y) noexcept;

    RowOverlap(double r, double y0, double y1) noexcept
        : RowOverlap(r, y0, y1, chord(r, y0), chord(r, y1)) {}
    RowOverlap(double r, double y0, double y1, Chord at_y0, Chord at_y1) noexcept;

    bool empty() const noexcept { return n_bands_ == 0; }
    double near_half_width() const noexcept { return near_half_width_; }
    // Negative when no pixel of the row is wholly inside the disk.
    double full_half_width() const noexcept { return full_half_width_; }
    double cumulative(double x) const noexcept;
    // The same, given edge_primitive(r, |x|) (any value when |x| >= r): a column edge's primitive
    // is shared by every row of the disk, so callers walking many rows can tabulate it.
    double cumulative(double x, double primitive_at_x) const noexcept;
    // Integral of the half chord sqrt(r^2 - t^2) over t in [0, a], 0 <= a <= r. Exact to a
    // couple of ulps of r * r: the arctangent is the engine's own, cheaper than std::atan2.
    static double edge_primitive(double r, double a) noexcept;

   private:
    struct Band {
        double h0, h1;   // 0 <= h0 < h1: the band, folded onto the upper half of the disk
        double c0, c1;   // half chords at h0 and h1 (c1 = 0 when the band reaches over the top)
        double s_c1;     // primitive of the chord at c1
        double total;    // G at the band's right end (x >= c0)
    };
    double band_area_to(const Band& band, double a, double s_a) const noexcept;

    double r_;
    Band bands_[2];
    int n_bands_ = 0;
    double near_half_width_ = 0.0;
    double full_half_width_ = -1.0;
};

// Inline: aperture photometry calls these for every row and every rim pixel.

// Area of the band between abscissae 0 and a, for 0 <= a <= c0, given s_a = edge_primitive(a).
inline double RowOverlap::band_area_to(const Band& band, double a, double s_a) const noexcept {
    const double flat = band.h1 - band.h0;
    if (a <= band.c1) return flat * a;  // under the cap, the disk fills the band's height
    return flat * band.c1 + (s_a - band.s_c1) - band.h0 * (a - band.c1);
}

inline RowOverlap::RowOverlap(double r, double y0, double y1, Chord at_y0, Chord at_y1) noexcept
    : r_(r) {
    // Fold the band onto y >= 0: a band across the centre becomes two bands starting at 0.
    struct Piece {
        double h0, h1;
        Chord c0, c1;
    };
    const Chord top{r, 0.25 * 3.14159265358979323846 * r * r};  // the chord through the centre
    Piece pieces[2];
    int n = 0;
    if (y0 >= 0.0) {
        pieces[n++] = Piece{y0, y1, at_y0, at_y1};
    } else if (y1 <= 0.0) {
        pieces[n++] = Piece{-y1, -y0, at_y1, at_y0};
    } else {
        pieces[n++] = Piece{0.0, y1, top, at_y1};
        pieces[n++] = Piece{0.0, -y0, top, at_y0};
    }
    // The half widths come from the chords at the band ends: the chord shrinks away from the
    // centre, so the nearest end has the widest chord and the farthest the narrowest.
    double farthest = 0.0;
    double narrowest = r;
    for (int k = 0; k < n; ++k) {
        const Piece& p = pieces[k];
        farthest = std::max(farthest, p.h1);
        narrowest = std::min(narrowest, p.c1.half_width);
        if (p.h0 >= r || p.h1 <= p.h0) continue;
        near_half_width_ = std::max(near_half_width_, p.c0.half_width);
        Band band;
        band.h0 = p.h0;
        band.h1 = p.h1;
        band.c0 = p.c0.half_width;
        band.c1 = p.h1 < r ? p.c1.half_width : 0.0;
        band.s_c1 = p.h1 < r ? p.c1.primitive : 0.0;
        band.total = band_area_to(band, band.c0, p.c0.primitive);
        bands_[n_bands_++] = band;
    }
    full_half_width_ = farthest < r ? narrowest : -1.0;
}

inline double RowOverlap::cumulative(double x, double primitive_at_x) const noexcept {
    const double a = std::abs(x);
    double area = 0.0;
    for (int k = 0; k < n_bands_; ++k) {
        const Band& band = bands_[k];
        if (a >= band.c0) {
            area += band.total;
        } else if (a <= band.c1) {
            area += (band.h1 - band.h0) * a;
        } else {
            area += band_area_to(band, a, primitive_at_x);
        }
    }
    return x < 0.0 ? -area : area;
}

}  // namespace engine
