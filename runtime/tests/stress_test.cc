// Stress checks run by tests/test_trust.py, built with sanitizers:
//   stress_test concurrency BUNDLE THREADS RUNS   many threads share one Model, each result must be
//                                                 bit-identical to a single-threaded run; on a bundle
//                                                 with dynamic dims each input set has its own sizes
//                                                 (buckets and, where padded, sizes between them),
//                                                 and every other run writes into caller-provided
//                                                 outputs of the shapes OutputShapes gives
//   stress_test leak BUNDLE ITERATIONS            load / run / unload in a loop (LeakSanitizer and
//                                                 RSS growth catch leaks)
//   stress_test pool THREADS LOOPS                the thread pool alone: every task of every loop
//                                                 runs once, and never after its loop returned
// Inputs are deterministic per (thread, run); exit 0 on success, 1 with a message otherwise.
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "../src/thread_pool.h"
#include "mlrt/mlrt.h"

namespace {

struct Inputs {
  std::vector<std::vector<char>> data;
  std::vector<std::vector<int64_t>> shapes;
};

// The size of each dynamic dim's symbol for input set `seed`: any size in range where the symbol
// is padded, else one of its buckets.
int64_t SymbolSize(const mlrt::Model& model, const std::string& symbol, uint32_t seed) {
  const auto& dims = model.dynamic_dims();
  for (size_t s = 0; s < dims.size(); ++s) {
    const mlrt::DynamicDim& d = dims[s];
    if (d.name != symbol) continue;
    const uint32_t pick = seed * (2 * static_cast<uint32_t>(s) + 1) + static_cast<uint32_t>(s) * 3;
    if (!d.padded) return d.buckets[pick % d.buckets.size()];
    return d.min + static_cast<int64_t>(pick % static_cast<uint64_t>(d.max - d.min + 1));
  }
  return -1;
}

Inputs MakeInputs(const mlrt::Model& model, uint32_t seed) {
  Inputs inputs;
  for (const auto& spec : model.inputs()) {
    std::vector<int64_t> shape = spec.shape;
    for (size_t d = 0; d < shape.size(); ++d) {
      if (shape[d] < 0) shape[d] = SymbolSize(model, spec.symbols[d], seed);
    }
    size_t elements = 1;
    for (int64_t n : shape) elements *= static_cast<size_t>(n);
    std::vector<char> buf(elements * mlrt::DTypeSize(spec.dtype));
    uint32_t x = seed * 2654435761u + 12345u;
    if (spec.dtype == mlrt::DType::kFloat32) {
      auto* f = reinterpret_cast<float*>(buf.data());
      for (size_t i = 0; i < buf.size() / 4; ++i) {
        x = x * 1664525u + 1013904223u;
        f[i] = static_cast<float>(x >> 8) / 16777216.0f - 0.5f;
      }
    }  // other dtypes: zeros (valid indices)
    inputs.data.push_back(std::move(buf));
    inputs.shapes.push_back(std::move(shape));
  }
  return inputs;
}

std::vector<mlrt::ConstTensorView> Views(const mlrt::Model& model, const Inputs& in) {
  std::vector<mlrt::ConstTensorView> views;
  for (size_t i = 0; i < in.data.size(); ++i) views.push_back({in.data[i].data(), model.inputs()[i].dtype, in.shapes[i]});
  return views;
}

mlrt::Result<std::vector<mlrt::Tensor>> RunOnce(const mlrt::Model& model, const Inputs& in) {
  return model.Run(Views(model, in));
}

// The same run into caller-provided outputs, allocated at the shapes OutputShapes reports.
mlrt::Result<std::vector<mlrt::Tensor>> RunIntoOutputs(const mlrt::Model& model, const Inputs& in) {
  auto views = Views(model, in);
  auto shapes = model.OutputShapes(views);
  if (!shapes.ok()) return shapes.status();
  std::vector<mlrt::Tensor> outputs;
  std::vector<mlrt::TensorView> out_views;
  for (size_t i = 0; i < shapes->size(); ++i) {
    auto t = mlrt::Tensor::Allocate(model.outputs()[i].dtype, (*shapes)[i]);
    if (!t.ok()) return t.status();
    outputs.push_back(std::move(t).value());
    out_views.push_back(outputs.back().view());
  }
  if (mlrt::Status s = model.Run(views, out_views); !s.ok()) return s;
  return outputs;
}

bool SameBits(const std::vector<mlrt::Tensor>& a, const std::vector<mlrt::Tensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].shape() != b[i].shape() || a[i].num_bytes() != b[i].num_bytes() ||
        std::memcmp(a[i].data(), b[i].data(), a[i].num_bytes()) != 0) {
      return false;
    }
  }
  return true;
}

long RssKb() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind("VmRSS:", 0) == 0) return std::atol(line.c_str() + 6);
  }
  return -1;
}

