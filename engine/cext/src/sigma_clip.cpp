// SigmaClipper and sigma_clipped_median (contract in include/engine/aperture.hpp): the annulus
// background's sigma clip, a counting sort into value buckets so that medians and clipping look
// only at the buckets they need.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "engine/aperture.hpp"

namespace engine {
namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

// Buckets of SigmaClipper's counting sort: about two values per bucket, at most this many; and
// how many values its bucket range is estimated from.
constexpr int kMaxBuckets = 1024;
constexpr std::int64_t kRangeSample = 16;

// Standard deviation (ddof = 0) from sums of (v - shift) and (v - shift)^2: exact enough when the
// shift is near the values' centre, as the median is.
inline double spread_from_sums(double sum, double sum2, std::int64_t n) noexcept {
    const double mean = sum / static_cast<double>(n);
    return std::sqrt(std::max(0.0, sum2 / static_cast<double>(n) - mean * mean));
}

// Sums of (v - shift) and (v - shift)^2 over values[0..n), as four interleaved partial sums so
// that the additions do not wait on each other.
void shifted_sums(const double* values, std::int64_t n, double shift, double* sum,
                  double* sum2) noexcept {
    double s[4] = {0.0, 0.0, 0.0, 0.0};
    double q[4] = {0.0, 0.0, 0.0, 0.0};
    std::int64_t k = 0;
    for (; k + 4 <= n; k += 4) {
        for (int l = 0; l < 4; ++l) {
            const double d = values[k + l] - shift;
            s[l] += d;
            q[l] += d * d;
        }
    }
    for (; k < n; ++k) {
        const double d = values[k] - shift;
        s[0] += d;
        q[0] += d * d;
    }
    *sum = (s[0] + s[1]) + (s[2] + s[3]);
    *sum2 = (q[0] + q[1]) + (q[2] + q[3]);
}

// The bucket of a value: (value / 2 - half_low) * scale, clamped into [0, top]. Monotone in the
// value; halving keeps every difference finite.
inline std::int32_t bucket_index(double value, double half_low, double scale, double top) noexcept {
    const double t = (0.5 * value - half_low) * scale;
    return static_cast<std::int32_t>(std::min(t > 0.0 ? t : 0.0, top));
}

}  // namespace

void SigmaClipper::reserve(std::int64_t capacity) {
    const auto size = static_cast<std::size_t>(std::max<std::int64_t>(capacity, 0));
    values_.resize(size);
    sorted_.resize(size);
    bucket_.resize(size);
    edge_.resize(kMaxBuckets + 2);
}

// The value of rank `index` (0-based) among sorted_[first, last): since buckets are in value
// order, it is the value of that rank within its own bucket.
double SigmaClipper::select(std::int64_t index, std::int64_t first, std::int64_t last) noexcept {
    const std::int64_t* edge = edge_.data();
    const auto b = std::upper_bound(edge, edge + n_buckets_ + 1, index) - edge - 1;
    double* from = sorted_.data() + std::max(first, edge[b]);
    double* to = sorted_.data() + std::min(last, edge[b + 1]);
    double* nth = sorted_.data() + index;
    std::nth_element(from, nth, to);
    return *nth;
}

double SigmaClipper::median_of(std::int64_t first, std::int64_t last) noexcept {
    const std::int64_t n = last - first;
    const double lower = select(first + (n - 1) / 2, first, last);
    if (n % 2 == 1) return lower;
    return 0.5 * (lower + select(first + n / 2, first, last));
}

