// PSF photometry: see include/engine/psf.hpp for the contract.
//
// Layout of this file: Gauss-Legendre rules; a profile (shape set up once) and its pixel
// integrals; small dense linear algebra (Cholesky with a failure report); the group fit of
// psf_photometry (grouping, pixel gathering, rendering into a sparse Jacobian, Levenberg-
// Marquardt); the shape fit of psf_fit_shape (per-star blocks solved through the Schur
// complement of the shared shape parameters). Both share work over threads with parallel.hpp.
#include "engine/psf.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "engine/flags.hpp"
#include "engine/parallel.hpp"

namespace engine {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kPi = 3.14159265358979323846;
constexpr std::uint8_t kUnusable = flags::kPixelBad | flags::kPixelNonfinite |
                                   flags::kPixelCosmicRay | flags::kPixelSaturated;
constexpr std::uint8_t kBadBits = flags::kPixelBad | flags::kPixelNonfinite | flags::kPixelCosmicRay;

inline std::size_t at(std::int64_t v) noexcept { return static_cast<std::size_t>(v); }

// ----------------------------------------------------------------------------------------------
// Gauss-Legendre rules on one pixel, [-1/2, 1/2]: rule n (1..kMaxNodes) has nodes t and weights
// w (summing to 1), found by Newton's method on the Legendre polynomial P_n.
// ----------------------------------------------------------------------------------------------

constexpr int kMaxNodes = 24;

struct Rules {
    std::array<std::array<double, kMaxNodes>, kMaxNodes + 1> node{};
    std::array<std::array<double, kMaxNodes>, kMaxNodes + 1> weight{};
    Rules() {
        node[1][0] = 0.0;  // the midpoint rule
        weight[1][0] = 1.0;
        for (int n = 2; n <= kMaxNodes; ++n) {
            for (int k = 0; k < n; ++k) {
                double t = std::cos(kPi * (k + 0.75) / (n + 0.5));  // near the k-th root
                double derivative = 1.0;
                for (int step = 0; step < 100; ++step) {
                    double p0 = 1.0, p1 = t;  // P_{m-1}, P_m by the three-term recurrence
                    for (int m = 2; m <= n; ++m) {
                        const double p2 = ((2.0 * m - 1.0) * t * p1 - (m - 1.0) * p0) / m;
                        p0 = p1;
                        p1 = p2;
                    }
                    derivative = n * (t * p1 - p0) / (t * t - 1.0);  // P_n'(t)
                    const double dt = p1 / derivative;
                    t -= dt;
                    if (std::fabs(dt) < 1e-16) break;
                }
                node[at(n)][at(k)] = 0.5 * t;
                weight[at(n)][at(k)] = 1.0 / ((1.0 - t * t) * derivative * derivative);
            }
        }
    }
};

const Rules& rules() {
    static const Rules table;  // thread-safe initialisation (C++11 magic statics)
    return table;
}

// ----------------------------------------------------------------------------------------------
// Profiles and their pixel integrals
// ----------------------------------------------------------------------------------------------

// Relative accuracy aimed at per pixel (of the pixel's value), and the absolute floor (of the
// star's flux) below which a pixel's error is not worth more nodes.
constexpr double kRelativeDigits = 25.33;  // ln(1e11)
constexpr double kLogAbsoluteTolerance = -32.24;  // ln(1e-14)

// Terms of the Gauss-Legendre error bound on a few Bernstein ellipses of a unit interval (see
// Profile::node_count): (rho + 1/rho)/4 - 1/2, ((rho - 1/rho)/4)^2, log(64/15) - log(rho^2 - 1)
// and 2 log rho.
struct EllipseTerms {
    double stretch, height, constant, log_rho2;
};

const std::array<EllipseTerms, 15>& ellipses() {
    static const std::array<EllipseTerms, 15> table = [] {
        const double rhos[15] = {1.2, 1.5, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 100, 200};
        std::array<EllipseTerms, 15> t{};
        for (std::size_t k = 0; k < 15; ++k) {
            const double rho = rhos[k];
            const double h = (rho - 1.0 / rho) / 4.0;
            t[k] = {(rho + 1.0 / rho) / 4.0 - 0.5, h * h,
                    std::log(64.0 / 15.0) - std::log(rho * rho - 1.0), 2.0 * std::log(rho)};
        }
        return t;
    }();
    return table;
}

struct Profile {
    PsfProfile kind = PsfProfile::kMoffat;
    double a = 1.0, b = 0.0, c = 1.0, beta = 2.5;
    double det = 1.0;
    double norm = 1.0;   // peak surface brightness of a unit-flux profile
    double major = 1.0;  // widths along the principal axes (1 / sqrt(eigenvalue))
    double minor = 1.0;
    bool separable = false;
    double sx = 0.0, sy = 0.0;  // erf scales sqrt(a/2), sqrt(c/2) of the separable Gaussian
    double px = 0.0, py = 0.0;  // their densities' peaks sqrt(a / 2 pi), sqrt(c / 2 pi)

    Profile() = default;
    Profile(PsfProfile k, const PsfShape& s, bool allow_separable) { set(k, s, allow_separable); }

    void set(PsfProfile k, const PsfShape& s, bool allow_separable) noexcept {
        kind = k;
        a = s.a;
        b = s.b;
        c = s.c;
        beta = s.beta;
        det = a * c - b * b;
        const double root = std::sqrt(det);
        norm = kind == PsfProfile::kMoffat ? (beta - 1.0) * root / kPi : root / (2.0 * kPi);
        const double mean = 0.5 * (a + c);
        const double spread = std::sqrt(0.25 * (a - c) * (a - c) + b * b);
        const double low = std::max(mean - spread, 1e-300);
        const double high = mean + spread;
        major = 1.0 / std::sqrt(low);
        minor = 1.0 / std::sqrt(high);
        separable = allow_separable && kind == PsfProfile::kGaussian && b == 0.0;
        sx = std::sqrt(0.5 * a);
        sy = std::sqrt(0.5 * c);
        px = std::sqrt(a / (2.0 * kPi));
        py = std::sqrt(c / (2.0 * kPi));
    }

