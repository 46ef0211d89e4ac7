// XXH3-64: the fast, non-cryptographic checksum of the weights (`weights_xxh3`). It detects
// corruption and truncation, not forgery; a signed bundle is checked with SHA-256.
#pragma once

#include <cstddef>
#include <cstdint>

namespace mlrt {

uint64_t Xxh3_64(const void* data, size_t size);

}  // namespace mlrt
