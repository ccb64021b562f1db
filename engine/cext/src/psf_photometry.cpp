// psf_photometry (contract in include/engine/psf.hpp): the frame driver. Per frame, the stars
// that can be fitted, grouped by overlapping boxes (union-find, large groups cut into chunks);
// each group's stars and usable pixels gathered from the frame, then fitted by GroupSolver
// (psf_group_fit.cpp); groups shared over threads with parallel.hpp.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <vector>

#include "engine/flags.hpp"
#include "engine/parallel.hpp"
#include "engine/psf.hpp"
#include "psf_group.hpp"

namespace engine {

using namespace psf_detail;

namespace {

// What one psf_photometry call reads from its frames: which stars can be fitted, and each
// group's stars and usable pixels.
template <typename T>
class GroupFitter {
   public:
    GroupFitter(const T* frames, const std::uint8_t* pixel_flags, std::int64_t ny, std::int64_t nx,
                const double* x, const double* y, std::int64_t n_stars,
                const PsfPhotometryConfig& config, const PsfPhotometryOutputs& out)
        : frames_(frames), pixel_flags_(pixel_flags), ny_(ny), nx_(nx), x_(x), y_(y),
          n_stars_(n_stars), config_(config), out_(out), solver_(n_stars, config, out),
          box_(solver_.box()), reach_(solver_.reach()), per_star_(solver_.per_star()) {}

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
        setup_stars(task.frame, members, static_cast<std::int64_t>(task.count), s);
        gather_pixels(task.frame, s);
        solver_.solve(task, members, s);
    }

   private:
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
        s.plane_x0 = gx;
        s.plane_y0 = gy;
        for (std::size_t n = 0; n < kept; ++n) {
            s.u[n] = (static_cast<double>(s.column[n]) - gx) / static_cast<double>(box_);
            s.v[n] = (static_cast<double>(s.row[n]) - gy) / static_cast<double>(box_);
        }
    }

    const T* frames_;
    const std::uint8_t* pixel_flags_;
    std::int64_t ny_, nx_;
    const double* x_;
    const double* y_;
    std::int64_t n_stars_;
    const PsfPhotometryConfig& config_;
    const PsfPhotometryOutputs& out_;
    GroupSolver solver_;
    std::int64_t box_, reach_, per_star_;
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

// The stars in [begin, end) of `component` (indices into fittable) as one task of frame f.
void add_task(std::int64_t f, const std::vector<std::int64_t>& component, std::int64_t begin,
              std::int64_t end, bool split, const std::vector<std::int64_t>& fittable,
              std::vector<std::int64_t>& members, std::vector<GroupTask>& tasks) {
    GroupTask task{f, members.size(), at(end - begin), split};
    for (std::int64_t k = begin; k < end; ++k) members.push_back(fittable[at(component[at(k)])]);
    tasks.push_back(task);
}

// One frame's fittable stars (box centres cx, cy) grouped by overlapping boxes: components in
// order of their lowest member, members in star order; a component larger than max_group is cut
// into chunks of neighbours in (row, column) order.
void plan_frame(std::int64_t f, const std::vector<std::int64_t>& fittable,
                const std::vector<std::int64_t>& cx, const std::vector<std::int64_t>& cy,
                const PsfPhotometryConfig& config, std::vector<std::int64_t>& members,
                std::vector<GroupTask>& tasks) {
    const auto n = static_cast<std::int64_t>(fittable.size());
    const std::int64_t box = config.box;
    std::vector<std::int64_t> order(at(n));
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
        if (size <= config.max_group) {
            add_task(f, component, 0, size, false, fittable, members, tasks);
            continue;
        }
        // Too many for one dense fit: chunks of neighbours in (row, column) order.
        std::stable_sort(component.begin(), component.end(), [&](std::int64_t a, std::int64_t b) {
            return cy[at(a)] != cy[at(b)] ? cy[at(a)] < cy[at(b)] : cx[at(a)] < cx[at(b)];
        });
        const std::int64_t chunks = (size + config.max_group - 1) / config.max_group;
        for (std::int64_t c = 0; c < chunks; ++c)
            add_task(f, component, c * size / chunks, (c + 1) * size / chunks, true, fittable,
                     members, tasks);
    }
}

}  // namespace

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
    std::vector<std::int64_t> fittable, cx, cy;
    for (std::int64_t f = 0; f < n_frames; ++f) {
        fittable.clear();
        for (std::int64_t s = 0; s < n_stars; ++s)
            if (fitter.prepare_star(f, s)) fittable.push_back(s);
        cx.resize(fittable.size());
        cy.resize(fittable.size());
        for (std::size_t k = 0; k < fittable.size(); ++k) {
            const std::size_t index = at(f * n_stars + fittable[k]);
            cx[k] = GroupFitter<T>::centre_pixel(x[index]);
            cy[k] = GroupFitter<T>::centre_pixel(y[index]);
        }
        plan_frame(f, fittable, cx, cy, config, members, tasks);
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

}  // namespace engine
