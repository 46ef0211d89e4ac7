// libtriton_mlrt.so: a Triton Inference Server backend that serves mlpack bundles with mlrt.
//
// Model repository layout (what `mlpack triton-repo` writes):
//   REPO/NAME/config.pbtxt          backend: "mlrt" (inputs, outputs, max_batch_size auto-completed)
//   REPO/NAME/libtriton_mlrt.so     this library (Triton looks in the model folder first)
//   REPO/NAME/<version>/model.bundle
//
// Lifetime and sharing: one ModelState per loaded model version holds the loaded mlrt::Model of
// each device ("cpu", "cuda:N"); every instance on that device shares it (Model::Run is thread-safe
// and takes an arena per concurrent call), so K instances cost one copy of the weights. The
// mlrt::Model lives until the model is unloaded and its last instance is finalized.
//
// Batching: when every input and output has dim 0 dynamic with one symbol whose range starts at 1
// (and sizes between buckets run padded), the model is batchable: max_batch_size is that symbol's
// max, and one execute call concatenates its requests along dim 0 into one Run and scatters the
// outputs back. Otherwise max_batch_size is 0 and each request is one Run.
//
// Errors: a bad request (dtype, shape, a size outside the bundle's range, GPU memory) gets an error
// response naming what was expected and what was given; the other requests of the call still run.
// Nothing here throws across the C API boundary: every entry point catches everything.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "json.h"  // mlrt's strict JSON reader (runtime/src), linked in statically
#include "mlrt/mlrt.h"
#include "triton_c_api.h"

#define MLRT_TRITON_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

// ------------------------------------------------------------------------------------------ helpers

void Log(TRITONSERVER_LogLevel level, int line, const std::string& message) {
  TRITONSERVER_Error* err = TRITONSERVER_LogMessage(level, __FILE__, line, message.c_str());
  if (err != nullptr) TRITONSERVER_ErrorDelete(err);
}
#define LOG_INFO(msg) Log(TRITONSERVER_LOG_INFO, __LINE__, (msg))
#define LOG_WARN(msg) Log(TRITONSERVER_LOG_WARN, __LINE__, (msg))
#define LOG_ERROR(msg) Log(TRITONSERVER_LOG_ERROR, __LINE__, (msg))

TRITONSERVER_Error* Error(TRITONSERVER_Error_Code code, const std::string& message) {
  return TRITONSERVER_ErrorNew(code, ("mlrt backend: " + message).c_str());
}

// Takes ownership of `err` and returns its message ("" for nullptr).
std::string Consume(TRITONSERVER_Error* err) {
  if (err == nullptr) return "";
  std::string message = TRITONSERVER_ErrorMessage(err);
  TRITONSERVER_ErrorDelete(err);
  return message;
}

#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    TRITONSERVER_Error* rie_err__ = (expr);          \
    if (rie_err__ != nullptr) return rie_err__;      \
  } while (false)

TRITONSERVER_Error_Code ToTritonCode(mlrt::StatusCode code) {
  switch (code) {
    case mlrt::StatusCode::kInvalidArgument: return TRITONSERVER_ERROR_INVALID_ARG;
    case mlrt::StatusCode::kNotFound: return TRITONSERVER_ERROR_NOT_FOUND;
    case mlrt::StatusCode::kFailedPrecondition:
    case mlrt::StatusCode::kUnimplemented: return TRITONSERVER_ERROR_UNSUPPORTED;
    case mlrt::StatusCode::kResourceExhausted: return TRITONSERVER_ERROR_UNAVAILABLE;
    default: return TRITONSERVER_ERROR_INTERNAL;
  }
}

TRITONSERVER_Error* FromStatus(const mlrt::Status& status) {
  return Error(ToTritonCode(status.code()), status.ToString());
}

uint64_t NowNs() {
  // Triton's own timestamps are steady_clock nanoseconds; statistics must use the same clock.
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch()).count());
}

struct DTypeNames {
  mlrt::DType mlrt;
  TRITONSERVER_DataType triton;
  const char* config;  // model config spelling
};
constexpr DTypeNames kDTypes[] = {
    {mlrt::DType::kFloat32, TRITONSERVER_TYPE_FP32, "TYPE_FP32"}, {mlrt::DType::kFloat64, TRITONSERVER_TYPE_FP64, "TYPE_FP64"},
    {mlrt::DType::kFloat16, TRITONSERVER_TYPE_FP16, "TYPE_FP16"}, {mlrt::DType::kInt64, TRITONSERVER_TYPE_INT64, "TYPE_INT64"},
    {mlrt::DType::kInt32, TRITONSERVER_TYPE_INT32, "TYPE_INT32"}, {mlrt::DType::kInt16, TRITONSERVER_TYPE_INT16, "TYPE_INT16"},
    {mlrt::DType::kInt8, TRITONSERVER_TYPE_INT8, "TYPE_INT8"},    {mlrt::DType::kUInt8, TRITONSERVER_TYPE_UINT8, "TYPE_UINT8"},
    {mlrt::DType::kBool, TRITONSERVER_TYPE_BOOL, "TYPE_BOOL"},
};

const DTypeNames& Names(mlrt::DType dtype) {
  for (const auto& d : kDTypes)
    if (d.mlrt == dtype) return d;
  return kDTypes[0];  // unreachable: every mlrt dtype is in the table
}

