// psf_fit_shape (contract in include/engine/psf.hpp): the shape shared by one frame's PSF stars,
// per-star blocks solved through the Schur complement of the shared shape parameters; frames
// shared over threads with parallel.hpp.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "engine/flags.hpp"
#include "engine/parallel.hpp"
#include "engine/psf.hpp"
#include "psf_linalg.hpp"
#include "psf_profile.hpp"

namespace engine {

using namespace psf_detail;

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

    static double total_chi2(const ShapeScratch& s, bool trial) {
        double sum = 0.0;
        for (const ShapeStar& star : s.stars)
            if (star.used) sum += trial ? star.chi2_trial : star.chi2;
        return sum;
    }

    // The damped step from the current point, given the factored Schur system (schur_system,
    // then cholesky of s.reduced): the shape step into shape_step and *trial_theta, then each
    // used star's own step by back-substitution into its trial parameters, its position held
    // within max_shift_ of its input. Returns the decrement the step predicts (step . gradient);
    // *finite is false when a trial parameter is not finite.
    double propose_step(ShapeScratch& s, std::vector<double>& shape_step,
                        std::array<double, kPsfCoefficients>* trial_theta, bool* finite) const {
        std::copy(s.work.begin(), s.work.end(), shape_step.begin());
        cholesky_solve(s.reduced.data(), m_, shape_step.data());
        double decrement = 0.0;
        *finite = true;
        const double* h = s.shared.data() + m_ * m_;
        for (std::int64_t a = 0; a < m_; ++a) {
            (*trial_theta)[at(active_[at(a)])] += shape_step[at(a)];
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
            for (double v : star.trial) *finite = *finite && std::isfinite(v);
        }
        return decrement;
    }

    // Makes the trial point (evaluated into the trial blocks) the current one.
    static void accept_trial(ShapeScratch& s,
                             const std::array<double, kPsfCoefficients>& trial_theta,
                             std::array<double, kPsfCoefficients>& theta) {
        theta = trial_theta;
        for (ShapeStar& star : s.stars) {
            if (!star.used) continue;
            star.params = star.trial;
            star.chi2 = star.chi2_trial;
        }
        s.blocks.swap(s.blocks_trial);
        s.shared.swap(s.shared_trial);
    }

    int levenberg_marquardt(ShapeScratch& s, std::array<double, kPsfCoefficients>& theta,
                            bool* converged, bool* ok) const {
        *converged = false;
        if (!evaluate(theta, false, s, s.blocks, s.shared)) {
            *ok = false;
            return 0;
        }
        double chi2 = total_chi2(s, false);
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
            std::array<double, kPsfCoefficients> trial_theta = theta;
            bool finite = true;
            const double decrement = propose_step(s, shape_step, &trial_theta, &finite);
            if (finite && lambda <= kLightDamping && decrement <= config_.tolerance) {
                *converged = true;  // as in the photometry fit: the current point is the minimum
                break;
            }
            const bool valid = finite && evaluate(trial_theta, true, s, s.blocks_trial, s.shared_trial);
            const double trial_chi2 =
                valid ? total_chi2(s, true) : std::numeric_limits<double>::infinity();
            if (valid && std::isfinite(trial_chi2) && trial_chi2 <= chi2) {
                accept_trial(s, trial_theta, theta);
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
