#include "checksum.h"

#define XXH_INLINE_ALL
#include "xxhash.h"

namespace mlrt {

uint64_t Xxh3_64(const void* data, size_t size) { return XXH3_64bits(data, size); }

}  // namespace mlrt
