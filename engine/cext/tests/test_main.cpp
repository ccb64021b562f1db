// Entry point of the C++ test binary: runs every TEST registered by the test_*.cpp files.
#include "test_runner.hpp"

int main() { return engine_test::run_all(); }
