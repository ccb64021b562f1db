// The private extension module engine.cext._core. This file only aggregates: each component
// registers its functions from its own bind_*.cpp file.
//
// Errors: bindings throw std::invalid_argument for bad shapes or values, which pybind11 turns
// into ValueError. The pure C++ core never throws; Python validates before calling.
#include <pybind11/pybind11.h>

namespace py = pybind11;

namespace engine::bindings {
void register_overlap(py::module_& m);
void register_aperture(py::module_& m);
void register_psf(py::module_& m);
}

PYBIND11_MODULE(_core, m) {
    m.doc() = "Compiled core of the engine (private: call it through engine.cext).";
    engine::bindings::register_overlap(m);
    engine::bindings::register_aperture(m);
    engine::bindings::register_psf(m);
}
