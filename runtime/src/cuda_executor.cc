#include "cuda_executor.h"

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <unordered_map>
#include <utility>

#include "block_copy.h"

namespace mlrt {

using namespace cuda;  // NOLINT: the driver API names read best unqualified

namespace {

constexpr size_t kAlign = 256;
constexpr int kDefaultSharedLimit = 48 * 1024;  // dynamic shared memory a launch gets without opting in
constexpr unsigned kJitLogBytes = 16 * 1024;

size_t Align(size_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

// Makes the model's context current on the calling thread for the scope (any host thread may Run).
class ScopedContext {
 public:
  ScopedContext(const Driver* d, CUcontext ctx) : d_(d), result_(d->cuCtxPushCurrent(ctx)) {}
  ~ScopedContext() {
    if (result_ == CUDA_SUCCESS) {
      CUcontext popped = nullptr;
      d_->cuCtxPopCurrent(&popped);
    }
  }
  ScopedContext(const ScopedContext&) = delete;
  ScopedContext& operator=(const ScopedContext&) = delete;
  CUresult result() const { return result_; }

 private:
  const Driver* d_;
  CUresult result_;
};

}  // namespace

// Sized for the largest program, so any program runs on any context: device memory is fixed by the
// number of concurrent runs, whatever shapes they have. Each program has its own argument table
// (call lists differ) and its own graph, captured on this context's first run of that program.
struct CudaExecutor::Context {
  CUdeviceptr memory = 0;  // [arena | inputs | outputs | argument tables], each 256-byte aligned
  size_t bytes = 0;
  std::vector<CUdeviceptr> argtables;  // per program
  std::vector<CUdeviceptr> inputs, outputs;
  CUstream stream = nullptr;
  std::vector<CUgraphExec> graphs;  // per program; null until its first run here
  CUevent ready = nullptr;          // RunDevice: recorded on the caller's stream, waited on by `stream`
};

Status CudaExecutor::Check(CUresult r, const char* call) const {
  if (r == CUDA_SUCCESS) return Status::Ok();
  return Status(r == CUDA_ERROR_OUT_OF_MEMORY ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                "device '" + device_ + "': " + ErrorText(*d_, r, call));
}

Result<std::unique_ptr<Executor>> CudaExecutor::Create(const Device& gpu, const Manifest& manifest,
                                                       const BundleView& bundle) {
  const int ordinal = gpu.ordinal;
  const std::string& device = gpu.name;
  if (!manifest.has_cuda) {
    return Status(StatusCode::kFailedPrecondition,
                  "device '" + device + "' needs the bundle's CUDA code, but it was built for cpu only; "
                  "rebuild with mlpack build --target cuda (or cpu,cuda)");
  }
  std::string why;
  CUresult init = CUDA_SUCCESS;
  const Driver* d = GetDriver(&why, &init);
  if (!d) return Status(StatusCode::kFailedPrecondition, "device '" + device + "' " + why);
  const CudaTarget& target = manifest.cuda;
  auto fail = [&](StatusCode code, const std::string& msg) { return Status(code, "device '" + device + "': " + msg); };

  // Partially built models clean up in the destructor: every handle below is released there.
  std::unique_ptr<CudaExecutor> m(new CudaExecutor());
  m->d_ = d;
  m->device_ = device;
  m->ordinal_ = ordinal;
  int version = 0;
  if (Status s = m->Check(d->cuDriverGetVersion(&version), "cuDriverGetVersion"); !s.ok()) return s;
  auto version_text = [](int v) { return std::to_string(v / 1000) + "." + std::to_string(v % 1000 / 10); };
  if (version < target.min_driver) {
    return fail(StatusCode::kFailedPrecondition,
                "the NVIDIA driver supports CUDA " + version_text(version) + " (" + std::to_string(version) +
                    "); this bundle's PTX " + target.ptx_isa + " needs CUDA " + version_text(target.min_driver) +
                    " (" + std::to_string(target.min_driver) + ") or newer: upgrade the driver");
  }
  int count = 0;
  if (Status s = m->Check(d->cuDeviceGetCount(&count), "cuDeviceGetCount"); !s.ok()) return s;
  if (ordinal >= count) {
    return fail(StatusCode::kInvalidArgument,
                "no such GPU: this machine has " + std::to_string(count) + " CUDA GPU(s)" +
                    (count ? " (cuda:0" + (count > 1 ? "..cuda:" + std::to_string(count - 1) : std::string()) + ")"
                           : std::string()));
  }
  if (Status s = m->Check(d->cuDeviceGet(&m->dev_, ordinal), "cuDeviceGet"); !s.ok()) return s;
  char name[256] = {};
  if (d->cuDeviceGetName(name, static_cast<int>(sizeof name) - 1, m->dev_) != CUDA_SUCCESS) std::strcpy(name, "unknown");
  int major = 0, minor = 0, shared_optin = 0;
  if (Status s = m->Check(d->cuDeviceGetAttribute(&major, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, m->dev_),
                          "cuDeviceGetAttribute");
      !s.ok()) {
    return s;
  }
  if (Status s = m->Check(d->cuDeviceGetAttribute(&minor, CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, m->dev_),
                          "cuDeviceGetAttribute");
      !s.ok()) {
    return s;
  }
  if (major * 10 + minor < target.min_sm) {
    return Status(StatusCode::kFailedPrecondition,
                  "GPU " + std::to_string(ordinal) + " (" + name + ") has compute capability " + std::to_string(major) +
                      "." + std::to_string(minor) + "; this bundle needs " + std::to_string(target.min_sm / 10) + "." +
                      std::to_string(target.min_sm % 10) + " or newer");
  }
  if (d->cuDeviceGetAttribute(&shared_optin, CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN, m->dev_) !=
      CUDA_SUCCESS) {
    shared_optin = kDefaultSharedLimit;
  }

  CUcontext ctx = nullptr;
  if (Status s = m->Check(d->cuDevicePrimaryCtxRetain(&ctx, m->dev_), "cuDevicePrimaryCtxRetain"); !s.ok()) return s;
  auto handle = std::make_shared<CudaDevice>();  // from here on, releases the retain
  handle->d = d;
  handle->dev = m->dev_;
  handle->ctx = ctx;
  handle->name = device;
  m->device_handle_ = std::move(handle);
  m->ctx_ = ctx;
  ScopedContext scope(d, ctx);
  if (Status s = m->Check(scope.result(), "cuCtxPushCurrent"); !s.ok()) return s;

  // One module per program: a static bundle's targets.cuda, or each bucket combination's code.
  std::vector<ProgramLayout> layouts = ProgramLayouts(manifest);
  for (size_t p = 0; p < layouts.size(); ++p) {
    ProgramCode code;
    const CudaCode& source = manifest.is_dynamic() ? manifest.programs[p].cuda : target.code;
    const std::string what = manifest.is_dynamic() ? "programs[" + std::to_string(p) + "].cuda" : "targets.cuda";
    Status s = m->LoadProgram(source, what, major, minor, shared_optin, name, target, bundle, &code);
    m->programs_.push_back(std::move(code));  // its module is unloaded by the destructor, even on failure
    if (!s.ok()) return s;
    ProgramCode& c = m->programs_.back();
    c.layout = std::move(layouts[p]);
    c.arena_bytes = source.arena_bytes;
    for (size_t i = 0; i < manifest.inputs.size(); ++i) {
      c.input_bytes.push_back(static_cast<size_t>(NumElements(c.layout.input_shapes[i])) *
                              DTypeSize(manifest.inputs[i].dtype));
    }
    for (size_t o = 0; o < manifest.outputs.size(); ++o) {
      c.output_bytes.push_back(static_cast<size_t>(NumElements(c.layout.output_shapes[o])) *
                               DTypeSize(manifest.outputs[o].dtype));
    }
    c.table_offset = m->table_bytes_;
    m->table_bytes_ += Align(c.layout.call.size() * sizeof(CUdeviceptr));
    m->max_arena_bytes_ = std::max<uint64_t>(m->max_arena_bytes_, c.arena_bytes);
    m->max_input_bytes_.resize(c.input_bytes.size(), 0);
    m->max_output_bytes_.resize(c.output_bytes.size(), 0);
    for (size_t i = 0; i < c.input_bytes.size(); ++i) m->max_input_bytes_[i] = std::max(m->max_input_bytes_[i], c.input_bytes[i]);
    for (size_t o = 0; o < c.output_bytes.size(); ++o) {
      m->max_output_bytes_[o] = std::max(m->max_output_bytes_[o], c.output_bytes[o]);
    }
  }

  // Weights: the whole section, once, shared by every execution context and program.
  const SectionRef* weights = bundle.Find("weights");
  if (weights && weights->size > 0) {
    CUdeviceptr p = 0;
    if (Status s = m->Check(d->cuMemAlloc(&p, weights->size), "cuMemAlloc (weights)"); !s.ok()) return s;
    m->weights_ = p;
    m->weight_bytes_ = weights->size;
    if (Status s = m->Check(d->cuMemcpyHtoD(p, weights->data, weights->size), "cuMemcpyHtoD (weights)"); !s.ok()) {
      return s;
    }
  }
  for (const auto& w : manifest.weights) m->weight_offsets_.push_back(w.offset);
  const char* graphs = std::getenv("MLRT_CUDA_GRAPHS");
  m->use_graphs_ = !(graphs && std::strcmp(graphs, "0") == 0);
  return std::unique_ptr<Executor>(std::move(m));
}

// Loads one program's machine code for this GPU's architecture when the bundle has it (a cubin for
// sm_XY runs on compute capability X.Y' with Y' >= Y: same major), else its PTX, JIT-compiled by the
// driver (the JIT's logs go into the error on failure); resolves its kernels and opts into large
// dynamic shared memory. The primary context must be current.
Status CudaExecutor::LoadProgram(const CudaCode& code, const std::string& what, int major, int minor, int shared_optin,
                              const std::string& gpu_name, const CudaTarget& target, const BundleView& bundle,
                              ProgramCode* out) {
  auto fail = [&](StatusCode c, const std::string& msg) { return Status(c, "device '" + device_ + "': " + msg); };
  const SectionRef* ptx = bundle.Find(code.section);
  const int cc = major * 10 + minor;
  int best = -1;
  for (const auto& [arch, section] : code.sass) {
    if (arch / 10 == major && arch <= cc && arch > best) {
      best = arch;
      ptx = bundle.Find(section);
    }
  }
  std::vector<char> error_log(kJitLogBytes, 0), info_log(kJitLogBytes, 0);
  int options[4] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES, CU_JIT_INFO_LOG_BUFFER,
                    CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES};
  void* values[4] = {error_log.data(), reinterpret_cast<void*>(uintptr_t{kJitLogBytes - 1}), info_log.data(),
                     reinterpret_cast<void*>(uintptr_t{kJitLogBytes - 1})};
  CUmodule module = nullptr;
  CUresult r = d_->cuModuleLoadDataEx(&module, ptx->data, 4, options, values);
  if (r != CUDA_SUCCESS) {
    std::string log = std::string(error_log.data());
    std::string info = std::string(info_log.data());
    if (!info.empty()) log += (log.empty() ? "" : "\n") + info;
    return fail(StatusCode::kFailedPrecondition,
                "the driver could not load the bundle's " + std::string(best >= 0 ? "cubin" : "PTX") +
                    (what == "targets.cuda" ? std::string() : " for " + what) + " (ISA " + target.ptx_isa + ", sm_" +
                    std::to_string(target.min_sm) + ") on GPU " + std::to_string(ordinal_) + " (" + gpu_name +
                    "): " + ErrorText(*d_, r, "cuModuleLoadDataEx") + (log.empty() ? "" : "; JIT log:\n" + log));
  }
  out->module = module;

