// mlrt_bench: the C++ twin of `mlpack bench`, no Python needed.
//
//   mlrt_bench model.bundle [-n ITERATIONS] [--warmup N] [--threads N] [--dim SYMBOL=SIZE ...]
//
// Prints load + first-run time (from main() entry), min / median / p99 latency and throughput of
// N runs on deterministic random inputs, and peak RSS. A bundle with dynamic dims runs each symbol
// at its max unless --dim sets it (e.g. --dim batch=4).
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "mlrt/mlrt.h"

namespace {

using Clock = std::chrono::steady_clock;

double Ms(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

long PeakRssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmHWM:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

}  // namespace

int main(int argc, char** argv) {
  const auto start = Clock::now();
  std::string path;
  int iterations = 50, warmup = 5;
  std::vector<std::pair<std::string, int64_t>> dims;  // --dim SYMBOL=SIZE
  mlrt::LoadOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "-n" && i + 1 < argc) {
      iterations = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--warmup" && i + 1 < argc) {
      warmup = std::max(0, std::atoi(argv[++i]));
    } else if (arg == "--threads" && i + 1 < argc) {
      options.num_threads = std::max(0, std::atoi(argv[++i]));
    } else if (arg == "--dim" && i + 1 < argc && std::strchr(argv[i + 1], '=')) {
      std::string d = argv[++i];
      size_t eq = d.find('=');
      dims.emplace_back(d.substr(0, eq), std::atoll(d.c_str() + eq + 1));
    } else if (path.empty() && arg[0] != '-') {
      path = arg;
    } else {
      std::cerr << "usage: mlrt_bench model.bundle [-n ITERATIONS] [--warmup N] [--threads N] [--dim SYMBOL=SIZE]\n";
      return 2;
    }
  }
  if (path.empty()) {
    std::cerr << "usage: mlrt_bench model.bundle [-n ITERATIONS] [--warmup N] [--threads N]\n";
    return 2;
  }

  auto loaded = mlrt::Model::Load(path, options);
  if (!loaded.ok()) {
    std::cerr << "mlrt_bench: " << loaded.status().ToString() << "\n";
    return 1;
  }
  const mlrt::Model& model = **loaded;

  // Input shapes: a dynamic dim at its symbol's --dim size, else at its max.
  for (const auto& [symbol, size] : dims) {
    const mlrt::DynamicDim* dim = nullptr;
    for (const auto& d : model.dynamic_dims()) dim = d.name == symbol ? &d : dim;
    if (!dim) return std::cerr << "mlrt_bench: --dim " << symbol << ": the model has no such dynamic dim\n", 1;
    if (size < dim->min || size > dim->max) {
      std::cerr << "mlrt_bench: --dim " << symbol << "=" << size << ": " << size << " is outside " << dim->min << ".."
                << dim->max << "\n";
      return 1;
    }
  }
  std::vector<std::vector<int64_t>> shapes;
  for (const auto& spec : model.inputs()) {
    std::vector<int64_t> shape = spec.shape;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] >= 0) continue;
      shape[d] = spec.max_shape[d];
      for (const auto& [symbol, size] : dims) {
        if (symbol == spec.symbols[d]) shape[d] = size;  // within the symbol's range: checked above
      }
    }
    shapes.push_back(std::move(shape));
  }
  // Deterministic inputs: normal floats, zeros for integer inputs (always valid indices).
  std::mt19937 rng(0);
  std::normal_distribution<float> normal;
  std::vector<std::vector<char>> buffers;
  std::vector<mlrt::ConstTensorView> inputs;
  std::cout << "inputs";
  for (size_t k = 0; k < shapes.size(); ++k) {
    const auto& spec = model.inputs()[k];
    size_t elements = 1;
    std::cout << " [";
    for (size_t d = 0; d < shapes[k].size(); ++d) {
      elements *= static_cast<size_t>(shapes[k][d]);
      std::cout << (d ? "," : "") << shapes[k][d];
    }
    std::cout << "]";
    buffers.emplace_back(elements * mlrt::DTypeSize(spec.dtype), 0);
    if (spec.dtype == mlrt::DType::kFloat32) {
      auto* f = reinterpret_cast<float*>(buffers.back().data());
      for (size_t i = 0; i < elements; ++i) f[i] = normal(rng);
    }
    inputs.push_back({buffers.back().data(), spec.dtype, shapes[k]});
  }
  std::cout << "\n";
  // Outputs at this call's shapes (OutputShapes validates the inputs, e.g. a size between buckets of a
  // symbol that is not padded).
  auto output_shapes = model.OutputShapes(inputs);
  if (!output_shapes.ok()) return std::cerr << "mlrt_bench: " << output_shapes.status().ToString() << "\n", 1;
  std::vector<mlrt::Tensor> outputs;
  std::vector<mlrt::TensorView> views;
  for (size_t k = 0; k < output_shapes->size(); ++k) {
    auto t = mlrt::Tensor::Allocate(model.outputs()[k].dtype, (*output_shapes)[k]);
    if (!t.ok()) return std::cerr << "mlrt_bench: " << t.status().ToString() << "\n", 1;
    outputs.push_back(std::move(t).value());
    views.push_back(outputs.back().view());
  }

  auto run = [&] {
    mlrt::Status s = model.Run(inputs, views);
    if (!s.ok()) {
      std::cerr << "mlrt_bench: " << s.ToString() << "\n";
      std::exit(1);
    }
  };
  run();
  const double first_ms = Ms(start, Clock::now());
  for (int i = 0; i < warmup; ++i) run();
  std::vector<double> times;
  for (int i = 0; i < iterations; ++i) {
    auto t0 = Clock::now();
    run();
    times.push_back(Ms(t0, Clock::now()));
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  const double p99 = times[std::min(times.size() - 1, static_cast<size_t>(0.99 * (times.size() - 1) + 0.5))];
  std::cout << path << ": " << iterations << " runs after " << warmup << " warm-up, " << model.num_threads()
            << " thread(s)\n"
            << "  min " << times.front() << " ms  median " << median << " ms  p99 " << p99 << " ms  throughput "
            << 1e3 / median << " /s\n"
            << "  load + first run: " << first_ms << " ms; peak RSS " << PeakRssKb() / 1024 << " MiB\n";
  return 0;
}
