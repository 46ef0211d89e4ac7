// Model: load (map, verify, load code, resolve weights) and run (validate, take an arena, call).
#include <sys/mman.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>

#include "block_copy.h"
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

// An arena of `bytes` (a multiple of 64). From 4 MiB up it starts on a 2 MiB boundary and asks
// for transparent huge pages: a ResNet-50's 13 MB arena then takes 6 page faults on its first
// run instead of ~3200, and its accesses far fewer TLB misses. The untouched alignment slack
// costs address space only.
void* AllocateArena(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes < 2 * kHuge) return std::aligned_alloc(64, bytes);
  void* p = std::aligned_alloc(kHuge, (bytes + kHuge - 1) / kHuge * kHuge);
  if (p) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);  // advice: failure is harmless
  return p;
}

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

// ---------------------------------------------------------------------------- dynamic dims

// What one call of a dynamic bundle runs: the program of the chosen buckets, the symbols' sizes,
// and every output's shape for this call.
struct CallPlan {
  const Program* program = nullptr;
  std::vector<int64_t> values;   // per symbol: the inputs' size
  std::vector<int64_t> buckets;  // per symbol: the program's size (>= value)
  bool padded = false;           // some value is below its bucket
  std::vector<std::vector<int64_t>> output_shapes;
};

// "[batch,8]": a spec's shape with symbol names for its dynamic dims.
std::string SpecShapeString(const TensorSpec& spec) {
  std::string s = "[";
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    s += i ? "," : "";
    s += spec.shape[i] >= 0 || i >= spec.symbols.size() ? std::to_string(spec.shape[i]) : spec.symbols[i];
  }
  return s + "]";
}

std::string BucketList(const std::vector<int64_t>& buckets) {
  std::string s;
  for (size_t i = 0; i < buckets.size(); ++i) s += (i ? ", " : "") + std::to_string(buckets[i]);
  return s;
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

// Validates the inputs of a dynamic bundle and picks the program. O(inputs x rank + symbols x buckets).
Status PlanDynamicCall(const Manifest& m, const std::vector<ConstTensorView>& inputs, CallPlan* plan) {
  if (inputs.size() != m.inputs.size()) {
    return Status(StatusCode::kInvalidArgument, "expected " + std::to_string(m.inputs.size()) + " input(s), got " +
                                                    std::to_string(inputs.size()));
  }
  const size_t num_symbols = m.dynamic_dims.size();
  plan->values.assign(num_symbols, -1);
  std::vector<std::pair<size_t, size_t>> first(num_symbols);  // (input, dim) that set each value
  for (size_t i = 0; i < inputs.size(); ++i) {
    const TensorSpec& spec = m.inputs[i];
    const ConstTensorView& v = inputs[i];
    auto where = [&] { return "input " + std::to_string(i) + " ('" + spec.name + "')"; };
    if (v.dtype != spec.dtype) {
      return Status(StatusCode::kInvalidArgument, where() + ": expected dtype " + DTypeName(spec.dtype) + ", got " +
                                                      DTypeName(v.dtype));
    }
    if (v.shape.size() != spec.shape.size()) {
      return Status(StatusCode::kInvalidArgument, where() + ": expected shape " + SpecShapeString(spec) + " (rank " +
                                                      std::to_string(spec.shape.size()) + "), got " +
                                                      ShapeString(v.shape) + " (rank " +
                                                      std::to_string(v.shape.size()) + ")");
    }
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      const int sym = m.input_symbols[i][d];
      const int64_t n = v.shape[d];
      if (sym < 0) {
        if (n != spec.shape[d]) {
          return Status(StatusCode::kInvalidArgument, where() + ": expected shape " + SpecShapeString(spec) + ", got " +
                                                          ShapeString(v.shape) + " (dim " + std::to_string(d) +
                                                          " must be " + std::to_string(spec.shape[d]) + ")");
        }
        continue;
      }
      const DynamicDim& dim = m.dynamic_dims[static_cast<size_t>(sym)];
      auto at = [&] { return where() + " dim " + std::to_string(d) + " (" + dim.name + ")"; };
      if (n < dim.min || n > dim.max) {
        return Status(StatusCode::kInvalidArgument, at() + ": " + std::to_string(n) + " is outside " +
                                                        std::to_string(dim.min) + ".." + std::to_string(dim.max));
      }
      int64_t& value = plan->values[static_cast<size_t>(sym)];
      if (value < 0) {
        value = n;
        first[static_cast<size_t>(sym)] = {i, d};
      } else if (value != n) {
        auto [fi, fd] = first[static_cast<size_t>(sym)];
        return Status(StatusCode::kInvalidArgument,
                      at() + " is " + std::to_string(n) + ", but input " + std::to_string(fi) + " ('" + m.inputs[fi].name +
                          "') dim " + std::to_string(fd) + " (" + dim.name + ") is " + std::to_string(value) +
                          ": dims of one symbol must be equal");
      }
    }
    if (v.data == nullptr && NumElements(v.shape) != 0) {
      return Status(StatusCode::kInvalidArgument, where() + ": data pointer is null");
    }
  }
  // Every symbol sizes some input dim (checked at load), so every value is set. Pick the buckets.
  plan->buckets.assign(num_symbols, 0);
  plan->padded = false;
  size_t flat = 0;
  for (size_t s = 0; s < num_symbols; ++s) {
    const DynamicDim& dim = m.dynamic_dims[s];
    const int64_t v = plan->values[s];
    size_t b = 0;
    while (dim.buckets[b] < v) ++b;  // the last bucket is max >= v
    if (dim.buckets[b] != v) {
      if (!dim.padded) {
        auto [fi, fd] = first[s];
        return Status(StatusCode::kInvalidArgument,
                      "input " + std::to_string(fi) + " ('" + m.inputs[fi].name + "') dim " + std::to_string(fd) + " (" +
                          dim.name + "): size " + std::to_string(v) + " has no compiled code: this bundle runs " +
                          dim.name + " at " + BucketList(dim.buckets) + " only, and not padded to the next bucket (" +
                          (dim.not_padded.empty() ? "the compiler could not prove padding exact" : dim.not_padded) +
                          ")");
      }
      plan->padded = true;
    }
    plan->buckets[s] = dim.buckets[b];
    flat = flat * dim.buckets.size() + b;
  }
  plan->program = &m.programs[m.program_by_buckets[flat]];
  plan->output_shapes = plan->program->output_shapes;
  for (size_t s = 0; s < num_symbols; ++s) {
    if (plan->values[s] == plan->buckets[s]) continue;
    for (const PadCut& c : m.padding[s]) plan->output_shapes[c.output][c.dim] = c.add + c.mul * plan->values[s];
  }
  return Status::Ok();
}