const char* TritonTypeName(TRITONSERVER_DataType type) {
  static const char* const kNames[] = {"INVALID", "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16",
                                       "INT32",   "INT64", "FP16", "FP32",   "FP64",   "BYTES",  "BF16"};
  auto i = static_cast<size_t>(type);
  return i < sizeof(kNames) / sizeof(kNames[0]) ? kNames[i] : "UNKNOWN";
}

std::string ShapeString(const int64_t* dims, size_t n) {
  std::string s = "[";
  for (size_t i = 0; i < n; ++i) s += (i ? "," : "") + std::to_string(dims[i]);
  return s + "]";
}
std::string ShapeString(const std::vector<int64_t>& dims) { return ShapeString(dims.data(), dims.size()); }

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

// A config field that protobuf's JSON may write as a number or a string (int64 dims are strings).
bool JsonInt(const mlrt::json::Value* v, int64_t* out) {
  if (v == nullptr) return false;
  if (v->is_int()) {
    *out = v->as_int();
    return true;
  }
  if (v->is_string()) {
    const std::string& s = v->as_string();
    char* end = nullptr;
    long long x = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0') return false;
    *out = x;
    return true;
  }
  return false;
}

// Serializes a parsed config value back to JSON (for the auto-completed config).
std::string ToJson(const mlrt::json::Value& v) {
  using Kind = mlrt::json::Value::Kind;
  switch (v.kind()) {
    case Kind::kNull: return "null";
    case Kind::kBool: return v.as_bool() ? "true" : "false";
    case Kind::kNumber: {
      if (v.is_int()) return std::to_string(v.as_int());
      char buf[32];
      std::snprintf(buf, sizeof(buf), "%.17g", v.as_double());
      return buf;
    }
    case Kind::kString: return JsonString(v.as_string());
    case Kind::kArray: {
      std::string s = "[";
      for (size_t i = 0; i < v.items().size(); ++i) s += (i ? "," : "") + ToJson(v.items()[i]);
      return s + "]";
    }
    case Kind::kObject: {
      std::string s = "{";
      for (size_t i = 0; i < v.members().size(); ++i)
        s += (i ? "," : "") + JsonString(v.members()[i].first) + ":" + ToJson(v.members()[i].second);
      return s + "}";
    }
  }
  return "null";
}

size_t NumElements(const std::vector<int64_t>& shape) {
  size_t n = 1;
  for (int64_t d : shape) n *= static_cast<size_t>(d);
  return n;
}

// ------------------------------------------------------------------------------------------ model

// How the bundle maps onto Triton's batching: the symbol every input's and output's dim 0 is.
struct BatchDim {
  bool batchable = false;
  int64_t max = 0;
  std::string symbol;
  std::string why_not;  // for the log when not batchable
};

BatchDim FindBatchDim(const mlrt::Model& model) {
  BatchDim b;
  auto why = [&](std::string reason) {
    b.why_not = std::move(reason);
    return b;
  };
  if (model.dynamic_dims().empty()) return why("the bundle has no dynamic dims");
  std::string symbol;
  for (const auto* specs : {&model.inputs(), &model.outputs()}) {
    for (const mlrt::TensorSpec& s : *specs) {
      if (s.shape.empty() || s.shape[0] != -1 || s.symbols.empty())
        return why("'" + s.name + "' has no dynamic dim 0");
      if (symbol.empty()) symbol = s.symbols[0];
      if (s.symbols[0] != symbol) return why("'" + s.name + "' dim 0 is '" + s.symbols[0] + "', not '" + symbol + "'");
    }
  }
  for (const mlrt::DynamicDim& d : model.dynamic_dims()) {
    if (d.name != symbol) continue;
    if (d.min != 1) return why("batch dim '" + symbol + "' starts at " + std::to_string(d.min) + ", not 1");
    if (!d.padded && static_cast<int64_t>(d.buckets.size()) != d.max)
      return why("batch dim '" + symbol + "' runs at its buckets only (" + d.not_padded + ")");
    b.batchable = true;
    b.max = d.max;
    b.symbol = symbol;
    return b;
  }
  return why("dim 0 symbol '" + symbol + "' is not an input dynamic dim");
}

struct ModelState {
  TRITONBACKEND_Model* triton = nullptr;
  std::string name;
  uint64_t version = 0;
  std::string bundle_path;
  int num_threads = 0;          // config parameter "num_threads" (0: mlrt's default)
  int64_t max_batch_size = 0;   // the config's, after auto-complete; > 0 only when batchable
  BatchDim batch;
  std::shared_ptr<const mlrt::Model> signature;  // the first model loaded, for the signature

  std::mutex mu;  // guards `loaded`: instances initialize concurrently
  std::map<std::string, std::shared_ptr<const mlrt::Model>> loaded;

  TRITONSERVER_Error* Get(const std::string& device, std::shared_ptr<const mlrt::Model>* out) {
    std::lock_guard<std::mutex> lock(mu);
    auto it = loaded.find(device);
    if (it != loaded.end()) {
      *out = it->second;
      return nullptr;
    }
    mlrt::LoadOptions options;
    options.device = device;
    options.num_threads = num_threads;
    auto t0 = std::chrono::steady_clock::now();
    auto model = mlrt::Model::Load(bundle_path, options);
    if (!model.ok())
      return Error(ToTritonCode(model.status().code()),
                   "model '" + name + "': cannot load " + bundle_path + " on " + device + ": " + model.status().ToString());
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    LOG_INFO("mlrt backend: model '" + name + "' version " + std::to_string(version) + ": loaded " + bundle_path +
             " on " + (*model)->device() + " in " + std::to_string(static_cast<int>(ms)) + " ms (" +
             std::to_string((*model)->num_threads()) + " threads per run)");
    loaded[device] = *model;
    *out = *model;
    return nullptr;
  }
};