int Concurrency(const char* path, int threads, int runs) {
  auto model = mlrt::Model::Load(path);
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  const mlrt::Model& m = **model;
  // Reference results, one per distinct input, computed on this thread alone.
  const int kDistinct = 8;
  std::vector<std::vector<mlrt::Tensor>> expected;
  std::set<std::vector<std::vector<int64_t>>> distinct_shapes;
  for (int k = 0; k < kDistinct; ++k) {
    Inputs in = MakeInputs(m, static_cast<uint32_t>(k));
    auto r = RunOnce(m, in);
    if (!r.ok()) return std::fprintf(stderr, "%s\n", r.status().ToString().c_str()), 1;
    // OutputShapes agrees with the shapes Run allocated.
    auto shapes = m.OutputShapes(Views(m, in));
    if (!shapes.ok()) return std::fprintf(stderr, "%s\n", shapes.status().ToString().c_str()), 1;
    for (size_t i = 0; i < r->size(); ++i) {
      if ((*r)[i].shape() != (*shapes)[i]) return std::fprintf(stderr, "OutputShapes disagrees with Run\n"), 1;
    }
    distinct_shapes.insert(in.shapes);
    // Outputs of another call's shapes are refused, before anything runs.
    if (!m.dynamic_dims().empty() && k > 0) {
      std::vector<mlrt::TensorView> other;
      bool same = true;
      for (size_t i = 0; i < expected[0].size(); ++i) {
        other.push_back(expected[0][i].view());
        same = same && other.back().shape == (*shapes)[i];
      }
      mlrt::Status s = same ? mlrt::Status() : m.Run(Views(m, in), other);
      if (!same && s.code() != mlrt::StatusCode::kInvalidArgument) {
        return std::fprintf(stderr, "outputs of the wrong shape: %s\n", s.ToString().c_str()), 1;
      }
    }
    expected.push_back(std::move(r).value());
  }
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int r = 0; r < runs; ++r) {
        int k = (t * 7 + r) % kDistinct;
        Inputs in = MakeInputs(m, static_cast<uint32_t>(k));
        auto out = r % 2 ? RunIntoOutputs(m, in) : RunOnce(m, in);
        if (!out.ok()) ++errors;
        else if (!SameBits(*out, expected[k])) ++mismatches;
      }
    });
  }
  for (auto& th : pool) th.join();
  std::printf("concurrency: %d threads x %d runs, %d mismatches, %d errors (%zu input shapes)\n", threads, runs,
              mismatches.load(), errors.load(), distinct_shapes.size());
  return mismatches == 0 && errors == 0 ? 0 : 1;
}

int Leak(const char* path, int iterations) {
  long rss_start = 0;
  for (int i = 0; i < iterations; ++i) {
    auto model = mlrt::Model::Load(path);
    if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
    auto out = RunOnce(**model, MakeInputs(**model, static_cast<uint32_t>(i)));
    if (!out.ok()) return std::fprintf(stderr, "%s\n", out.status().ToString().c_str()), 1;
    if (i == iterations / 10) rss_start = RssKb();  // after warm-up (allocator pools, dl caches)
  }
  long rss_end = RssKb();
  std::printf("leak: %d load/run/unload iterations, RSS %ld kB -> %ld kB\n", iterations, rss_start, rss_end);
  return 0;
}

struct PoolLoop {
  std::vector<std::atomic<int>>* hits;
  std::atomic<bool>* returned;
  std::atomic<int>* errors;
};

// Loops of 1-7 tasks back to back, with pauses now and then so that workers fall asleep and wake
// late: a task must run exactly once, and never once its loop has returned (its context, on the
// caller's stack, is gone by then: ASan and TSan see that too).
int Pool(int threads, int loops) {
  mlrt::ThreadPool pool(threads);
  std::atomic<int> errors{0};
  for (int l = 0; l < loops; ++l) {
    const int64_t n = 1 + l % 7;
    std::vector<std::atomic<int>> hits(n);
    std::atomic<bool> returned{false};
    PoolLoop loop{&hits, &returned, &errors};
    pool.ParallelFor(n, [](void* ctx, int64_t i) {
      auto* job = static_cast<PoolLoop*>(ctx);
      if (job->returned->load()) job->errors->fetch_add(1);
      if (i % 3 == 1) std::this_thread::yield();
      (*job->hits)[i].fetch_add(1);
    }, &loop);
    returned.store(true);
    for (const auto& h : hits) errors += h.load() != 1;
    if (l % 97 == 0) std::this_thread::sleep_for(std::chrono::microseconds(300));
  }
  std::printf("pool: %d threads x %d loops, %d errors\n", threads, loops, errors.load());
  return errors.load() == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 5 && std::strcmp(argv[1], "concurrency") == 0) return Concurrency(argv[2], std::atoi(argv[3]), std::atoi(argv[4]));
  if (argc == 4 && std::strcmp(argv[1], "leak") == 0) return Leak(argv[2], std::atoi(argv[3]));
  if (argc == 4 && std::strcmp(argv[1], "pool") == 0) return Pool(std::atoi(argv[2]), std::atoi(argv[3]));
  std::fprintf(stderr, "usage: stress_test concurrency BUNDLE THREADS RUNS | leak BUNDLE ITERATIONS | pool THREADS LOOPS\n");
  return 2;
}
