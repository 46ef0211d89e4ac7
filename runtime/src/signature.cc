#include "signature.h"

#include <dlfcn.h>

#include <cstring>

namespace mlrt {
namespace {

constexpr char kMessageMagic[] = "MLRT-SIGNATURE-V1";  // + its NUL: 18 bytes, as in signing.py
constexpr int kEvpPkeyEd25519 = 1087;                  // NID_ED25519

struct LibCrypto {
  void* handle = nullptr;
  void* (*pkey_new_raw_public_key)(int, void*, const unsigned char*, size_t) = nullptr;
  void (*pkey_free)(void*) = nullptr;
  void* (*md_ctx_new)() = nullptr;
  void (*md_ctx_free)(void*) = nullptr;
  int (*digest_verify_init)(void*, void**, const void*, void*, void*) = nullptr;
  int (*digest_verify)(void*, const unsigned char*, size_t, const unsigned char*, size_t) = nullptr;

  bool ok() const {
    return pkey_new_raw_public_key && pkey_free && md_ctx_new && md_ctx_free && digest_verify_init && digest_verify;
  }
};

const LibCrypto& Crypto() {
  static const LibCrypto lib = [] {
    LibCrypto l;
    for (const char* name : {"libcrypto.so.3", "libcrypto.so"}) {
      if ((l.handle = dlopen(name, RTLD_NOW | RTLD_LOCAL))) break;
    }
    if (!l.handle) return l;
    auto sym = [&](const char* s) { return dlsym(l.handle, s); };
    l.pkey_new_raw_public_key = reinterpret_cast<decltype(l.pkey_new_raw_public_key)>(sym("EVP_PKEY_new_raw_public_key"));
    l.pkey_free = reinterpret_cast<decltype(l.pkey_free)>(sym("EVP_PKEY_free"));
    l.md_ctx_new = reinterpret_cast<decltype(l.md_ctx_new)>(sym("EVP_MD_CTX_new"));
    l.md_ctx_free = reinterpret_cast<decltype(l.md_ctx_free)>(sym("EVP_MD_CTX_free"));
    l.digest_verify_init = reinterpret_cast<decltype(l.digest_verify_init)>(sym("EVP_DigestVerifyInit"));
    l.digest_verify = reinterpret_cast<decltype(l.digest_verify)>(sym("EVP_DigestVerify"));
    return l;
  }();
  return lib;
}

void AppendU32(std::string* s, uint32_t v) { s->append(reinterpret_cast<const char*>(&v), 4); }
void AppendU64(std::string* s, uint64_t v) { s->append(reinterpret_cast<const char*>(&v), 8); }

}  // namespace

Status VerifySignature(const BundleView& bundle, const std::string& public_key) {
  if (public_key.size() != 32) {
    return Status(StatusCode::kInvalidArgument,
                  "public key must be 32 bytes (Ed25519), got " + std::to_string(public_key.size()));
  }
  const SectionRef* sig = bundle.Find("signature");
  if (!sig) return Status(StatusCode::kPermissionDenied, "bundle is not signed, and a signature is required");
  if (sig->size != 64) return Status(StatusCode::kPermissionDenied, "bundle signature has the wrong size");

  std::string message(kMessageMagic, sizeof kMessageMagic);  // includes the NUL
  AppendU32(&message, bundle.format_version);
  for (const auto& s : bundle.sections) {
    if (s.name == "signature") continue;
    char name[16] = {};
    std::memcpy(name, s.name.data(), s.name.size());
    message.append(name, 16);
    AppendU64(&message, s.offset);
    AppendU64(&message, s.size);
    message.append(reinterpret_cast<const char*>(s.sha256.data()), 32);
  }

  const LibCrypto& c = Crypto();
  if (!c.ok()) {
    return Status(StatusCode::kFailedPrecondition,
                  "verifying signatures needs OpenSSL's libcrypto (libcrypto.so.3), which could not be loaded");
  }
  void* key = c.pkey_new_raw_public_key(kEvpPkeyEd25519, nullptr,
                                        reinterpret_cast<const unsigned char*>(public_key.data()), 32);
  if (!key) return Status(StatusCode::kInvalidArgument, "invalid Ed25519 public key");
  void* ctx = c.md_ctx_new();
  bool valid = ctx && c.digest_verify_init(ctx, nullptr, nullptr, nullptr, key) == 1 &&
               c.digest_verify(ctx, sig->data, 64, reinterpret_cast<const unsigned char*>(message.data()),
                               message.size()) == 1;
  if (ctx) c.md_ctx_free(ctx);
  c.pkey_free(key);
  if (!valid) return Status(StatusCode::kPermissionDenied, "bundle signature does not verify with the given public key");
  return Status::Ok();
}

}  // namespace mlrt
