// mlrt_run: load a bundle, run it on .npy inputs, write .npy outputs. A walkthrough of the C++ API.
//
//   mlrt_run model.bundle -i x.npy [-i y.npy ...] [-o out_prefix] [--repeat N] [--public-key key.pub]
//            [--verify fast|full|skip-weights]
//
// Writes out_prefix0.npy, out_prefix1.npy, ... (one per model output, in manifest order).
// Exit code: 0 on success, 1 on any error (the message goes to stderr); it never crashes on a bad
// bundle or bad inputs, which the tests check under AddressSanitizer.
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "mlrt/mlrt.h"
#include "npy.h"

namespace {

int Fail(const mlrt::Status& status) {
  std::cerr << "mlrt_run: " << status.ToString() << "\n";
  return 1;
}

// A `.pub` file from `mlpack keygen`: the 32-byte Ed25519 public key as 64 hex digits.
mlrt::Result<std::string> ReadPublicKey(const std::string& path) {
  std::ifstream f(path);
  std::string hex;
  if (!(f >> hex) || hex.size() != 64) {
    return mlrt::Status(mlrt::StatusCode::kInvalidArgument, path + ": expected 64 hex digits");
  }
  auto nibble = [](char c) { return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1; };
  std::string key;
  for (size_t i = 0; i < 64; i += 2) {
    int hi = nibble(hex[i]), lo = nibble(hex[i + 1]);
    if (hi < 0 || lo < 0) return mlrt::Status(mlrt::StatusCode::kInvalidArgument, path + ": not lowercase hex");
    key.push_back(static_cast<char>(hi * 16 + lo));
  }
  return key;
}

}  // namespace

int main(int argc, char** argv) {
  std::string bundle_path, out_prefix, public_key_path;
  std::vector<std::string> input_paths;
  int repeat = 1;
  mlrt::LoadOptions options;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if ((arg == "-i" || arg == "--input") && i + 1 < argc) {
      input_paths.push_back(argv[++i]);
    } else if ((arg == "-o" || arg == "--output") && i + 1 < argc) {
      out_prefix = argv[++i];
    } else if (arg == "--public-key" && i + 1 < argc) {
      public_key_path = argv[++i];
    } else if (arg == "--verify" && i + 1 < argc) {
      const std::string mode = argv[++i];
      if (mode == "fast") {
        options.verify = mlrt::LoadOptions::Verify::kFast;
      } else if (mode == "full") {
        options.verify = mlrt::LoadOptions::Verify::kFull;
      } else if (mode == "skip-weights") {
        options.verify = mlrt::LoadOptions::Verify::kSkipWeights;
      } else {
        std::cerr << "mlrt_run: --verify takes fast, full or skip-weights\n";
        return 2;
      }
    } else if (arg == "--repeat" && i + 1 < argc) {
      repeat = std::max(1, std::atoi(argv[++i]));
    } else if (bundle_path.empty() && arg[0] != '-') {
      bundle_path = arg;
    } else {
      std::cerr << "usage: mlrt_run model.bundle -i input.npy ... [-o out_prefix] [--repeat N]\n";
      return 2;
    }
  }
  if (bundle_path.empty()) {
    std::cerr << "usage: mlrt_run model.bundle -i input.npy ... [-o out_prefix] [--repeat N]\n";
    return 2;
  }

  // 1. Load the bundle: map it, verify every section's hash (by default the weights by their
  //    XXH3 checksums; with a public key, SHA-256 and the signature), check the CPU can run its
  //    code. The result is immutable and may be shared by any number of threads.
  const auto load_start = std::chrono::steady_clock::now();
  if (!public_key_path.empty()) {
    auto key = ReadPublicKey(public_key_path);
    if (!key.ok()) return Fail(key.status());
    options.public_key = *key;
  }
  mlrt::Result<std::shared_ptr<const mlrt::Model>> loaded = mlrt::Model::Load(bundle_path, options);
  if (!loaded.ok()) return Fail(loaded.status());
  const mlrt::Model& model = **loaded;
  const double load_ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - load_start).count();
  // A bundle may carry CPU code for several targets (mlpack build --cpu x86-64-v3,aarch64): the
  // load picked the first this CPU can run.
  if (!model.cpu_variant().empty()) {
    std::cout << "cpu code: " << model.cpu_variant();
    if (!model.kernel_isa().empty()) std::cout << ", kernels " << model.kernel_isa();
    std::cout << "\n";
  }

  // 2. The signature: names, dtypes and shapes of the inputs. A dynamic dim (bundle format
  //    version 2) has shape -1, a symbol and a range: printed as batch=1..32. The .npy files give
  //    this run's sizes.
  for (const auto& spec : model.inputs()) {
    std::cout << "input  " << spec.name << ": " << mlrt::DTypeName(spec.dtype) << "[";
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      std::cout << (d ? "," : "");
      if (spec.shape[d] >= 0) {
        std::cout << spec.shape[d];
      } else {
        std::cout << spec.symbols[d] << "=" << spec.min_shape[d] << ".." << spec.max_shape[d];
      }
    }
    std::cout << "]\n";
  }

  // 3. Read the inputs. Views do not own data: the arrays must outlive Run().
  std::vector<NpyArray> arrays;
  std::vector<mlrt::ConstTensorView> inputs;
  for (const auto& path : input_paths) {
    mlrt::Result<NpyArray> a = ReadNpy(path);
    if (!a.ok()) return Fail(a.status());
    arrays.push_back(std::move(a).value());
  }
  for (const auto& a : arrays) inputs.push_back({a.data.data(), a.dtype, a.shape});

  // 4. Run. Inputs are checked (count, dtype, shape) before any data is touched; a mismatch is an
  //    INVALID_ARGUMENT status naming the input. Outputs are allocated by the runtime here, at this
  //    call's shapes (Model::OutputShapes gives them without running).
  double best_ms = 1e300, first_ms = 0;
  mlrt::Result<std::vector<mlrt::Tensor>> outputs = mlrt::Status(mlrt::StatusCode::kInternal, "not run");
  for (int r = 0; r < repeat; ++r) {
    auto t0 = std::chrono::steady_clock::now();
    outputs = model.Run(inputs);
    auto t1 = std::chrono::steady_clock::now();
    if (!outputs.ok()) return Fail(outputs.status());
    const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    if (r == 0) first_ms = ms;
    best_ms = std::min(best_ms, ms);
  }

  // 5. Use the outputs: here, save them as .npy files.
  for (size_t i = 0; i < outputs->size(); ++i) {
    const mlrt::Tensor& t = (*outputs)[i];
    std::cout << "output " << model.outputs()[i].name << ": " << t.num_bytes() << " bytes [";
    for (size_t d = 0; d < t.shape().size(); ++d) std::cout << (d ? "," : "") << t.shape()[d];
    std::cout << "]\n";
    if (!out_prefix.empty()) {
      mlrt::Status s = WriteNpy(out_prefix + std::to_string(i) + ".npy", t.dtype(), t.shape(), t.data(), t.num_bytes());
      if (!s.ok()) return Fail(s);
    }
  }
  std::cout << "load: " << load_ms << " ms, first run: " << first_ms << " ms\n";
  std::cout << "run: " << best_ms << " ms (best of " << repeat << ")\n";
  return 0;
}
