#include "cpu_features.h"

#include <cstdint>
#include <string_view>

#include "bundle_reader.h"

#if defined(__x86_64__)
#include <cpuid.h>
#elif defined(__aarch64__) && defined(__linux__)
#include <sys/auxv.h>
#endif

namespace mlrt {
namespace {

#if defined(__x86_64__)
constexpr const char* kArch = "x86_64";
constexpr const char* kKnown[] = {"sse3", "ssse3", "sse4.1", "sse4.2", "popcnt", "avx", "avx2", "bmi",
                                  "bmi2", "f16c", "fma", "lzcnt", "movbe", "avx512f"};

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

bool Has(std::string_view f) {
  static const CpuInfo c = ReadCpu();
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

#elif defined(__aarch64__)
constexpr const char* kArch = "aarch64";
// Linux's HWCAP / HWCAP2 bits (arch/arm64/include/uapi/asm/hwcap.h), named as /proc/cpuinfo does.
struct HwcapBit {
  const char* name;
  int word;  // 1: AT_HWCAP, 2: AT_HWCAP2
  int bit;
};
constexpr HwcapBit kBits[] = {
    {"fp", 1, 0},       {"asimd", 1, 1},     {"aes", 1, 3},      {"pmull", 1, 4},   {"sha1", 1, 5},
    {"sha2", 1, 6},     {"crc32", 1, 7},     {"atomics", 1, 8},  {"fphp", 1, 9},    {"asimdhp", 1, 10},
    {"asimdrdm", 1, 12}, {"jscvt", 1, 13},   {"fcma", 1, 14},    {"lrcpc", 1, 15},  {"dcpop", 1, 16},
    {"sha3", 1, 17},    {"asimddp", 1, 20},  {"sha512", 1, 21},  {"sve", 1, 22},    {"asimdfhm", 1, 23},
    {"sve2", 2, 1},     {"i8mm", 2, 13},     {"bf16", 2, 14}};

bool Has(std::string_view f) {
#if defined(__linux__)
  static const unsigned long hwcap = getauxval(AT_HWCAP), hwcap2 = getauxval(AT_HWCAP2);
#else
  static const unsigned long hwcap = 0, hwcap2 = 0;  // no HWCAP: only what every aarch64 CPU has
  if (f == "fp" || f == "asimd") return true;
#endif
  for (const auto& b : kBits) {
    if (f == b.name) return ((b.word == 1 ? hwcap : hwcap2) >> b.bit) & 1u;
  }
  return false;  // unknown names are never assumed present
}
#else
#error "mlrt's CPU executor runs x86_64 or aarch64 code"
#endif

template <typename F>
void ForEachKnown(F f) {
#if defined(__x86_64__)
  for (const char* name : kKnown) f(name);
#else
  for (const auto& b : kBits) f(b.name);
#endif
}

std::string Join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

const char* HostArch() { return kArch; }

bool HostHasFeature(const std::string& feature) { return Has(feature); }

std::string DescribeHostCpu() {
  std::vector<std::string> present;
  ForEachKnown([&](const char* name) {
    if (Has(name)) present.push_back(name);
  });
  return std::string(kArch) + (present.empty() ? " with none of the optional features" : " with " + Join(present));
}

Result<size_t> SelectCpuVariant(const std::vector<CpuTarget>& variants, uint32_t host_abi) {
  std::vector<std::string> why;  // per variant: why it cannot run here
  bool abi_only = true;
  for (size_t i = 0; i < variants.size(); ++i) {
    const CpuTarget& v = variants[i];
    std::vector<std::string> missing;
    if (v.arch == kArch) {
      for (const auto& f : v.features) {
        if (!Has(f)) missing.push_back(f);
      }
    }
    if (v.arch == kArch && missing.empty() && v.host_abi <= host_abi) return i;
    std::string reason = v.cpu + " (" + v.arch + "): ";
    if (v.arch != kArch) {
      reason += "code for " + v.arch;
      abi_only = false;
    } else if (!missing.empty()) {
      reason += "needs CPU features this machine lacks: " + Join(missing);
      abi_only = false;
    } else {
      reason += "expects host ABI " + std::to_string(v.host_abi) + ", newer than this runtime's " +
                std::to_string(host_abi) + "; upgrade mlrt";
    }
    why.push_back(reason);
  }
  if (abi_only && !why.empty()) return Status(StatusCode::kUnimplemented, "bundle code for " + why.front());
  std::string message;
  if (variants.size() == 1) {
    message = "this bundle was compiled for " + why.front();
  } else {
    message = "none of this bundle's " + std::to_string(variants.size()) + " CPU code variants runs here: ";
    for (size_t i = 0; i < why.size(); ++i) message += (i ? "; " : "") + why[i];
  }
  message += "; this CPU: " + DescribeHostCpu() + ". Rebuild it for this CPU (";
  message += std::string(kArch) == "x86_64" ? "mlpack build --cpu x86-64 for any x86-64"
                                            : "mlpack build --cpu aarch64 for any 64-bit ARM";
  message += "), or add a variant for it: --cpu <level>,<level>";
  return Status(StatusCode::kFailedPrecondition, message);
}

}  // namespace mlrt
