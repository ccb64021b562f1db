// Measurement flag bits set by the compiled core. The registry of record is engine/flags.py
// (MeasurementFlag); these values must equal it, and a test holds them equal.
#pragma once

#include <cstdint>

namespace engine::flags {

// Pixel flags (uint8 masks beside image data): engine.flags.PixelFlag.
constexpr std::uint8_t kPixelBad = 1;
constexpr std::uint8_t kPixelSaturated = 2;
constexpr std::uint8_t kPixelNonfinite = 4;
constexpr std::uint8_t kPixelCosmicRay = 8;

// Measurement flags (uint32): engine.flags.MeasurementFlag.
constexpr std::uint32_t kSaturated = 1u << 0;
constexpr std::uint32_t kBadPixel = 1u << 1;
constexpr std::uint32_t kNearEdge = 1u << 2;
constexpr std::uint32_t kOffFrame = 1u << 3;
constexpr std::uint32_t kBlended = 1u << 4;
constexpr std::uint32_t kBackgroundFailed = 1u << 5;
constexpr std::uint32_t kFitFailed = 1u << 6;         // PSF fit: no solution (singular, too few pixels)
constexpr std::uint32_t kFitNotConverged = 1u << 7;   // PSF fit: stopped at its iteration limit
constexpr std::uint32_t kCentroidFailed = 1u << 9;    // PSF fit: a fitted position reached its bound

}  // namespace engine::flags
