// Bindings for multi-radius aperture photometry (include/engine/aperture.hpp).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <stdexcept>
#include <string>

#include "bind_checks.hpp"
#include "engine/aperture.hpp"
#include "engine/flags.hpp"

namespace py = pybind11;

namespace engine::bindings {

namespace {

// Inputs : frames (n_frames, ny, nx) float32 or float64; pixel_flags None or uint8 of the same
//          shape; x, y (n_frames, n_stars) float64; radii (n_radii,) float64, each > 0; the
//          annulus, clipping, masking and blending settings of ApertureConfig; threads >= 1.
// Outputs: sum, area (n_frames, n_stars, n_radii) float64; flags the same shape, uint32;
//          background, background_std (n_frames, n_stars) float64; background_pixels the same,
//          int64. All allocated by the caller, all C-contiguous; every element is written.
template <typename T>
void measure(py::array_t<T, py::array::c_style> frames, py::object pixel_flags,
             py::array_t<double, py::array::c_style> x, py::array_t<double, py::array::c_style> y,
             py::array_t<double, py::array::c_style> radii, double annulus_inner,
             double annulus_outer, double clip_sigma, int clip_iterations, double mask_radius,
             double blend_radius, std::int64_t min_background_pixels, int threads,
             py::array_t<double, py::array::c_style> sum, py::array_t<double, py::array::c_style> area,
             py::array_t<std::uint32_t, py::array::c_style> flags,
             py::array_t<double, py::array::c_style> background,
             py::array_t<double, py::array::c_style> background_std,
             py::array_t<std::int64_t, py::array::c_style> background_pixels) {
    // These checks repeat engine.cext's so that no direct call can read or write out of bounds.
    if (frames.ndim() != 3) throw std::invalid_argument("frames must be 3-d (frame, y, x)");
    const py::ssize_t nf = frames.shape(0), ny = frames.shape(1), nx = frames.shape(2);
    if (x.ndim() != 2 || x.shape(0) != nf) throw std::invalid_argument("x must be (n_frames, n_stars)");
    const py::ssize_t ns = x.shape(1);
    require_shape(y, {nf, ns}, "y");
    if (radii.ndim() != 1 || radii.shape(0) < 1) throw std::invalid_argument("radii must be a non-empty 1-d array");
    const py::ssize_t nr = radii.shape(0);
    for (py::ssize_t k = 0; k < nr; ++k) {
        const double r = radii.at(k);
        if (!(r > 0.0) || !std::isfinite(r)) throw std::invalid_argument("radii must be finite and > 0");
    }
    if (!std::isfinite(annulus_inner) || !std::isfinite(annulus_outer) || annulus_inner < 0.0)
        throw std::invalid_argument("annulus radii must be finite and >= 0");
    if (!std::isfinite(mask_radius) || !std::isfinite(blend_radius) || mask_radius < 0.0 || blend_radius < 0.0)
        throw std::invalid_argument("mask and blend radii must be finite and >= 0");
    if (!(clip_sigma > 0.0) || clip_iterations < 0) throw std::invalid_argument("bad sigma-clipping settings");
    if (threads < 1) throw std::invalid_argument("threads must be >= 1");
    require_output(sum, {nf, ns, nr}, "sum");
    require_output(area, {nf, ns, nr}, "area");
    require_output(flags, {nf, ns, nr}, "flags");
    require_output(background, {nf, ns}, "background");
    require_output(background_std, {nf, ns}, "background_std");
    require_output(background_pixels, {nf, ns}, "background_pixels");
    carray<std::uint8_t> pixel_flag_array;
    const std::uint8_t* pflags = pixel_flag_data(pixel_flags, pixel_flag_array, nf, ny, nx);

    ApertureConfig config;
    config.radii = radii.data();
    config.n_radii = nr;
    config.annulus_inner = annulus_inner;
    config.annulus_outer = annulus_outer;
    config.clip_sigma = clip_sigma;
    config.clip_iterations = clip_iterations;
    config.mask_radius = mask_radius;
    config.blend_radius = blend_radius;
    config.min_background_pixels = min_background_pixels;
    ApertureOutputs out;
    out.sum = sum.mutable_data();
    out.area = area.mutable_data();
    out.flags = flags.mutable_data();
    out.background = background.mutable_data();
    out.background_std = background_std.mutable_data();
    out.background_pixels = background_pixels.mutable_data();
    const T* data = frames.data();
    const double* px = x.data();
    const double* py_ = y.data();
    // Safe without the GIL: every array above is held by this frame's references, and the
    // kernel touches only their buffers.
    py::gil_scoped_release release;
    aperture_photometry<T>(data, pflags, nf, ny, nx, px, py_, ns, config, out, threads);
}

}  // namespace

void register_aperture(py::module_& m) {
    const char* doc =
        "Exact multi-radius aperture sums with a sigma-clipped annulus background for every star "
        "on every frame of a (frame, y, x) block. Writes into caller-allocated outputs; see "
        "engine.photometry.aperture_photometry for the validated entry point.";
    auto bind = [&](auto tag) {
        using T = decltype(tag);
        m.def("aperture_photometry", &measure<T>, py::arg("frames").noconvert(),
              py::arg("pixel_flags"), py::arg("x").noconvert(), py::arg("y").noconvert(),
              py::arg("radii").noconvert(), py::arg("annulus_inner"), py::arg("annulus_outer"),
              py::arg("clip_sigma"), py::arg("clip_iterations"), py::arg("mask_radius"),
              py::arg("blend_radius"), py::arg("min_background_pixels"), py::arg("threads"),
              py::arg("sum").noconvert(), py::arg("area").noconvert(), py::arg("flags").noconvert(),
              py::arg("background").noconvert(), py::arg("background_std").noconvert(),
              py::arg("background_pixels").noconvert(), doc);
    };
    bind(float{});
    bind(double{});
    m.def(
        "sigma_clipped_median",
        [](py::array_t<double, py::array::c_style | py::array::forcecast> values, double sigma,
           int iterations) {
            if (values.ndim() != 1) throw std::invalid_argument("values must be 1-d");
            if (!(sigma > 0.0) || iterations < 0) throw std::invalid_argument("bad sigma-clipping settings");
            std::vector<double> work(values.data(), values.data() + values.shape(0));
            double median = 0.0, spread = 0.0;
            const auto kept = sigma_clipped_median(work.data(), static_cast<std::int64_t>(work.size()),
                                                   sigma, iterations, &median, &spread);
            return py::make_tuple(median, spread, kept);
        },
        py::arg("values"), py::arg("sigma") = 3.0, py::arg("iterations") = 5,
        "(median, std, kept) of values after astropy-style sigma clipping about the median.");
    py::dict bits;
    bits["SATURATED"] = flags::kSaturated;
    bits["BAD_PIXEL"] = flags::kBadPixel;
    bits["NEAR_EDGE"] = flags::kNearEdge;
    bits["OFF_FRAME"] = flags::kOffFrame;
    bits["BLENDED"] = flags::kBlended;
    bits["BACKGROUND_FAILED"] = flags::kBackgroundFailed;
    m.attr("MEASUREMENT_FLAGS") = bits;
    py::dict pixel_bits;
    pixel_bits["BAD"] = flags::kPixelBad;
    pixel_bits["SATURATED"] = flags::kPixelSaturated;
    pixel_bits["NONFINITE"] = flags::kPixelNonfinite;
    pixel_bits["COSMIC_RAY"] = flags::kPixelCosmicRay;
    m.attr("PIXEL_FLAGS") = pixel_bits;
}

}  // namespace engine::bindings
