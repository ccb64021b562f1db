// PSF photometry: pixel-integrated elliptical Moffat and Gaussian profiles, and small dense
// Levenberg-Marquardt fits of (a) a frame's PSF shape from bright isolated stars and (b) the
// fluxes (and optionally positions) of every star on a frame, stars whose fitting boxes overlap
// fitted jointly, with a local background per group.
//
// Pure C++17, no Python headers. Conventions as in overlap.hpp: pixel (row j, column i) is the
// unit square [i - 1/2, i + 1/2] x [j - 1/2, j + 1/2], x is the column coordinate, arrays are
// row-major.
//
// Profiles. With (dx, dy) = (x - x0, y - y0) and the quadratic form
//     q = a dx^2 + 2 b dx dy + c dy^2,        a > 0, c > 0, det = a c - b^2 > 0,
// a profile of unit total flux has surface brightness
//     Moffat:   (beta - 1) sqrt(det) / pi  (1 + q)^(-beta),      beta > 1,
//     Gaussian: sqrt(det) / (2 pi)         exp(-q / 2),
// both normalised exactly over the plane. (For the renderer's parameters in
// engine/kernels/psf.py, a = cos^2/A^2 + sin^2/B^2, b = cos sin (1/A^2 - 1/B^2),
// c = sin^2/A^2 + cos^2/B^2 with A, B the major and minor axis widths: the one conversion is
// engine/psf/model.py's shape_from_parameters.) A pixel's value is the
// profile integrated over the pixel: a tensor Gauss-Legendre rule whose node count per axis is
// chosen from the pixel's distance to the star (more nodes near the core), aiming at a relative
// error of 1e-11 of the pixel's value or 1e-14 of the flux, whichever is larger; an axis-aligned
// Gaussian (b == 0) is integrated exactly with erf instead. Derivatives with respect to the
// position (x0, y0), the shape (a, b, c) and beta are analytic: integrals of the integrand's
// derivatives over the pixel, with the same rule.
//
// Fits. Levenberg-Marquardt on the damped normal equations (Marquardt's diagonal scaling,
// Cholesky; a failed factorisation damps harder), bounded trial steps, positions kept within
// max_shift of their inputs by an active set. Fluxes and background enter linearly: with
// positions fixed the fit is one linear solve (two with model_variance). With positions fitted
// the linear solve at the input positions is the starting point.
//
// Noise model (both fits): pixel values times `gain` are electrons; a pixel's variance is
//     var = read_noise^2 + max(s, 0),   at least 1 e-^2,
// with s the pixel's value in electrons, or (model_variance) the fitted model's value, the fit
// being repeated once with those weights. Pixels that are non-finite or flagged BAD, NONFINITE,
// COSMIC_RAY or SATURATED (engine::flags pixel bits) are left out of every fit.
//
// The functions do no argument checking beyond what memory safety within the stated sizes
// needs: the Python wrappers (engine/cext/psf.py, called by engine.psf_photometry) guarantee the
// shapes, dtypes and value ranges stated below. Non-finite or huge star coordinates are allowed
// and give OFF_FRAME results. Nothing here aborts: a fit that cannot be solved is flagged
// FIT_FAILED, allocation failures surface as std::bad_alloc in the calling thread.
#pragma once

#include <cstdint>

