#include "code_loader.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace mlrt {
namespace {

bool WriteAll(int fd, const uint8_t* p, uint64_t n) {
  while (n > 0) {
    ssize_t w = ::write(fd, p, n > (1u << 30) ? (1u << 30) : static_cast<size_t>(n));
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    p += w;
    n -= static_cast<uint64_t>(w);
  }
  return true;
}

}  // namespace

Result<LoadedCode> LoadedCode::Load(const uint8_t* bytes, uint64_t size, const std::string& entry) {
  LoadedCode code;
  std::string path;
  code.fd_ = ::memfd_create("mlrt-model-code", MFD_CLOEXEC);
  if (code.fd_ >= 0) {
    path = "/proc/self/fd/" + std::to_string(code.fd_);
  } else {
    // No memfd (old kernel, seccomp): an unlinked temp file serves the same purpose.
    const char* tmp = std::getenv("TMPDIR");
    path = std::string(tmp && *tmp ? tmp : "/tmp") + "/mlrt-code-XXXXXX";
    code.fd_ = ::mkstemp(path.data());
    if (code.fd_ < 0) {
      return Status(StatusCode::kResourceExhausted, std::string("cannot create memory file for model code: ") +
                                                        std::strerror(errno));
    }
  }
  if (!WriteAll(code.fd_, bytes, size)) {
    return Status(StatusCode::kResourceExhausted, std::string("cannot stage model code: ") + std::strerror(errno));
  }
  code.handle_ = ::dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (path.rfind("/proc/self/fd/", 0) != 0) ::unlink(path.c_str());
  if (!code.handle_) {
    const char* err = ::dlerror();
    return Status(StatusCode::kDataLoss, std::string("cannot load the bundle's CPU code: ") + (err ? err : "dlopen failed"));
  }
  void* sym = ::dlsym(code.handle_, entry.c_str());
  if (!sym) return Status(StatusCode::kDataLoss, "the bundle's CPU code has no entry point '" + entry + "'");
  code.entry_ = reinterpret_cast<EntryFn>(sym);
  return code;
}

void* LoadedCode::Symbol(const char* name) const { return handle_ ? ::dlsym(handle_, name) : nullptr; }

LoadedCode::LoadedCode(LoadedCode&& other) noexcept : handle_(other.handle_), fd_(other.fd_), entry_(other.entry_) {
  other.handle_ = nullptr;
  other.fd_ = -1;
  other.entry_ = nullptr;
}

LoadedCode& LoadedCode::operator=(LoadedCode&& other) noexcept {
  if (this != &other) {
    Reset();
    std::swap(handle_, other.handle_);
    std::swap(fd_, other.fd_);
    std::swap(entry_, other.entry_);
  }
  return *this;
}

void LoadedCode::Reset() {
  if (handle_) ::dlclose(handle_);
  if (fd_ >= 0) ::close(fd_);
  handle_ = nullptr;
  fd_ = -1;
  entry_ = nullptr;
}

LoadedCode::~LoadedCode() { Reset(); }

}  // namespace mlrt
