// Status, dtypes and owning tensors: the vocabulary types of the public API.
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

#include "mlrt/mlrt.h"

namespace mlrt {

const char* StatusCodeName(StatusCode code) {
  switch (code) {
    case StatusCode::kOk: return "OK";
    case StatusCode::kInvalidArgument: return "INVALID_ARGUMENT";
    case StatusCode::kNotFound: return "NOT_FOUND";
    case StatusCode::kDataLoss: return "DATA_LOSS";
    case StatusCode::kFailedPrecondition: return "FAILED_PRECONDITION";
    case StatusCode::kUnimplemented: return "UNIMPLEMENTED";
    case StatusCode::kResourceExhausted: return "RESOURCE_EXHAUSTED";
    case StatusCode::kPermissionDenied: return "PERMISSION_DENIED";
    case StatusCode::kInternal: return "INTERNAL";
  }
  return "UNKNOWN";
}

std::string Status::ToString() const {
  if (ok()) return "OK";
  return std::string(StatusCodeName(code_)) + ": " + message_;
}

namespace {
struct DTypeInfo {
  DType dtype;
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {
    {DType::kFloat32, "float32", 4}, {DType::kFloat64, "float64", 8}, {DType::kFloat16, "float16", 2},
    {DType::kInt64, "int64", 8},     {DType::kInt32, "int32", 4},     {DType::kInt16, "int16", 2},
    {DType::kInt8, "int8", 1},       {DType::kUInt8, "uint8", 1},     {DType::kBool, "bool", 1},
};
}  // namespace

const char* DTypeName(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.name;
  }
  return "unknown";
}

size_t DTypeSize(DType dtype) {
  for (const auto& d : kDTypes) {
    if (d.dtype == dtype) return d.size;
  }
  return 0;
}

std::optional<DType> DTypeFromName(std::string_view name) {
  for (const auto& d : kDTypes) {
    if (name == d.name) return d.dtype;
  }
  return std::nullopt;
}

bool TensorSpec::is_dynamic() const {
  for (int64_t d : shape) {
    if (d < 0) return true;
  }
  return false;
}

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (size_t i = 0; i < shape.size(); ++i) {
    int64_t d = shape[i];
    if (d < 0) d = i < max_shape.size() && max_shape[i] > 0 ? max_shape[i] : 0;
    n *= d;  // bounded by manifest validation (<= 2^40, at max_shape too)
  }
  return n;
}

void Tensor::Free::operator()(void* p) const { std::free(p); }

namespace {
constexpr int64_t kMaxTensorElements = int64_t{1} << 40;

std::string ShapeText(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}
}  // namespace

Result<Tensor> Tensor::Allocate(const TensorSpec& spec) {
  std::vector<int64_t> shape = spec.shape;
  for (size_t i = 0; i < shape.size(); ++i) {
    if (shape[i] < 0) shape[i] = i < spec.max_shape.size() ? spec.max_shape[i] : shape[i];
  }
  auto t = Allocate(spec.dtype, std::move(shape));
  if (!t.ok()) return Status(t.status().code(), t.status().message() + " for '" + spec.name + "'");
  return t;
}

Result<Tensor> Tensor::Allocate(DType dtype, std::vector<int64_t> shape) {
  int64_t elements = 1;
  for (int64_t d : shape) {
    if (d < 0 || d > kMaxTensorElements || (d != 0 && elements > kMaxTensorElements / d)) {
      return Status(StatusCode::kInvalidArgument, "cannot allocate a tensor of shape " + ShapeText(shape) +
                                                      ": dims must be in [0, 2^40], at most 2^40 elements");
    }
    elements *= d;
  }
  Tensor t;
  t.dtype_ = dtype;
  t.shape_ = std::move(shape);
  t.num_bytes_ = static_cast<size_t>(elements) * DTypeSize(dtype);
  size_t rounded = (t.num_bytes_ + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) {
    return Status(StatusCode::kResourceExhausted, "cannot allocate " + std::to_string(t.num_bytes_) + " bytes");
  }
  t.data_.reset(p);
  return t;
}

const char* Version() { return "0.1.0"; }

}  // namespace mlrt
