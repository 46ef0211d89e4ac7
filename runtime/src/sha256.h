// SHA-256 (FIPS 180-4), used to verify every bundle section before it is trusted.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>

namespace mlrt {

using Sha256Digest = std::array<uint8_t, 32>;

Sha256Digest Sha256(const void* data, size_t size);

}  // namespace mlrt
