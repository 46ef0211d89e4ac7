// mlrt: the runtime for bundles built by `mlpack build`. No PyTorch, no MLIR, no Python.
//
//   auto model = mlrt::Model::Load("model.bundle");          // Result<shared_ptr<const Model>>
//   if (!model.ok()) { std::cerr << model.status().ToString(); return 1; }
//   auto outputs = (*model)->Run({mlrt::ConstTensorView{x.data(), mlrt::DType::kFloat32, {1, 3, 224, 224}}});
//
// Errors are values (Status / Result<T>); nothing in this API throws or aborts on bad input.
// The full contract is docs/runtime-api.md; the file format is docs/bundle-format.md.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace mlrt {

// Canonical error codes (the same vocabulary as absl / IREE status codes).
enum class StatusCode {
  kOk = 0,
  kInvalidArgument,     // the caller passed something wrong (shape, dtype, count, path)
  kNotFound,            // a file or symbol does not exist
  kDataLoss,            // the bundle is truncated or corrupted (bad hash, bad offsets)
  kFailedPrecondition,  // the bundle is valid but cannot run here (CPU lacks an ISA feature)
  kUnimplemented,       // the bundle uses something this runtime does not know (newer format)
  kResourceExhausted,   // out of memory / address space
  kPermissionDenied,    // a required signature is missing or does not verify
  kInternal,            // a bug in mlrt
};

const char* StatusCodeName(StatusCode code);

// An error code plus a message that says what was expected, what was given and where.
// Cheap to copy when OK. Thread-compatible (immutable after construction).
class [[nodiscard]] Status {
 public:
  Status() = default;  // OK
  Status(StatusCode code, std::string message) : code_(code), message_(std::move(message)) {}
  static Status Ok() { return Status(); }

  bool ok() const { return code_ == StatusCode::kOk; }
  StatusCode code() const { return code_; }
  const std::string& message() const { return message_; }
  std::string ToString() const;  // "INVALID_ARGUMENT: input 'x': expected shape [1,3], got [1,4]"

 private:
  StatusCode code_ = StatusCode::kOk;
  std::string message_;
};

// Either a value or a non-OK Status; never a half-built object.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}                    // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {              // NOLINT: implicit by design
    if (status_.ok()) status_ = Status(StatusCode::kInternal, "Result built from an OK status without a value");
  }
  bool ok() const { return value_.has_value(); }
  const Status& status() const { return status_; }
  T& value() & { return *value_; }
  const T& value() const& { return *value_; }
  T&& value() && { return std::move(*value_); }
  T* operator->() { return &*value_; }
  const T* operator->() const { return &*value_; }
  T& operator*() & { return *value_; }
  const T& operator*() const& { return *value_; }

 private:
  std::optional<T> value_;
  Status status_;
};

// Element types; names match numpy's ("float32", "int64", "bool", ...).
enum class DType : uint8_t { kFloat32, kFloat64, kFloat16, kInt64, kInt32, kInt16, kInt8, kUInt8, kBool };
const char* DTypeName(DType dtype);
size_t DTypeSize(DType dtype);
std::optional<DType> DTypeFromName(std::string_view name);

// The declared signature of one input or output, row-major (C order). In a bundle with dynamic
// dims (format version 2) `shape` holds -1 for a dim whose size is chosen per call; `symbols` then
// names each dim's symbol ("" for a static dim; empty for a spec with no dynamic dim), and
// min_shape / max_shape bound the sizes a run may have (both equal `shape` for a static spec).
struct TensorSpec {
  std::string name;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<std::string> symbols;
  std::vector<int64_t> min_shape;
  std::vector<int64_t> max_shape;
  bool is_dynamic() const;
  // Elements and bytes of `shape`; for a dynamic spec, at max_shape (the largest run: a buffer this
  // size fits every call), a dynamic dim counting 0 when max_shape is not filled in. Never negative.
  int64_t num_elements() const;
  size_t num_bytes() const { return static_cast<size_t>(num_elements()) * DTypeSize(dtype); }
};

// A dynamic dim of a format-version-2 bundle (Model::dynamic_dims()): a symbol that sizes one or more
// input dims per call, between `min` and `max`. The bundle holds one compiled program per bucket
// (per combination of buckets, over all symbols); a run takes the smallest bucket at or above the
// input's size. Sizes between buckets run on zero-padded inputs with the outputs cut back when
// `padded` (the compiler proved that exact); otherwise only bucket sizes run and `not_padded` says why.
struct DynamicDim {
  std::string name;
  int64_t min = 0;
  int64_t max = 0;
  std::vector<int64_t> buckets;  // strictly increasing, the last == max
  bool padded = false;
  std::string not_padded;
};

