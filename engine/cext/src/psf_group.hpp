// Internal to the PSF core: the least-squares fit of one group of overlapping stars on one frame,
// shared by psf_photometry's frame driver (psf_photometry.cpp, which gathers the group's stars
// and pixels) and the fit itself (psf_group_fit.cpp: the sparse Jacobian, linear solve and
// Levenberg-Marquardt, and the outputs).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "engine/psf.hpp"
#include "psf_profile.hpp"

namespace engine::psf_detail {

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
    double plane_x0 = 0.0, plane_y0 = 0.0;  // their origin: the members' mean box centre
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

// The fit of a group whose stars and usable pixels are in a Scratch (set up by the frame
// driver). Parameters in order: background (0, 1 or 3), then per star its flux (and x, y when
// positions are fitted).
class GroupSolver {
   public:
    GroupSolver(std::int64_t n_stars, const PsfPhotometryConfig& config,
                const PsfPhotometryOutputs& out);

    std::int64_t box() const { return box_; }
    // A star's light is modelled within this Chebyshev distance of its box centre.
    std::int64_t reach() const { return reach_; }
    std::int64_t per_star() const { return per_star_; }

    // Fits the group (members: its star indices on `frame`, s: its stars and pixels); writes
    // every output of its members.
    void solve(const GroupTask& task, const std::int64_t* members, Scratch& s) const;

   private:
    std::int64_t flux_index(std::int64_t m) const { return n_background_ + per_star_ * m; }
    std::int64_t position_index(std::int64_t m) const { return flux_index(m) + 1; }

    void mark_group(const GroupTask& task, const std::int64_t* members, std::int64_t n_pixels) const;
    void start(Scratch& s, std::int64_t n_params) const;
    void hold_faint_stars(Scratch& s, std::int64_t n_params) const;
    void write_results(std::int64_t frame, Scratch& s, std::int64_t n_params, double chi2,
                       int iterations, bool converged) const;
    void fail(std::int64_t frame, const std::int64_t* members, std::int64_t n) const;
    double background_at(const Scratch& s, double xs, double ys) const;
    static double variance_weight(double read_noise2, double signal);
    void data_weights(Scratch& s) const;
    void model_weights(Scratch& s) const;
    bool reaches(const GroupStar& star, std::int64_t i, std::int64_t j) const;
    void build_structure(Scratch& s) const;
    void render(Scratch& s, bool gradient, const double* params) const;
    double accumulate(const Scratch& s, std::int64_t n_params, double* normal, double* gradient) const;
    template <int P>
    double accumulate_dense(const Scratch& s, double* normal, double* gradient) const;
    bool linear_solve(Scratch& s, std::int64_t n_params, double* chi2) const;
    int levenberg_marquardt(Scratch& s, std::int64_t n_params, double* chi2, bool* converged,
                            bool* solved) const;
    void damped_system(Scratch& s, std::int64_t n_params, double lambda) const;
    double bounded_trial(Scratch& s, std::int64_t n_params) const;
    void hold_negative_stars(Scratch& s) const;

    std::int64_t n_stars_;
    const PsfPhotometryConfig& config_;
    const PsfPhotometryOutputs& out_;
    std::int64_t box_ = 1;
    std::int64_t reach_ = 3;
    std::int64_t n_background_ = 1;
    std::int64_t per_star_ = 1;
};

}  // namespace engine::psf_detail
