// Which x86 ISA features this CPU (and OS) supports, by the names the manifest uses.
#pragma once

#include <string>
#include <vector>

#include "mlrt/mlrt.h"

namespace mlrt {

// OK when every feature is present; FAILED_PRECONDITION naming the missing ones otherwise
// (and INVALID_ARGUMENT-free: an unknown name counts as missing, never as present).
Status CheckCpuFeatures(const std::vector<std::string>& features, const std::string& cpu_level);

}  // namespace mlrt
