// Internal to the PSF core: the small dense linear algebra of its Levenberg-Marquardt fits
// (psf_group_fit.cpp, psf_shape_fit.cpp) and their damping constants.
#pragma once

#include <cmath>
#include <cstdint>

#include "psf_profile.hpp"

namespace engine::psf_detail {

// ----------------------------------------------------------------------------------------------
// Small dense linear algebra: symmetric positive definite systems stored row-major, n x n.
// ----------------------------------------------------------------------------------------------

// Levenberg-Marquardt damping: the first lambda (relative to the normal matrix's diagonal), and
// the largest at which a step's own decrement is trusted to say the fit has converged.
constexpr double kInitialDamping = 1e-4;
constexpr double kLightDamping = 1e-3;

// In-place Cholesky A = L L^T (L in the lower triangle). False when a pivot is not positive or
// is below 1e-13 of its diagonal (numerically singular): the caller damps harder or gives up.
inline bool cholesky(double* A, std::int64_t n) noexcept {
    for (std::int64_t j = 0; j < n; ++j) {
        const double diagonal = A[at(j * n + j)];
        double d = diagonal;
        for (std::int64_t k = 0; k < j; ++k) d -= A[at(j * n + k)] * A[at(j * n + k)];
        if (!(d > 1e-13 * std::fabs(diagonal)) || !std::isfinite(d)) return false;
        const double root = std::sqrt(d);
        A[at(j * n + j)] = root;
        for (std::int64_t i = j + 1; i < n; ++i) {
            double s = A[at(i * n + j)];
            for (std::int64_t k = 0; k < j; ++k) s -= A[at(i * n + k)] * A[at(j * n + k)];
            A[at(i * n + j)] = s / root;
        }
    }
    return true;
}

// Solves L L^T x = b in place (b becomes x), L from cholesky().
inline void cholesky_solve(const double* L, std::int64_t n, double* b) noexcept {
    for (std::int64_t i = 0; i < n; ++i) {
        double s = b[i];
        for (std::int64_t k = 0; k < i; ++k) s -= L[at(i * n + k)] * b[k];
        b[i] = s / L[at(i * n + i)];
    }
    for (std::int64_t i = n - 1; i >= 0; --i) {
        double s = b[i];
        for (std::int64_t k = i + 1; k < n; ++k) s -= L[at(k * n + i)] * b[k];
        b[i] = s / L[at(i * n + i)];
    }
}

// Copies the symmetric matrix N (upper triangle valid) into A with the diagonal scaled by
// (1 + lambda); a zero diagonal (a parameter nothing depends on) becomes 1 so that its step is 0.
inline void damped_copy(const double* N, std::int64_t n, double lambda, double* A) noexcept {
    for (std::int64_t i = 0; i < n; ++i) {
        for (std::int64_t j = i; j < n; ++j) {
            const double v = N[at(i * n + j)];
            A[at(i * n + j)] = v;
            A[at(j * n + i)] = v;
        }
        const double d = N[at(i * n + i)];
        A[at(i * n + i)] = d > 0.0 ? d * (1.0 + lambda) : 1.0;
    }
}

// Removes parameter a from the system A x = b (A n x n, full): its row and column become those
// of the identity, so its step is b[a], which the caller sets to 0.
inline void hold(double* A, std::int64_t n, std::int64_t a) noexcept {
    for (std::int64_t b = 0; b < n; ++b) {
        A[at(a * n + b)] = 0.0;
        A[at(b * n + a)] = 0.0;
    }
    A[at(a * n + a)] = 1.0;
}

}  // namespace engine::psf_detail
