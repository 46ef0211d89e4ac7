#include "cuda_driver.h"

#include <dlfcn.h>

#include <type_traits>

namespace mlrt::cuda {
namespace {

struct Loaded {
  Driver driver;
  bool ok = false;
  std::string error;
  CUresult init_result = CUDA_SUCCESS;
};

Loaded Load() {
  Loaded l;
  // Never unloaded: the driver keeps process-wide state, and models may outlive any owner.
  void* handle = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
  if (!handle) {
    const char* e = dlerror();
    l.error = std::string("needs the NVIDIA driver: libcuda.so.1 could not be loaded (") + (e ? e : "dlopen failed") + ")";
    return l;
  }
  Driver& d = l.driver;
  std::string missing;
  auto bind = [&](auto& fn, const char* name) {
    fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(handle, name));
    if (!fn) missing += (missing.empty() ? "" : ", ") + std::string(name);
  };
  bind(d.cuInit, "cuInit");
  bind(d.cuDriverGetVersion, "cuDriverGetVersion");
  bind(d.cuGetErrorName, "cuGetErrorName");
  bind(d.cuGetErrorString, "cuGetErrorString");
  bind(d.cuDeviceGetCount, "cuDeviceGetCount");
  bind(d.cuDeviceGet, "cuDeviceGet");
  bind(d.cuDeviceGetName, "cuDeviceGetName");
  bind(d.cuDeviceGetAttribute, "cuDeviceGetAttribute");
  bind(d.cuDevicePrimaryCtxRetain, "cuDevicePrimaryCtxRetain");
  bind(d.cuDevicePrimaryCtxRelease, "cuDevicePrimaryCtxRelease_v2");
  bind(d.cuCtxPushCurrent, "cuCtxPushCurrent_v2");
  bind(d.cuCtxPopCurrent, "cuCtxPopCurrent_v2");
  bind(d.cuModuleLoadDataEx, "cuModuleLoadDataEx");
  bind(d.cuModuleUnload, "cuModuleUnload");
  bind(d.cuModuleGetFunction, "cuModuleGetFunction");
  bind(d.cuFuncSetAttribute, "cuFuncSetAttribute");
  bind(d.cuMemAlloc, "cuMemAlloc_v2");
  bind(d.cuMemFree, "cuMemFree_v2");
  bind(d.cuMemGetInfo, "cuMemGetInfo_v2");
  bind(d.cuMemcpyHtoD, "cuMemcpyHtoD_v2");
  bind(d.cuMemcpyDtoH, "cuMemcpyDtoH_v2");
  bind(d.cuMemcpyHtoDAsync, "cuMemcpyHtoDAsync_v2");
  bind(d.cuMemcpyDtoHAsync, "cuMemcpyDtoHAsync_v2");
  bind(d.cuMemcpyDtoDAsync, "cuMemcpyDtoDAsync_v2");
  bind(d.cuMemsetD8Async, "cuMemsetD8Async");
  bind(d.cuStreamCreate, "cuStreamCreate");
  bind(d.cuStreamDestroy, "cuStreamDestroy_v2");
  bind(d.cuStreamSynchronize, "cuStreamSynchronize");
  bind(d.cuStreamWaitEvent, "cuStreamWaitEvent");
  bind(d.cuEventCreate, "cuEventCreate");
  bind(d.cuEventRecord, "cuEventRecord");
  bind(d.cuEventDestroy, "cuEventDestroy_v2");
  bind(d.cuStreamBeginCapture, "cuStreamBeginCapture_v2");
  bind(d.cuStreamEndCapture, "cuStreamEndCapture");
  bind(d.cuGraphInstantiateWithFlags, "cuGraphInstantiateWithFlags");
  bind(d.cuGraphLaunch, "cuGraphLaunch");
  bind(d.cuGraphExecDestroy, "cuGraphExecDestroy");
  bind(d.cuGraphDestroy, "cuGraphDestroy");
  bind(d.cuLaunchKernel, "cuLaunchKernel");
  if (!missing.empty()) {
    l.error = "needs a newer NVIDIA driver: libcuda.so.1 lacks " + missing;
    return l;
  }
  l.init_result = d.cuInit(0);
  if (l.init_result != CUDA_SUCCESS) {
    l.error = (l.init_result == CUDA_ERROR_NO_DEVICE ? "needs a GPU, and the NVIDIA driver sees none ("
                                                     : "needs the NVIDIA driver, which failed to initialize (") +
              ErrorText(d, l.init_result, "cuInit") + ")";
    return l;
  }
  l.ok = true;
  return l;
}

}  // namespace

const Driver* GetDriver(std::string* error, CUresult* init_result) {
  static const Loaded loaded = Load();  // thread-safe, once
  *init_result = loaded.init_result;
  if (!loaded.ok) {
    *error = loaded.error;
    return nullptr;
  }
  return &loaded.driver;
}

std::string ErrorText(const Driver& d, CUresult r, const char* call) {
  const char* name = nullptr;
  const char* text = nullptr;
  if (!d.cuGetErrorName || d.cuGetErrorName(r, &name) != CUDA_SUCCESS || !name) name = nullptr;
  if (!d.cuGetErrorString || d.cuGetErrorString(r, &text) != CUDA_SUCCESS || !text) text = nullptr;
  std::string s = "CUDA error ";
  s += name ? name : "CUresult " + std::to_string(r);
  if (text) s += std::string(" (") + text + ")";
  return s + " in " + call;
}

}  // namespace mlrt::cuda
