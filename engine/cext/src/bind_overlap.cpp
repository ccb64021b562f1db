// Bindings for the circle-pixel overlap geometry (include/engine/overlap.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>

#include "engine/overlap.hpp"

namespace py = pybind11;

namespace engine::bindings {

namespace {

// Inputs : centre (xc, yc) in the grid's pixel coordinates, radius r, and `out`, a writable
//          C-contiguous float64 array of shape (ny, nx) allocated by the caller.
// Output : `out` filled with the area of the circle inside each pixel. Nothing is returned;
//          no memory is allocated or kept.
void overlap_grid(double xc, double yc, double r, py::array_t<double, py::array::c_style> out) {
    // Checks repeat engine.cext.circle_overlap_grid's so that no call can corrupt memory.
    if (out.ndim() != 2) throw std::invalid_argument("out must be a 2-d array");
    if (!out.writeable()) throw std::invalid_argument("out must be writable");
    if (!std::isfinite(xc) || !std::isfinite(yc)) throw std::invalid_argument("centre must be finite");
    if (!(r > 0.0) || !std::isfinite(r)) throw std::invalid_argument("radius must be finite and > 0");
    const auto ny = static_cast<std::int64_t>(out.shape(0));
    const auto nx = static_cast<std::int64_t>(out.shape(1));
    double* data = out.mutable_data();
    // Safe without the GIL: `out` is kept alive by this frame's reference, and the kernel
    // touches only its buffer and plain doubles.
    py::gil_scoped_release release;
    circle_overlap_grid(xc, yc, r, ny, nx, data);
}

}  // namespace

void register_overlap(py::module_& m) {
    m.def("circle_overlap_grid", &overlap_grid, py::arg("xc"), py::arg("yc"), py::arg("r"),
          py::arg("out").noconvert(),
          "Fill `out` (float64, C order, shape (ny, nx)) with the exact area of the circle of "
          "radius r centred at (xc, yc) inside each pixel; pixel (j, i) is "
          "[i-0.5, i+0.5] x [j-0.5, j+0.5].");
    m.def(
        "disk_rectangle_area",
        [](double x0, double x1, double y0, double y1, double r) {
            return disk_rectangle_area(x0, x1, y0, y1, r);
        },
        py::arg("x0"), py::arg("x1"), py::arg("y0"), py::arg("y1"), py::arg("r"),
        "Area of the disk of radius r centred at the origin inside [x0, x1] x [y0, y1].");
}

}  // namespace engine::bindings
