// A compact test runner for the C++ core: TEST(name) registers a test, CHECK / CHECK_CLOSE record
// failures without stopping, run_all() prints "N passed, N failed" and returns non-zero on failure.
#pragma once

#include <cmath>
#include <cstdio>
#include <functional>
#include <vector>

namespace engine_test {

struct Case {
    const char* name;
    std::function<void()> body;
};

inline std::vector<Case>& registry() {
    static std::vector<Case> cases;
    return cases;
}

inline int& failures() {
    static int count = 0;
    return count;
}

struct Registrar {
    Registrar(const char* name, std::function<void()> body) {
        registry().push_back({name, std::move(body)});
    }
};

inline void fail(const char* file, int line, const char* what) {
    std::printf("  FAIL %s:%d: %s\n", file, line, what);
    ++failures();
}

inline int run_all() {
    int passed = 0;
    int failed = 0;
    for (const auto& c : registry()) {
        const int before = failures();
        c.body();
        if (failures() == before) {
            ++passed;
        } else {
            ++failed;
            std::printf("test %s failed\n", c.name);
        }
    }
    std::printf("%d passed, %d failed\n", passed, failed);
    return failed == 0 ? 0 : 1;
}

}  // namespace engine_test

#define TEST(name)                                                         \
    static void test_##name();                                             \
    static engine_test::Registrar registrar_##name(#name, &test_##name);   \
    static void test_##name()

#define CHECK(cond) \
    do {            \
        if (!(cond)) engine_test::fail(__FILE__, __LINE__, #cond); \
    } while (0)

#define CHECK_CLOSE(a, b, tol)                                                          \
    do {                                                                                \
        const double a_ = (a), b_ = (b);                                                \
        if (!(std::fabs(a_ - b_) <= (tol))) {                                           \
            std::printf("  %s = %.17g, %s = %.17g\n", #a, a_, #b, b_);                  \
            engine_test::fail(__FILE__, __LINE__, "CHECK_CLOSE(" #a ", " #b ")");        \
        }                                                                               \
    } while (0)