bool SigmaClipper::sort_into_buckets(std::int64_t n, double* constant) noexcept {
    const double* values = values_.data();
    // The bucket is monotone in the value, so a rank is found inside one bucket, and clipping,
    // which removes only the smallest and largest values, inspects only the buckets at the ends.
    // Values outside the bucket range are clamped into the end buckets, which keeps the bucket
    // monotone: the range only steers speed, so a sample's range, widened, serves.
    double lo = values[0];
    double hi = values[0];
    const std::int64_t step = std::max<std::int64_t>(1, n / kRangeSample);
    for (std::int64_t k = step; k < n; k += step) {
        lo = std::min(lo, values[k]);
        hi = std::max(hi, values[k]);
    }
    if (!(hi > lo)) {  // the sample is all one value: take the full range
        for (std::int64_t k = 0; k < n; ++k) {
            lo = std::min(lo, values[k]);
            hi = std::max(hi, values[k]);
        }
        if (!(hi > lo)) {  // all equal: nothing is ever clipped
            *constant = lo;
            return false;
        }
    } else {
        constexpr double kMax = std::numeric_limits<double>::max();
        const double margin = 0.5 * hi - 0.5 * lo;
        lo = std::max(lo - margin, -kMax);
        hi = std::min(hi + margin, kMax);
    }
    n_buckets_ = static_cast<int>(std::min<std::int64_t>(std::max<std::int64_t>(n / 2, 1), kMaxBuckets));
    // The cap keeps the scale finite for a tiny range.
    const double top = static_cast<double>(n_buckets_ - 1);
    const double half_lo = 0.5 * lo;
    const double scale = std::min(top / (0.5 * hi - half_lo), 1e300);
    bucket_top_ = top;
    bucket_half_low_ = half_lo;
    bucket_scale_ = scale;
    std::int32_t* bucket = bucket_.data();
    for (std::int64_t k = 0; k < n; ++k) bucket[k] = bucket_index(values[k], half_lo, scale, top);
    std::int64_t* edge = edge_.data();
    std::fill(edge, edge + n_buckets_ + 2, std::int64_t{0});
    for (std::int64_t k = 0; k < n; ++k) ++edge[bucket[k] + 2];
    for (int b = 2; b <= n_buckets_; ++b) edge[b] += edge[b - 1];
    // edge[b + 1] is now where bucket b starts; filling moves it to where bucket b ends.
    double* sorted = sorted_.data();
    for (std::int64_t k = 0; k < n; ++k) sorted[edge[bucket[k] + 1]++] = values[k];
    return true;
}

std::int64_t SigmaClipper::run(std::int64_t n, double sigma, int iterations, double* median,
                               double* std_dev) noexcept {
    *median = kNaN;
    *std_dev = kNaN;
    if (n <= 0) return 0;
    double constant = kNaN;
    if (!sort_into_buckets(n, &constant)) {
        *median = constant;
        *std_dev = 0.0;
        return n;
    }
    double* sorted = sorted_.data();
    const std::int64_t* edge = edge_.data();
    auto bucket_of = [half_lo = bucket_half_low_, scale = bucket_scale_,
                      top = bucket_top_](double v) { return bucket_index(v, half_lo, scale, top); };
    std::int64_t first = 0;  // the values kept are sorted[first, last)
    std::int64_t last = n;
    double centre = median_of(first, last);
    // Sums about `shift`, a median, so that the spread does not lose digits to cancellation.
    double shift = centre;
    double sum = 0.0;
    double sum2 = 0.0;
    shifted_sums(sorted, n, shift, &sum, &sum2);
    double spread = spread_from_sums(sum, sum2, n);
    for (int pass = 0; pass < iterations; ++pass) {
        const double low = centre - sigma * spread;
        const double high = centre + sigma * spread;
        if (!(low <= high)) return 0;  // NaN bounds keep nothing
        double removed = 0.0;
        double removed2 = 0.0;
        auto remove = [&](std::int64_t from, std::int64_t to) {
            std::swap(sorted[from], sorted[to]);
            const double d = sorted[to] - shift;
            removed += d;
            removed2 += d * d;
        };
        // Values below `low` lie in its bucket or before: move them out at the front.
        std::int64_t new_first = first;
        const std::int64_t low_end = std::min(last, edge[bucket_of(low) + 1]);
        for (std::int64_t k = first; k < low_end; ++k) {
            if (sorted[k] < low) remove(k, new_first++);
        }
        // Values above `high` lie in its bucket or after: move them out at the back.
        std::int64_t new_last = last;
        const std::int64_t high_begin = std::max(new_first, edge[bucket_of(high)]);
        for (std::int64_t k = last - 1; k >= high_begin; --k) {
            if (sorted[k] > high) remove(k, --new_last);
        }
        if (new_first == first && new_last == last) break;  // converged
        first = new_first;
        last = new_last;
        if (first == last) return 0;
        // Taking the removed values off the sums is exact enough unless they dominated them.
        if (removed2 <= 0.5 * sum2) {
            sum -= removed;
            sum2 -= removed2;
        } else {
            shift = centre;
            shifted_sums(sorted + first, last - first, shift, &sum, &sum2);
        }
        spread = spread_from_sums(sum, sum2, last - first);
        centre = median_of(first, last);
    }
    *median = centre;
    *std_dev = spread;
    return last - first;
}

std::int64_t sigma_clipped_median(const double* values, std::int64_t n, double sigma,
                                  int iterations, double* median, double* std_dev) {
    SigmaClipper clipper(n);
    if (n > 0) std::copy(values, values + n, clipper.values());
    return clipper.run(n, sigma, iterations, median, std_dev);
}

}  // namespace engine