// Reads the config and the bundle, checks they agree, fills in what the config leaves out.
TRITONSERVER_Error* ConfigureModel(ModelState* st) {
  TRITONSERVER_Message* message = nullptr;
  RETURN_IF_ERROR(TRITONBACKEND_ModelConfig(st->triton, 1, &message));
  const char* base = nullptr;
  size_t size = 0;
  TRITONSERVER_Error* err = TRITONSERVER_MessageSerializeToJson(message, &base, &size);
  std::string text = err == nullptr ? std::string(base, size) : "";
  TRITONSERVER_MessageDelete(message);
  RETURN_IF_ERROR(err);
  mlrt::json::Value config;
  std::string parse_error;
  if (!mlrt::json::Parse(text, &config, &parse_error) || !config.is_object())
    return Error(TRITONSERVER_ERROR_INTERNAL, "cannot parse the model config JSON: " + parse_error);

  // Parameters (strings, as Triton's config has them).
  if (const auto* params = config.find("parameters"); params != nullptr && params->is_object()) {
    if (const auto* p = params->find("num_threads"); p != nullptr) {
      int64_t n = -1;
      if (!JsonInt(p->find("string_value"), &n) || n < 0 || n > 1024)
        return Error(TRITONSERVER_ERROR_INVALID_ARG, "parameter num_threads must be an integer in 0..1024");
      st->num_threads = static_cast<int>(n);
    }
  }

  // The device the signature is read on: the first instance group's (a cuda-only bundle cannot
  // load on cpu). Instances on other devices load their own copy in ModelInstanceInitialize.
  std::string device = "cpu";
  if (const auto* groups = config.find("instance_group"); groups != nullptr && groups->is_array() && !groups->items().empty()) {
    const auto& g = groups->items()[0];
    const auto* kind = g.find("kind");
    if (kind != nullptr && kind->is_string() && kind->as_string() == "KIND_GPU") {
      int64_t gpu = 0;
      if (const auto* gpus = g.find("gpus"); gpus != nullptr && gpus->is_array() && !gpus->items().empty())
        JsonInt(&gpus->items()[0], &gpu);
      device = "cuda:" + std::to_string(gpu);
    }
  }
  std::shared_ptr<const mlrt::Model> model;
  RETURN_IF_ERROR(st->Get(device, &model));
  st->signature = model;
  st->batch = FindBatchDim(*model);

  int64_t config_mbs = 0;
  JsonInt(config.find("max_batch_size"), &config_mbs);
  bool auto_complete = false;
  RETURN_IF_ERROR(TRITONBACKEND_ModelAutoCompleteConfig(st->triton, &auto_complete));

  if (config_mbs > 0 && !st->batch.batchable)
    return Error(TRITONSERVER_ERROR_INVALID_ARG,
                 "model '" + st->name + "': config max_batch_size is " + std::to_string(config_mbs) +
                     " but the bundle cannot batch: " + st->batch.why_not +
                     " (set max_batch_size: 0, or rebuild with e.g. mlpack build --dynamic x:0=1..8)");
  if (config_mbs > st->batch.max && st->batch.batchable)
    return Error(TRITONSERVER_ERROR_INVALID_ARG,
                 "model '" + st->name + "': config max_batch_size is " + std::to_string(config_mbs) +
                     " but the bundle's batch dim '" + st->batch.symbol + "' goes up to " + std::to_string(st->batch.max));
  // max_batch_size is completed only for a config that declares no inputs or outputs: one that
  // declares them (with the batch dim as -1) asks for max_batch_size 0 by leaving it out.
  bool has_io = false;
  for (const char* key : {"input", "output"})
    if (const auto* list = config.find(key); list != nullptr && list->is_array() && !list->items().empty()) has_io = true;
  int64_t mbs = config_mbs;
  if (mbs == 0 && auto_complete && st->batch.batchable && !has_io) mbs = st->batch.max;
  st->max_batch_size = mbs;
  const bool batched = mbs > 0;

  // The dims Triton should declare: the bundle's shape, -1 for dynamic dims, without dim 0 when batched.
  auto dims_of = [&](const mlrt::TensorSpec& s) {
    std::vector<int64_t> d(s.shape.begin() + (batched ? 1 : 0), s.shape.end());
    return d;
  };
  for (const auto* specs : {&st->signature->inputs(), &st->signature->outputs()})
    for (const mlrt::TensorSpec& s : *specs)
      if (dims_of(s).empty())
        return Error(TRITONSERVER_ERROR_UNSUPPORTED, "model '" + st->name + "': '" + s.name +
                                                         "' has rank 0" + (batched ? " besides the batch dim" : "") +
                                                         "; Triton needs at least one dim (not supported yet)");

  // Check what the config already declares against the bundle.
  for (const char* key : {"input", "output"}) {
    const bool is_input = key[0] == 'i';
    const auto& specs = is_input ? st->signature->inputs() : st->signature->outputs();
    const auto* list = config.find(key);
    if (list == nullptr || !list->is_array() || list->items().empty()) continue;
    if (is_input && list->items().size() != specs.size())
      return Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + st->name + "': the config declares " +
                                                       std::to_string(list->items().size()) + " inputs, the bundle has " +
                                                       std::to_string(specs.size()));
    for (const auto& entry : list->items()) {
      const auto* name = entry.find("name");
      std::string n = name != nullptr && name->is_string() ? name->as_string() : "";
      auto it = std::find_if(specs.begin(), specs.end(), [&](const mlrt::TensorSpec& s) { return s.name == n; });
      if (it == specs.end()) {
        std::string names;
        for (const auto& s : specs) names += (names.empty() ? "" : ", ") + s.name;
        return Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + st->name + "': config " + key + " '" + n +
                                                         "' is not in the bundle (its " + key + "s: " + names + ")");
      }
      const auto* dtype = entry.find("data_type");
      std::string want = Names(it->dtype).config;
      if (dtype == nullptr || !dtype->is_string() || dtype->as_string() != want)
        return Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + st->name + "': config " + key + " '" + n + "' is " +
                                                         (dtype && dtype->is_string() ? dtype->as_string() : "?") +
                                                         ", the bundle's is " + want);
      std::vector<int64_t> dims;
      if (const auto* d = entry.find("dims"); d != nullptr && d->is_array())
        for (const auto& v : d->items()) {
          int64_t x = 0;
          JsonInt(&v, &x);
          dims.push_back(x);
        }
      if (const auto* r = entry.find("reshape"); r != nullptr)
        return Error(TRITONSERVER_ERROR_UNSUPPORTED, "model '" + st->name + "': config " + key + " '" + n + "': reshape is not supported");
      if (dims != dims_of(*it))
        return Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + st->name + "': config " + key + " '" + n + "' has dims " +
                                                         ShapeString(dims) + ", the bundle's are " + ShapeString(dims_of(*it)) +
                                                         (batched ? " (without the batch dim)" : "") + " (-1: dynamic)");
    }
  }

  if (!auto_complete) {
    if (!has_io)
      return Error(TRITONSERVER_ERROR_INVALID_ARG,
                   "model '" + st->name + "': the config declares no inputs or outputs and auto-complete is disabled");
    return nullptr;
  }

  // Auto-complete: max_batch_size, inputs, outputs, and dynamic batching for a batchable bundle
  // when the config chose no scheduler. Everything else is sent back as it came (Triton refuses an
  // update that drops the scheduler the config chose).
  std::string json = "{\"max_batch_size\":" + std::to_string(mbs);
  for (const char* key : {"input", "output"}) {
    const auto& specs = key[0] == 'i' ? st->signature->inputs() : st->signature->outputs();
    json += ",\"" + std::string(key) + "\":[";
    for (size_t i = 0; i < specs.size(); ++i) {
      const auto dims = dims_of(specs[i]);
      json += std::string(i ? "," : "") + "{\"name\":" + JsonString(specs[i].name) + ",\"data_type\":\"" +
              Names(specs[i].dtype).config + "\",\"dims\":[";
      for (size_t k = 0; k < dims.size(); ++k) json += (k ? "," : "") + std::to_string(dims[k]);
      json += "]}";
    }
    json += "]";
  }
  for (const auto& [key, value] : config.members())
    if (key != "max_batch_size" && key != "input" && key != "output") json += "," + JsonString(key) + ":" + ToJson(value);
  const bool has_scheduler = config.find("dynamic_batching") || config.find("sequence_batching") ||
                             config.find("ensemble_scheduling");
  if (batched && !has_scheduler) json += ",\"dynamic_batching\":{}";
  json += "}";
  TRITONSERVER_Message* updated = nullptr;
  RETURN_IF_ERROR(TRITONSERVER_MessageNewFromSerializedJson(&updated, json.data(), json.size()));
  err = TRITONBACKEND_ModelSetConfig(st->triton, 1, updated);
  TRITONSERVER_MessageDelete(updated);
  RETURN_IF_ERROR(err);
  LOG_INFO("mlrt backend: model '" + st->name + "': config completed from the bundle: max_batch_size " +
           std::to_string(mbs) + (st->batch.batchable ? "" : " (not batchable: " + st->batch.why_not + ")"));
  return nullptr;
}

