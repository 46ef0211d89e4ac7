// This CPU: its architecture and the ISA features it (and the OS) supports, by the names the
// manifest uses (cpuid names on x86-64, Linux HWCAP names on aarch64), and the choice of a
// bundle's CPU code variant.
#pragma once

#include <string>
#include <vector>

#include "mlrt/mlrt.h"

namespace mlrt {

// "x86_64" or "aarch64": the architecture this runtime was built for (the code it can load).
const char* HostArch();

// Whether this CPU has `feature`; an unknown name is never present.
bool HostHasFeature(const std::string& feature);

// "x86_64 with sse3, ssse3, ..., avx2, fma" (the known features this CPU has), for errors.
std::string DescribeHostCpu();

// The first CPU code variant (manifest order) this CPU runs: its arch is HostArch(), it has every
// feature, and its host ABI is at most `host_abi`. FAILED_PRECONDITION naming every variant and
// this CPU when none does (UNIMPLEMENTED when the only obstacle is a newer host ABI).
struct CpuTarget;
Result<size_t> SelectCpuVariant(const std::vector<CpuTarget>& variants, uint32_t host_abi);

}  // namespace mlrt
