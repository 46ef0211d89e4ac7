// Model: load (map, verify, load code, resolve weights) and run (validate, take an arena, call).
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>

#include "bundle_reader.h"
#include "code_loader.h"
#include "cuda_backend.h"
#include "cpu_features.h"
#include "mlrt/mlrt.h"
#include "signature.h"
#include "thread_pool.h"

namespace mlrt {

uint32_t MaxBundleFormatVersion() { return kBundleFormatVersion; }

namespace {

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Arena = std::unique_ptr<uint8_t, FreeDeleter>;

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// Checks one tensor against its declared spec; `role` is "input" or "output".
template <typename View>
Status CheckTensor(const View& v, const TensorSpec& spec, const char* role, size_t index) {
  auto where = [&] { return std::string(role) + " " + std::to_string(index) + " ('" + spec.name + "')"; };
  if (v.dtype != spec.dtype) {
    return Status(StatusCode::kInvalidArgument, where() + ": expected dtype " + DTypeName(spec.dtype) + ", got " +
                                                    DTypeName(v.dtype));
  }
  if (v.shape != spec.shape) {
    return Status(StatusCode::kInvalidArgument,
                  where() + ": expected shape " + ShapeString(spec.shape) + ", got " + ShapeString(v.shape));
  }
  if (v.data == nullptr && spec.num_bytes() != 0) {
    return Status(StatusCode::kInvalidArgument, where() + ": data pointer is null");
  }
  return Status::Ok();
}

bool Overlaps(const void* a, size_t an, const void* b, size_t bn) {
  auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return an && bn && pa < pb + bn && pb < pa + an;
}

Status ValidateInputs(const Manifest& m, const std::vector<ConstTensorView>& inputs) {
  if (inputs.size() != m.inputs.size()) {
    return Status(StatusCode::kInvalidArgument, "expected " + std::to_string(m.inputs.size()) + " input(s), got " +
                                                    std::to_string(inputs.size()));
  }
  for (size_t i = 0; i < inputs.size(); ++i) {
    if (Status s = CheckTensor(inputs[i], m.inputs[i], "input", i); !s.ok()) return s;
  }
  return Status::Ok();
}

// Count, dtype and shape of every input and output; outputs must not overlap inputs.
Status Validate(const Manifest& m, const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs) {
  if (Status s = ValidateInputs(m, inputs); !s.ok()) return s;
  if (outputs.size() != m.outputs.size()) {
    return Status(StatusCode::kInvalidArgument, "expected " + std::to_string(m.outputs.size()) +
                                                    " output buffer(s), got " + std::to_string(outputs.size()));
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    if (Status s = CheckTensor(outputs[i], m.outputs[i], "output", i); !s.ok()) return s;
    for (size_t j = 0; j < inputs.size(); ++j) {
      if (Overlaps(outputs[i].data, m.outputs[i].num_bytes(), inputs[j].data, m.inputs[j].num_bytes())) {
        return Status(StatusCode::kInvalidArgument, "output " + std::to_string(i) + " overlaps input " + std::to_string(j));
      }
    }
  }
  return Status::Ok();
}

}  // namespace

struct Model::Impl {
  MappedFile file;
  Manifest manifest;
  std::optional<LoadedCode> code;  // device "cpu"
  std::string device = "cpu";
  std::unique_ptr<CudaModel> cuda;  // device "cuda:N"
  std::vector<const void*> weights;  // resolved pointers into the mapped weights section
  size_t arena_size = 64;            // bytes actually allocated per arena (>= 64, multiple of 64)
  std::unique_ptr<ThreadPool> pool;
  HostApi host{};

  mutable std::mutex pool_mutex;
  mutable std::vector<Arena> idle_arenas;  // a Run takes one and gives it back

  Impl(MappedFile f, Manifest m) : file(std::move(f)), manifest(std::move(m)) {}

  Result<Arena> TakeArena() const {
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      if (!idle_arenas.empty()) {
        Arena a = std::move(idle_arenas.back());
        idle_arenas.pop_back();
        return a;
      }
    }
    void* p = std::aligned_alloc(64, arena_size);
    if (!p) {
      return Status(StatusCode::kResourceExhausted,
                    "cannot allocate the model's " + std::to_string(arena_size) + "-byte arena");
    }
    return Arena(static_cast<uint8_t*>(p));
  }