  // Kernels: every one the launches name must exist; large dynamic shared memory is opted into.
  std::unordered_map<std::string, std::pair<CUfunction, unsigned>> functions;  // name -> (handle, max shared)
  for (size_t i = 0; i < code.launches.size(); ++i) {
    const CudaLaunch& l = code.launches[i];
    auto it = functions.find(l.kernel);
    if (it == functions.end()) {
      CUfunction f = nullptr;
      r = d_->cuModuleGetFunction(&f, module, l.kernel.c_str());
      if (r != CUDA_SUCCESS || !f) {
        return Status(StatusCode::kDataLoss, "invalid bundle: " + what + ".launches[" + std::to_string(i) +
                                                 "] names kernel '" + l.kernel + "', which the PTX does not define (" +
                                                 ErrorText(*d_, r, "cuModuleGetFunction") + ")");
      }
      it = functions.emplace(l.kernel, std::make_pair(f, 0u)).first;
    }
    if (l.shared_bytes > static_cast<unsigned>(shared_optin)) {
      return Status(StatusCode::kFailedPrecondition,
                    "kernel '" + l.kernel + "' needs " + std::to_string(l.shared_bytes) +
                        " bytes of shared memory per block; GPU " + std::to_string(ordinal_) + " (" + gpu_name +
                        ") allows " + std::to_string(shared_optin));
    }
    if (l.shared_bytes > it->second.second) it->second.second = l.shared_bytes;
    Launch launch;
    launch.function = it->second.first;
    for (int k = 0; k < 3; ++k) {
      launch.grid[k] = l.grid[k];
      launch.block[k] = l.block[k];
    }
    launch.shared_bytes = l.shared_bytes;
    out->launches.push_back(launch);
  }
  for (const auto& [fname, f] : functions) {
    if (f.second > static_cast<unsigned>(kDefaultSharedLimit)) {
      if (Status s = Check(d_->cuFuncSetAttribute(f.first, CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                                                  static_cast<int>(f.second)),
                           "cuFuncSetAttribute");
          !s.ok()) {
        return s;
      }
    }
  }
  return Status::Ok();
}

CudaExecutor::~CudaExecutor() {
  if (!d_) return;
  if (ctx_) {
    ScopedContext scope(d_, ctx_);
    if (scope.result() == CUDA_SUCCESS) {
      for (auto& c : idle_) DestroyContext(std::move(c));
      idle_.clear();
      if (weights_) d_->cuMemFree(weights_);
      for (const ProgramCode& p : programs_) {
        if (p.module) d_->cuModuleUnload(p.module);
      }
    }
  }
  // device_handle_ releases the primary context when the last DeviceTensor from this model is gone.
}

namespace internal {
DeviceBuffer::~DeviceBuffer() {
  if (!ptr) return;
  ScopedContext scope(device->d, device->ctx);
  if (scope.result() == CUDA_SUCCESS) device->d->cuMemFree(ptr);
}
}  // namespace internal

Result<DeviceExecutor::Allocation> CudaExecutor::Allocate(size_t bytes, const std::string& what) const {
  ScopedContext scope(d_, ctx_);
  if (Status s = Check(scope.result(), "cuCtxPushCurrent"); !s.ok()) return s;
  CUdeviceptr p = 0;
  const std::string call = "cuMemAlloc (" + what + ", " + std::to_string(bytes) + " bytes)";
  if (Status s = Check(d_->cuMemAlloc(&p, bytes), call.c_str()); !s.ok()) return s;
  auto b = std::make_shared<internal::DeviceBuffer>();
  b->device = device_handle_;
  b->ptr = p;
  return Allocation{std::move(b), reinterpret_cast<void*>(p)};
}

Status DeviceTensor::CopyToHost(void* host) const {
  if (num_bytes_ == 0) return Status::Ok();
  if (!buffer_) return Status(StatusCode::kFailedPrecondition, "DeviceTensor::CopyToHost: the tensor was moved from");
  const CudaDevice& dev = *buffer_->device;
  ScopedContext scope(dev.d, dev.ctx);
  CUresult r = scope.result();
  const char* call = "cuCtxPushCurrent";
  if (r == CUDA_SUCCESS) {
    r = dev.d->cuMemcpyDtoH(host, buffer_->ptr, num_bytes_);
    call = "cuMemcpyDtoH";
  }
  if (r == CUDA_SUCCESS) return Status::Ok();
  return Status(r == CUDA_ERROR_OUT_OF_MEMORY ? StatusCode::kResourceExhausted : StatusCode::kInternal,
                "device '" + dev.name + "': " + ErrorText(*dev.d, r, call));
}

Result<std::unique_ptr<CudaExecutor::Context>> CudaExecutor::NewContext() const {
  auto c = std::make_unique<Context>();
  size_t offset = Align(max_arena_bytes_);
  for (size_t n : max_input_bytes_) {
    c->inputs.push_back(offset);  // offsets for now; rebased below
    offset += Align(n);
  }
  for (size_t n : max_output_bytes_) {
    c->outputs.push_back(offset);
    offset += Align(n);
  }
  const size_t tables_offset = offset;
  c->bytes = offset + table_bytes_;
  CUresult r = d_->cuMemAlloc(&c->memory, c->bytes);
  if (r != CUDA_SUCCESS) {
    c->memory = 0;
    return Check(r, "cuMemAlloc (execution context)");
  }
  context_bytes_.fetch_add(c->bytes, std::memory_order_relaxed);
  for (auto& p : c->inputs) p += c->memory;
  for (auto& p : c->outputs) p += c->memory;
  c->graphs.assign(programs_.size(), nullptr);
  r = d_->cuStreamCreate(&c->stream, CU_STREAM_NON_BLOCKING);
  if (r != CUDA_SUCCESS) {
    c->stream = nullptr;
    Status s = Check(r, "cuStreamCreate");
    DestroyContext(std::move(c));
    return s;
  }
  // Every program's argument table: the same buffers, in that program's call order.
  std::vector<CUdeviceptr> tables(table_bytes_ / sizeof(CUdeviceptr), 0);
  for (const ProgramCode& p : programs_) {
    c->argtables.push_back(c->memory + tables_offset + p.table_offset);
    CUdeviceptr* table = tables.data() + p.table_offset / sizeof(CUdeviceptr);
    for (size_t i = 0; i < p.layout.call.size(); ++i) {
      const CallArg& a = p.layout.call[i];
      switch (a.kind) {
        case CallArg::Kind::kInput: table[i] = c->inputs[a.index]; break;
        case CallArg::Kind::kOutput: table[i] = c->outputs[a.index]; break;
        case CallArg::Kind::kWeight: table[i] = weights_ + weight_offsets_[a.index]; break;
        case CallArg::Kind::kArena: table[i] = c->memory; break;
      }
    }
  }
  Status s = Check(d_->cuMemcpyHtoDAsync(c->memory + tables_offset, tables.data(), table_bytes_, c->stream),
                   "cuMemcpyHtoDAsync (argument table)");
  if (s.ok()) s = Check(d_->cuStreamSynchronize(c->stream), "cuStreamSynchronize");
  if (!s.ok()) {
    DestroyContext(std::move(c));
    return s;
  }
  return Result<std::unique_ptr<Context>>(std::move(c));
}

void CudaExecutor::DestroyContext(std::unique_ptr<Context> c) const {
  if (!c) return;
  if (c->stream) d_->cuStreamSynchronize(c->stream);  // nothing may still use the memory
  for (CUgraphExec g : c->graphs) {
    if (g) d_->cuGraphExecDestroy(g);
  }
  if (c->ready) d_->cuEventDestroy(c->ready);
  if (c->stream) d_->cuStreamDestroy(c->stream);
  if (c->memory) {
    d_->cuMemFree(c->memory);
    context_bytes_.fetch_sub(c->bytes, std::memory_order_relaxed);
  }
}

Status CudaExecutor::LaunchAll(const ProgramCode& p, CUstream stream, CUdeviceptr argtable) const {
  void* params[1] = {&argtable};  // the single kernel argument: the argument table's address
  for (const Launch& l : p.launches) {
    CUresult r = d_->cuLaunchKernel(l.function, l.grid[0], l.grid[1], l.grid[2], l.block[0], l.block[1], l.block[2],
                                    l.shared_bytes, stream, params, nullptr);
    if (r != CUDA_SUCCESS) return Check(r, "cuLaunchKernel");
  }
  return Status::Ok();
}

Status CudaExecutor::Execute(Context& c, size_t program, const std::vector<ConstTensorView>& inputs,
                          const std::vector<TensorView>& outputs, bool device_pointers, uintptr_t wait_stream) const {
  const ProgramCode& p = programs_[program];
  const CUdeviceptr argtable = c.argtables[program];
  if (use_graphs_ && !c.graphs[program] && !p.launches.empty()) {
    // Capture once per (context, program): the launches only ever see this context's argument table.
    if (Status s = Check(d_->cuStreamBeginCapture(c.stream, CU_STREAM_CAPTURE_MODE_THREAD_LOCAL),
                         "cuStreamBeginCapture");
        !s.ok()) {
      return s;
    }
    Status launched = LaunchAll(p, c.stream, argtable);
    CUgraph graph = nullptr;
    CUresult r = d_->cuStreamEndCapture(c.stream, &graph);
    if (!launched.ok() || r != CUDA_SUCCESS) {
      if (graph) d_->cuGraphDestroy(graph);
      return launched.ok() ? Check(r, "cuStreamEndCapture") : launched;
    }
    CUgraphExec exec = nullptr;
    r = d_->cuGraphInstantiateWithFlags(&exec, graph, 0);
    d_->cuGraphDestroy(graph);
    if (Status s = Check(r, "cuGraphInstantiateWithFlags"); !s.ok()) return s;
    c.graphs[program] = exec;
  }
  if (device_pointers) {
    // The caller's buffers may still be written by work queued on `wait_stream` (e.g. the DLPack
    // producer's kernels): this context's non-blocking stream starts its copies after that work.
    if (!c.ready) {
      if (Status s = Check(d_->cuEventCreate(&c.ready, CU_EVENT_DISABLE_TIMING), "cuEventCreate"); !s.ok()) {
        c.ready = nullptr;
        return s;
      }
    }
    if (Status s = Check(d_->cuEventRecord(c.ready, reinterpret_cast<CUstream>(wait_stream)), "cuEventRecord");
        !s.ok()) {
      return s;
    }
    if (Status s = Check(d_->cuStreamWaitEvent(c.stream, c.ready, 0), "cuStreamWaitEvent"); !s.ok()) return s;
  }
  // Copies between the caller's buffer and the context's, by rows where the shapes differ (padding
  // and cutting, block_copy.h: the same rows the CPU executor copies).
  auto copy = [&](CUdeviceptr device, const void* host_or_device, size_t bytes, bool to_device) -> CUresult {
    const auto other = reinterpret_cast<CUdeviceptr>(host_or_device);
    if (to_device) {
      return device_pointers ? d_->cuMemcpyDtoDAsync(device, other, bytes, c.stream)
                             : d_->cuMemcpyHtoDAsync(device, host_or_device, bytes, c.stream);
    }
    return device_pointers ? d_->cuMemcpyDtoDAsync(other, device, bytes, c.stream)
                           : d_->cuMemcpyDtoHAsync(const_cast<void*>(host_or_device), device, bytes, c.stream);
  };
  for (size_t i = 0; i < inputs.size(); ++i) {
    const size_t n = p.input_bytes[i];
    if (n == 0) continue;
    const char* what = device_pointers ? "cuMemcpyDtoDAsync (input)" : "cuMemcpyHtoDAsync (input)";
    if (inputs[i].shape == p.layout.input_shapes[i]) {
      if (Status s = Check(copy(c.inputs[i], inputs[i].data, n, true), what); !s.ok()) return s;
      continue;
    }
    // Below the bucket: zeros, then the caller's data as the leading block.
    if (Status s = Check(d_->cuMemsetD8Async(c.inputs[i], 0, n, c.stream), "cuMemsetD8Async (input padding)");
        !s.ok()) {
      return s;
    }
    const auto* src = static_cast<const uint8_t*>(inputs[i].data);
    CUresult r = CUDA_SUCCESS;
    ForEachBlockRow(inputs[i].shape, p.layout.input_shapes[i], DTypeSize(inputs[i].dtype), [&](size_t from, size_t to, size_t b) {
      if (r == CUDA_SUCCESS) r = copy(c.inputs[i] + to, src + from, b, true);
    });
    if (Status s = Check(r, what); !s.ok()) return s;
  }
  if (c.graphs[program]) {
    if (Status s = Check(d_->cuGraphLaunch(c.graphs[program], c.stream), "cuGraphLaunch"); !s.ok()) return s;
  } else if (Status s = LaunchAll(p, c.stream, argtable); !s.ok()) {
    return s;
  }
  for (size_t o = 0; o < outputs.size(); ++o) {
    if (p.output_bytes[o] == 0) continue;
    const char* what = device_pointers ? "cuMemcpyDtoDAsync (output)" : "cuMemcpyDtoHAsync (output)";
    auto* dst = static_cast<uint8_t*>(outputs[o].data);
    CUresult r = CUDA_SUCCESS;
    ForEachBlockRow(p.layout.output_shapes[o], outputs[o].shape, DTypeSize(outputs[o].dtype), [&](size_t from, size_t to, size_t b) {
      if (r == CUDA_SUCCESS) r = copy(c.outputs[o] + from, dst + to, b, false);
    });
    if (Status s = Check(r, what); !s.ok()) return s;
  }
  return Check(d_->cuStreamSynchronize(c.stream), "cuStreamSynchronize");
}

Status CudaExecutor::RunOn(size_t program, const std::vector<ConstTensorView>& inputs,
                           const std::vector<TensorView>& outputs, bool device_pointers, uintptr_t wait_stream) const {
  if (program >= programs_.size()) {
    return Status(StatusCode::kInternal, "device '" + device_ + "': no program " + std::to_string(program));
  }
  ScopedContext scope(d_, ctx_);
  if (Status s = Check(scope.result(), "cuCtxPushCurrent"); !s.ok()) return s;
  std::unique_ptr<Context> c;
  {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (!idle_.empty()) {
      c = std::move(idle_.back());
      idle_.pop_back();
    }
  }
  if (!c) {
    auto fresh = NewContext();
    if (!fresh.ok()) return fresh.status();
    c = std::move(fresh).value();
  }
  Status s = Execute(*c, program, inputs, outputs, device_pointers, wait_stream);
  if (!s.ok()) {
    DestroyContext(std::move(c));  // its stream or graphs may be in any state: never reuse it
    return s;
  }
  std::lock_guard<std::mutex> lock(pool_mutex_);
  idle_.push_back(std::move(c));
  return Status::Ok();
}

}  // namespace mlrt
