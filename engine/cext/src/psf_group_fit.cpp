// The least-squares fit of one group of overlapping stars on one frame (see psf_group.hpp), the
// heart of psf_photometry (contract in include/engine/psf.hpp): the Jacobian's sparsity, the
// model and its derivatives, the linear solve for fluxes and background, Levenberg-Marquardt on
// positions, and the outputs with their covariance errors.
#include <algorithm>
#include <cmath>
#include <vector>

#include "engine/flags.hpp"
#include "psf_group.hpp"
#include "psf_linalg.hpp"

namespace engine::psf_detail {

GroupSolver::GroupSolver(std::int64_t n_stars, const PsfPhotometryConfig& config,
                         const PsfPhotometryOutputs& out)
    : n_stars_(n_stars), config_(config), out_(out) {
    box_ = config.box;
    reach_ = 3 * box_;
    n_background_ = config.background == PsfBackground::kNone       ? 0
                    : config.background == PsfBackground::kConstant ? 1
                                                                    : 3;
    per_star_ = config.fit_positions ? 3 : 1;
}

void GroupSolver::solve(const GroupTask& task, const std::int64_t* members, Scratch& s) const {
    const std::int64_t frame = task.frame;
    const auto n_members = static_cast<std::int64_t>(task.count);
    build_structure(s);
    const std::int64_t n_params = n_background_ + per_star_ * n_members;
    const auto n_pixels = static_cast<std::int64_t>(s.pixels.size());
    mark_group(task, members, n_pixels);
    if (n_pixels <= n_params) {
        fail(frame, members, n_members);
        return;
    }
    start(s, n_params);
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
    s.held.assign(at(n_params), 0);
    if (solved && config_.fit_positions) {
        hold_faint_stars(s, n_params);
        for (int pass = 0; pass < passes && solved; ++pass) {
            if (pass > 0) {
                render(s, false, s.params.data());
                model_weights(s);
            }
            iterations += levenberg_marquardt(s, n_params, &chi2, &converged, &solved);
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
    write_results(frame, s, n_params, chi2, iterations, converged);
}

// The group's id (its lowest star index), pixel count and BLENDED (when cut) on each member.
void GroupSolver::mark_group(const GroupTask& task, const std::int64_t* members,
                             std::int64_t n_pixels) const {
    const auto n_members = static_cast<std::int64_t>(task.count);
    std::int64_t group_id = members[0];
    for (std::int64_t m = 1; m < n_members; ++m) group_id = std::min(group_id, members[m]);
    for (std::int64_t m = 0; m < n_members; ++m) {
        const std::size_t k = at(task.frame * n_stars_ + members[m]);
        out_.group[k] = group_id;
        out_.group_pixels[k] = n_pixels;
        if (task.split) out_.flags[k] |= flags::kBlended;
    }
}

// The fit's buffers sized for n_params, positions at their inputs, weights from the data.
void GroupSolver::start(Scratch& s, std::int64_t n_params) const {
    const std::size_t P = at(n_params);
    s.params.assign(P, 0.0);
    s.trial.assign(P, 0.0);
    s.step.assign(P, 0.0);
    s.normal.assign(P * P, 0.0);
    s.normal_trial.assign(P * P, 0.0);
    s.gradient.assign(P, 0.0);
    s.gradient_trial.assign(P, 0.0);
    s.work.assign(P * P, 0.0);
    if (config_.fit_positions) {
        for (std::size_t m = 0; m < s.stars.size(); ++m) {
            const auto index = position_index(static_cast<std::int64_t>(m));
            s.params[at(index)] = s.stars[m].x0;
            s.params[at(index + 1)] = s.stars[m].y0;
        }
    }
    data_weights(s);
}

// Positions are fitted only for stars whose flux at the input positions is at least
// position_snr times its error: a faint star's position is not constrained, and pairs of faint
// stars can trade flux along flat valleys of chi^2 for ever. s.work holds the factorised normal
// matrix of the linear stage.
void GroupSolver::hold_faint_stars(Scratch& s, std::int64_t n_params) const {
    for (std::size_t star = 0; star < s.stars.size(); ++star) {
        const auto m = static_cast<std::int64_t>(star);
        std::fill(s.step.begin(), s.step.end(), 0.0);
        s.step[at(flux_index(m))] = 1.0;
        cholesky_solve(s.work.data(), n_params, s.step.data());
        const double sigma = std::sqrt(s.step[at(flux_index(m))]);
        if (!(s.params[at(flux_index(m))] >= config_.position_snr * sigma)) {
            s.held[at(position_index(m))] = 1;
            s.held[at(position_index(m) + 1)] = 1;
        }
    }
}

// Every member's outputs at the solution; s.work holds the factorised covariance system.
void GroupSolver::write_results(std::int64_t frame, Scratch& s, std::int64_t n_params,
                                double chi2, int iterations, bool converged) const {
    std::int64_t n_fitted = n_params;  // held positions are not parameters of the fit
    for (std::uint8_t h : s.held) n_fitted -= h;
    const double chi2_reduced = chi2 / static_cast<double>(static_cast<std::int64_t>(s.pixels.size()) - n_fitted);
    std::vector<double>& e = s.step;  // reused as the unit vector / inverse column
    auto variance = [&](std::int64_t index) {
        std::fill(e.begin(), e.end(), 0.0);
        e[at(index)] = 1.0;
        cholesky_solve(s.work.data(), n_params, e.data());
        return e[at(index)];
    };
    for (std::size_t star_slot = 0; star_slot < s.stars.size(); ++star_slot) {
        const auto m = static_cast<std::int64_t>(star_slot);
        const GroupStar& star = s.stars[star_slot];
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

void GroupSolver::fail(std::int64_t frame, const std::int64_t* members, std::int64_t n) const {
    for (std::int64_t m = 0; m < n; ++m) {
        const std::size_t k = at(frame * n_stars_ + members[m]);
        out_.flags[k] |= flags::kFitFailed;
        out_.flux[k] = kNaN;
        out_.flux_err[k] = kNaN;
    }
}


double GroupSolver::background_at(const Scratch& s, double xs, double ys) const {
    if (n_background_ == 0) return 0.0;
    const double b0 = s.params[0];
    if (n_background_ == 1) return b0;
    const double scale = static_cast<double>(box_);
    return b0 + s.params[1] * (xs - s.plane_x0) / scale + s.params[2] * (ys - s.plane_y0) / scale;
}


double GroupSolver::variance_weight(double read_noise2, double signal) {
    return 1.0 / std::max(read_noise2 + std::max(signal, 0.0), 1.0);
}

void GroupSolver::data_weights(Scratch& s) const {
    const double rn2 = config_.read_noise * config_.read_noise;
    for (std::size_t n = 0; n < s.data.size(); ++n) s.weight[n] = variance_weight(rn2, s.data[n]);
}

void GroupSolver::model_weights(Scratch& s) const {
    const double rn2 = config_.read_noise * config_.read_noise;
    for (std::size_t n = 0; n < s.model.size(); ++n) s.weight[n] = variance_weight(rn2, s.model[n]);
}

// Which star reaches a pixel: its Chebyshev distance from the star's box centre is at most
// 3 box. Fixed for the whole fit (box centres do not move), so is the Jacobian's sparsity.
bool GroupSolver::reaches(const GroupStar& star, std::int64_t i, std::int64_t j) const {
    return i >= star.cx - reach_ && i <= star.cx + reach_ && j >= star.cy - reach_ && j <= star.cy + reach_;
}

// The sparsity of the Jacobian (CSR: row_start, entry_index; entries of a pixel in increasing
// parameter order: background, then each reaching star's flux, x, y) and which entries are
// linear parameters (background and fluxes).
void GroupSolver::build_structure(Scratch& s) const {
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
void GroupSolver::render(Scratch& s, bool gradient, const double* params) const {
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
double GroupSolver::accumulate(const Scratch& s, std::int64_t n_params, double* normal, double* gradient) const {
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
double GroupSolver::accumulate_dense(const Scratch& s, double* normal, double* gradient) const {
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
bool GroupSolver::linear_solve(Scratch& s, std::int64_t n_params, double* chi2) const {
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
int GroupSolver::levenberg_marquardt(Scratch& s, std::int64_t n_params, double* chi2, bool* converged,
                        bool* solved) const {
    render(s, true, s.params.data());
    *chi2 = accumulate(s, n_params, s.normal.data(), s.gradient.data());
    double lambda = kInitialDamping;
    int steps = 0;
    *converged = false;
    while (steps < config_.max_iterations) {
        damped_system(s, n_params, lambda);
        if (!cholesky(s.work.data(), n_params)) {
            lambda = std::max(lambda * 10.0, 1e-9);
            ++steps;
            if (lambda > 1e16) break;
            continue;
        }
        const double decrement = bounded_trial(s, n_params);
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
            if (config_.position_snr > 0.0) hold_negative_stars(s);
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

// The damped normal equations of one Levenberg-Marquardt step in s.work, the gradient in s.step.
// Positions held at their inputs (faint stars) leave the system; so, by an active set, does a
// position at its bound that the step would push further out.
void GroupSolver::damped_system(Scratch& s, std::int64_t n_params, double lambda) const {
    damped_copy(s.normal.data(), n_params, lambda, s.work.data());
    std::copy(s.gradient.begin(), s.gradient.end(), s.step.begin());
    const auto n_stars = static_cast<std::int64_t>(s.stars.size());
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
}

// s.trial from the factorised system in s.work: the step, positions clamped within max_shift of
// their inputs. Returns the Gauss-Newton decrement of the step actually taken (after the bounds).
double GroupSolver::bounded_trial(Scratch& s, std::int64_t n_params) const {
    cholesky_solve(s.work.data(), n_params, s.step.data());
    for (std::int64_t a = 0; a < n_params; ++a) s.trial[at(a)] = s.params[at(a)] + s.step[at(a)];
    for (std::size_t m = 0; m < s.stars.size(); ++m) {
        const GroupStar& star = s.stars[m];
        double& xs = s.trial[at(position_index(static_cast<std::int64_t>(m)))];
        double& ys = s.trial[at(position_index(static_cast<std::int64_t>(m)) + 1)];
        xs = std::clamp(xs, star.x0 - config_.max_shift, star.x0 + config_.max_shift);
        ys = std::clamp(ys, star.y0 - config_.max_shift, star.y0 + config_.max_shift);
    }
    double decrement = 0.0;
    for (std::int64_t a = 0; a < n_params; ++a)
        decrement += (s.trial[at(a)] - s.params[at(a)]) * s.gradient[at(a)];
    return decrement;
}

// A star whose flux has gone negative has no position to fit: hold it where it is (otherwise it
// and a neighbour trade flux along a flat valley of chi^2).
void GroupSolver::hold_negative_stars(Scratch& s) const {
    for (std::size_t m = 0; m < s.stars.size(); ++m) {
        const auto star = static_cast<std::int64_t>(m);
        if (s.params[at(flux_index(star))] < 0.0) {
            s.held[at(position_index(star))] = 1;
            s.held[at(position_index(star) + 1)] = 1;
        }
    }
}


}  // namespace engine::psf_detail
