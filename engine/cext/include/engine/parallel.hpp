// The core's one thread pool: a parallel for over items with per-thread scratch space.
//
// parallel_for(n_items, threads, scratch, work, chunk) calls work(item, scratch[t]) once for every
// item in [0, n_items), on up to `threads` std::threads (the calling thread is one of them). Items
// are handed out `chunk` at a time from a shared counter, so a thread that finishes early takes
// more; which thread runs an item must not change its result. scratch is resized to
// worker_count(n_items, threads) before any thread starts: each thread owns one element and
// nothing else is shared, so a caller that sizes the elements first keeps workers from allocating.
//
// Errors: the first exception thrown by any work call stops the others (they finish the item in
// hand) and is rethrown in the calling thread after every thread has joined. A thread that cannot
// be started is not an error: the threads running share its work.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace engine {

// How many threads parallel_for starts for n_items items (at least 1).
inline int worker_count(std::int64_t n_items, int threads) {
    return static_cast<int>(std::max<std::int64_t>(1, std::min<std::int64_t>(threads, n_items)));
}

template <typename S, typename F>
void parallel_for(std::int64_t n_items, int threads, std::vector<S>& scratch, F&& work,
                  std::int64_t chunk = 1) {
    const int n_threads = worker_count(n_items, threads);
    scratch.resize(static_cast<std::size_t>(n_threads));
    chunk = std::max<std::int64_t>(1, chunk);
    std::atomic<std::int64_t> next{0};
    std::atomic<bool> stop{false};
    std::exception_ptr error;
    std::mutex error_mutex;
    auto run = [&](S& s) noexcept {
        try {
            while (!stop.load(std::memory_order_relaxed)) {
                const std::int64_t start = next.fetch_add(chunk);
                if (start >= n_items) return;
                const std::int64_t end = std::min(n_items, start + chunk);
                for (std::int64_t item = start; item < end; ++item) work(item, s);
            }
        } catch (...) {
            const std::lock_guard<std::mutex> lock(error_mutex);
            if (!error) error = std::current_exception();
            stop = true;
        }
    };
    std::vector<std::thread> pool;
    for (int t = 1; t < n_threads; ++t) {
        try {
            pool.emplace_back(run, std::ref(scratch[static_cast<std::size_t>(t)]));
        } catch (const std::exception&) {
            break;  // could not start another thread: the ones running share the work
        }
    }
    run(scratch[0]);
    for (auto& th : pool) th.join();
    if (error) std::rethrow_exception(error);
}

}  // namespace engine