// Outputs of a dynamic call: count, dtype, exactly this call's shapes, no overlap with an input.
Status ValidateDynamicOutputs(const Manifest& m, const CallPlan& plan, const std::vector<ConstTensorView>& inputs,
                              const std::vector<TensorView>& outputs) {
  if (outputs.size() != m.outputs.size()) {
    return Status(StatusCode::kInvalidArgument, "expected " + std::to_string(m.outputs.size()) +
                                                    " output buffer(s), got " + std::to_string(outputs.size()));
  }
  for (size_t i = 0; i < outputs.size(); ++i) {
    const TensorSpec& spec = m.outputs[i];
    const TensorView& v = outputs[i];
    const std::string where = "output " + std::to_string(i) + " ('" + spec.name + "')";
    if (v.dtype != spec.dtype) {
      return Status(StatusCode::kInvalidArgument, where + ": expected dtype " + DTypeName(spec.dtype) + ", got " +
                                                      DTypeName(v.dtype));
    }
    if (v.shape != plan.output_shapes[i]) {
      return Status(StatusCode::kInvalidArgument, where + ": expected shape " + ShapeString(plan.output_shapes[i]) +
                                                      " for these inputs (" + SpecShapeString(spec) + "), got " +
                                                      ShapeString(v.shape));
    }
    const size_t bytes = static_cast<size_t>(NumElements(v.shape)) * DTypeSize(spec.dtype);
    if (v.data == nullptr && bytes != 0) return Status(StatusCode::kInvalidArgument, where + ": data pointer is null");
    for (size_t j = 0; j < inputs.size(); ++j) {
      const size_t in_bytes = static_cast<size_t>(NumElements(inputs[j].shape)) * DTypeSize(inputs[j].dtype);
      if (Overlaps(v.data, bytes, inputs[j].data, in_bytes)) {
        return Status(StatusCode::kInvalidArgument, "output " + std::to_string(i) + " overlaps input " + std::to_string(j));
      }
    }
  }
  return Status::Ok();
}