// ------------------------------------------------------------------------------------------ instance

struct InstanceState {
  ModelState* model_state = nullptr;
  TRITONBACKEND_ModelInstance* triton = nullptr;
  std::string name;
  std::shared_ptr<const mlrt::Model> model;
};

// One zero-filled run at the smallest and at the largest shape the bundle takes: the first Run
// pays for page faults on the weights and an arena; do it before the first request does.
void WarmUp(const InstanceState& inst) {
  const mlrt::Model& model = *inst.model;
  for (bool largest : {false, true}) {
    std::vector<std::vector<int64_t>> shapes;
    std::vector<std::vector<char>> data;
    std::vector<mlrt::ConstTensorView> views;
    for (const auto& s : model.inputs()) {
      shapes.push_back(largest ? s.max_shape : s.min_shape);
      if (shapes.back().size() != s.shape.size()) shapes.back() = s.shape;  // defensive: a spec without bounds
      data.emplace_back(NumElements(shapes.back()) * mlrt::DTypeSize(s.dtype) + 1, 0);
    }
    for (size_t i = 0; i < shapes.size(); ++i) views.push_back({data[i].data(), model.inputs()[i].dtype, shapes[i]});
    auto t0 = std::chrono::steady_clock::now();
    auto out = model.Run(views);
    double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (!out.ok()) {
      LOG_WARN("mlrt backend: " + inst.name + ": warm-up run failed (serving anyway): " + out.status().ToString());
      return;
    }
    LOG_INFO("mlrt backend: " + inst.name + ": warm-up run at " + ShapeString(shapes.empty() ? std::vector<int64_t>{} : shapes[0]) +
             " took " + std::to_string(ms) + " ms");
    if (model.dynamic_dims().empty()) break;
  }
}


