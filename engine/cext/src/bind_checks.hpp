// Argument checks shared by the bindings (bind_*.cpp). Each throws std::invalid_argument, which
// pybind11 turns into ValueError: the Python wrappers validate first, these keep a direct call
// from reading or writing out of bounds.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <stdexcept>
#include <string>

namespace engine::bindings {

namespace py = pybind11;

template <typename T>
using carray = py::array_t<T, py::array::c_style>;

inline void require(bool condition, const char* message) {
    if (!condition) throw std::invalid_argument(message);
}

template <typename A>
void require_shape(const A& a, std::initializer_list<py::ssize_t> shape, const char* name) {
    bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
    py::ssize_t axis = 0;
    for (auto n : shape) {
        if (!ok) break;
        ok = a.shape(axis++) == n;
    }
    if (!ok) throw std::invalid_argument(std::string(name) + " has the wrong shape");
}

// An output array: the given shape, and writable.
template <typename A>
void require_output(const A& a, std::initializer_list<py::ssize_t> shape, const char* name) {
    require_shape(a, shape, name);
    if (!a.writeable()) throw std::invalid_argument(std::string(name) + " must be writable");
}

// The optional uint8 pixel-flag array of the frames' shape (nf, ny, nx), or nullptr for None.
// `holder` keeps the array alive while its data pointer is in use.
inline const std::uint8_t* pixel_flag_data(const py::object& pixel_flags,
                                           carray<std::uint8_t>& holder, py::ssize_t nf,
                                           py::ssize_t ny, py::ssize_t nx) {
    if (pixel_flags.is_none()) return nullptr;
    require(py::isinstance<py::array_t<std::uint8_t>>(pixel_flags),
            "pixel_flags must be a uint8 array");
    holder = carray<std::uint8_t>::ensure(pixel_flags);
    require(static_cast<bool>(holder), "pixel_flags must be a uint8 array");
    require_shape(holder, {nf, ny, nx}, "pixel_flags");
    return holder.data();
}

}  // namespace engine::bindings