// Non-owning views of contiguous row-major data. The caller keeps the data alive during Run.
struct ConstTensorView {
  const void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
};
struct TensorView {
  void* data = nullptr;
  DType dtype = DType::kFloat32;
  std::vector<int64_t> shape;
};

// An owning, 64-byte aligned tensor (the outputs of Model::Run without caller buffers).
// Move-only; thread-compatible.
class Tensor final {
 public:
  // A tensor of the spec's shape (a dynamic spec: its max_shape).
  static Result<Tensor> Allocate(const TensorSpec& spec);
  // A tensor of exactly this shape (e.g. one of Model::OutputShapes). INVALID_ARGUMENT for a
  // negative dim or more than 2^40 elements.
  static Result<Tensor> Allocate(DType dtype, std::vector<int64_t> shape);
  Tensor(Tensor&&) noexcept = default;
  Tensor& operator=(Tensor&&) noexcept = default;

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  size_t num_bytes() const { return num_bytes_; }
  void* data() { return data_.get(); }
  const void* data() const { return data_.get(); }
  TensorView view() { return {data(), dtype_, shape_}; }

 private:
  struct Free {
    void operator()(void* p) const;
  };
  Tensor() = default;
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  size_t num_bytes_ = 0;
  std::unique_ptr<void, Free> data_;
};

namespace internal {
struct DeviceBuffer;  // a device allocation and the CUDA context it lives in (defined in the runtime)
}  // namespace internal

// CU_STREAM_LEGACY of cuda.h: the legacy default stream (the CUDA runtime's default stream, stream 1
// in DLPack). The default `wait_stream` of Model::RunDevice.
inline constexpr uintptr_t kCudaStreamLegacy = 0x1;

// An owning tensor in GPU memory (the outputs of Model::RunDevice without caller buffers): dense,
// row-major, allocated with cuMemAlloc in the device's primary context. The allocation and the
// primary context stay valid until the DeviceTensor is destroyed, even after its Model is gone.
// Move-only; thread-compatible.
class DeviceTensor final {
 public:
  DeviceTensor(DeviceTensor&& other) noexcept { *this = std::move(other); }
  DeviceTensor& operator=(DeviceTensor&& other) noexcept {
    dtype_ = other.dtype_;
    shape_ = std::move(other.shape_);
    ordinal_ = other.ordinal_;
    num_bytes_ = std::exchange(other.num_bytes_, 0);
    data_ = std::exchange(other.data_, nullptr);
    buffer_ = std::move(other.buffer_);
    return *this;
  }
  ~DeviceTensor() = default;

  DType dtype() const { return dtype_; }
  const std::vector<int64_t>& shape() const { return shape_; }
  int device_ordinal() const { return ordinal_; }  // N of "cuda:N"
  size_t num_bytes() const { return num_bytes_; }
  // The CUdeviceptr as a pointer (null for a zero-byte tensor or after a move). Not host-readable.
  void* data() { return data_; }
  const void* data() const { return data_; }
  TensorView view() { return {data_, dtype_, shape_}; }
  ConstTensorView const_view() const { return {data_, dtype_, shape_}; }
  // Copies all num_bytes() to host memory (synchronous, ordered after the legacy default stream).
  Status CopyToHost(void* host) const;

 private:
  friend class Model;
  DeviceTensor() = default;
  DType dtype_ = DType::kFloat32;
  std::vector<int64_t> shape_;
  int ordinal_ = -1;
  size_t num_bytes_ = 0;
  void* data_ = nullptr;
  std::shared_ptr<internal::DeviceBuffer> buffer_;
};

struct LoadOptions {
  // Every mode checks the manifest and the code by SHA-256 before use (code is never mapped
  // executable unverified). kFast (default) checks the weights by their XXH3-64 chunk checksums
  // where the bundle lists them (it detects corruption and truncation at ~10x the speed; against
  // a forged file only a signature helps, and an unsigned bundle's SHA-256 would not either),
  // else by SHA-256. kFull checks the weights by SHA-256 too; a required signature implies it.
  // kSkipWeights trusts the weights: for huge bundles from a trusted store.
  enum class Verify { kFull, kSkipWeights, kFast };
  Verify verify = Verify::kFast;
  // Threads for one Run (the calling thread included). 0: MLRT_NUM_THREADS if set, else the
  // physical cores available to the process. Each Model owns a pool of num_threads - 1 workers.
  int num_threads = 0;
  // When set (32 raw bytes of an Ed25519 public key, e.g. from `mlpack keygen`'s .pub file),
  // the bundle must carry a valid signature by that key (`mlpack sign`) or Load fails with
  // PERMISSION_DENIED. Implies full verification. Needs OpenSSL's libcrypto at run time.
  std::string public_key;
  // Where the model runs: "cpu" (the bundle's cpu.so), "cuda" (= "cuda:0") or "cuda:N" (the
  // bundle's cuda.ptx on GPU N, through the NVIDIA driver, loaded with dlopen at first use).
  std::string device = "cpu";
};

