// psf_pixel_grid: a profile's pixel integrals on a grid (contract in include/engine/psf.hpp).
#include <cmath>
#include <vector>

#include "engine/psf.hpp"
#include "psf_profile.hpp"

namespace engine {

using namespace psf_detail;

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

}  // namespace engine