// Copies the leading block min(src_shape, dst_shape) (per dim) of a C-order tensor into another of
// the same rank: pads (src smaller) or cuts (dst smaller).
void CopyBlock(const uint8_t* src, const std::vector<int64_t>& src_shape, uint8_t* dst,
               const std::vector<int64_t>& dst_shape, size_t itemsize) {
  ForEachBlockRow(src_shape, dst_shape, itemsize,
                  [&](size_t from, size_t to, size_t bytes) { std::memcpy(dst + to, src + from, bytes); });
}
}  // namespace

struct Model::Impl {
  MappedFile file;
  Manifest manifest;
  std::optional<LoadedCode> code;  // device "cpu", static bundle
  std::vector<LoadedCode> program_code;  // device "cpu", dynamic bundle: one per manifest.programs[i]
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
    void* p = AllocateArena(arena_size);
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

  // Calls `entry` with the pointers its call list names, on an arena from the pool.
  Status Call(EntryFn entry, const std::vector<CallArg>& call, const std::vector<const void*>& inputs,
              const std::vector<void*>& outputs) const {
    auto arena = TakeArena();
    if (!arena.ok()) return arena.status();
    std::vector<void*> args(call.size());
    for (size_t i = 0; i < call.size(); ++i) {
      const CallArg& c = call[i];
      switch (c.kind) {
        case CallArg::Kind::kInput: args[i] = const_cast<void*>(inputs[c.index]); break;  // read-only by contract
        case CallArg::Kind::kWeight: args[i] = const_cast<void*>(weights[c.index]); break;
        case CallArg::Kind::kOutput: args[i] = outputs[c.index]; break;
        case CallArg::Kind::kArena: args[i] = arena->get(); break;
      }
    }
    entry(args.data(), &host);
    ReturnArena(std::move(arena).value());
    return Status::Ok();
  }

  Status RunDynamic(const CallPlan& plan, const std::vector<ConstTensorView>& inputs,
                    const std::vector<TensorView>& outputs) const;
};

namespace {
Result<Arena> AllocateZeroed(size_t bytes, const std::string& what) {
  size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, rounded);
  if (!p) {
    return Status(StatusCode::kResourceExhausted, "cannot allocate " + std::to_string(bytes) + " bytes for " + what);
  }
  std::memset(p, 0, rounded);
  return Arena(static_cast<uint8_t*>(p));
}
}  // namespace

