// Status, dtypes and owning tensors: the vocabulary types of the public API.
#include <cstdlib>
#include <limits>

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

int64_t TensorSpec::num_elements() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;  // bounded by manifest validation (<= 2^40)
  return n;
}

void Tensor::Free::operator()(void* p) const { std::free(p); }

Result<Tensor> Tensor::Allocate(const TensorSpec& spec) {
  Tensor t;
  t.dtype_ = spec.dtype;
  t.shape_ = spec.shape;
  t.num_bytes_ = spec.num_bytes();
  size_t rounded = (t.num_bytes_ + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, rounded == 0 ? 64 : rounded);
  if (!p) {
    return Status(StatusCode::kResourceExhausted,
                  "cannot allocate " + std::to_string(t.num_bytes_) + " bytes for output '" + spec.name + "'");
  }
  t.data_.reset(p);
  return t;
}

const char* Version() { return "0.1.0"; }

}  // namespace mlrt
