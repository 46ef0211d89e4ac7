// Model: the device-independent half of mlrt. Load maps and verifies the bundle (bundle_reader,
// signature) and creates the executor the device string names (executor.h); every call is
// validated here (count, dtype, shapes, no overlap), a dynamic bundle's program is chosen here
// (ranges, one size per symbol, the bucket), outputs are allocated here; the executor runs it.
#include <memory>
#include <string>
#include <vector>

#include "bundle_reader.h"
#include "executor.h"
#include "mlrt/mlrt.h"
#include "signature.h"
#include "thread_pool.h"

namespace mlrt {

uint32_t MaxBundleFormatVersion() { return kBundleFormatVersion; }

namespace {

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

}  // namespace

struct Model::Impl {
  MappedFile file;  // outlives the executor, which may use the weights in place
  Manifest manifest;
  std::string device = "cpu";
  std::unique_ptr<Executor> executor;

  Impl(MappedFile f, Manifest m) : file(std::move(f)), manifest(std::move(m)) {}

  // Validates a call's inputs and outputs and returns the program to run: 0 for a static bundle,
  // the chosen one's index into manifest.programs for a dynamic bundle.
  Result<size_t> PlanRun(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs) const {
    if (!manifest.is_dynamic()) {
      if (Status s = Validate(manifest, inputs, outputs); !s.ok()) return s;
      return size_t{0};
    }
    CallPlan plan;
    if (Status s = PlanDynamicCall(manifest, inputs, &plan); !s.ok()) return s;
    if (Status s = ValidateDynamicOutputs(manifest, plan, inputs, outputs); !s.ok()) return s;
    return static_cast<size_t>(plan.program - manifest.programs.data());
  }
};

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

Result<std::shared_ptr<const Model>> Model::Load(const std::string& path, const LoadOptions& options) {
  auto device = ParseDevice(options.device);
  if (!device.ok()) return device.status();
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

  auto executor = CreateExecutor(*device, *manifest, *view, threads);
  if (!executor.ok()) return Status(executor.status().code(), path + ": " + executor.status().message());
  auto impl = std::make_unique<Impl>(std::move(file).value(), std::move(manifest).value());
  impl->device = device->name;
  impl->executor = std::move(executor).value();
  return std::shared_ptr<const Model>(new Model(std::move(impl)));
}

const std::vector<TensorSpec>& Model::inputs() const { return impl_->manifest.inputs; }
const std::vector<TensorSpec>& Model::outputs() const { return impl_->manifest.outputs; }
const std::vector<DynamicDim>& Model::dynamic_dims() const { return impl_->manifest.dynamic_dims; }
const std::string& Model::manifest_json() const { return impl_->manifest.text; }
size_t Model::arena_bytes() const { return impl_->manifest.arena_bytes; }
int Model::num_threads() const { return impl_->executor->num_threads(); }
const std::string& Model::device() const { return impl_->device; }
size_t Model::device_bytes() const { return impl_->executor->device_bytes(); }
std::string Model::cpu_variant() const { return impl_->executor->cpu_variant(); }
std::string Model::kernel_isa() const { return impl_->executor->kernel_isa(); }

namespace {
Status NotOnCuda(const std::string& device) {
  return Status(StatusCode::kFailedPrecondition,
                "RunDevice takes CUDA device pointers: it needs a model loaded with device \"cuda:N\", and this one "
                "runs on " + device);
}
}  // namespace

Status Model::RunDevice(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
                        uintptr_t wait_stream) const {
  const DeviceExecutor* gpu = impl_->executor->device_executor();
  if (!gpu) return NotOnCuda(impl_->device);
  auto program = impl_->PlanRun(inputs, outputs);
  if (!program.ok()) return program.status();
  return gpu->RunDevice(*program, inputs, outputs, wait_stream);
}

Result<std::vector<DeviceTensor>> Model::RunDevice(const std::vector<ConstTensorView>& inputs,
                                                   uintptr_t wait_stream) const {
  const DeviceExecutor* gpu = impl_->executor->device_executor();
  if (!gpu) return NotOnCuda(impl_->device);
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
    t.ordinal_ = gpu->ordinal();
    t.num_bytes_ = static_cast<size_t>(NumElements(t.shape_)) * DTypeSize(spec.dtype);
    if (t.num_bytes_ > 0) {  // zero-byte outputs own nothing (cuMemAlloc refuses size 0)
      auto buffer = gpu->Allocate(t.num_bytes_, "output " + std::to_string(i));
      if (!buffer.ok()) return buffer.status();
      t.buffer_ = std::move(buffer->owner);
      t.data_ = buffer->data;
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
  auto program = impl_->PlanRun(inputs, outputs);
  if (!program.ok()) return program.status();
  return impl_->executor->Run(*program, inputs, outputs);
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
