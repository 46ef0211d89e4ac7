#include "cpu_features.h"

#include <cpuid.h>

#include <cstdint>
#include <string_view>

namespace mlrt {
namespace {

struct CpuInfo {
  uint32_t ecx1 = 0, edx1 = 0, ebx7 = 0, ecx81 = 0;
  uint64_t xcr0 = 0;
};

CpuInfo ReadCpu() {
  CpuInfo info;
  unsigned a, b, c, d;
  if (__get_cpuid(1, &a, &b, &c, &d)) {
    info.ecx1 = c;
    info.edx1 = d;
  }
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d)) info.ebx7 = b;
  if (__get_cpuid(0x80000001, &a, &b, &c, &d)) info.ecx81 = c;
  if (info.ecx1 & (1u << 27)) {  // OSXSAVE: the OS manages extended state, XGETBV is allowed
    uint32_t lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    info.xcr0 = (uint64_t{hi} << 32) | lo;
  }
  return info;
}

bool Has(const CpuInfo& c, std::string_view f) {
  const bool ymm = (c.xcr0 & 0x6) == 0x6;     // OS saves XMM and YMM state
  const bool zmm = (c.xcr0 & 0xE6) == 0xE6;   // ... and opmask / ZMM state
  if (f == "sse3") return c.ecx1 & (1u << 0);
  if (f == "ssse3") return c.ecx1 & (1u << 9);
  if (f == "fma") return ymm && (c.ecx1 & (1u << 12));
  if (f == "sse4.1") return c.ecx1 & (1u << 19);
  if (f == "sse4.2") return c.ecx1 & (1u << 20);
  if (f == "movbe") return c.ecx1 & (1u << 22);
  if (f == "popcnt") return c.ecx1 & (1u << 23);
  if (f == "avx") return ymm && (c.ecx1 & (1u << 28));
  if (f == "f16c") return ymm && (c.ecx1 & (1u << 29));
  if (f == "bmi") return c.ebx7 & (1u << 3);
  if (f == "avx2") return ymm && (c.ebx7 & (1u << 5));
  if (f == "bmi2") return c.ebx7 & (1u << 8);
  if (f == "avx512f") return zmm && (c.ebx7 & (1u << 16));
  if (f == "lzcnt") return c.ecx81 & (1u << 5);
  return false;  // unknown names are never assumed present
}

}  // namespace

Status CheckCpuFeatures(const std::vector<std::string>& features, const std::string& cpu_level) {
  static const CpuInfo info = ReadCpu();
  std::string missing;
  for (const auto& f : features) {
    if (!Has(info, f)) missing += (missing.empty() ? "" : ", ") + f;
  }
  if (missing.empty()) return Status::Ok();
  return Status(StatusCode::kFailedPrecondition,
                "this bundle was compiled for " + cpu_level + " and needs CPU features this machine lacks: " + missing +
                    "; rebuild it with `mlpack build --cpu x86-64` for a portable bundle");
}

}  // namespace mlrt