// A run of a dynamic bundle. At bucket sizes the program reads and writes the caller's buffers
// directly. Below a bucket (padded symbols), each input with such a dim is copied into a zeroed
// buffer of the bucket's shape, and each output with a cut dim is written to a temporary of the
// program's shape, whose leading block is copied out afterwards. Temporaries belong to the call,
// so concurrent runs at different shapes share nothing but the (read-only) code and weights.
Status Model::Impl::RunDynamic(const CallPlan& plan, const std::vector<ConstTensorView>& inputs,
                               const std::vector<TensorView>& outputs) const {
  const Program& program = *plan.program;
  const size_t index = static_cast<size_t>(&program - manifest.programs.data());
  std::vector<const void*> in(inputs.size());
  std::vector<void*> out(outputs.size());
  std::vector<Arena> temporaries;
  for (size_t i = 0; i < inputs.size(); ++i) {
    in[i] = inputs[i].data;
    if (!plan.padded) continue;
    std::vector<int64_t> shape = inputs[i].shape;
    bool pad = false;
    for (size_t d = 0; d < shape.size(); ++d) {
      const int sym = manifest.input_symbols[i][d];
      if (sym >= 0 && shape[d] != plan.buckets[static_cast<size_t>(sym)]) {
        shape[d] = plan.buckets[static_cast<size_t>(sym)];
        pad = true;
      }
    }
    if (!pad) continue;
    const size_t itemsize = DTypeSize(inputs[i].dtype);
    auto buffer = AllocateZeroed(static_cast<size_t>(NumElements(shape)) * itemsize,
                                 "padding input " + std::to_string(i) + " to " + ShapeString(shape));
    if (!buffer.ok()) return buffer.status();
    CopyBlock(static_cast<const uint8_t*>(inputs[i].data), inputs[i].shape, buffer->get(), shape, itemsize);
    in[i] = buffer->get();
    temporaries.push_back(std::move(buffer).value());
  }
  std::vector<size_t> cut;  // outputs written to a temporary first
  for (size_t o = 0; o < outputs.size(); ++o) {
    out[o] = outputs[o].data;
    if (!plan.padded || outputs[o].shape == program.output_shapes[o]) continue;
    const size_t bytes = static_cast<size_t>(NumElements(program.output_shapes[o])) * DTypeSize(outputs[o].dtype);
    auto buffer = AllocateZeroed(bytes, "output " + std::to_string(o) + " at " + ShapeString(program.output_shapes[o]));
    if (!buffer.ok()) return buffer.status();
    out[o] = buffer->get();
    temporaries.push_back(std::move(buffer).value());
    cut.push_back(o);
  }
  if (Status s = Call(program_code[index].entry(), program.call, in, out); !s.ok()) return s;
  for (size_t o : cut) {
    CopyBlock(static_cast<const uint8_t*>(out[o]), program.output_shapes[o], static_cast<uint8_t*>(outputs[o].data),
              outputs[o].shape, DTypeSize(outputs[o].dtype));
  }
  return Status::Ok();
}

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
  // The manifest (hash-checked) comes first: it may list the weights' chunk digests, which the
  // load's threads check side by side. The signature covers every section's digest, so it is
  // checked once every section has been.
  auto manifest = ParseManifest(*view);
  if (!manifest.ok()) return Status(manifest.status().code(), path + ": " + manifest.status().message());
  int threads = options.num_threads > 0 ? options.num_threads : DefaultThreadCount();
  if (threads > 1024) return Status(StatusCode::kInvalidArgument, "num_threads " + std::to_string(threads) + " is too large");
  if (Status s = VerifyWeights(*view, *manifest, threads); !s.ok()) return Status(s.code(), path + ": " + s.message());
  if (signed_only) {
    if (Status s = VerifySignature(*view, options.public_key); !s.ok()) return Status(s.code(), path + ": " + s.message());
  }

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
  std::optional<LoadedCode> code;
  std::vector<LoadedCode> program_code;
  if (manifest->is_dynamic()) {
    for (const Program& program : manifest->programs) {
      const SectionRef* section = view->Find(program.section);
      auto loaded = LoadedCode::Load(section->data, section->size, program.entry);
      if (!loaded.ok()) {
        return Status(loaded.status().code(), path + ": program for section '" + program.section + "': " +
                                                  loaded.status().message());
      }
      program_code.push_back(std::move(loaded).value());
    }
  } else {
    const SectionRef* code_section = view->Find(manifest->cpu.section);
    auto loaded = LoadedCode::Load(code_section->data, code_section->size, manifest->cpu.entry);
    if (!loaded.ok()) return Status(loaded.status().code(), path + ": " + loaded.status().message());
    code.emplace(std::move(loaded).value());
  }

  const SectionRef* weight_section = view->Find("weights");
  auto impl = std::make_unique<Impl>(std::move(file).value(), std::move(manifest).value());
  impl->code = std::move(code);
  impl->program_code = std::move(program_code);
  for (const auto& w : impl->manifest.weights) impl->weights.push_back(weight_section->data + w.offset);
  impl->arena_size = std::max<size_t>(64, (impl->manifest.arena_bytes + 63) / 64 * 64);
  impl->pool = std::make_unique<ThreadPool>(threads);
  impl->host = HostApi{kHostAbiVersion, static_cast<uint32_t>(threads), impl->pool.get(), &ThreadPool::ParallelForThunk};
  return std::shared_ptr<const Model>(new Model(std::move(impl)));
}