namespace engine {

enum class PsfProfile : std::int32_t { kGaussian = 0, kMoffat = 1 };

enum class PsfBackground : std::int32_t {
    kNone = 0,      // the image is background-subtracted: no background term
    kConstant = 1,  // one constant per group
    kPlane = 2,     // b0 + bx (x - xg) / s + by (y - yg) / s per group (xg, yg: the group's
                    // mean box centre, s: the box half-width)
};

// Shape of a profile: the quadratic form (a, b, c) above and the Moffat exponent beta
// (ignored for the Gaussian).
struct PsfShape {
    double a = 1.0;
    double b = 0.0;
    double c = 1.0;
    double beta = 2.5;
};

// A unit-flux profile's pixel integrals on a grid, and optionally their derivatives.
// Inputs : profile; shape (a > 0, c > 0, ac - b^2 > 0, beta > 1 for Moffat); centre (x0, y0),
//          finite; grid size ny, nx >= 0; allow_separable: use the exact erf form for an
//          axis-aligned Gaussian when no jacobian is asked for (false forces the quadrature).
// Outputs: values [ny, nx], and when jacobian is not null jacobian [6, ny, nx]: derivatives with
//          respect to x0, y0, a, b, c, beta in that order (beta's are 0 for the Gaussian). Both
//          allocated and owned by the caller; every element is written.
void psf_pixel_grid(PsfProfile profile, const PsfShape& shape, double x0, double y0,
                    std::int64_t ny, std::int64_t nx, bool allow_separable, double* values,
                    double* jacobian) noexcept;

struct PsfPhotometryConfig {
    PsfProfile profile = PsfProfile::kMoffat;
    // [n_frames, n_stars, 4] (a, b, c, beta) of each star's profile on each frame (a field-
    // varying PSF is evaluated per star by the caller). Each must satisfy PsfShape's bounds.
    const double* shapes = nullptr;
    // Fitting box half-width: a star's box is the (2 box + 1)^2 pixels centred on the pixel
    // nearest its input position (centre column ceil(x - 1/2)). Stars whose boxes overlap are
    // grouped (union-find) and fitted jointly on the union of their boxes; a star's light is
    // modelled on the group's pixels within 3 box of its box centre (Chebyshev distance).
    std::int64_t box = 4;  // >= 1
    PsfBackground background = PsfBackground::kConstant;
    bool fit_positions = false;  // else positions stay at the inputs and the fit is linear
    double max_shift = 2.0;      // a fitted position stays within this of its input (> 0)
    // With fit_positions, a star whose flux from the linear fit at the input positions is below
    // position_snr times its error keeps its input position (x_err, y_err NaN): a faint star's
    // position is not constrained by the data. With position_snr > 0, a star whose flux turns
    // negative during the fit is also held where it is from then on (else it and a neighbour
    // trade flux along a flat valley of chi^2 until the iteration limit).
    double position_snr = 3.0;   // >= 0 (0: fit every position, never hold one)
    double gain = 1.0;           // e-/ADU, > 0
    double read_noise = 0.0;     // e-, >= 0
    bool model_variance = false;
    int max_iterations = 50;     // Levenberg-Marquardt trial steps per pass, >= 1
    // The fit has converged when a (lightly damped) step's Gauss-Newton decrement delta^T g, the
    // chi^2 it would gain, falls below this: 1e-6 leaves every parameter within ~1e-3 of its
    // error of the minimum. Smaller values chase the minimum to rounding (tests use 1e-12).
    double tolerance = 1e-6;  // > 0
    // Groups with more stars are cut into chunks of at most this many (members flagged BLENDED:
    // a neighbour's light may be missing from their model).
    std::int64_t max_group = 50;  // >= 1
};

// All outputs [n_frames, n_stars], allocated and owned by the caller; every element is written.
// Stars that are not fitted (off the frame, no usable pixels, failed fit) get NaN values.
struct PsfPhotometryOutputs {
    double* flux = nullptr;          // total flux of the profile, electrons
    double* flux_err = nullptr;      // 1-sigma, from the covariance (J^T W J)^-1 at the solution
    double* x = nullptr;             // fitted position (the input when positions are fixed)
    double* y = nullptr;
    double* x_err = nullptr;         // NaN when positions are fixed
    double* y_err = nullptr;
    double* background = nullptr;    // the group's background at (x, y), e- per pixel
    double* chi2_reduced = nullptr;  // the group's chi^2 / (pixels - parameters)
    std::int32_t* iterations = nullptr;     // trial steps taken, summed over passes
    std::int64_t* pixels = nullptr;         // usable pixels in the star's own box
    std::int64_t* group_pixels = nullptr;   // usable pixels in the group's fit
    std::int64_t* group = nullptr;          // the group's lowest star index (-1 if not fitted)
    std::uint32_t* flags = nullptr;         // engine::flags measurement bits
};

// Inputs : frames [n_frames, ny, nx] of T (float or double); pixel_flags the same shape of
//          engine::flags pixel bits, or nullptr; x, y [n_frames, n_stars] star positions
//          (0-based, any values: non-finite ones, or ones whose box centre pixel is not on the
//          image, i.e. outside (-1/2, n - 1/2], give OFF_FRAME and are not fitted); config as above;
//          threads >= 1 (work is shared over (frame, group) pairs; the results do not depend
//          on the thread count).
// Outputs: `out`, see PsfPhotometryOutputs.
template <typename T>
void psf_photometry(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                    std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                    std::int64_t n_stars, const PsfPhotometryConfig& config,
                    const PsfPhotometryOutputs& out, int threads);

// The PSF shape of a frame is described by kPsfCoefficients numbers:
//     a0, ax, ay, b0, bx, by, c0, cx, cy, beta
// with a(x, y) = a0 + ax u + ay v (b, c alike), u = (x - x_centre) / x_scale,
// v = (y - y_centre) / y_scale. A constant PSF has the x and y terms 0.
constexpr std::int64_t kPsfCoefficients = 10;

struct PsfShapeFitConfig {
    PsfProfile profile = PsfProfile::kMoffat;
    const double* initial = nullptr;  // [n_frames, 4] starting (a, b, c, beta) per frame
    std::int64_t box = 8;             // each star is fitted on its own (2 box + 1)^2 box, >= 1
    bool varying = false;             // fit the x and y terms of a, b, c
    bool fit_beta = true;             // Moffat only: fit beta (else keep the initial value)
    double x_centre = 0.0, y_centre = 0.0, x_scale = 1.0, y_scale = 1.0;  // scales > 0
    double gain = 1.0;
    double read_noise = 0.0;
    int max_iterations = 100;
    double tolerance = 1e-6;  // as for PsfPhotometryConfig
    // After a converged fit, stars whose reduced chi^2 exceeds reject x max(median, 1) are
    // dropped and the fit repeated once (0 disables); never below min_stars stars.
    double reject = 4.0;
    std::int64_t min_stars = 3;  // fewer usable stars: FIT_FAILED (>= 1)
};

// Outputs of the shape fit, allocated and owned by the caller; every element is written.
struct PsfShapeFitOutputs {
    double* coefficients = nullptr;      // [n_frames, kPsfCoefficients] (NaN when failed)
    double* coefficient_err = nullptr;   // [n_frames, kPsfCoefficients] 1-sigma (0 if not fitted)
    double* chi2_reduced = nullptr;      // [n_frames]
    std::int32_t* iterations = nullptr;  // [n_frames] trial steps, summed over passes
    std::int64_t* stars_used = nullptr;  // [n_frames]
    std::uint32_t* flags = nullptr;      // [n_frames] FIT_FAILED / FIT_NOT_CONVERGED
    std::uint8_t* used = nullptr;        // [n_frames, n_stars] 1 where a star was in the final fit
    double* flux = nullptr;              // [n_frames, n_stars] per-star fitted flux (NaN if unused)
};

// Joint fit, per frame, of the PSF shape shared by the given stars (each also gets its own flux,
// position and constant background). Stars are meant to be bright, isolated and unsaturated:
// neighbours are not modelled. Stars with non-finite positions, boxes not wholly on the image,
// or fewer usable pixels than 2 x (their 4 parameters) are left out.
// Inputs : frames, pixel_flags as for psf_photometry; x, y [n_frames, n_stars] (NaN: unused);
//          config as above; threads >= 1 (shared over frames).
// Outputs: `out`, see PsfShapeFitOutputs.
template <typename T>
void psf_fit_shape(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                   std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                   std::int64_t n_stars, const PsfShapeFitConfig& config,
                   const PsfShapeFitOutputs& out, int threads);

}  // namespace engine