    // Nodes per axis for a pixel whose centre lies at least d pixels from the star: the fewest
    // that meet the relative target on the pixel's value (or the absolute floor on the flux).
    // Two error estimates, both from the Gauss-Legendre bound |E_n| <= 64/15 M rho^(-2n) /
    // (rho^2 - 1) on the Bernstein ellipses rho of a unit interval:
    //  * the integrand, locally exp(-rate t - gamma t^2) along any line through the pixel (rate
    //    and gamma bound the first and half the second derivative of its log), grows on the
    //    ellipse by exp(rate ((rho + 1/rho)/4 - 1/2) + gamma ((rho - 1/rho)/4)^2): this governs
    //    the Gaussian everywhere and a steep Moffat's wings;
    //  * the Moffat is analytic except where q = -1, about `minor` away in the imaginary
    //    direction; seen from a pixel centred d away that point lies on the ellipse of parameter
    //    rho ~ |z| + sqrt(|z|^2 + 1), |z| = 2 sqrt(d^2 + minor^2), and bounds rho.
    // At least 2 nodes unless the pixel holds less than the absolute floor.
    int node_count(double d) const noexcept {
        const double near = std::max(d - 0.7072, 0.0);
        const double far = d + 0.7072;
        const double t = near / major;
        const bool moffat = kind == PsfProfile::kMoffat;
        const double log_local = std::log(norm) + (moffat ? -beta * std::log1p(t * t) : -0.5 * t * t);
        const double digits = std::min(log_local - kLogAbsoluteTolerance, kRelativeDigits);
        if (!(digits > 0.0)) return 1;
        const double high = 1.0 / (minor * minor);  // the quadratic form's eigenvalues
        const double low = 1.0 / (major * major);
        double rate, gamma;
        if (moffat) {
            // |grad beta log(1 + q)| <= 2 beta high r / (1 + low r^2), largest at r = 1/sqrt(low).
            const double r = std::clamp(major, near, far);
            rate = 2.0 * beta * high * r / (1.0 + low * near * near);
            gamma = beta * high;
        } else {
            rate = high * far;
            gamma = 0.5 * high;
        }
        double n = kMaxNodes;
        for (const EllipseTerms& e : ellipses())
            n = std::min(n, (rate * e.stretch + gamma * e.height + e.constant + digits) / e.log_rho2);
        if (moffat) {
            const double z = 2.0 * std::sqrt(d * d + minor * minor);
            const double rho = z + std::sqrt(z * z + 1.0);
            n = std::max(n, digits / (2.0 * std::log(rho)));
        }
        return static_cast<int>(std::min<double>(kMaxNodes, std::max(2.0, std::ceil(n))));
    }
};

// The pixel integral of a unit-flux profile over the pixel whose centre lies at (dx, dy) from the
// star, and its derivatives with respect to the star's position (x0, y0).
struct PixelValue {
    double value = 0.0;
    double dx0 = 0.0;
    double dy0 = 0.0;
};

template <PsfProfile K, bool kGradient>
inline PixelValue integrate(const Profile& p, double dx, double dy, int n) noexcept {
    const Rules& r = rules();
    const double* t = r.node[at(n)].data();
    const double* w = r.weight[at(n)].data();
    double s0 = 0.0, sx = 0.0, sy = 0.0;
    for (int i = 0; i < n; ++i) {
        const double ex = dx + t[i];
        const double ax = p.a * ex;
        const double bx = p.b * ex;
        double r0 = 0.0, rx = 0.0, ry = 0.0;
        for (int j = 0; j < n; ++j) {
            const double ey = dy + t[j];
            const double q = ex * (ax + 2.0 * p.b * ey) + p.c * ey * ey;
            double g, slope;  // the integrand, and minus its derivative with respect to q
            if constexpr (K == PsfProfile::kMoffat) {
                // log(1 + q) rather than log1p(q): the rounding of 1 + q costs at most ~1e-16 of
                // the log, i.e. of g's relative accuracy, and log is about twice as fast.
                const double one_q = 1.0 + q;
                g = std::exp(-p.beta * std::log(one_q));
                slope = p.beta * g / one_q;
            } else {
                g = std::exp(-0.5 * q);
                slope = 0.5 * g;
            }
            r0 += w[j] * g;
            if constexpr (kGradient) {
                rx += w[j] * slope * (ax + p.b * ey);
                ry += w[j] * slope * (bx + p.c * ey);
            }
        }
        s0 += w[i] * r0;
        if constexpr (kGradient) {
            sx += w[i] * rx;
            sy += w[i] * ry;
        }
    }
    // d/dx0 of the integrand = -dg/dq * dq/dx0 = slope * (-2 (a ex + b ey)) * (-1)
    return {p.norm * s0, 2.0 * p.norm * sx, 2.0 * p.norm * sy};
}

// Value and all six derivatives (x0, y0, a, b, c, beta) of a pixel integral.
template <PsfProfile K>
inline void integrate_all(const Profile& p, double dx, double dy, int n, double* out) noexcept {
    const Rules& r = rules();
    const double* t = r.node[at(n)].data();
    const double* w = r.weight[at(n)].data();
    double s0 = 0.0, sx = 0.0, sy = 0.0, sxx = 0.0, sxy = 0.0, syy = 0.0, slog = 0.0;
    for (int i = 0; i < n; ++i) {
        const double ex = dx + t[i];
        double r0 = 0.0, rx = 0.0, ry = 0.0, rxx = 0.0, rxy = 0.0, ryy = 0.0, rlog = 0.0;
        for (int j = 0; j < n; ++j) {
            const double ey = dy + t[j];
            const double q = p.a * ex * ex + 2.0 * p.b * ex * ey + p.c * ey * ey;
            double g, slope;
            if constexpr (K == PsfProfile::kMoffat) {
                const double log_term = std::log1p(q);
                g = std::exp(-p.beta * log_term);
                slope = p.beta * g / (1.0 + q);
                rlog += w[j] * g * log_term;
            } else {
                g = std::exp(-0.5 * q);
                slope = 0.5 * g;
            }
            r0 += w[j] * g;
            rx += w[j] * slope * (p.a * ex + p.b * ey);
            ry += w[j] * slope * (p.b * ex + p.c * ey);
            rxx += w[j] * slope * ex * ex;
            rxy += w[j] * slope * ex * ey;
            ryy += w[j] * slope * ey * ey;
        }
        s0 += w[i] * r0;
        sx += w[i] * rx;
        sy += w[i] * ry;
        sxx += w[i] * rxx;
        sxy += w[i] * rxy;
        syy += w[i] * ryy;
        slog += w[i] * rlog;
    }
    const double value = p.norm * s0;
    out[0] = value;
    out[1] = 2.0 * p.norm * sx;
    out[2] = 2.0 * p.norm * sy;
    // d norm / d(a, b, c) = norm * (c, -2 b, a) / (2 det); dq / d(a, b, c) = (ex^2, 2 ex ey, ey^2)
    out[3] = value * p.c / (2.0 * p.det) - p.norm * sxx;
    out[4] = -value * p.b / p.det - 2.0 * p.norm * sxy;
    out[5] = value * p.a / (2.0 * p.det) - p.norm * syy;
    out[6] = K == PsfProfile::kMoffat ? value / (p.beta - 1.0) - p.norm * slog : 0.0;
}

// One axis of a separable (axis-aligned) Gaussian: for `count` consecutive pixels starting at
// pixel centre offset d0 (pixel centre minus star), the integral of the unit 1-d Gaussian over
// each pixel and its derivative with respect to the star's coordinate. Accurate in the tails:
// differences of erfc on the side away from the centre.
inline void gaussian_axis(double d0, std::int64_t count, double scale, double peak, double* value,
                          double* derivative) noexcept {
    // Edge k sits at d0 - 1/2 + k; Phi(e) = erfc(-e scale) / 2 is the 1-d cumulative.
    double e_prev = d0 - 0.5;
    double tail_prev = std::erfc(std::fabs(e_prev) * scale);
    double density_prev = peak * std::exp(-(e_prev * scale) * (e_prev * scale));
    for (std::int64_t k = 0; k < count; ++k) {
        const double e = e_prev + 1.0;
        const double tail = std::erfc(std::fabs(e) * scale);
        const double density = peak * std::exp(-(e * scale) * (e * scale));
        double v;
        if (e_prev >= 0.0) {
            v = 0.5 * (tail_prev - tail);
        } else if (e <= 0.0) {
            v = 0.5 * (tail - tail_prev);
        } else {
            v = 1.0 - 0.5 * (tail + tail_prev);
        }
        value[k] = v;
        derivative[k] = density_prev - density;  // d/dx0 of Phi(e - x0) differences
        e_prev = e;
        tail_prev = tail;
        density_prev = density;
    }
}

// ----------------------------------------------------------------------------------------------
// Small dense linear algebra: symmetric positive definite systems stored row-major, n x n.
// ----------------------------------------------------------------------------------------------

// Levenberg-Marquardt damping: the first lambda (relative to the normal matrix's diagonal), and
// the largest at which a step's own decrement is trusted to say the fit has converged.
constexpr double kInitialDamping = 1e-4;
constexpr double kLightDamping = 1e-3;

// In-place Cholesky A = L L^T (L in the lower triangle). False when a pivot is not positive or
// is below 1e-13 of its diagonal (numerically singular): the caller damps harder or gives up.
bool cholesky(double* A, std::int64_t n) noexcept {
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
void cholesky_solve(const double* L, std::int64_t n, double* b) noexcept {
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
void damped_copy(const double* N, std::int64_t n, double lambda, double* A) noexcept {
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
void hold(double* A, std::int64_t n, std::int64_t a) noexcept {
    for (std::int64_t b = 0; b < n; ++b) {
        A[at(a * n + b)] = 0.0;
        A[at(b * n + a)] = 0.0;
    }
    A[at(a * n + a)] = 1.0;
}

// ----------------------------------------------------------------------------------------------
// psf_photometry: one group of stars on one frame
// ----------------------------------------------------------------------------------------------

struct GroupStar {
    std::int64_t index = 0;   // star index within the frame
    std::int64_t cx = 0, cy = 0;  // box centre pixel
    double x0 = 0.0, y0 = 0.0;    // input position
    Profile profile;
    std::size_t table = 0;        // offset of its node-count table in Scratch::node_table
    std::size_t axis = 0;         // offset of its separable axis arrays in Scratch::axis
    std::int64_t i0 = 0, nx = 0;  // the columns and rows those arrays cover: the star's reach
    std::int64_t j0 = 0, ny = 0;  // within the group's bounding box
};

struct Scratch {
    std::vector<GroupStar> stars;
    std::vector<std::int64_t> pixels;   // flat image indices of the group's usable pixels
    std::vector<std::int64_t> column, row;  // their coordinates
    std::vector<double> data;           // electrons
    std::vector<double> weight;         // 1 / variance
    std::vector<double> model;
    std::vector<double> u, v;           // background plane coordinates
    std::vector<std::int64_t> row_start;  // CSR of the Jacobian: entries of pixel k
    std::vector<std::int32_t> entry_index;
    std::vector<std::uint8_t> entry_linear;
    std::vector<double> entry_value;
    std::vector<int> node_table;
    std::vector<double> axis;           // separable Gaussian: per star x values, x derivatives
                                        // (nx each), y values, y derivatives (ny each)
    std::vector<double> params, trial, step, best;
    std::vector<std::uint8_t> held;     // per parameter: a position held at its input
    std::vector<double> normal, normal_trial, gradient, gradient_trial, work;
};

struct GroupTask {
    std::int64_t frame = 0;
    std::size_t first = 0;  // its stars: members[first, first + count) of psf_photometry's plan
    std::size_t count = 0;
    bool split = false;     // cut from a larger group
};

template <typename T>
class GroupFitter {
   public:
    GroupFitter(const T* frames, const std::uint8_t* pixel_flags, std::int64_t ny, std::int64_t nx,
                const double* x, const double* y, std::int64_t n_stars,
                const PsfPhotometryConfig& config, const PsfPhotometryOutputs& out)
        : frames_(frames), pixel_flags_(pixel_flags), ny_(ny), nx_(nx), x_(x), y_(y),
          n_stars_(n_stars), config_(config), out_(out) {
        box_ = config.box;
        reach_ = 3 * box_;
        n_background_ = config.background == PsfBackground::kNone       ? 0
                        : config.background == PsfBackground::kConstant ? 1
                                                                        : 3;
        per_star_ = config.fit_positions ? 3 : 1;
    }

    // Box centre pixel of a coordinate already known to be on the frame.
    static std::int64_t centre_pixel(double v) { return static_cast<std::int64_t>(std::ceil(v - 0.5)); }

    // Writes the star's not-fitted outputs and its pre-fit flags; returns true if it can be fitted.
    bool prepare_star(std::int64_t frame, std::int64_t star) const {
        const std::size_t k = at(frame * n_stars_ + star);
        const double xs = x_[k];
        const double ys = y_[k];
        out_.flux[k] = kNaN;
        out_.flux_err[k] = kNaN;
        out_.x[k] = xs;
        out_.y[k] = ys;
        out_.x_err[k] = kNaN;
        out_.y_err[k] = kNaN;
        out_.background[k] = kNaN;
        out_.chi2_reduced[k] = kNaN;
        out_.iterations[k] = 0;
        out_.pixels[k] = 0;
        out_.group_pixels[k] = 0;
        out_.group[k] = -1;
        std::uint32_t flag = 0;
        const double fx = static_cast<double>(nx_);
        const double fy = static_cast<double>(ny_);
        // On the frame: the box centre pixel ceil(v - 1/2) is a pixel of the image. Also guards
        // the integer casts below against huge or non-finite coordinates.
        if (!(xs > -0.5 && xs <= fx - 0.5 && ys > -0.5 && ys <= fy - 0.5)) {
            out_.flags[k] = flags::kOffFrame;
            return false;
        }
        const std::int64_t cx = centre_pixel(xs);
        const std::int64_t cy = centre_pixel(ys);
        if (cx - box_ < 0 || cy - box_ < 0 || cx + box_ > nx_ - 1 || cy + box_ > ny_ - 1)
            flag |= flags::kNearEdge;
        const T* image = frames_ + frame * ny_ * nx_;
        const std::uint8_t* pflags = pixel_flags_ ? pixel_flags_ + frame * ny_ * nx_ : nullptr;
        std::int64_t usable = 0;
        for (std::int64_t j = std::max<std::int64_t>(0, cy - box_); j <= std::min(ny_ - 1, cy + box_); ++j) {
            for (std::int64_t i = std::max<std::int64_t>(0, cx - box_); i <= std::min(nx_ - 1, cx + box_); ++i) {
                const std::int64_t p = j * nx_ + i;
                const std::uint8_t pf = pflags ? pflags[p] : std::uint8_t{0};
                const bool finite = std::isfinite(static_cast<double>(image[p]));
                if (!finite || (pf & kBadBits)) flag |= flags::kBadPixel;
                if (pf & flags::kPixelSaturated) flag |= flags::kSaturated;
                if (finite && (pf & kUnusable) == 0) ++usable;
            }
        }
        out_.pixels[k] = usable;
        if (usable < 3 * per_star_) {
            out_.flags[k] = flag | flags::kFitFailed;
            return false;
        }
        out_.flags[k] = flag;
        return true;
    }

    // Fits one group; writes every output of its members.
    void fit(const GroupTask& task, const std::int64_t* members, Scratch& s) const {
        const std::int64_t frame = task.frame;
        const auto n_members = static_cast<std::int64_t>(task.count);
        setup_stars(frame, members, n_members, s);
        gather_pixels(frame, s);
        build_structure(s);
        const std::int64_t n_params = n_background_ + per_star_ * n_members;
        const auto n_pixels = static_cast<std::int64_t>(s.pixels.size());
        std::int64_t group_id = members[0];
        for (std::int64_t m = 1; m < n_members; ++m) group_id = std::min(group_id, members[m]);
        for (std::int64_t m = 0; m < n_members; ++m) {
            const std::size_t k = at(frame * n_stars_ + members[m]);
            out_.group[k] = group_id;
            out_.group_pixels[k] = n_pixels;
            if (task.split) out_.flags[k] |= flags::kBlended;
        }
        if (n_pixels <= n_params) {
            fail(frame, members, n_members);
            return;
        }
        const std::size_t P = at(n_params);
        s.params.assign(P, 0.0);
        s.trial.assign(P, 0.0);
        s.step.assign(P, 0.0);
        s.normal.assign(P * P, 0.0);
        s.normal_trial.assign(P * P, 0.0);
        s.gradient.assign(P, 0.0);
        s.gradient_trial.assign(P, 0.0);
        s.work.assign(P * P, 0.0);
        for (std::int64_t m = 0; m < n_members; ++m) {
            const GroupStar& star = s.stars[at(m)];
            if (config_.fit_positions) {
                s.params[at(position_index(m))] = star.x0;
                s.params[at(position_index(m) + 1)] = star.y0;
            }
        }
        data_weights(s);

        int iterations = 0;
        bool converged = true;
        bool solved = true;
        double chi2 = 0.0;
        const int passes = config_.model_variance ? 2 : 1;
        // Linear stage: fluxes and background at the input positions (the whole fit when
        // positions are fixed, the starting point otherwise).
        render(s, /*gradient=*/false, s.params.data());
        for (int pass = 0; pass < (config_.fit_positions ? 1 : passes); ++pass) {
            if (pass > 0) model_weights(s);
            solved = linear_solve(s, n_params, &chi2);
            ++iterations;
            if (!solved) break;
        }
        s.held.assign(P, 0);
        if (solved && config_.fit_positions) {
            // Positions are fitted only for stars whose flux at the input positions is at least
            // position_snr times its error: a faint star's position is not constrained, and
            // pairs of faint stars can trade flux along flat valleys of chi^2 for ever.
            for (std::int64_t m = 0; m < n_members; ++m) {
                std::fill(s.step.begin(), s.step.end(), 0.0);
                s.step[at(flux_index(m))] = 1.0;
                cholesky_solve(s.work.data(), n_params, s.step.data());
                const double sigma = std::sqrt(s.step[at(flux_index(m))]);
                if (!(s.params[at(flux_index(m))] >= config_.position_snr * sigma)) {
                    s.held[at(position_index(m))] = 1;
                    s.held[at(position_index(m) + 1)] = 1;
                }
            }
            for (int pass = 0; pass < passes && solved; ++pass) {
                if (pass > 0) {
                    render(s, false, s.params.data());
                    model_weights(s);
                }
                const int used = levenberg_marquardt(s, n_params, &chi2, &converged, &solved);
                iterations += used;
            }
        }
        // Covariance from the undamped normal matrix at the solution (held positions are not
        // parameters of the fit).
        damped_copy(s.normal.data(), n_params, 0.0, s.work.data());
        for (std::int64_t a = 0; a < n_params; ++a)
            if (s.held[at(a)]) hold(s.work.data(), n_params, a);
        const bool invertible = solved && cholesky(s.work.data(), n_params);
        if (!invertible || !std::isfinite(chi2)) {
            fail(frame, members, n_members);
            for (std::int64_t m = 0; m < n_members; ++m)
                out_.iterations[at(frame * n_stars_ + members[m])] = iterations;
            return;
        }
        std::int64_t n_fitted = n_params;  // held positions are not parameters of the fit
        for (std::uint8_t h : s.held) n_fitted -= h;
        const double chi2_reduced = chi2 / static_cast<double>(n_pixels - n_fitted);
        std::vector<double>& e = s.step;  // reused as the unit vector / inverse column
        auto variance = [&](std::int64_t index) {
            std::fill(e.begin(), e.end(), 0.0);
            e[at(index)] = 1.0;
            cholesky_solve(s.work.data(), n_params, e.data());
            return e[at(index)];
        };
        for (std::int64_t m = 0; m < n_members; ++m) {
            const GroupStar& star = s.stars[at(m)];
            const std::size_t k = at(frame * n_stars_ + star.index);
            const double flux = s.params[at(flux_index(m))];
            out_.flux[k] = flux;
            out_.flux_err[k] = std::sqrt(variance(flux_index(m)));
            double xs = star.x0, ys = star.y0;
            if (config_.fit_positions && !s.held[at(position_index(m))]) {
                xs = s.params[at(position_index(m))];
                ys = s.params[at(position_index(m) + 1)];
                out_.x_err[k] = std::sqrt(variance(position_index(m)));
                out_.y_err[k] = std::sqrt(variance(position_index(m) + 1));
                const double limit = config_.max_shift * (1.0 - 1e-9);
                if (std::fabs(xs - star.x0) >= limit || std::fabs(ys - star.y0) >= limit)
                    out_.flags[k] |= flags::kCentroidFailed;
            }
            out_.x[k] = xs;
            out_.y[k] = ys;
            out_.background[k] = background_at(s, xs, ys);
            out_.chi2_reduced[k] = chi2_reduced;
            out_.iterations[k] = iterations;
            if (!converged) out_.flags[k] |= flags::kFitNotConverged;
        }
    }

   private:
    std::int64_t flux_index(std::int64_t m) const { return n_background_ + per_star_ * m; }
    std::int64_t position_index(std::int64_t m) const { return flux_index(m) + 1; }

    void fail(std::int64_t frame, const std::int64_t* members, std::int64_t n) const {
        for (std::int64_t m = 0; m < n; ++m) {
            const std::size_t k = at(frame * n_stars_ + members[m]);
            out_.flags[k] |= flags::kFitFailed;
            out_.flux[k] = kNaN;
            out_.flux_err[k] = kNaN;
        }
    }

    void setup_stars(std::int64_t frame, const std::int64_t* members, std::int64_t n,
                     Scratch& s) const {
        s.stars.resize(at(n));
        s.node_table.clear();
        s.axis.clear();
        // The group's bounding box: no pixel of the fit lies outside it.
        std::int64_t gi0 = nx_, gi1 = -1, gj0 = ny_, gj1 = -1;
        for (std::int64_t m = 0; m < n; ++m) {
            const std::size_t k = at(frame * n_stars_ + members[m]);
            const std::int64_t cx = centre_pixel(x_[k]);
            const std::int64_t cy = centre_pixel(y_[k]);
            gi0 = std::min(gi0, std::max<std::int64_t>(0, cx - box_));
            gi1 = std::max(gi1, std::min(nx_ - 1, cx + box_));
            gj0 = std::min(gj0, std::max<std::int64_t>(0, cy - box_));
            gj1 = std::max(gj1, std::min(ny_ - 1, cy + box_));
        }
        const auto table_size = static_cast<std::int64_t>(std::ceil(1.4143 * static_cast<double>(reach_ + 1))) + 2;
        for (std::int64_t m = 0; m < n; ++m) {
            GroupStar& star = s.stars[at(m)];
            star.index = members[m];
            const std::size_t k = at(frame * n_stars_ + star.index);
            star.x0 = x_[k];
            star.y0 = y_[k];
            star.cx = centre_pixel(star.x0);
            star.cy = centre_pixel(star.y0);
            const double* sh = config_.shapes + 4 * k;
            star.profile.set(config_.profile, PsfShape{sh[0], sh[1], sh[2], sh[3]}, true);
            star.table = s.node_table.size();
            star.axis = s.axis.size();
            star.i0 = std::max(gi0, star.cx - reach_);
            star.nx = std::max<std::int64_t>(0, std::min(gi1, star.cx + reach_) - star.i0 + 1);
            star.j0 = std::max(gj0, star.cy - reach_);
            star.ny = std::max<std::int64_t>(0, std::min(gj1, star.cy + reach_) - star.j0 + 1);
            if (star.profile.separable) {
                s.axis.resize(s.axis.size() + 2 * at(star.nx + star.ny));
            } else {
                for (std::int64_t d = 0; d < table_size; ++d)
                    s.node_table.push_back(star.profile.node_count(static_cast<double>(d)));
            }
        }
    }

    // The union of the members' boxes on the frame, usable pixels only, in image order.
    void gather_pixels(std::int64_t frame, Scratch& s) const {
        s.pixels.clear();
        for (const GroupStar& star : s.stars) {
            for (std::int64_t j = std::max<std::int64_t>(0, star.cy - box_);
                 j <= std::min(ny_ - 1, star.cy + box_); ++j) {
                for (std::int64_t i = std::max<std::int64_t>(0, star.cx - box_);
                     i <= std::min(nx_ - 1, star.cx + box_); ++i)
                    s.pixels.push_back(j * nx_ + i);
            }
        }
        if (s.stars.size() > 1) {
            std::sort(s.pixels.begin(), s.pixels.end());
            s.pixels.erase(std::unique(s.pixels.begin(), s.pixels.end()), s.pixels.end());
        }
        const T* image = frames_ + frame * ny_ * nx_;
        const std::uint8_t* pflags = pixel_flags_ ? pixel_flags_ + frame * ny_ * nx_ : nullptr;
        std::size_t kept = 0;
        s.data.resize(s.pixels.size());
        for (std::size_t n = 0; n < s.pixels.size(); ++n) {
            const std::int64_t p = s.pixels[n];
            const double value = static_cast<double>(image[p]);
            if (!std::isfinite(value) || (pflags && (pflags[p] & kUnusable))) continue;
            s.pixels[kept] = p;
            s.data[kept] = value * config_.gain;
            ++kept;
        }
        s.pixels.resize(kept);
        s.column.resize(kept);
        s.row.resize(kept);
        for (std::size_t n = 0; n < kept; ++n) {
            s.column[n] = s.pixels[n] % nx_;
            s.row[n] = s.pixels[n] / nx_;
        }
        s.data.resize(kept);
        s.weight.resize(kept);
        s.model.assign(kept, 0.0);
        s.u.resize(kept);
        s.v.resize(kept);
        // Background plane coordinates about the members' mean box centre, in box units.
        double gx = 0.0, gy = 0.0;
        for (const GroupStar& star : s.stars) {
            gx += static_cast<double>(star.cx);
            gy += static_cast<double>(star.cy);
        }
        gx /= static_cast<double>(s.stars.size());
        gy /= static_cast<double>(s.stars.size());
        for (std::size_t n = 0; n < kept; ++n) {
            s.u[n] = (static_cast<double>(s.column[n]) - gx) / static_cast<double>(box_);
            s.v[n] = (static_cast<double>(s.row[n]) - gy) / static_cast<double>(box_);
        }
    }

    double background_at(const Scratch& s, double xs, double ys) const {
        if (n_background_ == 0) return 0.0;
        const double b0 = s.params[0];
        if (n_background_ == 1) return b0;
        double gx = 0.0, gy = 0.0;
        for (const GroupStar& star : s.stars) {
            gx += static_cast<double>(star.cx);
            gy += static_cast<double>(star.cy);
        }
        gx /= static_cast<double>(s.stars.size());
        gy /= static_cast<double>(s.stars.size());
        const double scale = static_cast<double>(box_);
        return b0 + s.params[1] * (xs - gx) / scale + s.params[2] * (ys - gy) / scale;
    }

    static double variance_weight(double read_noise2, double signal) {
        return 1.0 / std::max(read_noise2 + std::max(signal, 0.0), 1.0);
    }

    void data_weights(Scratch& s) const {
        const double rn2 = config_.read_noise * config_.read_noise;
        for (std::size_t n = 0; n < s.data.size(); ++n) s.weight[n] = variance_weight(rn2, s.data[n]);
    }

    void model_weights(Scratch& s) const {
        const double rn2 = config_.read_noise * config_.read_noise;
        for (std::size_t n = 0; n < s.model.size(); ++n) s.weight[n] = variance_weight(rn2, s.model[n]);
    }

    // Which star reaches a pixel: its Chebyshev distance from the star's box centre is at most
    // 3 box. Fixed for the whole fit (box centres do not move), so is the Jacobian's sparsity.
    bool reaches(const GroupStar& star, std::int64_t i, std::int64_t j) const {
        return i >= star.cx - reach_ && i <= star.cx + reach_ && j >= star.cy - reach_ && j <= star.cy + reach_;
    }

    // The sparsity of the Jacobian (CSR: row_start, entry_index; entries of a pixel in increasing
    // parameter order: background, then each reaching star's flux, x, y) and which entries are
    // linear parameters (background and fluxes).
    void build_structure(Scratch& s) const {
        const std::size_t n_pixels = s.pixels.size();
        s.row_start.resize(n_pixels + 1);
        s.entry_index.clear();
        s.entry_linear.clear();
        s.row_start[0] = 0;
        const auto n_stars = static_cast<std::int64_t>(s.stars.size());
        for (std::size_t n = 0; n < n_pixels; ++n) {
            const std::int64_t i = s.column[n];
            const std::int64_t j = s.row[n];
            for (std::int64_t b = 0; b < n_background_; ++b) {
                s.entry_index.push_back(static_cast<std::int32_t>(b));
                s.entry_linear.push_back(1);
            }
            for (std::int64_t m = 0; m < n_stars; ++m) {
                if (!reaches(s.stars[at(m)], i, j)) continue;
                for (std::int64_t k = 0; k < per_star_; ++k) {
                    s.entry_index.push_back(static_cast<std::int32_t>(flux_index(m) + k));
                    s.entry_linear.push_back(k == 0 ? 1 : 0);
                }
            }
            s.row_start[n + 1] = static_cast<std::int64_t>(s.entry_index.size());
        }
        s.entry_value.assign(s.entry_index.size(), 0.0);
    }

    // Evaluates the model at `params` on every pixel and the Jacobian's entries (in the order of
    // build_structure). With gradient == false the position derivatives are left 0 (linear stage).
    void render(Scratch& s, bool gradient, const double* params) const {
        const auto n_stars = static_cast<std::int64_t>(s.stars.size());
        // Separable Gaussians: their axis integrals at the current positions.
        for (std::int64_t m = 0; m < n_stars; ++m) {
            const GroupStar& star = s.stars[at(m)];
            if (!star.profile.separable) continue;
            const double xs = config_.fit_positions ? params[position_index(m)] : star.x0;
            const double ys = config_.fit_positions ? params[position_index(m) + 1] : star.y0;
            double* axis = s.axis.data() + star.axis;
            gaussian_axis(static_cast<double>(star.i0) - xs, star.nx, star.profile.sx,
                          star.profile.px, axis, axis + star.nx);
            gaussian_axis(static_cast<double>(star.j0) - ys, star.ny, star.profile.sy,
                          star.profile.py, axis + 2 * star.nx, axis + 2 * star.nx + star.ny);
        }
        const std::size_t n_pixels = s.pixels.size();
        const auto table_size = static_cast<std::int64_t>(std::ceil(1.4143 * static_cast<double>(reach_ + 1))) + 2;
        double* value = s.entry_value.data();
        const bool alone = n_stars == 1;  // a lone star reaches every pixel of its own box
        for (std::size_t n = 0; n < n_pixels; ++n) {
            const std::int64_t i = s.column[n];
            const std::int64_t j = s.row[n];
            double model = 0.0;
            if (n_background_ >= 1) {
                model += params[0];
                *value++ = 1.0;
            }
            if (n_background_ == 3) {
                model += params[1] * s.u[n] + params[2] * s.v[n];
                *value++ = s.u[n];
                *value++ = s.v[n];
            }
            for (std::int64_t m = 0; m < n_stars; ++m) {
                const GroupStar& star = s.stars[at(m)];
                if (!alone && !reaches(star, i, j)) continue;
                const std::int64_t fi = flux_index(m);
                const double flux = params[fi];
                PixelValue pv;
                if (star.profile.separable) {
                    const double* axis = s.axis.data() + star.axis;
                    const std::size_t ci = at(i - star.i0);
                    const std::size_t cj = at(j - star.j0);
                    const double ex = axis[ci], ey = axis[at(2 * star.nx) + cj];
                    pv.value = ex * ey;
                    if (gradient) {
                        pv.dx0 = axis[at(star.nx) + ci] * ey;
                        pv.dy0 = ex * axis[at(2 * star.nx + star.ny) + cj];
                    }
                } else {
                    const double xs = config_.fit_positions ? params[fi + 1] : star.x0;
                    const double ys = config_.fit_positions ? params[fi + 2] : star.y0;
                    const double dx = static_cast<double>(i) - xs;
                    const double dy = static_cast<double>(j) - ys;
                    const auto d = static_cast<std::int64_t>(std::sqrt(dx * dx + dy * dy));
                    const int nodes = s.node_table[star.table + at(std::min(d, table_size - 1))];
                    if (star.profile.kind == PsfProfile::kMoffat) {
                        pv = gradient ? integrate<PsfProfile::kMoffat, true>(star.profile, dx, dy, nodes)
                                      : integrate<PsfProfile::kMoffat, false>(star.profile, dx, dy, nodes);
                    } else {
                        pv = gradient ? integrate<PsfProfile::kGaussian, true>(star.profile, dx, dy, nodes)
                                      : integrate<PsfProfile::kGaussian, false>(star.profile, dx, dy, nodes);
                    }
                }
                model += flux * pv.value;
                *value++ = pv.value;
                if (config_.fit_positions) {
                    *value++ = flux * pv.dx0;
                    *value++ = flux * pv.dy0;
                }
            }
            s.model[n] = model;
        }
    }

    // chi^2, the normal matrix J^T W J (upper triangle) and gradient J^T W r from the Jacobian's
    // entries and s.model. A single star's pixels all hold every parameter in order, so small
    // single-star fits take a dense path with the sums held in registers.
    double accumulate(const Scratch& s, std::int64_t n_params, double* normal, double* gradient) const {
        if (s.stars.size() == 1) {
            switch (n_params) {
                case 1: return accumulate_dense<1>(s, normal, gradient);
                case 2: return accumulate_dense<2>(s, normal, gradient);
                case 3: return accumulate_dense<3>(s, normal, gradient);
                case 4: return accumulate_dense<4>(s, normal, gradient);
                case 6: return accumulate_dense<6>(s, normal, gradient);
                default: break;
            }
        }
        std::fill(normal, normal + n_params * n_params, 0.0);
        std::fill(gradient, gradient + n_params, 0.0);
        double chi2 = 0.0;
        for (std::size_t n = 0; n < s.pixels.size(); ++n) {
            const double w = s.weight[n];
            const double r = s.data[n] - s.model[n];
            chi2 += w * r * r;
            const auto begin = at(s.row_start[n]);
            const auto end = at(s.row_start[n + 1]);
            for (std::size_t e = begin; e < end; ++e) {
                const std::int64_t a = s.entry_index[e];
                const double wa = w * s.entry_value[e];
                gradient[a] += wa * r;
                double* row = normal + a * n_params;
                for (std::size_t f = e; f < end; ++f) row[s.entry_index[f]] += wa * s.entry_value[f];
            }
        }
        return chi2;
    }

    template <int P>
    double accumulate_dense(const Scratch& s, double* normal, double* gradient) const {
        double upper[P * (P + 1) / 2] = {};
        double g[P] = {};
        double chi2 = 0.0;
        const double* value = s.entry_value.data();
        for (std::size_t n = 0; n < s.pixels.size(); ++n, value += P) {
            const double w = s.weight[n];
            const double r = s.data[n] - s.model[n];
            chi2 += w * r * r;
            int k = 0;
            for (int a = 0; a < P; ++a) {
                const double wa = w * value[a];
                g[a] += wa * r;
                for (int b = a; b < P; ++b) upper[k++] += wa * value[b];
            }
        }
        int k = 0;
        for (int a = 0; a < P; ++a) {
            gradient[a] = g[a];
            for (int b = 0; b < a; ++b) normal[a * P + b] = 0.0;
            for (int b = a; b < P; ++b) normal[a * P + b] = upper[k++];
        }
        return chi2;
    }

    // The linear least-squares solution for fluxes and background, positions held where the
    // parameters put them (the model is linear in what is solved for: m = J p exactly). Updates
    // s.params, s.model, s.normal; *chi2 at the solution. False if the system is singular.
    bool linear_solve(Scratch& s, std::int64_t n_params, double* chi2) const {
        // Solve N p = J^T W d for the fluxes and background directly (the model is J p); only the
        // flux and background entries of the Jacobian are used here.
        std::fill(s.normal.begin(), s.normal.end(), 0.0);
        std::fill(s.gradient.begin(), s.gradient.end(), 0.0);
        for (std::size_t n = 0; n < s.pixels.size(); ++n) {
            const double w = s.weight[n];
            const auto begin = at(s.row_start[n]);
            const auto end = at(s.row_start[n + 1]);
            for (std::size_t e = begin; e < end; ++e) {
                if (!s.entry_linear[e]) continue;
                const std::int64_t a = s.entry_index[e];
                const double wa = w * s.entry_value[e];
                s.gradient[at(a)] += wa * s.data[n];
                double* row = s.normal.data() + a * n_params;
                for (std::size_t f = e; f < end; ++f)
                    if (s.entry_linear[f]) row[s.entry_index[f]] += wa * s.entry_value[f];
            }
        }
        // Position rows and columns (if any) are zero here: damped_copy makes them identity.
        damped_copy(s.normal.data(), n_params, 0.0, s.work.data());
        if (!cholesky(s.work.data(), n_params)) return false;
        std::copy(s.gradient.begin(), s.gradient.end(), s.step.begin());
        cholesky_solve(s.work.data(), n_params, s.step.data());
        for (std::size_t n = 0; n < s.pixels.size(); ++n) {
            for (auto e = at(s.row_start[n]); e < at(s.row_start[n + 1]); ++e)
                if (s.entry_linear[e]) s.params[at(s.entry_index[e])] = s.step[at(s.entry_index[e])];
        }
        // The model at the solution, from the (linear) Jacobian entries.
        double total = 0.0;
        for (std::size_t n = 0; n < s.pixels.size(); ++n) {
            double model = 0.0;
            for (auto e = at(s.row_start[n]); e < at(s.row_start[n + 1]); ++e)
                if (s.entry_linear[e]) model += s.params[at(s.entry_index[e])] * s.entry_value[e];
            s.model[n] = model;
            const double r = s.data[n] - model;
            total += s.weight[n] * r * r;
        }
        *chi2 = total;
        return std::isfinite(total);
    }

    // Levenberg-Marquardt on fluxes, positions and background from s.params; returns the trial
    // steps taken. On return s.params, s.model, s.normal, *chi2 describe the accepted point.
    int levenberg_marquardt(Scratch& s, std::int64_t n_params, double* chi2, bool* converged,
                            bool* solved) const {
        render(s, true, s.params.data());
        *chi2 = accumulate(s, n_params, s.normal.data(), s.gradient.data());
        double lambda = kInitialDamping;
        int steps = 0;
        *converged = false;
        const auto n_stars = static_cast<std::int64_t>(s.stars.size());
        while (steps < config_.max_iterations) {
            damped_copy(s.normal.data(), n_params, lambda, s.work.data());
            std::copy(s.gradient.begin(), s.gradient.end(), s.step.begin());
            // Positions held at their inputs (faint stars) leave the system; so, by an active
            // set, does a position at its bound that the step would push further out.
            for (std::int64_t m = 0; m < n_stars; ++m) {
                const GroupStar& star = s.stars[at(m)];
                for (std::int64_t k = 0; k < 2; ++k) {
                    const std::int64_t a = position_index(m) + k;
                    const double offset = s.params[at(a)] - (k == 0 ? star.x0 : star.y0);
                    if (s.held[at(a)] ||
                        (std::fabs(offset) >= config_.max_shift && offset * s.gradient[at(a)] > 0.0)) {
                        hold(s.work.data(), n_params, a);
                        s.step[at(a)] = 0.0;
                    }
                }
            }
            if (!cholesky(s.work.data(), n_params)) {
                lambda = std::max(lambda * 10.0, 1e-9);
                ++steps;
                if (lambda > 1e16) break;
                continue;
            }
            cholesky_solve(s.work.data(), n_params, s.step.data());
            for (std::int64_t a = 0; a < n_params; ++a) s.trial[at(a)] = s.params[at(a)] + s.step[at(a)];
            for (std::int64_t m = 0; m < n_stars; ++m) {
                const GroupStar& star = s.stars[at(m)];
                double& xs = s.trial[at(position_index(m))];
                double& ys = s.trial[at(position_index(m) + 1)];
                xs = std::clamp(xs, star.x0 - config_.max_shift, star.x0 + config_.max_shift);
                ys = std::clamp(ys, star.y0 - config_.max_shift, star.y0 + config_.max_shift);
            }
            // The Gauss-Newton decrement of the step actually taken (after the bounds).
            double decrement = 0.0;
            for (std::int64_t a = 0; a < n_params; ++a)
                decrement += (s.trial[at(a)] - s.params[at(a)]) * s.gradient[at(a)];
            // A lightly damped step this small would not move the solution: the current point is
            // the minimum to within the tolerance (and its normal matrix is already in hand).
            if (lambda <= kLightDamping && decrement <= config_.tolerance) {
                *converged = true;
                break;
            }
            ++steps;
            bool finite = true;
            for (std::int64_t a = 0; a < n_params; ++a) finite = finite && std::isfinite(s.trial[at(a)]);
            if (!finite) {  // an overflowing step: damp harder
                lambda *= 10.0;
                if (lambda > 1e16) break;
                continue;
            }
            // The trial's model and normal equations go to the *_trial buffers; the current point's
            // model is kept in case the trial is rejected.
            s.best.assign(s.model.begin(), s.model.end());
            render(s, true, s.trial.data());
            const double trial_chi2 = accumulate(s, n_params, s.normal_trial.data(), s.gradient_trial.data());
            if (std::isfinite(trial_chi2) && trial_chi2 <= *chi2) {
                s.params.swap(s.trial);
                s.normal.swap(s.normal_trial);
                s.gradient.swap(s.gradient_trial);
                const double drop = *chi2 - trial_chi2;
                *chi2 = trial_chi2;
                lambda = std::max(lambda * 0.1, 1e-12);
                if (decrement <= config_.tolerance || drop <= 1e-15 * trial_chi2) {
                    *converged = true;
                    break;
                }
                // A star whose flux has gone negative has no position to fit: hold it where it
                // is (otherwise it and a neighbour trade flux along a flat valley of chi^2).
                if (config_.position_snr > 0.0) {
                    for (std::int64_t m = 0; m < n_stars; ++m) {
                        if (s.params[at(flux_index(m))] < 0.0) {
                            s.held[at(position_index(m))] = 1;
                            s.held[at(position_index(m) + 1)] = 1;
                        }
                    }
                }
            } else {
                s.model.swap(s.best);
                lambda *= 10.0;
                if (lambda > 1e16) {  // no step lowers chi^2: at the minimum to rounding
                    *converged = true;
                    break;
                }
            }
        }
        // s.model must describe s.params: after a rejected last trial it was restored above; the
        // CSR Jacobian may belong to the rejected trial, which the callers do not use again
        // without rendering.
        *solved = std::isfinite(*chi2);
        return steps;
    }

    const T* frames_;
    const std::uint8_t* pixel_flags_;
    std::int64_t ny_, nx_;
    const double* x_;
    const double* y_;
    std::int64_t n_stars_;
    const PsfPhotometryConfig& config_;
    const PsfPhotometryOutputs& out_;
    std::int64_t box_ = 1;
    std::int64_t reach_ = 3;
    std::int64_t n_background_ = 1;
    std::int64_t per_star_ = 1;
};

// Union-find over the fittable stars of one frame.
struct DisjointSets {
    std::vector<std::int64_t> parent;
    explicit DisjointSets(std::int64_t n) : parent(at(n)) { std::iota(parent.begin(), parent.end(), 0); }
    std::int64_t find(std::int64_t a) {
        while (parent[at(a)] != a) {
            parent[at(a)] = parent[at(parent[at(a)])];
            a = parent[at(a)];
        }
        return a;
    }
    void unite(std::int64_t a, std::int64_t b) {
        a = find(a);
        b = find(b);
        if (a == b) return;
        if (a > b) std::swap(a, b);
        parent[at(b)] = a;  // the lower index becomes the root: deterministic
    }
};

}  // namespace

// ----------------------------------------------------------------------------------------------
// psf_pixel_grid
// ----------------------------------------------------------------------------------------------

void psf_pixel_grid(PsfProfile profile, const PsfShape& shape, double x0, double y0,
                    std::int64_t ny, std::int64_t nx, bool allow_separable, double* values,
                    double* jacobian) noexcept {
    const Profile p(profile, shape, allow_separable && jacobian == nullptr);
    const std::int64_t plane = ny * nx;
    if (p.separable) {
        std::vector<double> ex(at(nx)), dex(at(nx)), ey(at(ny)), dey(at(ny));
        gaussian_axis(-x0, nx, p.sx, p.px, ex.data(), dex.data());
        gaussian_axis(-y0, ny, p.sy, p.py, ey.data(), dey.data());
        for (std::int64_t j = 0; j < ny; ++j)
            for (std::int64_t i = 0; i < nx; ++i) values[j * nx + i] = ex[at(i)] * ey[at(j)];
        return;
    }
    double terms[7];
    for (std::int64_t j = 0; j < ny; ++j) {
        for (std::int64_t i = 0; i < nx; ++i) {
            const double dx = static_cast<double>(i) - x0;
            const double dy = static_cast<double>(j) - y0;
            const int n = p.node_count(std::floor(std::sqrt(dx * dx + dy * dy)));
            if (profile == PsfProfile::kMoffat)
                integrate_all<PsfProfile::kMoffat>(p, dx, dy, n, terms);
            else
                integrate_all<PsfProfile::kGaussian>(p, dx, dy, n, terms);
            values[j * nx + i] = terms[0];
            if (jacobian)
                for (int d = 0; d < 6; ++d) jacobian[d * plane + j * nx + i] = terms[d + 1];
        }
    }
}

// ----------------------------------------------------------------------------------------------
// psf_photometry
// ----------------------------------------------------------------------------------------------

template <typename T>
void psf_photometry(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                    std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                    std::int64_t n_stars, const PsfPhotometryConfig& config,
                    const PsfPhotometryOutputs& out, int threads) {
    if (n_frames <= 0 || n_stars <= 0) return;
    const GroupFitter<T> fitter(frames, pixel_flags, ny, nx, x, y, n_stars, config, out);

    // Plan: per frame, the fittable stars grouped by overlapping boxes.
    std::vector<std::int64_t> members;
    std::vector<GroupTask> tasks;
    const std::int64_t box = config.box;
    std::vector<std::int64_t> fittable, order, cx, cy;
    for (std::int64_t f = 0; f < n_frames; ++f) {
        fittable.clear();
        for (std::int64_t s = 0; s < n_stars; ++s)
            if (fitter.prepare_star(f, s)) fittable.push_back(s);
        const auto n = static_cast<std::int64_t>(fittable.size());
        cx.resize(at(n));
        cy.resize(at(n));
        for (std::int64_t k = 0; k < n; ++k) {
            const std::size_t index = at(f * n_stars + fittable[at(k)]);
            cx[at(k)] = GroupFitter<T>::centre_pixel(x[index]);
            cy[at(k)] = GroupFitter<T>::centre_pixel(y[index]);
        }
        order.resize(at(n));
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(),
                         [&](std::int64_t a, std::int64_t b) { return cx[at(a)] < cx[at(b)]; });
        DisjointSets sets(n);
        for (std::int64_t p = 0; p < n; ++p) {
            const std::int64_t a = order[at(p)];
            for (std::int64_t q = p + 1; q < n; ++q) {
                const std::int64_t b = order[at(q)];
                if (cx[at(b)] - cx[at(a)] > 2 * box) break;
                if (std::llabs(cy[at(b)] - cy[at(a)]) <= 2 * box) sets.unite(a, b);
            }
        }
        // Components in order of their lowest member; members in star order.
        std::vector<std::vector<std::int64_t>> components;
        std::vector<std::int64_t> component_of(at(n), -1);
        for (std::int64_t k = 0; k < n; ++k) {
            const std::int64_t root = sets.find(k);
            if (component_of[at(root)] < 0) {
                component_of[at(root)] = static_cast<std::int64_t>(components.size());
                components.emplace_back();
            }
            components[at(component_of[at(root)])].push_back(k);
        }
        for (auto& component : components) {
            const auto size = static_cast<std::int64_t>(component.size());
            if (size > config.max_group) {
                // Too many for one dense fit: chunks of neighbours in (row, column) order.
                std::stable_sort(component.begin(), component.end(), [&](std::int64_t a, std::int64_t b) {
                    return cy[at(a)] != cy[at(b)] ? cy[at(a)] < cy[at(b)] : cx[at(a)] < cx[at(b)];
                });
                const std::int64_t chunks = (size + config.max_group - 1) / config.max_group;
                for (std::int64_t c = 0; c < chunks; ++c) {
                    const std::int64_t begin = c * size / chunks;
                    const std::int64_t end = (c + 1) * size / chunks;
                    GroupTask task{f, members.size(), at(end - begin), true};
                    for (std::int64_t k = begin; k < end; ++k) members.push_back(fittable[at(component[at(k)])]);
                    tasks.push_back(task);
                }
            } else {
                GroupTask task{f, members.size(), component.size(), false};
                for (std::int64_t k : component) members.push_back(fittable[at(k)]);
                tasks.push_back(task);
            }
        }
    }
    // Largest groups first, so that no thread is left with a big one at the end.
    std::stable_sort(tasks.begin(), tasks.end(),
                     [](const GroupTask& a, const GroupTask& b) { return a.count > b.count; });
    std::vector<Scratch> scratch;
    parallel_for(static_cast<std::int64_t>(tasks.size()), threads, scratch,
                 [&](std::int64_t item, Scratch& s) {
                     const GroupTask& task = tasks[at(item)];
                     fitter.fit(task, members.data() + task.first, s);
                 });
}

template void psf_photometry<float>(const float*, const std::uint8_t*, std::int64_t, std::int64_t,
                                    std::int64_t, const double*, const double*, std::int64_t,
                                    const PsfPhotometryConfig&, const PsfPhotometryOutputs&, int);
template void psf_photometry<double>(const double*, const std::uint8_t*, std::int64_t, std::int64_t,
                                     std::int64_t, const double*, const double*, std::int64_t,
                                     const PsfPhotometryConfig&, const PsfPhotometryOutputs&, int);


// ----------------------------------------------------------------------------------------------
// psf_fit_shape: the shared shape of one frame's PSF stars
// ----------------------------------------------------------------------------------------------

namespace {

constexpr std::int64_t kLocal = 4;  // per-star parameters: flux, x, y, background

struct ShapeStar {
    std::int64_t index = 0;
    std::int64_t cx = 0, cy = 0;
    double x0 = 0.0, y0 = 0.0;
    double u = 0.0, v = 0.0;    // normalised field coordinates of the input position
    std::size_t first = 0;      // its pixels: ShapeScratch::pixel[first, first + count)
    std::size_t count = 0;
    bool used = false;
    std::array<double, kLocal> params{};  // flux, x, y, background
    std::array<double, kLocal> trial{};
    double chi2 = 0.0, chi2_trial = 0.0;
};

struct ShapeScratch {
    std::vector<ShapeStar> stars;
    std::vector<std::int64_t> pixel;
    std::vector<double> data, weight;
    // Per star: D (kLocal x kLocal), C (kLocal x m), g (kLocal); current and trial.
    std::vector<double> blocks, blocks_trial;
    std::vector<double> shared, shared_trial;  // S (m x m) then h (m)
    std::vector<double> factors;  // per star: the damped D's Cholesky factor
    std::vector<double> reduced, work, solved_columns;
    std::vector<int> node_table;
    std::vector<double> chi2_values;
};

template <typename T>
class ShapeFitter {
   public:
    ShapeFitter(const T* frames, const std::uint8_t* pixel_flags, std::int64_t ny, std::int64_t nx,
                const double* x, const double* y, std::int64_t n_stars,
                const PsfShapeFitConfig& config, const PsfShapeFitOutputs& out)
        : frames_(frames), pixel_flags_(pixel_flags), ny_(ny), nx_(nx), x_(x), y_(y),
          n_stars_(n_stars), config_(config), out_(out) {
        const bool moffat = config.profile == PsfProfile::kMoffat;
        for (std::int64_t k = 0; k < 9; ++k)
            if (k % 3 == 0 || config.varying) active_.push_back(k);
        if (moffat && config.fit_beta) active_.push_back(9);
        m_ = static_cast<std::int64_t>(active_.size());
        block_ = kLocal * kLocal + kLocal * m_ + kLocal;
        max_shift_ = std::max(1.0, 0.5 * static_cast<double>(config.box));
    }

    void fit_frame(std::int64_t frame, ShapeScratch& s) const {
        double* coefficients = out_.coefficients + frame * kPsfCoefficients;
        double* errors = out_.coefficient_err + frame * kPsfCoefficients;
        const double* initial = config_.initial + 4 * frame;
        std::array<double, kPsfCoefficients> theta{};
        theta[0] = initial[0];
        theta[3] = initial[1];
        theta[6] = initial[2];
        theta[9] = initial[3];
        for (std::int64_t k = 0; k < kPsfCoefficients; ++k) errors[k] = 0.0;
        out_.chi2_reduced[frame] = kNaN;
        out_.iterations[frame] = 0;
        out_.stars_used[frame] = 0;
        out_.flags[frame] = 0;
        for (std::int64_t st = 0; st < n_stars_; ++st) {
            out_.used[frame * n_stars_ + st] = 0;
            out_.flux[frame * n_stars_ + st] = kNaN;
        }
        gather(frame, theta, s);
        int iterations = 0;
        bool converged = false;
        bool ok = count_used(s) >= config_.min_stars;
        for (int pass = 0; pass < 2 && ok; ++pass) {
            iterations += levenberg_marquardt(s, theta, &converged, &ok);
            if (!ok || pass == 1 || !(config_.reject > 0.0)) break;
            if (!reject_outliers(s)) break;
            ok = count_used(s) >= config_.min_stars;
        }
        // Covariance of the shape coefficients: the inverse of the undamped Schur complement.
        ok = ok && schur_system(s, 0.0) && cholesky(s.reduced.data(), m_);
        const std::int64_t used = count_used(s);
        out_.iterations[frame] = iterations;
        out_.stars_used[frame] = used;
        if (!ok) {
            out_.flags[frame] = flags::kFitFailed;
            for (std::int64_t k = 0; k < kPsfCoefficients; ++k) coefficients[k] = kNaN;
            return;
        }
        std::vector<double>& e = s.work;
        e.assign(at(m_), 0.0);
        for (std::int64_t k = 0; k < m_; ++k) {
            std::fill(e.begin(), e.end(), 0.0);
            e[at(k)] = 1.0;
            cholesky_solve(s.reduced.data(), m_, e.data());
            errors[active_[at(k)]] = std::sqrt(e[at(k)]);
        }
        for (std::int64_t k = 0; k < kPsfCoefficients; ++k) coefficients[k] = theta[at(k)];
        double chi2 = 0.0;
        std::int64_t n_pixels = 0;
        for (const ShapeStar& star : s.stars) {
            if (!star.used) continue;
            chi2 += star.chi2;
            n_pixels += static_cast<std::int64_t>(star.count);
            out_.used[frame * n_stars_ + star.index] = 1;
            out_.flux[frame * n_stars_ + star.index] = star.params[0];
        }
        out_.chi2_reduced[frame] = chi2 / static_cast<double>(n_pixels - kLocal * used - m_);
        if (!converged) out_.flags[frame] = flags::kFitNotConverged;
    }

   private:
    static std::int64_t count_used(const ShapeScratch& s) {
        std::int64_t n = 0;
        for (const ShapeStar& star : s.stars) n += star.used ? 1 : 0;
        return n;
    }

    // The shape at a star for coefficients theta; false if it is not a valid profile.
    bool shape_at(const std::array<double, kPsfCoefficients>& theta, const ShapeStar& star,
                  PsfShape* shape) const {
        shape->a = theta[0] + theta[1] * star.u + theta[2] * star.v;
        shape->b = theta[3] + theta[4] * star.u + theta[5] * star.v;
        shape->c = theta[6] + theta[7] * star.u + theta[8] * star.v;
        shape->beta = theta[9];
        const double det = shape->a * shape->c - shape->b * shape->b;
        if (!(shape->a > 0.0 && shape->c > 0.0 && det > 1e-12 * shape->a * shape->c)) return false;
        // Keep the widths sane: the minor axis wider than 0.1 px (100 = 1 / 0.1^2 bounds the
        // larger eigenvalue) and the major axis narrower than the box.
        const double mean = 0.5 * (shape->a + shape->c);
        const double spread = std::sqrt(0.25 * (shape->a - shape->c) * (shape->a - shape->c) +
                                        shape->b * shape->b);
        const double box = static_cast<double>(config_.box);
        if (mean + spread > 100.0 || mean - spread < 1.0 / (box * box)) return false;
        if (config_.profile == PsfProfile::kMoffat && !(shape->beta > 1.05 && shape->beta < 50.0))
            return false;
        return std::isfinite(det);
    }

    // Collects the usable stars and their pixels, and starts each with the linear least-squares
    // flux and background for the initial shape at its input position.
    void gather(std::int64_t frame, const std::array<double, kPsfCoefficients>& theta,
                ShapeScratch& s) const {
        s.stars.clear();
        s.pixel.clear();
        s.data.clear();
        s.weight.clear();
        const T* image = frames_ + frame * ny_ * nx_;
        const std::uint8_t* pflags = pixel_flags_ ? pixel_flags_ + frame * ny_ * nx_ : nullptr;
        const std::int64_t box = config_.box;
        const double rn2 = config_.read_noise * config_.read_noise;
        const double fx = static_cast<double>(nx_);
        const double fy = static_cast<double>(ny_);
        for (std::int64_t st = 0; st < n_stars_; ++st) {
            const double xs = x_[frame * n_stars_ + st];
            const double ys = y_[frame * n_stars_ + st];
            if (!(xs > -0.5 && xs <= fx - 0.5 && ys > -0.5 && ys <= fy - 0.5)) continue;
            ShapeStar star;
            star.index = st;
            star.x0 = xs;
            star.y0 = ys;
            star.cx = static_cast<std::int64_t>(std::ceil(xs - 0.5));
            star.cy = static_cast<std::int64_t>(std::ceil(ys - 0.5));
            if (star.cx - box < 0 || star.cy - box < 0 || star.cx + box > nx_ - 1 ||
                star.cy + box > ny_ - 1)
                continue;
            star.u = (xs - config_.x_centre) / config_.x_scale;
            star.v = (ys - config_.y_centre) / config_.y_scale;
            star.first = s.pixel.size();
            for (std::int64_t j = star.cy - box; j <= star.cy + box; ++j) {
                for (std::int64_t i = star.cx - box; i <= star.cx + box; ++i) {
                    const std::int64_t p = j * nx_ + i;
                    const double value = static_cast<double>(image[p]);
                    if (!std::isfinite(value) || (pflags && (pflags[p] & kUnusable))) continue;
                    const double electrons = value * config_.gain;
                    s.pixel.push_back(p);
                    s.data.push_back(electrons);
                    s.weight.push_back(1.0 / std::max(rn2 + std::max(electrons, 0.0), 1.0));
                }
            }
            star.count = s.pixel.size() - star.first;
            star.params = {0.0, xs, ys, 0.0};
            PsfShape shape;
            star.used = static_cast<std::int64_t>(star.count) >= 2 * kLocal && shape_at(theta, star, &shape);
            if (star.used) star.used = initial_flux(star, shape, s);
            s.stars.push_back(star);
        }
        s.blocks.assign(s.stars.size() * at(block_), 0.0);
        s.blocks_trial.assign(s.blocks.size(), 0.0);
        s.shared.assign(at(m_ * m_ + m_), 0.0);
        s.shared_trial.assign(s.shared.size(), 0.0);
        s.factors.assign(s.stars.size() * at(kLocal * kLocal), 0.0);
    }

    bool initial_flux(ShapeStar& star, const PsfShape& shape, ShapeScratch& s) const {
        const Profile profile(config_.profile, shape, false);
        double spp = 0.0, sp = 0.0, sw = 0.0, spd = 0.0, sd = 0.0;
        for (std::size_t n = star.first; n < star.first + star.count; ++n) {
            const double dx = static_cast<double>(s.pixel[n] % nx_) - star.x0;
            const double dy = static_cast<double>(s.pixel[n] / nx_) - star.y0;
            const int nodes = profile.node_count(std::floor(std::sqrt(dx * dx + dy * dy)));
            const double value = config_.profile == PsfProfile::kMoffat
                                     ? integrate<PsfProfile::kMoffat, false>(profile, dx, dy, nodes).value
                                     : integrate<PsfProfile::kGaussian, false>(profile, dx, dy, nodes).value;
            const double w = s.weight[n];
            spp += w * value * value;
            sp += w * value;
            sw += w;
            spd += w * value * s.data[n];
            sd += w * s.data[n];
        }
        const double det = spp * sw - sp * sp;
        if (!(det > 0.0)) return false;
        star.params[0] = (spd * sw - sp * sd) / det;
        star.params[3] = (spp * sd - sp * spd) / det;
        return star.params[0] > 0.0 && std::isfinite(star.params[0]);
    }

    // Model, chi^2 and normal-equation blocks of every used star for coefficients theta and
    // per-star parameters `trial` (use_trial) or `params`; false if theta is not valid at a star.
    bool evaluate(const std::array<double, kPsfCoefficients>& theta, bool use_trial,
                  ShapeScratch& s, std::vector<double>& blocks, std::vector<double>& shared) const {
        std::fill(blocks.begin(), blocks.end(), 0.0);
        std::fill(shared.begin(), shared.end(), 0.0);
        double* S = shared.data();
        double* h = S + m_ * m_;
        const auto table_size = static_cast<std::int64_t>(std::ceil(1.4143 * static_cast<double>(config_.box + 1))) + 2 +
                                static_cast<std::int64_t>(std::ceil(max_shift_ * 1.4143));
        std::vector<double> jl(at(kLocal)), js(at(m_));
        double terms[7];
        for (std::size_t k = 0; k < s.stars.size(); ++k) {
            ShapeStar& star = s.stars[k];
            if (!star.used) continue;
            PsfShape shape;
            if (!shape_at(theta, star, &shape)) return false;
            const Profile profile(config_.profile, shape, false);
            s.node_table.resize(at(table_size));
            for (std::int64_t d = 0; d < table_size; ++d)
                s.node_table[at(d)] = profile.node_count(static_cast<double>(d));
            const std::array<double, kLocal>& p = use_trial ? star.trial : star.params;
            double* D = blocks.data() + k * at(block_);
            double* C = D + kLocal * kLocal;
            double* g = C + kLocal * m_;
            double chi2 = 0.0;
            for (std::size_t n = star.first; n < star.first + star.count; ++n) {
                const double dx = static_cast<double>(s.pixel[n] % nx_) - p[1];
                const double dy = static_cast<double>(s.pixel[n] / nx_) - p[2];
                const auto d = static_cast<std::int64_t>(std::sqrt(dx * dx + dy * dy));
                const int nodes = s.node_table[at(std::min(d, table_size - 1))];
                if (config_.profile == PsfProfile::kMoffat)
                    integrate_all<PsfProfile::kMoffat>(profile, dx, dy, nodes, terms);
                else
                    integrate_all<PsfProfile::kGaussian>(profile, dx, dy, nodes, terms);
                const double flux = p[0];
                const double model = flux * terms[0] + p[3];
                const double w = s.weight[n];
                const double r = s.data[n] - model;
                chi2 += w * r * r;
                jl[0] = terms[0];
                jl[1] = flux * terms[1];
                jl[2] = flux * terms[2];
                jl[3] = 1.0;
                for (std::int64_t a = 0; a < m_; ++a) {
                    const std::int64_t coefficient = active_[at(a)];
                    if (coefficient == 9) {
                        js[at(a)] = flux * terms[6];
                    } else {
                        const double factor = coefficient % 3 == 0 ? 1.0 : coefficient % 3 == 1 ? star.u : star.v;
                        js[at(a)] = flux * terms[3 + coefficient / 3] * factor;
                    }
                }
                for (std::int64_t a = 0; a < kLocal; ++a) {
                    const double wa = w * jl[at(a)];
                    g[a] += wa * r;
                    for (std::int64_t b = a; b < kLocal; ++b) D[a * kLocal + b] += wa * jl[at(b)];
                    for (std::int64_t b = 0; b < m_; ++b) C[a * m_ + b] += wa * js[at(b)];
                }
                for (std::int64_t a = 0; a < m_; ++a) {
                    const double wa = w * js[at(a)];
                    h[a] += wa * r;
                    for (std::int64_t b = a; b < m_; ++b) S[a * m_ + b] += wa * js[at(b)];
                }
            }
            if (!std::isfinite(chi2)) return false;
            (use_trial ? star.chi2_trial : star.chi2) = chi2;
        }
        return true;
    }

    // Builds the damped Schur complement of the shared block in s.reduced (m x m, full) and its
    // right-hand side in s.work[0, m); the stars' damped D factors go to s.factors. Uses the
    // current blocks (s.blocks, s.shared). False if a star's block is singular.
    bool schur_system(ShapeScratch& s, double lambda) const {
        s.reduced.assign(at(m_ * m_), 0.0);
        s.work.assign(at(m_), 0.0);
        s.solved_columns.assign(at(kLocal * (m_ + 1)), 0.0);
        damped_copy(s.shared.data(), m_, lambda, s.reduced.data());
        std::copy(s.shared.begin() + m_ * m_, s.shared.end(), s.work.begin());
        for (std::size_t k = 0; k < s.stars.size(); ++k) {
            if (!s.stars[k].used) continue;
            const double* D = s.blocks.data() + k * at(block_);
            const double* C = D + kLocal * kLocal;
            const double* g = C + kLocal * m_;
            double* L = s.factors.data() + k * at(kLocal * kLocal);
            damped_copy(D, kLocal, lambda, L);
            if (!cholesky(L, kLocal)) return false;
            // Columns of D^-1 C, then D^-1 g, each kLocal long.
            double* X = s.solved_columns.data();
            for (std::int64_t b = 0; b <= m_; ++b) {
                double* column = X + b * kLocal;
                for (std::int64_t a = 0; a < kLocal; ++a) column[a] = b < m_ ? C[a * m_ + b] : g[a];
                cholesky_solve(L, kLocal, column);
            }
            for (std::int64_t a = 0; a < m_; ++a) {
                for (std::int64_t b = 0; b < m_; ++b) {
                    double sum = 0.0;
                    for (std::int64_t l = 0; l < kLocal; ++l) sum += C[l * m_ + a] * X[b * kLocal + l];
                    s.reduced[at(a * m_ + b)] -= sum;
                }
                double sum = 0.0;
                for (std::int64_t l = 0; l < kLocal; ++l) sum += C[l * m_ + a] * X[m_ * kLocal + l];
                s.work[at(a)] -= sum;
            }
        }
        return true;
    }

    int levenberg_marquardt(ShapeScratch& s, std::array<double, kPsfCoefficients>& theta,
                            bool* converged, bool* ok) const {
        *converged = false;
        if (!evaluate(theta, false, s, s.blocks, s.shared)) {
            *ok = false;
            return 0;
        }
        auto total = [&](bool trial) {
            double sum = 0.0;
            for (const ShapeStar& star : s.stars)
                if (star.used) sum += trial ? star.chi2_trial : star.chi2;
            return sum;
        };
        double chi2 = total(false);
        double lambda = kInitialDamping;
        int steps = 0;
        std::vector<double> shape_step(at(m_));
        while (steps < config_.max_iterations) {
            ++steps;
            if (!schur_system(s, lambda) || !cholesky(s.reduced.data(), m_)) {
                lambda = std::max(lambda * 10.0, 1e-9);
                if (lambda > 1e16) break;
                continue;
            }
            std::copy(s.work.begin(), s.work.end(), shape_step.begin());
            cholesky_solve(s.reduced.data(), m_, shape_step.data());
            std::array<double, kPsfCoefficients> trial_theta = theta;
            double decrement = 0.0;
            bool finite = true;
            const double* h = s.shared.data() + m_ * m_;
            for (std::int64_t a = 0; a < m_; ++a) {
                trial_theta[at(active_[at(a)])] += shape_step[at(a)];
                decrement += shape_step[at(a)] * h[a];
            }
            for (std::size_t k = 0; k < s.stars.size(); ++k) {
                ShapeStar& star = s.stars[k];
                if (!star.used) continue;
                const double* D = s.blocks.data() + k * at(block_);
                const double* C = D + kLocal * kLocal;
                const double* g = C + kLocal * m_;
                const double* L = s.factors.data() + k * at(kLocal * kLocal);
                std::array<double, kLocal> local{};
                for (std::int64_t a = 0; a < kLocal; ++a) {
                    double sum = g[a];
                    for (std::int64_t b = 0; b < m_; ++b) sum -= C[a * m_ + b] * shape_step[at(b)];
                    local[at(a)] = sum;
                }
                cholesky_solve(L, kLocal, local.data());
                for (std::int64_t a = 0; a < kLocal; ++a) {
                    star.trial[at(a)] = star.params[at(a)] + local[at(a)];
                    decrement += local[at(a)] * g[a];
                }
                star.trial[1] = std::clamp(star.trial[1], star.x0 - max_shift_, star.x0 + max_shift_);
                star.trial[2] = std::clamp(star.trial[2], star.y0 - max_shift_, star.y0 + max_shift_);
                for (double v : star.trial) finite = finite && std::isfinite(v);
            }
            if (finite && lambda <= kLightDamping && decrement <= config_.tolerance) {
                *converged = true;  // as in the photometry fit: the current point is the minimum
                break;
            }
            const bool valid = finite && evaluate(trial_theta, true, s, s.blocks_trial, s.shared_trial);
            const double trial_chi2 = valid ? total(true) : std::numeric_limits<double>::infinity();
            if (valid && std::isfinite(trial_chi2) && trial_chi2 <= chi2) {
                theta = trial_theta;
                for (ShapeStar& star : s.stars) {
                    if (!star.used) continue;
                    star.params = star.trial;
                    star.chi2 = star.chi2_trial;
                }
                s.blocks.swap(s.blocks_trial);
                s.shared.swap(s.shared_trial);
                const double drop = chi2 - trial_chi2;
                chi2 = trial_chi2;
                lambda = std::max(lambda * 0.1, 1e-12);
                if (decrement <= config_.tolerance || drop <= 1e-15 * trial_chi2) {
                    *converged = true;
                    break;
                }
            } else {
                lambda *= 10.0;
                if (lambda > 1e16) {
                    *converged = true;
                    break;
                }
            }
        }
        *ok = std::isfinite(chi2);
        return steps;
    }

    // Drops the stars whose reduced chi^2 exceeds reject x the median, keeping at least
    // min_stars; true if any was dropped (the blocks are then re-evaluated by the next pass).
    bool reject_outliers(ShapeScratch& s) const {
        s.chi2_values.clear();
        for (const ShapeStar& star : s.stars)
            if (star.used) s.chi2_values.push_back(star.chi2 / (static_cast<double>(star.count) - kLocal));
        const auto n = static_cast<std::int64_t>(s.chi2_values.size());
        if (n <= config_.min_stars) return false;
        std::vector<double> sorted = s.chi2_values;
        std::nth_element(sorted.begin(), sorted.begin() + n / 2, sorted.end());
        // Reduced chi^2 is in units of the noise model: values near 1 are never outliers.
        const double limit = config_.reject * std::max(sorted[at(n / 2)], 1.0);
        std::int64_t would_drop = 0;
        for (double value : s.chi2_values) would_drop += value > limit ? 1 : 0;
        if (would_drop == 0 || n - would_drop < config_.min_stars) return false;
        for (ShapeStar& star : s.stars) {
            if (star.used && star.chi2 / (static_cast<double>(star.count) - kLocal) > limit) star.used = false;
        }
        return true;
    }

    const T* frames_;
    const std::uint8_t* pixel_flags_;
    std::int64_t ny_, nx_;
    const double* x_;
    const double* y_;
    std::int64_t n_stars_;
    const PsfShapeFitConfig& config_;
    const PsfShapeFitOutputs& out_;
    std::vector<std::int64_t> active_;  // coefficient index of each fitted shape parameter
    std::int64_t m_ = 3;
    std::int64_t block_ = 0;
    double max_shift_ = 1.0;
};

}  // namespace

template <typename T>
void psf_fit_shape(const T* frames, const std::uint8_t* pixel_flags, std::int64_t n_frames,
                   std::int64_t ny, std::int64_t nx, const double* x, const double* y,
                   std::int64_t n_stars, const PsfShapeFitConfig& config,
                   const PsfShapeFitOutputs& out, int threads) {
    if (n_frames <= 0) return;
    const ShapeFitter<T> fitter(frames, pixel_flags, ny, nx, x, y, n_stars, config, out);
    std::vector<ShapeScratch> scratch;
    parallel_for(n_frames, threads, scratch,
                 [&](std::int64_t frame, ShapeScratch& s) { fitter.fit_frame(frame, s); });
}

template void psf_fit_shape<float>(const float*, const std::uint8_t*, std::int64_t, std::int64_t,
                                   std::int64_t, const double*, const double*, std::int64_t,
                                   const PsfShapeFitConfig&, const PsfShapeFitOutputs&, int);
template void psf_fit_shape<double>(const double*, const std::uint8_t*, std::int64_t, std::int64_t,
                                    std::int64_t, const double*, const double*, std::int64_t,
                                    const PsfShapeFitConfig&, const PsfShapeFitOutputs&, int);

}  // namespace engine