const std::vector<TensorSpec>& Model::inputs() const { return impl_->manifest.inputs; }
const std::vector<TensorSpec>& Model::outputs() const { return impl_->manifest.outputs; }
const std::vector<DynamicDim>& Model::dynamic_dims() const { return impl_->manifest.dynamic_dims; }
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
  const Manifest& m = impl_->manifest;
  if (m.is_dynamic()) {  // the program is chosen as on the CPU; the backend pads and cuts on the device
    CallPlan plan;
    if (Status s = PlanDynamicCall(m, inputs, &plan); !s.ok()) return s;
    if (Status s = ValidateDynamicOutputs(m, plan, inputs, outputs); !s.ok()) return s;
    return impl_->cuda->Run(static_cast<size_t>(plan.program - m.programs.data()), inputs, outputs,
                            /*device_pointers=*/true, wait_stream);
  }
  if (Status s = Validate(m, inputs, outputs); !s.ok()) return s;
  return impl_->cuda->Run(0, inputs, outputs, /*device_pointers=*/true, wait_stream);
}

Result<std::vector<DeviceTensor>> Model::RunDevice(const std::vector<ConstTensorView>& inputs,
                                                   uintptr_t wait_stream) const {
  if (!impl_->cuda) return NotOnCuda(impl_->device);
  const Manifest& m = impl_->manifest;
  auto shapes = OutputShapes(inputs);  // validates the inputs before anything is allocated
  if (!shapes.ok()) return shapes.status();
  std::vector<DeviceTensor> outputs;
  std::vector<TensorView> views;
  outputs.reserve(m.outputs.size());
  for (size_t i = 0; i < m.outputs.size(); ++i) {
    const TensorSpec& spec = m.outputs[i];
    DeviceTensor t;
    t.dtype_ = spec.dtype;
    t.shape_ = std::move((*shapes)[i]);
    t.ordinal_ = impl_->cuda->ordinal();
    t.num_bytes_ = static_cast<size_t>(NumElements(t.shape_)) * DTypeSize(spec.dtype);
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

Result<std::vector<std::vector<int64_t>>> Model::OutputShapes(const std::vector<ConstTensorView>& inputs) const {
  const Manifest& m = impl_->manifest;
  if (m.is_dynamic()) {
    CallPlan plan;
    if (Status s = PlanDynamicCall(m, inputs, &plan); !s.ok()) return s;
    return std::move(plan.output_shapes);
  }
  if (Status s = ValidateInputs(m, inputs); !s.ok()) return s;
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& spec : m.outputs) shapes.push_back(spec.shape);
  return shapes;
}

Status Model::Run(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs) const {
  const Manifest& m = impl_->manifest;
  if (m.is_dynamic()) {
    CallPlan plan;
    if (Status s = PlanDynamicCall(m, inputs, &plan); !s.ok()) return s;
    if (Status s = ValidateDynamicOutputs(m, plan, inputs, outputs); !s.ok()) return s;
    if (impl_->cuda) {  // pads and cuts on the device (the same rows RunDynamic copies here)
      return impl_->cuda->Run(static_cast<size_t>(plan.program - m.programs.data()), inputs, outputs,
                              /*device_pointers=*/false);
    }
    return impl_->RunDynamic(plan, inputs, outputs);
  }
  if (Status s = Validate(m, inputs, outputs); !s.ok()) return s;
  if (impl_->cuda) return impl_->cuda->Run(0, inputs, outputs, /*device_pointers=*/false);
  std::vector<const void*> in(inputs.size());
  std::vector<void*> out(outputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) in[i] = inputs[i].data;
  for (size_t i = 0; i < outputs.size(); ++i) out[i] = outputs[i].data;
  return impl_->Call(impl_->code->entry(), m.call, in, out);
}

Result<std::vector<Tensor>> Model::Run(const std::vector<ConstTensorView>& inputs) const {
  auto shapes = OutputShapes(inputs);  // validates the inputs before anything is allocated
  if (!shapes.ok()) return shapes.status();
  std::vector<Tensor> outputs;
  std::vector<TensorView> views;
  for (size_t i = 0; i < shapes->size(); ++i) {
    auto t = Tensor::Allocate(impl_->manifest.outputs[i].dtype, std::move((*shapes)[i]));
    if (!t.ok()) {
      return Status(t.status().code(), t.status().message() + " for output " + std::to_string(i) + " ('" +
                                           impl_->manifest.outputs[i].name + "')");
    }
    outputs.push_back(std::move(t).value());
    views.push_back(outputs.back().view());
  }
  if (Status s = Run(inputs, views); !s.ok()) return s;
  return outputs;
}

}  // namespace mlrt