  void ReturnArena(Arena a) const {
    std::lock_guard<std::mutex> lock(pool_mutex);
    idle_arenas.push_back(std::move(a));
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

Result<std::shared_ptr<const Model>> Model::Load(const std::string& path, const LoadOptions& options) {
  auto ordinal = ParseDevice(options.device);
  if (!ordinal.ok()) return ordinal.status();
  const bool on_cuda = *ordinal >= 0;
  const std::string device = on_cuda ? "cuda:" + std::to_string(*ordinal) : "cpu";
  auto file = MappedFile::Open(path);
  if (!file.ok()) return file.status();
  const bool signed_only = !options.public_key.empty();
  auto view = ParseContainer(file->data(), file->size(), signed_only ? LoadOptions::Verify::kFull : options.verify);
  if (!view.ok()) return Status(view.status().code(), path + ": " + view.status().message());
  if (signed_only) {
    if (Status s = VerifySignature(*view, options.public_key); !s.ok()) return Status(s.code(), path + ": " + s.message());
  }
  auto manifest = ParseManifest(*view);
  if (!manifest.ok()) return Status(manifest.status().code(), path + ": " + manifest.status().message());
  int threads = options.num_threads > 0 ? options.num_threads : DefaultThreadCount();
  if (threads > 1024) return Status(StatusCode::kInvalidArgument, "num_threads " + std::to_string(threads) + " is too large");

  if (on_cuda) {
    if (!manifest->has_cuda) {
      return Status(StatusCode::kFailedPrecondition,
                    path + ": device '" + device + "' needs the bundle's CUDA code, but it was built for cpu only; "
                           "rebuild with mlpack build --target cuda (or cpu,cuda)");
    }
    auto cuda = CudaModel::Create(*ordinal, device, *manifest, *view);
    if (!cuda.ok()) return Status(cuda.status().code(), path + ": " + cuda.status().message());
    auto impl = std::make_unique<Impl>(std::move(file).value(), std::move(manifest).value());
    impl->device = device;
    impl->cuda = std::move(cuda).value();
    impl->pool = std::make_unique<ThreadPool>(1);  // the GPU does the work; num_threads() is 1
    impl->host = HostApi{kHostAbiVersion, 1, impl->pool.get(), &ThreadPool::ParallelForThunk};
    return std::shared_ptr<const Model>(new Model(std::move(impl)));
  }

  if (!manifest->has_cpu) {
    if (manifest->has_cuda) {
      return Status(StatusCode::kFailedPrecondition,
                    path + ": the bundle has no CPU code (it was built for cuda only): load it with "
                           "device=\"cuda:0\", or rebuild with mlpack build --target cpu,cuda");
    }
    return Status(StatusCode::kFailedPrecondition, path + ": the bundle has no CPU code (built for another target)");
  }
  if (Status s = CheckCpuFeatures(manifest->cpu.features, manifest->cpu.cpu); !s.ok()) {
    return Status(s.code(), path + ": " + s.message());
  }
  const SectionRef* code_section = view->Find(manifest->cpu.section);
  auto code = LoadedCode::Load(code_section->data, code_section->size, manifest->cpu.entry);
  if (!code.ok()) return Status(code.status().code(), path + ": " + code.status().message());

  const SectionRef* weight_section = view->Find("weights");
  auto impl = std::make_unique<Impl>(std::move(file).value(), std::move(manifest).value());
  impl->code.emplace(std::move(code).value());
  for (const auto& w : impl->manifest.weights) impl->weights.push_back(weight_section->data + w.offset);
  impl->arena_size = std::max<size_t>(64, (impl->manifest.arena_bytes + 63) / 64 * 64);
  impl->pool = std::make_unique<ThreadPool>(threads);
  impl->host = HostApi{kHostAbiVersion, static_cast<uint32_t>(threads), impl->pool.get(), &ThreadPool::ParallelForThunk};
  return std::shared_ptr<const Model>(new Model(std::move(impl)));
}

const std::vector<TensorSpec>& Model::inputs() const { return impl_->manifest.inputs; }
const std::vector<TensorSpec>& Model::outputs() const { return impl_->manifest.outputs; }
const std::string& Model::manifest_json() const { return impl_->manifest.text; }
size_t Model::arena_bytes() const { return impl_->manifest.arena_bytes; }
int Model::num_threads() const { return impl_->pool->num_threads(); }
const std::string& Model::device() const { return impl_->device; }
size_t Model::device_bytes() const { return impl_->cuda ? impl_->cuda->device_bytes() : 0; }

namespace {
Status NotOnCuda(const std::string& device) {
  return Status(StatusCode::kFailedPrecondition,
                "RunDevice takes CUDA device pointers: it needs a model loaded with device \"cuda:N\", and this one "
                "runs on " + device);
}
}  // namespace

Status Model::RunDevice(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
                        uintptr_t wait_stream) const {
  if (!impl_->cuda) return NotOnCuda(impl_->device);
  if (Status s = Validate(impl_->manifest, inputs, outputs); !s.ok()) return s;
  return impl_->cuda->Run(inputs, outputs, /*device_pointers=*/true, wait_stream);
}

Result<std::vector<DeviceTensor>> Model::RunDevice(const std::vector<ConstTensorView>& inputs,
                                                   uintptr_t wait_stream) const {
  if (!impl_->cuda) return NotOnCuda(impl_->device);
  const Manifest& m = impl_->manifest;
  if (Status s = ValidateInputs(m, inputs); !s.ok()) return s;  // before allocating anything
  std::vector<DeviceTensor> outputs;
  std::vector<TensorView> views;
  outputs.reserve(m.outputs.size());
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const TensorSpec& spec = m.outputs[i];
    DeviceTensor t;
    t.dtype_ = spec.dtype;
    t.shape_ = spec.shape;
    t.ordinal_ = impl_->cuda->ordinal();
    t.num_bytes_ = spec.num_bytes();
    if (t.num_bytes_ > 0) {  // zero-byte outputs own nothing (cuMemAlloc refuses size 0)
      auto buffer = impl_->cuda->Allocate(t.num_bytes_, "output " + std::to_string(i));
      if (!buffer.ok()) return buffer.status();
      t.buffer_ = std::move(buffer).value();
      t.data_ = reinterpret_cast<void*>(t.buffer_->ptr);
    }
    outputs.push_back(std::move(t));
    views.push_back(outputs.back().view());
  }
  if (Status s = RunDevice(inputs, views, wait_stream); !s.ok()) return s;
  return Result<std::vector<DeviceTensor>>(std::move(outputs));
}

Status Model::Run(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs) const {
  const Manifest& m = impl_->manifest;
  if (Status s = Validate(m, inputs, outputs); !s.ok()) return s;
  if (impl_->cuda) return impl_->cuda->Run(inputs, outputs, /*device_pointers=*/false);
  auto arena = impl_->TakeArena();
  if (!arena.ok()) return arena.status();

  std::vector<void*> args(m.call.size());
  for (size_t i = 0; i < m.call.size(); ++i) {
    const CallArg& c = m.call[i];
    switch (c.kind) {
      case CallArg::Kind::kInput: args[i] = const_cast<void*>(inputs[c.index].data); break;  // read-only by contract
      case CallArg::Kind::kWeight: args[i] = const_cast<void*>(impl_->weights[c.index]); break;
      case CallArg::Kind::kOutput: args[i] = outputs[c.index].data; break;
      case CallArg::Kind::kArena: args[i] = arena->get(); break;
    }
  }
  impl_->code->entry()(args.data(), &impl_->host);
  impl_->ReturnArena(std::move(arena).value());
  return Status::Ok();
}

Result<std::vector<Tensor>> Model::Run(const std::vector<ConstTensorView>& inputs) const {
  std::vector<Tensor> outputs;
  std::vector<TensorView> views;
  for (const auto& spec : impl_->manifest.outputs) {
    auto t = Tensor::Allocate(spec);
    if (!t.ok()) return t.status();
    outputs.push_back(std::move(t).value());
    views.push_back(outputs.back().view());
  }
  if (Status s = Run(inputs, views); !s.ok()) return s;
  return outputs;
}

}  // namespace mlrt
