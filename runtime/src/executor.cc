#include "executor.h"

#include "cpu_executor.h"
#include "cuda_executor.h"

namespace mlrt {

Result<Device> ParseDevice(const std::string& device) {
  if (device == "cpu") return Device{};
  if (device == "cuda") return Device{0, "cuda:0"};
  if (device.size() > 5 && device.size() <= 9 && device.compare(0, 5, "cuda:") == 0) {
    int n = 0;
    bool digits = true;
    for (size_t i = 5; i < device.size(); ++i) {
      char c = device[i];
      if (c < '0' || c > '9') digits = false;
      else n = n * 10 + (c - '0');
    }
    if (digits) return Device{n, "cuda:" + std::to_string(n)};
  }
  return Status(StatusCode::kInvalidArgument, "device must be 'cpu', 'cuda' or 'cuda:N', got '" + device + "'");
}

std::vector<ProgramLayout> ProgramLayouts(const Manifest& manifest) {
  std::vector<ProgramLayout> layouts;
  if (!manifest.is_dynamic()) {
    ProgramLayout& p = layouts.emplace_back();
    p.call = manifest.call;
    for (const TensorSpec& spec : manifest.inputs) p.input_shapes.push_back(spec.shape);
    for (const TensorSpec& spec : manifest.outputs) p.output_shapes.push_back(spec.shape);
    return layouts;
  }
  for (const Program& program : manifest.programs) {
    ProgramLayout& p = layouts.emplace_back();
    p.call = program.call;
    for (size_t i = 0; i < manifest.inputs.size(); ++i) {
      std::vector<int64_t> shape = manifest.inputs[i].shape;
      for (size_t d = 0; d < shape.size(); ++d) {
        const int sym = manifest.input_symbols[i][d];
        if (sym >= 0) shape[d] = program.sizes[static_cast<size_t>(sym)];
      }
      p.input_shapes.push_back(std::move(shape));
    }
    p.output_shapes = program.output_shapes;
  }
  return layouts;
}

Result<std::unique_ptr<Executor>> CreateExecutor(const Device& device, const Manifest& manifest,
                                                 const BundleView& bundle, int num_threads) {
  if (device.is_cuda()) return CudaExecutor::Create(device, manifest, bundle);
  return CpuExecutor::Create(manifest, bundle, num_threads);
}

int64_t NumElements(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

}  // namespace mlrt