// ------------------------------------------------------------------------------------------ execute

// One request of an execute call. `inputs` point into Triton's buffers, or into `copies` where the
// request's data came in several buffers or misaligned for its dtype.
struct Pending {
  TRITONBACKEND_Request* request = nullptr;
  TRITONBACKEND_Response* response = nullptr;
  TRITONSERVER_Error* error = nullptr;  // sent instead of outputs; owned
  std::vector<mlrt::ConstTensorView> inputs;
  std::vector<std::unique_ptr<char[]>> copies;
  std::vector<bool> requested;  // per model output
  int64_t rows = 1;             // the batch dim, when batched
  int group = -1;               // index of the Run it was part of
};

TRITONSERVER_Error* Prepare(const ModelState& st, const mlrt::Model& model, Pending* p) {
  const auto& specs = model.inputs();
  uint32_t count = 0;
  RETURN_IF_ERROR(TRITONBACKEND_RequestInputCount(p->request, &count));
  std::string names;
  for (const auto& s : specs) names += (names.empty() ? "" : ", ") + s.name;
  if (count != specs.size())
    return Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + st.name + "' expects " + std::to_string(specs.size()) +
                                                     " inputs (" + names + "), got " + std::to_string(count));
  const bool batched = st.max_batch_size > 0;
  for (size_t i = 0; i < specs.size(); ++i) {
    const mlrt::TensorSpec& spec = specs[i];
    const std::string where = "model '" + st.name + "' input '" + spec.name + "'";
    TRITONBACKEND_Input* input = nullptr;
    if (TRITONSERVER_Error* err = TRITONBACKEND_RequestInput(p->request, spec.name.c_str(), &input))
      return Error(TRITONSERVER_ERROR_INVALID_ARG, where + " is missing (" + Consume(err) + ")");
    TRITONSERVER_DataType dtype = TRITONSERVER_TYPE_INVALID;
    const int64_t* shape = nullptr;
    uint32_t rank = 0, buffers = 0;
    uint64_t byte_size = 0;
    RETURN_IF_ERROR(TRITONBACKEND_InputProperties(input, nullptr, &dtype, &shape, &rank, &byte_size, &buffers));
    if (dtype != Names(spec.dtype).triton)
      return Error(TRITONSERVER_ERROR_INVALID_ARG,
                   where + ": expected " + TritonTypeName(Names(spec.dtype).triton) + ", got " + TritonTypeName(dtype));
    std::vector<int64_t> dims(shape, shape + rank);
    size_t elements = 1;
    for (int64_t d : dims) {
      if (d < 0 || d > (int64_t{1} << 40) || __builtin_mul_overflow(elements, static_cast<size_t>(d), &elements))
        return Error(TRITONSERVER_ERROR_INVALID_ARG, where + ": bad shape " + ShapeString(dims));
    }
    if (batched) {
      if (dims.empty() || dims[0] < 1 || dims[0] > st.max_batch_size)
        return Error(TRITONSERVER_ERROR_INVALID_ARG, where + ": batch size " + (dims.empty() ? "?" : std::to_string(dims[0])) +
                                                         " is outside 1.." + std::to_string(st.max_batch_size));
      if (i == 0) p->rows = dims[0];
      if (dims[0] != p->rows)
        return Error(TRITONSERVER_ERROR_INVALID_ARG, where + ": batch size " + std::to_string(dims[0]) + ", input '" +
                                                         specs[0].name + "' has " + std::to_string(p->rows));
    }
    const size_t want = elements * mlrt::DTypeSize(spec.dtype);
    if (byte_size != want)
      return Error(TRITONSERVER_ERROR_INVALID_ARG, where + ": shape " + ShapeString(dims) + " of " +
                                                       TritonTypeName(dtype) + " is " + std::to_string(want) +
                                                       " bytes, got " + std::to_string(byte_size));
    const void* data = nullptr;
    const void* first = nullptr;
    uint64_t first_size = 0;
    TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
    int64_t mem_id = 0;
    if (buffers >= 1) RETURN_IF_ERROR(TRITONBACKEND_InputBuffer(input, 0, &first, &first_size, &mem, &mem_id));
    if (mem == TRITONSERVER_MEMORY_GPU)
      return Error(TRITONSERVER_ERROR_UNSUPPORTED, where + ": input in GPU memory is not supported; send it in CPU memory");
    const bool aligned = reinterpret_cast<uintptr_t>(first) % mlrt::DTypeSize(spec.dtype) == 0;
    if (buffers == 1 && first_size == want && aligned) {
      data = first;
    } else if (want > 0) {
      // Several buffers (or a misaligned one): gather into one contiguous, aligned copy.
      std::unique_ptr<char[]> copy(new char[want]);
      size_t offset = 0;
      for (uint32_t b = 0; b < buffers; ++b) {
        const void* buf = first;
        uint64_t size = first_size;
        if (b > 0) RETURN_IF_ERROR(TRITONBACKEND_InputBuffer(input, b, &buf, &size, &mem, &mem_id));
        if (mem == TRITONSERVER_MEMORY_GPU)
          return Error(TRITONSERVER_ERROR_UNSUPPORTED, where + ": input in GPU memory is not supported; send it in CPU memory");
        if (size > want - offset)
          return Error(TRITONSERVER_ERROR_INVALID_ARG, where + ": buffers hold more than " + std::to_string(want) + " bytes");
        if (size > 0) std::memcpy(copy.get() + offset, buf, size);
        offset += size;
      }
      if (offset != want)
        return Error(TRITONSERVER_ERROR_INVALID_ARG, where + ": buffers hold " + std::to_string(offset) + " bytes, expected " +
                                                         std::to_string(want));
      data = copy.get();
      p->copies.push_back(std::move(copy));
    }
    p->inputs.push_back({data, spec.dtype, std::move(dims)});
  }

  const auto& outs = model.outputs();
  uint32_t requested = 0;
  RETURN_IF_ERROR(TRITONBACKEND_RequestOutputCount(p->request, &requested));
  p->requested.assign(outs.size(), requested == 0);
  for (uint32_t r = 0; r < requested; ++r) {
    const char* name = nullptr;
    RETURN_IF_ERROR(TRITONBACKEND_RequestOutputName(p->request, r, &name));
    auto it = std::find_if(outs.begin(), outs.end(), [&](const mlrt::TensorSpec& s) { return s.name == name; });
    if (it == outs.end())
      return Error(TRITONSERVER_ERROR_INVALID_ARG, "model '" + st.name + "' has no output '" + name + "'");
    p->requested[static_cast<size_t>(it - outs.begin())] = true;
  }
  // mlrt's own checks: every dim within the bundle's range, one size per symbol, buckets.
  auto shapes = model.OutputShapes(p->inputs);
  if (!shapes.ok()) return FromStatus(shapes.status());
  return nullptr;
}

