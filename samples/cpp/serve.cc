// mlrt_serve: a small inference service embedding the runtime, speaking a line protocol on
// stdin/stdout (put it behind any socket tool, or call it from a parent process).
//
//   mlrt_serve model.bundle [--workers N]
//
// 1. On start it loads the bundle once and prints:  READY <input name> <dtype> <d0>x<d1>...
//    A dynamic dim (bundle format version 2) shows as <symbol>=<min>..<max>:
//      READY x float32 batch=1..32x3x224x224
// 2. Requests, one per line:
//      RUN <id> <v0>,<v1>,...             run on one float32 input given as comma-separated values
//      RUN <id> <d0>x<d1>x... <v0>,...    the same with the input's shape for this request (required
//                                         when the input has dynamic dims, optional otherwise)
//      INFO                               print the signature again
//      QUIT                               finish in-flight requests and exit
// 3. Replies (possibly out of order: match them by id):
//      OK <id> <microseconds> <v0>,<v1>,...   the first output, flattened
//      ERR <id> <message>                      bad request or runtime error; the service goes on
//
// N worker threads share ONE loaded model (mlrt::Model is immutable and Run is thread-safe;
// each concurrent Run gets its own arena from the model's pool).
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <deque>
#include <iostream>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "mlrt/mlrt.h"

namespace {

std::mutex g_out;  // one reply line at a time

void Reply(const std::string& line) {
  std::lock_guard<std::mutex> lock(g_out);
  std::fwrite(line.data(), 1, line.size(), stdout);
  std::fputc('\n', stdout);
  std::fflush(stdout);
}

std::string Signature(const mlrt::Model& model) {
  const auto& in = model.inputs()[0];
  std::string s = "READY " + in.name + " " + mlrt::DTypeName(in.dtype) + " ";
  for (size_t i = 0; i < in.shape.size(); ++i) {
    s += i ? "x" : "";
    s += in.shape[i] >= 0 ? std::to_string(in.shape[i])
                          : in.symbols[i] + "=" + std::to_string(in.min_shape[i]) + ".." + std::to_string(in.max_shape[i]);
  }
  return s;
}

// "<d0>x<d1>x...": decimal dims below 2^40 ("" is rank 0). False when malformed.
bool ParseShape(const std::string& text, std::vector<int64_t>* shape) {
  shape->clear();
  if (text.empty()) return true;
  size_t start = 0;
  while (true) {
    size_t end = text.find('x', start);
    std::string dim = text.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (dim.empty() || dim.size() > 13 || dim.find_first_not_of("0123456789") != std::string::npos) return false;
    int64_t n = std::stoll(dim);
    if (n > (int64_t{1} << 40)) return false;
    shape->push_back(n);
    if (end == std::string::npos) return true;
    start = end + 1;
  }
}

// Parses "<id> [<shape>] <v0>,<v1>,..." for a RUN request and runs it.
void Handle(const mlrt::Model& model, const std::string& args) {
  std::istringstream in(args);
  std::string id, first, second;
  if (!(in >> id)) return Reply("ERR ? missing request id");
  in >> first >> second;
  const mlrt::TensorSpec& spec = model.inputs()[0];
  std::vector<int64_t> shape = spec.shape;
  std::string values = first;
  if (!second.empty() || (spec.is_dynamic() && ParseShape(first, &shape))) {
    // A shape token (with no values after it: a zero-element input).
    if (!ParseShape(first, &shape)) return Reply("ERR " + id + " bad shape '" + first + "' (expected <d0>x<d1>x...)");
    values = second;
  } else if (spec.is_dynamic()) {
    return Reply("ERR " + id + " input '" + spec.name + "' has dynamic dims: give its shape (RUN <id> <d0>x<d1>x... "
                 "<values>)");
  }
  int64_t expected = 1;
  for (int64_t n : shape) {
    if (n != 0 && expected > (int64_t{1} << 40) / n) return Reply("ERR " + id + " shape has too many elements");
    expected *= n;
  }
  std::vector<float> data;
  const char* p = values.c_str();
  while (*p) {
    char* end = nullptr;
    float v = std::strtof(p, &end);
    if (end == p) return Reply("ERR " + id + " not a number at '" + std::string(p).substr(0, 16) + "'");
    data.push_back(v);
    p = *end == ',' ? end + 1 : end;
    if (*end && *end != ',') return Reply("ERR " + id + " expected ',' between values");
  }
  if (static_cast<int64_t>(data.size()) != expected) {
    return Reply("ERR " + id + " expected " + std::to_string(expected) + " values, got " + std::to_string(data.size()));
  }
  auto t0 = std::chrono::steady_clock::now();
  auto outputs = model.Run({{data.data(), mlrt::DType::kFloat32, shape}});  // checks the shape (and its ranges)
  auto us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  if (!outputs.ok()) return Reply("ERR " + id + " " + outputs.status().ToString());
  const mlrt::Tensor& out = (*outputs)[0];
  std::string line = "OK " + id + " " + std::to_string(us) + " ";
  if (out.dtype() == mlrt::DType::kFloat32) {
    const float* f = static_cast<const float*>(out.data());
    char buf[32];
    for (size_t i = 0; i < out.num_bytes() / 4; ++i) {
      std::snprintf(buf, sizeof buf, "%s%.9g", i ? "," : "", static_cast<double>(f[i]));
      line += buf;
    }
  }
  Reply(line);
}

}  // namespace

int main(int argc, char** argv) {
  std::string path;
  int workers = 2;
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--workers" && i + 1 < argc) workers = std::max(1, std::atoi(argv[++i]));
    else if (path.empty()) path = arg;
  }
  if (path.empty()) {
    std::cerr << "usage: mlrt_serve model.bundle [--workers N]\n";
    return 2;
  }
  auto loaded = mlrt::Model::Load(path);
  if (!loaded.ok()) {
    std::cerr << "mlrt_serve: " << loaded.status().ToString() << "\n";
    return 1;
  }
  std::shared_ptr<const mlrt::Model> model = *loaded;
  if (model->inputs().size() != 1 || model->inputs()[0].dtype != mlrt::DType::kFloat32) {
    std::cerr << "mlrt_serve: this sample serves models with one float32 input\n";
    return 1;
  }
  Reply(Signature(*model));

  std::mutex mu;
  std::condition_variable cv;
  std::deque<std::string> queue;
  bool done = false;
  std::vector<std::thread> pool;
  for (int w = 0; w < workers; ++w) {
    pool.emplace_back([&] {
      while (true) {
        std::string job;
        {
          std::unique_lock<std::mutex> lock(mu);
          cv.wait(lock, [&] { return done || !queue.empty(); });
          if (queue.empty()) return;
          job = std::move(queue.front());
          queue.pop_front();
        }
        Handle(*model, job);
      }
    });
  }
  std::string line;
  while (std::getline(std::cin, line)) {
    if (line == "QUIT") break;
    if (line == "INFO") {
      Reply(Signature(*model));
    } else if (line.rfind("RUN ", 0) == 0) {
      {
        std::lock_guard<std::mutex> lock(mu);
        queue.push_back(line.substr(4));
      }
      cv.notify_one();
    } else if (!line.empty()) {
      Reply("ERR ? unknown command (RUN <id> [<shape>] <values> | INFO | QUIT)");
    }
  }
  {
    std::lock_guard<std::mutex> lock(mu);
    done = true;
  }
  cv.notify_all();
  for (auto& t : pool) t.join();
  return 0;
}