// A loaded, verified bundle. Immutable once loaded: share one instance between threads freely.
// Run() is safe to call concurrently; each call takes an arena (on cuda: an execution context)
// from an internal pool (allocating a new one when all are busy), so N concurrent calls hold at
// most N arenas.
// Lifetime: the bundle file stays memory-mapped (weights are used in place) until the last
// shared_ptr is released. Replacing the file while loaded is fine (rename); truncating it in place
// is not (see docs/runtime-api.md).
class Model final {
 public:
  static Result<std::shared_ptr<const Model>> Load(const std::string& path, const LoadOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::vector<TensorSpec>& inputs() const;
  const std::vector<TensorSpec>& outputs() const;
  // The symbols of the inputs' dynamic dims, in manifest order; empty for a static bundle.
  const std::vector<DynamicDim>& dynamic_dims() const;
  const std::string& manifest_json() const;  // the bundle's manifest, verbatim
  size_t arena_bytes() const;                // per concurrent Run (dynamic: the largest program's)
  int num_threads() const;                   // threads one Run uses
  const std::string& device() const;         // "cpu" or "cuda:N", as loaded
  size_t device_bytes() const;               // GPU memory held (weights + execution contexts); 0 on cpu
  // On cpu, the bundle's CPU code variant this model runs, chosen at load (the first, in the
  // bundle's order, whose architecture and features this CPU has): "<level> (<arch>)", e.g.
  // "x86-64-v3 (x86_64)" or "neoverse-n1 (aarch64)". Empty on cuda.
  std::string cpu_variant() const;
  // On cpu, the instruction set the variant's microkernels picked at load from this CPU: with an
  // AVX2 level "avx512f" where the CPU and OS support AVX-512F (MLRT_KERNEL_ISA=avx2 keeps it
  // off), else "avx2"; "c" for the portable code. Empty on cuda and for bundles older than this.
  std::string kernel_isa() const;

  // Validates the inputs (count, dtype, shape: every dynamic dim within its range, the dims of one
  // symbol equal, a size between buckets only where the symbol is padded) and returns the shape
  // every output has for this call. For a static bundle, the outputs' declared shapes.
  Result<std::vector<std::vector<int64_t>>> OutputShapes(const std::vector<ConstTensorView>& inputs) const;
  // Runs the model on caller-provided outputs. Validates count, dtype and shape of every input
  // and output (O(rank), before touching data: outputs must have exactly the shapes OutputShapes
  // gives); outputs must not overlap inputs.
  Status Run(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs) const;
  // Same, allocating the outputs (at this call's shapes).
  Result<std::vector<Tensor>> Run(const std::vector<ConstTensorView>& inputs) const;
  // CUDA models only: like Run, but every data pointer is a CUDA device pointer (CUdeviceptr) valid
  // in the device's primary context. Inputs are copied device-to-device into the execution context
  // and outputs out of it. Stream ordering: the input copies start after all work queued so far on
  // `wait_stream` (a CUstream handle value of that context; default CU_STREAM_LEGACY), through an
  // event. Synchronous: returns after the outputs are written (no work of this call is left on any
  // stream). FAILED_PRECONDITION on a cpu model.
  Status RunDevice(const std::vector<ConstTensorView>& inputs, const std::vector<TensorView>& outputs,
                   uintptr_t wait_stream = kCudaStreamLegacy) const;
  // Same, allocating the outputs on the model's GPU (RESOURCE_EXHAUSTED when it is out of memory).
  Result<std::vector<DeviceTensor>> RunDevice(const std::vector<ConstTensorView>& inputs,
                                              uintptr_t wait_stream = kCudaStreamLegacy) const;

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// Version of this runtime and the newest bundle format it reads.
const char* Version();
uint32_t MaxBundleFormatVersion();

}  // namespace mlrt
