// Bindings for PSF photometry (include/engine/psf.hpp). Called only through engine/cext/psf.py,
// which validates and coerces first; the checks here repeat what memory safety needs, so that
// no direct call can read or write out of bounds or hand the core a value it cannot handle.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <initializer_list>
#include <stdexcept>
#include <string>

#include "bind_checks.hpp"
#include "engine/flags.hpp"
#include "engine/psf.hpp"

namespace py = pybind11;

namespace engine::bindings {

namespace {

PsfProfile profile_of(int profile) {
    require(profile == 0 || profile == 1, "profile must be 0 (Gaussian) or 1 (Moffat)");
    return static_cast<PsfProfile>(profile);
}

bool valid_shape(PsfProfile profile, double a, double b, double c, double beta) {
    const double det = a * c - b * b;
    const bool finite = std::isfinite(a) && std::isfinite(b) && std::isfinite(c) && std::isfinite(beta);
    return finite && a > 0.0 && c > 0.0 && det > 0.0 &&
           (profile == PsfProfile::kGaussian || beta > 1.0);
}

// Inputs : profile 0 / 1; the shape (a, b, c, beta); centre (x0, y0), finite.
// Outputs: values (ny, nx) float64; jacobian None or (6, ny, nx) float64 (derivatives with
//          respect to x0, y0, a, b, c, beta). Caller-allocated, C-contiguous, fully written.
void pixel_grid(int profile, double a, double b, double c, double beta, double x0, double y0,
                carray<double> values, py::object jacobian, bool allow_separable) {
    const PsfProfile kind = profile_of(profile);
    require(valid_shape(kind, a, b, c, beta), "the shape must have a, c > 0, ac - b^2 > 0 (and beta > 1)");
    require(std::isfinite(x0) && std::isfinite(y0), "the centre must be finite");
    require(values.ndim() == 2, "values must be 2-d");
    require(values.writeable(), "values must be writable");
    const py::ssize_t ny = values.shape(0), nx = values.shape(1);
    double* jac = nullptr;
    carray<double> jacobian_array;
    if (!jacobian.is_none()) {
        require(py::isinstance<carray<double>>(jacobian), "jacobian must be a float64 array");
        jacobian_array = jacobian.cast<carray<double>>();
        require_output(jacobian_array, {6, ny, nx}, "jacobian");
        require(jacobian_array.flags() & py::array::c_style, "jacobian must be C-contiguous");
        jac = jacobian_array.mutable_data();
    }
    double* out = values.mutable_data();
    // Safe without the GIL: the arrays are held by this frame's references.
    py::gil_scoped_release release;
    psf_pixel_grid(kind, PsfShape{a, b, c, beta}, x0, y0, ny, nx, allow_separable, out, jac);
}

// Inputs : frames (n_frames, ny, nx) float32 / float64; pixel_flags None or uint8 of that
//          shape; x, y (n_frames, n_stars) float64; shapes (n_frames, n_stars, 4) float64,
//          each a valid shape; the settings of PsfPhotometryConfig; threads >= 1.
// Outputs: flux, flux_err, x_fit, y_fit, x_err, y_err, background, chi2_reduced
//          (n_frames, n_stars) float64; iterations int32; pixels, group_pixels, group int64;
//          flags uint32. All caller-allocated and C-contiguous; every element is written.
template <typename T>
void photometry(carray<T> frames, py::object pixel_flags, carray<double> x, carray<double> y,
                carray<double> shapes, int profile, std::int64_t box, int background,
                bool fit_positions, double max_shift, double position_snr, double gain, double read_noise,
                bool model_variance, int max_iterations, double tolerance, std::int64_t max_group,
                int threads, carray<double> flux, carray<double> flux_err, carray<double> x_fit,
                carray<double> y_fit, carray<double> x_err, carray<double> y_err,
                carray<double> background_out, carray<double> chi2_reduced,
                carray<std::int32_t> iterations, carray<std::int64_t> pixels,
                carray<std::int64_t> group_pixels, carray<std::int64_t> group,
                carray<std::uint32_t> flags) {
    require(frames.ndim() == 3, "frames must be 3-d (frame, y, x)");
    const py::ssize_t nf = frames.shape(0), ny = frames.shape(1), nx = frames.shape(2);
    require(x.ndim() == 2 && x.shape(0) == nf, "x must be (n_frames, n_stars)");
    const py::ssize_t ns = x.shape(1);
    require_shape(y, {nf, ns}, "y");
    require_shape(shapes, {nf, ns, 4}, "shapes");
    const PsfProfile kind = profile_of(profile);
    const double* sh = shapes.data();
    for (py::ssize_t k = 0; k < nf * ns; ++k)
        require(valid_shape(kind, sh[4 * k], sh[4 * k + 1], sh[4 * k + 2], sh[4 * k + 3]),
                "every shape must have a, c > 0, ac - b^2 > 0 (and beta > 1 for Moffat)");
    require(box >= 1 && box <= 1000, "box must be in [1, 1000]");
    require(background >= 0 && background <= 2, "background must be 0, 1 or 2");
    require(std::isfinite(max_shift) && max_shift > 0.0, "max_shift must be finite and > 0");
    require(std::isfinite(position_snr) && position_snr >= 0.0, "position_snr must be finite and >= 0");
    require(std::isfinite(gain) && gain > 0.0, "gain must be finite and > 0");
    require(std::isfinite(read_noise) && read_noise >= 0.0, "read_noise must be finite and >= 0");
    require(max_iterations >= 1, "max_iterations must be >= 1");
    require(std::isfinite(tolerance) && tolerance > 0.0, "tolerance must be finite and > 0");
    require(max_group >= 1, "max_group must be >= 1");
    require(threads >= 1, "threads must be >= 1");
    require_output(flux, {nf, ns}, "flux");
    require_output(flux_err, {nf, ns}, "flux_err");
    require_output(x_fit, {nf, ns}, "x_fit");
    require_output(y_fit, {nf, ns}, "y_fit");
    require_output(x_err, {nf, ns}, "x_err");
    require_output(y_err, {nf, ns}, "y_err");
    require_output(background_out, {nf, ns}, "background");
    require_output(chi2_reduced, {nf, ns}, "chi2_reduced");
    require_output(iterations, {nf, ns}, "iterations");
    require_output(pixels, {nf, ns}, "pixels");
    require_output(group_pixels, {nf, ns}, "group_pixels");
    require_output(group, {nf, ns}, "group");
    require_output(flags, {nf, ns}, "flags");
    carray<std::uint8_t> flag_holder;
    const std::uint8_t* pflags = pixel_flag_data(pixel_flags, flag_holder, nf, ny, nx);

    PsfPhotometryConfig config;
    config.profile = kind;
    config.shapes = sh;
    config.box = box;
    config.background = static_cast<PsfBackground>(background);
    config.fit_positions = fit_positions;
    config.max_shift = max_shift;
    config.position_snr = position_snr;
    config.gain = gain;
    config.read_noise = read_noise;
    config.model_variance = model_variance;
    config.max_iterations = max_iterations;
    config.tolerance = tolerance;
    config.max_group = max_group;
    PsfPhotometryOutputs out;
    out.flux = flux.mutable_data();
    out.flux_err = flux_err.mutable_data();
    out.x = x_fit.mutable_data();
    out.y = y_fit.mutable_data();
    out.x_err = x_err.mutable_data();
    out.y_err = y_err.mutable_data();
    out.background = background_out.mutable_data();
    out.chi2_reduced = chi2_reduced.mutable_data();
    out.iterations = iterations.mutable_data();
    out.pixels = pixels.mutable_data();
    out.group_pixels = group_pixels.mutable_data();
    out.group = group.mutable_data();
    out.flags = flags.mutable_data();
    const T* data = frames.data();
    const double* px = x.data();
    const double* py_ = y.data();
    // Safe without the GIL: every array above is held by this frame's references, and the core
    // touches only their buffers.
    py::gil_scoped_release release;
    psf_photometry<T>(data, pflags, nf, ny, nx, px, py_, ns, config, out, threads);
}

// Inputs : frames, pixel_flags as for photometry; x, y (n_frames, n_stars) float64 (NaN: not a
//          PSF star); initial (n_frames, 4) float64 valid shapes; the settings of
//          PsfShapeFitConfig; threads >= 1.
// Outputs: coefficients, coefficient_err (n_frames, 10) float64; chi2_reduced (n_frames,)
//          float64; iterations int32; stars_used int64; flags uint32; used (n_frames, n_stars)
//          uint8; flux (n_frames, n_stars) float64. Caller-allocated, fully written.
template <typename T>
void fit_shape(carray<T> frames, py::object pixel_flags, carray<double> x, carray<double> y,
               carray<double> initial, int profile, std::int64_t box, bool varying, bool fit_beta,
               double x_centre, double y_centre, double x_scale, double y_scale, double gain,
               double read_noise, int max_iterations, double tolerance, double reject,
               std::int64_t min_stars, int threads, carray<double> coefficients,
               carray<double> coefficient_err, carray<double> chi2_reduced,
               carray<std::int32_t> iterations, carray<std::int64_t> stars_used,
               carray<std::uint32_t> flags, carray<std::uint8_t> used, carray<double> flux) {
    require(frames.ndim() == 3, "frames must be 3-d (frame, y, x)");
    const py::ssize_t nf = frames.shape(0), ny = frames.shape(1), nx = frames.shape(2);
    require(x.ndim() == 2 && x.shape(0) == nf, "x must be (n_frames, n_stars)");
    const py::ssize_t ns = x.shape(1);
    require_shape(y, {nf, ns}, "y");
    require_shape(initial, {nf, 4}, "initial");
    const PsfProfile kind = profile_of(profile);
    const double* init = initial.data();
    for (py::ssize_t f = 0; f < nf; ++f)
        require(valid_shape(kind, init[4 * f], init[4 * f + 1], init[4 * f + 2], init[4 * f + 3]),
                "every initial shape must have a, c > 0, ac - b^2 > 0 (and beta > 1 for Moffat)");
    require(box >= 1 && box <= 1000, "box must be in [1, 1000]");
    require(std::isfinite(x_centre) && std::isfinite(y_centre) && std::isfinite(x_scale) &&
                std::isfinite(y_scale) && x_scale > 0.0 && y_scale > 0.0,
            "the field centre and scales must be finite, the scales > 0");
    require(std::isfinite(gain) && gain > 0.0, "gain must be finite and > 0");
    require(std::isfinite(read_noise) && read_noise >= 0.0, "read_noise must be finite and >= 0");
    require(max_iterations >= 1, "max_iterations must be >= 1");
    require(std::isfinite(tolerance) && tolerance > 0.0, "tolerance must be finite and > 0");
    require(std::isfinite(reject) && reject >= 0.0, "reject must be finite and >= 0");
    require(min_stars >= 1, "min_stars must be >= 1");
    require(threads >= 1, "threads must be >= 1");
    require_output(coefficients, {nf, kPsfCoefficients}, "coefficients");
    require_output(coefficient_err, {nf, kPsfCoefficients}, "coefficient_err");
    require_output(chi2_reduced, {nf}, "chi2_reduced");
    require_output(iterations, {nf}, "iterations");
    require_output(stars_used, {nf}, "stars_used");
    require_output(flags, {nf}, "flags");
    require_output(used, {nf, ns}, "used");
    require_output(flux, {nf, ns}, "flux");
    carray<std::uint8_t> flag_holder;
    const std::uint8_t* pflags = pixel_flag_data(pixel_flags, flag_holder, nf, ny, nx);

    PsfShapeFitConfig config;
    config.profile = kind;
    config.initial = init;
    config.box = box;
    config.varying = varying;
    config.fit_beta = fit_beta;
    config.x_centre = x_centre;
    config.y_centre = y_centre;
    config.x_scale = x_scale;
    config.y_scale = y_scale;
    config.gain = gain;
    config.read_noise = read_noise;
    config.max_iterations = max_iterations;
    config.tolerance = tolerance;
    config.reject = reject;
    config.min_stars = min_stars;
    PsfShapeFitOutputs out;
    out.coefficients = coefficients.mutable_data();
    out.coefficient_err = coefficient_err.mutable_data();
    out.chi2_reduced = chi2_reduced.mutable_data();
    out.iterations = iterations.mutable_data();
    out.stars_used = stars_used.mutable_data();
    out.flags = flags.mutable_data();
    out.used = used.mutable_data();
    out.flux = flux.mutable_data();
    const T* data = frames.data();
    const double* px = x.data();
    const double* py_ = y.data();
    // Safe without the GIL: as for photometry.
    py::gil_scoped_release release;
    psf_fit_shape<T>(data, pflags, nf, ny, nx, px, py_, ns, config, out, threads);
}

}  // namespace

void register_psf(py::module_& m) {
    m.def("psf_pixel_grid", &pixel_grid, py::arg("profile"), py::arg("a"), py::arg("b"),
          py::arg("c"), py::arg("beta"), py::arg("x0"), py::arg("y0"),
          py::arg("values").noconvert(), py::arg("jacobian"), py::arg("allow_separable"),
          "A unit-flux Moffat (profile 1) or Gaussian (0) integrated over every pixel of a grid, "
          "and optionally its derivatives (x0, y0, a, b, c, beta). See engine.cext.psf.");
    auto bind = [&](auto tag) {
        using T = decltype(tag);
        m.def("psf_photometry", &photometry<T>, py::arg("frames").noconvert(),
              py::arg("pixel_flags"), py::arg("x").noconvert(), py::arg("y").noconvert(),
              py::arg("shapes").noconvert(), py::arg("profile"), py::arg("box"),
              py::arg("background"), py::arg("fit_positions"), py::arg("max_shift"),
              py::arg("position_snr"), py::arg("gain"), py::arg("read_noise"), py::arg("model_variance"),
              py::arg("max_iterations"), py::arg("tolerance"), py::arg("max_group"),
              py::arg("threads"), py::arg("flux").noconvert(), py::arg("flux_err").noconvert(),
              py::arg("x_fit").noconvert(), py::arg("y_fit").noconvert(),
              py::arg("x_err").noconvert(), py::arg("y_err").noconvert(),
              py::arg("background_out").noconvert(), py::arg("chi2_reduced").noconvert(),
              py::arg("iterations").noconvert(), py::arg("pixels").noconvert(),
              py::arg("group_pixels").noconvert(), py::arg("group").noconvert(),
              py::arg("flags").noconvert(),
              "PSF fits of every star on every frame of a (frame, y, x) block, stars with "
              "overlapping boxes fitted jointly. Writes into caller-allocated outputs; see "
              "engine.psf_photometry for the validated entry point.");
        m.def("psf_fit_shape", &fit_shape<T>, py::arg("frames").noconvert(),
              py::arg("pixel_flags"), py::arg("x").noconvert(), py::arg("y").noconvert(),
              py::arg("initial").noconvert(), py::arg("profile"), py::arg("box"),
              py::arg("varying"), py::arg("fit_beta"), py::arg("x_centre"), py::arg("y_centre"),
              py::arg("x_scale"), py::arg("y_scale"), py::arg("gain"), py::arg("read_noise"),
              py::arg("max_iterations"), py::arg("tolerance"), py::arg("reject"),
              py::arg("min_stars"), py::arg("threads"), py::arg("coefficients").noconvert(),
              py::arg("coefficient_err").noconvert(), py::arg("chi2_reduced").noconvert(),
              py::arg("iterations").noconvert(), py::arg("stars_used").noconvert(),
              py::arg("flags").noconvert(), py::arg("used").noconvert(),
              py::arg("flux").noconvert(),
              "Per-frame joint fit of the PSF shape of bright isolated stars. Writes into "
              "caller-allocated outputs; see engine.fit_psf_model for the validated entry point.");
    };
    bind(float{});
    bind(double{});
    // The measurement bits this component sets, added to the registry the aperture bindings
    // export (tests hold it equal to engine.flags.MeasurementFlag).
    py::dict bits = py::hasattr(m, "MEASUREMENT_FLAGS") ? m.attr("MEASUREMENT_FLAGS").cast<py::dict>()
                                                        : py::dict();
    m.attr("MEASUREMENT_FLAGS") = bits;
    bits["FIT_FAILED"] = flags::kFitFailed;
    bits["FIT_NOT_CONVERGED"] = flags::kFitNotConverged;
    bits["CENTROID_FAILED"] = flags::kCentroidFailed;
}

}  // namespace engine::bindings
