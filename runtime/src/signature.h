// Ed25519 bundle signatures (made by `mlpack sign`). OpenSSL's libcrypto is loaded with dlopen
// only when a public key is given, so the runtime itself has no crypto dependency.
#pragma once

#include <string>

#include "bundle_reader.h"
#include "mlrt/mlrt.h"

namespace mlrt {

// OK when `bundle` carries a valid signature by `public_key` (32 raw bytes) over its section
// table. Every section's SHA-256 must already have been checked (full verification).
Status VerifySignature(const BundleView& bundle, const std::string& public_key);

}  // namespace mlrt