// Adds output `j` of shape `shape` to the response; *data receives its CPU buffer.
TRITONSERVER_Error* AddOutput(Pending* p, const mlrt::TensorSpec& spec, const std::vector<int64_t>& shape, void** data) {
  TRITONBACKEND_Output* output = nullptr;
  RETURN_IF_ERROR(TRITONBACKEND_ResponseOutput(p->response, &output, spec.name.c_str(), Names(spec.dtype).triton,
                                               shape.data(), static_cast<uint32_t>(shape.size())));
  TRITONSERVER_MemoryType mem = TRITONSERVER_MEMORY_CPU;
  int64_t mem_id = 0;
  RETURN_IF_ERROR(TRITONBACKEND_OutputBuffer(output, data, NumElements(shape) * mlrt::DTypeSize(spec.dtype), &mem, &mem_id));
  if (mem == TRITONSERVER_MEMORY_GPU)
    return Error(TRITONSERVER_ERROR_UNSUPPORTED, "output '" + spec.name + "': Triton gave a GPU buffer; only CPU buffers are supported");
  return nullptr;
}

struct Timing {
  uint64_t compute_start = 0, compute_end = 0;
};

// One request, one Run: requested outputs are written straight into the response's buffers.
void RunOne(const mlrt::Model& model, Pending* p, Timing* t) {
  auto shapes = model.OutputShapes(p->inputs);
  if (!shapes.ok()) {
    p->error = FromStatus(shapes.status());
    return;
  }
  const auto& specs = model.outputs();
  std::vector<mlrt::TensorView> outs;
  std::vector<mlrt::Tensor> unrequested;
  for (size_t j = 0; j < specs.size(); ++j) {
    const auto& shape = (*shapes)[j];
    if (p->requested[j]) {
      void* data = nullptr;
      if ((p->error = AddOutput(p, specs[j], shape, &data)) != nullptr) return;
      outs.push_back({data, specs[j].dtype, shape});
    } else {
      auto tensor = mlrt::Tensor::Allocate(specs[j].dtype, shape);
      if (!tensor.ok()) {
        p->error = FromStatus(tensor.status());
        return;
      }
      outs.push_back(tensor->view());
      unrequested.push_back(std::move(*tensor));
    }
  }
  t->compute_start = NowNs();
  mlrt::Status status = model.Run(p->inputs, outs);
  t->compute_end = NowNs();
  if (!status.ok()) p->error = FromStatus(status);
}

// Several requests, one Run: inputs concatenated along dim 0, outputs cut back per request.
void RunBatch(const mlrt::Model& model, const std::vector<Pending*>& group, int64_t rows, Timing* t) {
  auto fail = [&](TRITONSERVER_Error* err) {
    std::string message = Consume(err);
    for (Pending* p : group) p->error = TRITONSERVER_ErrorNew(TRITONSERVER_ERROR_INTERNAL, message.c_str());
  };
  const auto& specs = model.inputs();
  std::vector<std::unique_ptr<char[]>> staged;
  std::vector<mlrt::ConstTensorView> inputs;
  for (size_t i = 0; i < specs.size(); ++i) {
    std::vector<int64_t> shape = group[0]->inputs[i].shape;
    shape[0] = rows;
    const size_t bytes = NumElements(shape) * mlrt::DTypeSize(specs[i].dtype);
    staged.emplace_back(new char[bytes > 0 ? bytes : 1]);
    size_t offset = 0;
    for (const Pending* p : group) {
      const size_t n = NumElements(p->inputs[i].shape) * mlrt::DTypeSize(specs[i].dtype);
      if (n > 0) std::memcpy(staged.back().get() + offset, p->inputs[i].data, n);
      offset += n;
    }
    inputs.push_back({staged.back().get(), specs[i].dtype, std::move(shape)});
  }
  t->compute_start = NowNs();
  auto outs = model.Run(inputs);
  t->compute_end = NowNs();
  if (!outs.ok()) return fail(FromStatus(outs.status()));

  const auto& out_specs = model.outputs();
  int64_t row = 0;
  for (Pending* p : group) {
    for (size_t j = 0; j < out_specs.size() && p->error == nullptr; ++j) {
      if (!p->requested[j]) continue;
      const mlrt::Tensor& all = (*outs)[j];
      std::vector<int64_t> shape = all.shape();
      const size_t row_bytes = all.num_bytes() / static_cast<size_t>(rows);
      shape[0] = p->rows;
      void* data = nullptr;
      if ((p->error = AddOutput(p, out_specs[j], shape, &data)) != nullptr) break;
      const size_t n = row_bytes * static_cast<size_t>(p->rows);
      if (n > 0) std::memcpy(data, static_cast<const char*>(all.data()) + row_bytes * static_cast<size_t>(row), n);
    }
    row += p->rows;
  }
}

