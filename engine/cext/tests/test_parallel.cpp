// Tests of parallel_for (parallel.hpp): every item runs once whatever the thread count, each
// thread keeps to its own scratch, and a worker's exception reaches the calling thread.
#include <atomic>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "engine/parallel.hpp"
#include "test_runner.hpp"

namespace {

// Runs n items on `threads` threads in chunks of `chunk`; checks each ran exactly once.
void check_every_item_once(std::int64_t n, int threads, std::int64_t chunk) {
    std::vector<std::atomic<int>> runs(static_cast<std::size_t>(n));
    std::vector<std::int64_t> per_thread;
    engine::parallel_for(n, threads, per_thread, [&](std::int64_t item, std::int64_t& done) {
        runs[static_cast<std::size_t>(item)].fetch_add(1);
        ++done;
    }, chunk);
    CHECK(static_cast<int>(per_thread.size()) == engine::worker_count(n, threads));
    std::int64_t total = 0;
    for (const std::int64_t done : per_thread) total += done;
    CHECK(total == n);
    for (const auto& r : runs) CHECK(r.load() == 1);
}

}  // namespace

TEST(parallel_for_runs_every_item_once) {
    check_every_item_once(1000, 4, 1);
    check_every_item_once(1000, 3, 16);
    check_every_item_once(5, 8, 1);  // more threads than items: one thread per item
    check_every_item_once(7, 1, 3);
}

TEST(parallel_for_with_no_items_starts_one_thread_and_calls_nothing) {
    std::vector<int> scratch;
    bool called = false;
    engine::parallel_for(0, 4, scratch, [&](std::int64_t, int&) { called = true; });
    CHECK(!called);
    CHECK(scratch.size() == 1);
}

TEST(parallel_for_carries_a_worker_exception_to_the_caller) {
    std::vector<int> scratch;
    bool caught = false;
    try {
        engine::parallel_for(10000, 4, scratch, [](std::int64_t item, int&) {
            if (item == 777) throw std::invalid_argument("item 777");
        });
    } catch (const std::invalid_argument& e) {
        caught = std::string(e.what()) == "item 777";
    }
    CHECK(caught);
}
