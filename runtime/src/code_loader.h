// Loading a verified shared object from memory: memfd_create + dlopen, so no file is left behind.
#pragma once

#include <cstdint>
#include <string>

#include "host_api.h"
#include "mlrt/mlrt.h"

namespace mlrt {

// Owns the dlopen handle (and the memfd backing it). Move-only.
class LoadedCode final {
 public:
  // `bytes` must already be verified (hash-checked): this maps it executable.
  static Result<LoadedCode> Load(const uint8_t* bytes, uint64_t size, const std::string& entry);
  LoadedCode(LoadedCode&& other) noexcept;
  LoadedCode& operator=(LoadedCode&& other) noexcept;
  LoadedCode(const LoadedCode&) = delete;
  LoadedCode& operator=(const LoadedCode&) = delete;
  ~LoadedCode();
  EntryFn entry() const { return entry_; }
  // An optional symbol of the code (dlsym), or null.
  void* Symbol(const char* name) const;

 private:
  LoadedCode() = default;
  void Reset();
  void* handle_ = nullptr;
  // The memfd stays open while loaded: glibc matches dlopen paths by name, and a reused
  // /proc/self/fd/N path must never resolve to another model's code.
  int fd_ = -1;
  EntryFn entry_ = nullptr;
};

}  // namespace mlrt