void Execute(InstanceState* inst, TRITONBACKEND_Request** requests, uint32_t count) {
  const uint64_t exec_start = NowNs();
  const ModelState& st = *inst->model_state;
  const mlrt::Model& model = *inst->model;
  std::vector<Pending> pending(count);
  for (uint32_t r = 0; r < count; ++r) {
    Pending& p = pending[r];
    p.request = requests[r];
    if (TRITONSERVER_Error* err = TRITONBACKEND_ResponseNew(&p.response, p.request)) {
      LOG_ERROR("mlrt backend: " + inst->name + ": cannot create a response: " + Consume(err));
      p.response = nullptr;
      continue;
    }
    p.error = Prepare(st, model, &p);
  }

  // Groups: runs of consecutive valid requests with equal shapes besides dim 0, up to max_batch_size rows.
  std::vector<std::vector<Pending*>> groups;
  std::vector<int64_t> group_rows;
  for (Pending& p : pending) {
    if (p.response == nullptr || p.error != nullptr) continue;
    bool joins = false;
    if (st.max_batch_size > 0 && !groups.empty() && group_rows.back() + p.rows <= st.max_batch_size) {
      const Pending& head = *groups.back()[0];
      joins = true;
      for (size_t i = 0; i < p.inputs.size() && joins; ++i)
        joins = std::equal(p.inputs[i].shape.begin() + 1, p.inputs[i].shape.end(), head.inputs[i].shape.begin() + 1,
                           head.inputs[i].shape.end());
    }
    if (joins) {
      groups.back().push_back(&p);
      group_rows.back() += p.rows;
    } else {
      groups.push_back({&p});
      group_rows.push_back(p.rows);
    }
  }

  std::vector<Timing> timings(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    if (groups[g].size() == 1)
      RunOne(model, groups[g][0], &timings[g]);
    else
      RunBatch(model, groups[g], group_rows[g], &timings[g]);
    for (Pending* p : groups[g]) p->group = static_cast<int>(g);
  }
  const uint64_t exec_end = NowNs();

  // Statistics first (they need the request), then the response, then the release.
  for (size_t g = 0; g < groups.size(); ++g) {
    const Timing& t = timings[g];
    if (t.compute_end == 0) continue;  // never ran
    uint64_t batch = st.max_batch_size > 0 ? static_cast<uint64_t>(group_rows[g]) : 1;
    if (TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceReportBatchStatistics(inst->triton, batch, exec_start,
                                                                                  t.compute_start, t.compute_end, exec_end))
      LOG_ERROR("mlrt backend: " + inst->name + ": cannot report batch statistics: " + Consume(err));
  }
  for (Pending& p : pending) {
    // A request refused before running reports no compute time.
    Timing t{exec_start, exec_start};
    if (p.group >= 0 && timings[static_cast<size_t>(p.group)].compute_end != 0) t = timings[static_cast<size_t>(p.group)];
    if (TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceReportStatistics(
            inst->triton, p.request, p.response != nullptr && p.error == nullptr, exec_start, t.compute_start,
            t.compute_end, exec_end))
      LOG_ERROR("mlrt backend: " + inst->name + ": cannot report statistics: " + Consume(err));
    if (p.response != nullptr) {
      if (TRITONSERVER_Error* err = TRITONBACKEND_ResponseSend(p.response, kTritonResponseCompleteFinal, p.error))
        LOG_ERROR("mlrt backend: " + inst->name + ": cannot send a response: " + Consume(err));
    }
    if (p.error != nullptr) TRITONSERVER_ErrorDelete(p.error);
    p.error = nullptr;
    if (TRITONSERVER_Error* err = TRITONBACKEND_RequestRelease(p.request, kTritonRequestReleaseAll))
      LOG_ERROR("mlrt backend: " + inst->name + ": cannot release a request: " + Consume(err));
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------ entry points

MLRT_TRITON_EXPORT TRITONSERVER_Error* TRITONBACKEND_Initialize(TRITONBACKEND_Backend* backend) {
  try {
    const char* name = "mlrt";
    TRITONBACKEND_BackendName(backend, &name);
    uint32_t major = 0, minor = 0;
    RETURN_IF_ERROR(TRITONBACKEND_ApiVersion(&major, &minor));
    if (major != kTritonBackendApiMajor || minor < kTritonBackendApiMinor) {
      std::string message = "backend '" + std::string(name) + "' (mlrt " + mlrt::Version() +
                            ") was written for Triton backend API " + std::to_string(kTritonBackendApiMajor) + "." +
                            std::to_string(kTritonBackendApiMinor) + " or a newer minor version; this server has " +
                            std::to_string(major) + "." + std::to_string(minor) + ": refusing to load";
      LOG_ERROR("mlrt backend: " + message);
      return Error(TRITONSERVER_ERROR_UNSUPPORTED, message);
    }
    LOG_INFO("mlrt backend: mlrt " + std::string(mlrt::Version()) + ", Triton backend API " + std::to_string(major) + "." +
             std::to_string(minor));
    return nullptr;
  } catch (const std::exception& e) {
    return Error(TRITONSERVER_ERROR_INTERNAL, std::string("TRITONBACKEND_Initialize: ") + e.what());
  }
}

MLRT_TRITON_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInitialize(TRITONBACKEND_Model* model) {
  try {
    auto st = std::make_unique<ModelState>();
    st->triton = model;
    const char* name = nullptr;
    RETURN_IF_ERROR(TRITONBACKEND_ModelName(model, &name));
    st->name = name;
    RETURN_IF_ERROR(TRITONBACKEND_ModelVersion(model, &st->version));
    TRITONBACKEND_ArtifactType artifact = TRITONBACKEND_ARTIFACT_FILESYSTEM;
    const char* location = nullptr;
    RETURN_IF_ERROR(TRITONBACKEND_ModelRepository(model, &artifact, &location));
    if (artifact != TRITONBACKEND_ARTIFACT_FILESYSTEM)
      return Error(TRITONSERVER_ERROR_UNSUPPORTED, "model '" + st->name + "': only filesystem repositories are supported");
    st->bundle_path = std::string(location) + "/" + std::to_string(st->version) + "/model.bundle";
    RETURN_IF_ERROR(ConfigureModel(st.get()));
    RETURN_IF_ERROR(TRITONBACKEND_ModelSetState(model, st.get()));
    st.release();  // owned by Triton's model until TRITONBACKEND_ModelFinalize
    return nullptr;
  } catch (const std::exception& e) {
    return Error(TRITONSERVER_ERROR_INTERNAL, std::string("TRITONBACKEND_ModelInitialize: ") + e.what());
  }
}

MLRT_TRITON_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelFinalize(TRITONBACKEND_Model* model) {
  void* state = nullptr;
  RETURN_IF_ERROR(TRITONBACKEND_ModelState(model, &state));
  auto* st = static_cast<ModelState*>(state);
  if (st != nullptr) LOG_INFO("mlrt backend: model '" + st->name + "' version " + std::to_string(st->version) + " unloaded");
  delete st;  // the last instance is finalized before its model
  return nullptr;
}

MLRT_TRITON_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceInitialize(TRITONBACKEND_ModelInstance* instance) {
  try {
    auto inst = std::make_unique<InstanceState>();
    inst->triton = instance;
    const char* name = nullptr;
    RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceName(instance, &name));
    inst->name = name;
    TRITONBACKEND_Model* model = nullptr;
    RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceModel(instance, &model));
    void* state = nullptr;
    RETURN_IF_ERROR(TRITONBACKEND_ModelState(model, &state));
    inst->model_state = static_cast<ModelState*>(state);
    TRITONSERVER_InstanceGroupKind kind = TRITONSERVER_INSTANCEGROUPKIND_CPU;
    RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceKind(instance, &kind));
    std::string device;
    if (kind == TRITONSERVER_INSTANCEGROUPKIND_CPU) {
      device = "cpu";
    } else if (kind == TRITONSERVER_INSTANCEGROUPKIND_GPU) {
      int32_t id = 0;
      RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceDeviceId(instance, &id));
      device = "cuda:" + std::to_string(id);
    } else {
      return Error(TRITONSERVER_ERROR_UNSUPPORTED,
                   inst->name + ": instance kind must be KIND_CPU or KIND_GPU (KIND_GPU needs a bundle built with --target cuda)");
    }
    RETURN_IF_ERROR(inst->model_state->Get(device, &inst->model));
    WarmUp(*inst);
    LOG_INFO("mlrt backend: instance " + inst->name + " on " + device + " ready");
    RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceSetState(instance, inst.get()));
    inst.release();  // owned by Triton's instance until TRITONBACKEND_ModelInstanceFinalize
    return nullptr;
  } catch (const std::exception& e) {
    return Error(TRITONSERVER_ERROR_INTERNAL, std::string("TRITONBACKEND_ModelInstanceInitialize: ") + e.what());
  }
}

MLRT_TRITON_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceFinalize(TRITONBACKEND_ModelInstance* instance) {
  void* state = nullptr;
  RETURN_IF_ERROR(TRITONBACKEND_ModelInstanceState(instance, &state));
  delete static_cast<InstanceState*>(state);
  return nullptr;
}

MLRT_TRITON_EXPORT TRITONSERVER_Error* TRITONBACKEND_ModelInstanceExecute(TRITONBACKEND_ModelInstance* instance,
                                                                          TRITONBACKEND_Request** requests,
                                                                          const uint32_t request_count) {
  // Always success: from here on the requests are ours, and every one gets a response (an error
  // response for a bad request) and is released.
  void* state = nullptr;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelInstanceState(instance, &state);
  if (err != nullptr) return err;  // ownership of the requests stays with Triton
  try {
    Execute(static_cast<InstanceState*>(state), requests, request_count);
  } catch (const std::exception& e) {
    // Only std::bad_alloc can get here (mlrt returns errors as values); the requests of this call
    // may be half-answered, so log loudly rather than touch them again.
    LOG_ERROR(std::string("mlrt backend: execute failed: ") + e.what());
  }
  return nullptr;
}
