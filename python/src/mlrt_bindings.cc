// pybind11 bindings: numpy in, numpy out; DLPack in, DeviceArray (a DLPack producer) out on CUDA
// models. The Python-facing conveniences (output structure, keyword inputs, non-contiguous inputs)
// live in python/mlrt/__init__.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <memory>
#include <string>

#include "mlrt/mlrt.h"

namespace py = pybind11;

namespace {

PyObject* g_error = nullptr;  // mlrt.Error

[[noreturn]] void Raise(const mlrt::Status& status) {
  PyErr_SetString(g_error, status.message().c_str());
  throw py::error_already_set();
}

std::optional<mlrt::DType> FromNumpy(const py::dtype& dt) {
  const char kind = dt.kind();
  const auto size = dt.itemsize();
  if (kind == 'f') {
    if (size == 4) return mlrt::DType::kFloat32;
    if (size == 8) return mlrt::DType::kFloat64;
    if (size == 2) return mlrt::DType::kFloat16;
  } else if (kind == 'i') {
    if (size == 8) return mlrt::DType::kInt64;
    if (size == 4) return mlrt::DType::kInt32;
    if (size == 2) return mlrt::DType::kInt16;
    if (size == 1) return mlrt::DType::kInt8;
  } else if (kind == 'u' && size == 1) {
    return mlrt::DType::kUInt8;
  } else if (kind == 'b') {
    return mlrt::DType::kBool;
  }
  return std::nullopt;
}

py::dtype ToNumpy(mlrt::DType dt) { return py::dtype(std::string(mlrt::DTypeName(dt))); }

py::tuple ShapeTuple(const std::vector<int64_t>& shape) {
  py::tuple t(shape.size());
  for (size_t i = 0; i < shape.size(); ++i) t[i] = shape[i];
  return t;
}

// A spec's shape as Python sees it: a dynamic dim is its symbol's name (like ONNX Runtime).
py::tuple SpecShapeTuple(const mlrt::TensorSpec& spec) {
  py::tuple t(spec.shape.size());
  for (size_t i = 0; i < spec.shape.size(); ++i) {
    if (spec.shape[i] < 0 && i < spec.symbols.size()) {
      t[i] = py::str(spec.symbols[i]);
    } else {
      t[i] = spec.shape[i];
    }
  }
  return t;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? "," : "") + std::to_string(shape[i]);
  return s + "]";
}

// ---------------------------------------------------------------------------------------- DLPack
// The DLPack C ABI (https://dmlc.github.io/dlpack/latest/c_api.html), unversioned "dltensor"
// capsules. Written from the spec; the layouts are ABI-stable.
constexpr int32_t kDLCPU = 1;
constexpr int32_t kDLCUDA = 2;
enum : uint8_t { kDLInt = 0, kDLUInt = 1, kDLFloat = 2, kDLBool = 6 };  // DLDataTypeCode (those mlrt uses)

struct DLDevice {
  int32_t device_type;  // DLDeviceType
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // DLDataTypeCode
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; NULL: compact row-major
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor* self);
};

constexpr const char* kCapsuleName = "dltensor";

DLDataType ToDLPack(mlrt::DType dt) {
  switch (dt) {
    case mlrt::DType::kFloat32: return {kDLFloat, 32, 1};
    case mlrt::DType::kFloat64: return {kDLFloat, 64, 1};
    case mlrt::DType::kFloat16: return {kDLFloat, 16, 1};
    case mlrt::DType::kInt64: return {kDLInt, 64, 1};
    case mlrt::DType::kInt32: return {kDLInt, 32, 1};
    case mlrt::DType::kInt16: return {kDLInt, 16, 1};
    case mlrt::DType::kInt8: return {kDLInt, 8, 1};
    case mlrt::DType::kUInt8: return {kDLUInt, 8, 1};
    case mlrt::DType::kBool: return {kDLBool, 8, 1};
  }
  return {kDLFloat, 32, 1};
}

std::optional<mlrt::DType> FromDLPack(DLDataType dt) {
  for (auto d : {mlrt::DType::kFloat32, mlrt::DType::kFloat64, mlrt::DType::kFloat16, mlrt::DType::kInt64,
                 mlrt::DType::kInt32, mlrt::DType::kInt16, mlrt::DType::kInt8, mlrt::DType::kUInt8,
                 mlrt::DType::kBool}) {
    DLDataType e = ToDLPack(d);
    if (e.code == dt.code && e.bits == dt.bits && e.lanes == dt.lanes) return d;
  }
  return std::nullopt;
}

std::string DLDataTypeString(DLDataType dt) {  // "bfloat16", "complex64", "float32x4"
  const char* names[] = {"int", "uint", "float", "opaque", "bfloat", "complex", "bool"};
  if (dt.code >= 7) return "?";
  return names[dt.code] + std::to_string(dt.bits) + (dt.lanes != 1 ? "x" + std::to_string(dt.lanes) : "");
}

[[noreturn]] void Fail(const std::string& message) {
  Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument, message));
}

[[noreturn]] void RaiseBufferError(const std::string& message) {
  PyErr_SetString(PyExc_BufferError, message.c_str());
  throw py::error_already_set();
}

// "cuda:N" -> N; -1 for "cpu".
int Ordinal(const std::string& device) {
  return device.compare(0, 5, "cuda:") == 0 ? std::stoi(device.substr(5)) : -1;
}

// A model output on the GPU, exported through DLPack. Every __dlpack__ call shares ownership of the
// DeviceTensor (like numpy and torch, which may export one array any number of times: the
// consumers alias the same memory); the memory is freed when the DeviceArray and every consumer
// are gone, even after the model.
struct DeviceArray {
  std::shared_ptr<mlrt::DeviceTensor> tensor;
};

struct Export {  // DLManagedTensor::manager_ctx of one __dlpack__ call
  DLManagedTensor managed{};
  std::shared_ptr<mlrt::DeviceTensor> tensor;
  std::vector<int64_t> shape, strides;
};

void DeleteExport(DLManagedTensor* self) {  // may run on any thread, with or without the GIL
  delete static_cast<Export*>(self->manager_ctx);
}

void CapsuleDestructor(PyObject* capsule) {
  // Never consumed (still named "dltensor"): the producer frees it, as the DLPack spec requires.
  if (!PyCapsule_IsValid(capsule, kCapsuleName)) return;  // renamed "used_dltensor": the consumer owns it
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, kCapsuleName));
  if (managed && managed->deleter) managed->deleter(managed);
}

py::capsule ToCapsule(const DeviceArray& a) {
  const mlrt::DeviceTensor& t = *a.tensor;
  auto e = std::make_unique<Export>();
  e->tensor = a.tensor;
  e->shape = t.shape();
  e->strides.assign(e->shape.size(), 1);
  for (size_t i = e->shape.size(); i-- > 1;) e->strides[i - 1] = e->strides[i] * e->shape[i];
  DLTensor& dl = e->managed.dl_tensor;
  dl.data = const_cast<void*>(t.data());
  dl.device = {kDLCUDA, t.device_ordinal()};
  dl.ndim = static_cast<int32_t>(e->shape.size());
  dl.dtype = ToDLPack(t.dtype());
  dl.shape = e->shape.data();
  dl.strides = e->strides.data();
  dl.byte_offset = 0;
  e->managed.manager_ctx = e.get();
  e->managed.deleter = &DeleteExport;
  PyObject* capsule = PyCapsule_New(&e->managed, kCapsuleName, &CapsuleDestructor);
  if (!capsule) throw py::error_already_set();
  e.release();  // owned by the capsule (or its consumer) from here on
  return py::reinterpret_steal<py::capsule>(capsule);
}

py::object DLPackMethod(const DeviceArray& a, const py::object& stream, const py::object& max_version,
                        const py::object& dl_device, const py::object& copy) {
  // `stream` is ignored: run_dlpack returned after the outputs were complete, so any stream may use
  // them at once. `max_version`: this producer always returns an unversioned "dltensor" capsule,
  // which every consumer accepts.
  (void)stream;
  (void)max_version;
  const int ordinal = a.tensor->device_ordinal();
  if (!dl_device.is_none()) {
    auto dev = dl_device.cast<py::tuple>();
    if (dev.size() != 2 || dev[0].cast<int>() != kDLCUDA || dev[1].cast<int>() != ordinal) {
      RaiseBufferError("mlrt.DeviceArray lives on cuda:" + std::to_string(ordinal) + " (DLPack device (2, " +
                       std::to_string(ordinal) + ")) and cannot be exported to DLPack device " +
                       std::string(py::str(dl_device)) + "; use .numpy() for a host copy");
    }
  }
  if (!copy.is_none() && copy.cast<bool>()) {
    RaiseBufferError("mlrt.DeviceArray does not export copies (copy=True); export it with copy=None and copy "
                     "it in the consumer");
  }
  return ToCapsule(a);
}

// One input of run_dlpack: a DLPack producer on the model's GPU. Returns the capsule, which must
// stay alive (and unconsumed: the producer frees it) until the run returns.
py::object ReadDLPackInput(const py::handle& obj, size_t i, const mlrt::TensorSpec& spec, int ordinal,
                           uintptr_t stream, mlrt::ConstTensorView* view) {
  const std::string where = "input " + std::to_string(i) + " ('" + spec.name + "')";
  const std::string want = "a DLPack tensor on cuda:" + std::to_string(ordinal) + " (DLPack device (2, " +
                           std::to_string(ordinal) + "))";
  if (!py::hasattr(obj, "__dlpack__") || !py::hasattr(obj, "__dlpack_device__")) {
    Fail(where + ": expected " + want + ", e.g. a torch CUDA tensor or a CuPy array; got " +
         std::string(py::str(py::type::of(obj).attr("__name__"))) + " (use run() for numpy arrays)");
  }
  py::tuple dev = obj.attr("__dlpack_device__")().cast<py::tuple>();
  if (dev.size() != 2 || dev[0].cast<int>() != kDLCUDA || dev[1].cast<int>() != ordinal) {
    std::string got = std::string(py::str(dev));
    if (dev.size() == 2 && dev[0].cast<int>() == kDLCPU) got += ", on the CPU: use run() for host arrays";
    Fail(where + ": expected " + want + ", got DLPack device " + got);
  }
  py::object capsule = obj.attr("__dlpack__")(py::arg("stream") = stream);
  if (!PyCapsule_IsValid(capsule.ptr(), kCapsuleName)) {
    const char* name = PyCapsule_CheckExact(capsule.ptr()) ? PyCapsule_GetName(capsule.ptr()) : nullptr;
    PyErr_Clear();
    Fail(where + ": __dlpack__ returned " +
         (name ? "a capsule named '" + std::string(name) + "'" : std::string(py::str(py::type::of(capsule)))) +
         ", expected a '" + kCapsuleName + "' capsule");
  }
  // Read without taking ownership: the capsule keeps its name, so the producer frees it.
  const auto* managed = static_cast<const DLManagedTensor*>(PyCapsule_GetPointer(capsule.ptr(), kCapsuleName));
  const DLTensor& t = managed->dl_tensor;
  if (t.device.device_type != kDLCUDA || t.device.device_id != ordinal) {
    Fail(where + ": expected " + want + ", but its DLTensor is on DLPack device (" +
         std::to_string(t.device.device_type) + ", " + std::to_string(t.device.device_id) + ")");
  }
  auto dtype = FromDLPack(t.dtype);
  if (!dtype) {
    Fail(where + ": expected dtype " + mlrt::DTypeName(spec.dtype) + ", got unsupported DLPack dtype " +
         DLDataTypeString(t.dtype) + " (code " + std::to_string(t.dtype.code) + ", bits " +
         std::to_string(t.dtype.bits) + ", lanes " + std::to_string(t.dtype.lanes) + ")");
  }
  if (t.ndim < 0 || (t.ndim > 0 && !t.shape)) Fail(where + ": malformed DLTensor (ndim " + std::to_string(t.ndim) + ")");
  std::vector<int64_t> shape(t.shape, t.shape + t.ndim);
  if (t.strides) {  // compact row-major only; extents of 1 may carry any stride
    int64_t expected = 1;
    bool empty = false;
    for (int64_t n : shape) empty = empty || n == 0;
    for (int32_t k = t.ndim - 1; k >= 0 && !empty; --k) {
      if (shape[k] != 1 && t.strides[k] != expected) {
        std::vector<int64_t> strides(t.strides, t.strides + t.ndim);
        Fail(where + ": expected a contiguous row-major tensor, got shape " + ShapeString(shape) + " with strides " +
             ShapeString(strides) + " (in elements); pass x.contiguous()");
      }
      expected *= shape[k];
    }
  }
  view->data = static_cast<const char*>(t.data) + t.byte_offset;
  view->dtype = *dtype;
  view->shape = std::move(shape);
  return capsule;
}

// run_dlpack: DLPack inputs on the model's GPU, DeviceArray outputs (a flat list, `outputs` order).
py::list RunDLPack(const mlrt::Model& model, const py::list& objects, int64_t stream) {
  const int ordinal = Ordinal(model.device());
  if (ordinal < 0) {
    Raise(mlrt::Status(mlrt::StatusCode::kFailedPrecondition,
                       "run_dlpack takes and returns GPU tensors: it needs a model loaded with device='cuda:N', "
                       "and this one runs on " + model.device() + "; use run() with numpy arrays"));
  }
  if (stream < 0) {
    Fail("stream must be a CUDA stream handle (1: the legacy default stream, 2: the per-thread default stream, "
         "or a cudaStream_t value), got " + std::to_string(stream));
  }
  const uintptr_t wait_stream = stream == 0 ? mlrt::kCudaStreamLegacy : static_cast<uintptr_t>(stream);
  const auto& specs = model.inputs();
  if (objects.size() != specs.size()) {
    Fail("expected " + std::to_string(specs.size()) + " input(s), got " + std::to_string(objects.size()));
  }
  std::vector<py::object> keep;  // the producers' capsules, alive until the run has returned
  std::vector<mlrt::ConstTensorView> inputs(objects.size());
  for (size_t i = 0; i < objects.size(); ++i) {
    keep.push_back(ReadDLPackInput(objects[i], i, specs[i], ordinal, wait_stream, &inputs[i]));
  }
  mlrt::Result<std::vector<mlrt::DeviceTensor>> outputs = [&] {
    py::gil_scoped_release release;
    return model.RunDevice(inputs, wait_stream);
  }();
  if (!outputs.ok()) Raise(outputs.status());
  py::list result;
  for (auto& t : *outputs) result.append(DeviceArray{std::make_shared<mlrt::DeviceTensor>(std::move(t))});
  return result;
}

// Views of already C-contiguous arrays (the Python layer guarantees it); `keep` holds the arrays.
std::vector<mlrt::ConstTensorView> InputViews(const mlrt::Model& model, const py::list& arrays,
                                              std::vector<py::array>* keep) {
  const auto& specs = model.inputs();
  if (arrays.size() != specs.size()) {
    Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument, "expected " + std::to_string(specs.size()) +
                                                                " input(s), got " + std::to_string(arrays.size())));
  }
  std::vector<mlrt::ConstTensorView> inputs;
  for (size_t i = 0; i < arrays.size(); ++i) {
    py::array a = py::reinterpret_borrow<py::array>(arrays[i]);
    auto dt = FromNumpy(a.dtype());
    if (!dt) {
      Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument,
                         "input " + std::to_string(i) + " ('" + specs[i].name + "'): expected dtype " +
                             mlrt::DTypeName(specs[i].dtype) + ", got unsupported numpy dtype " +
                             std::string(py::str(a.dtype()))));
    }
    // The Python layer copies anything else (mlrt._c_array); reading such memory as is would be wrong.
    if (!(a.flags() & py::array::c_style) || !(a.flags() & py::detail::npy_api::NPY_ARRAY_ALIGNED_)) {
      Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument,
                         "input " + std::to_string(i) + " is not C-contiguous and aligned"));
    }
    if (!a.dtype().attr("isnative").cast<bool>()) {
      Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument,
                         "input " + std::to_string(i) + " is not in the machine's byte order"));
    }
    std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    inputs.push_back({a.data(), *dt, std::move(shape)});
    keep->push_back(std::move(a));
  }
  return inputs;
}

// The shape of every output for these inputs (validated; dynamic bundles: per call).
py::list OutputShapes(const mlrt::Model& model, const py::list& arrays) {
  std::vector<py::array> keep;
  std::vector<mlrt::ConstTensorView> inputs = InputViews(model, arrays, &keep);
  auto shapes = model.OutputShapes(inputs);
  if (!shapes.ok()) Raise(shapes.status());
  py::list result;
  for (const auto& shape : *shapes) result.append(ShapeTuple(shape));
  return result;
}

// Runs on already C-contiguous arrays (the Python layer guarantees it); returns a list of arrays
// of this call's output shapes.
py::list RunFlat(const mlrt::Model& model, const py::list& arrays) {
  std::vector<py::array> keep;  // keeps the inputs alive while the GIL is released
  std::vector<mlrt::ConstTensorView> inputs = InputViews(model, arrays, &keep);
  auto shapes = model.OutputShapes(inputs);  // validates the inputs before anything is allocated
  if (!shapes.ok()) Raise(shapes.status());
  std::vector<py::array> outs;
  std::vector<mlrt::TensorView> views;
  for (size_t i = 0; i < shapes->size(); ++i) {
    const mlrt::DType dtype = model.outputs()[i].dtype;
    std::vector<int64_t>& shape = (*shapes)[i];
    py::array out(ToNumpy(dtype), std::vector<py::ssize_t>(shape.begin(), shape.end()));
    views.push_back({out.mutable_data(), dtype, std::move(shape)});
    outs.push_back(std::move(out));
  }
  mlrt::Status status;
  {
    py::gil_scoped_release release;
    status = model.Run(inputs, views);
  }
  if (!status.ok()) Raise(status);
  py::list result;
  for (auto& o : outs) result.append(std::move(o));
  return result;
}

}  // namespace

PYBIND11_MODULE(_mlrt, m) {
  m.doc() = "mlrt runtime bindings (use the `mlrt` package)";
  static py::exception<std::runtime_error> error(m, "Error");
  g_error = error.ptr();

  py::class_<mlrt::TensorSpec>(m, "TensorSpec")
      .def_readonly("name", &mlrt::TensorSpec::name)
      .def_property_readonly("dtype", [](const mlrt::TensorSpec& s) { return ToNumpy(s.dtype); })
      .def_property_readonly("shape", &SpecShapeTuple)
      .def_property_readonly("min_shape", [](const mlrt::TensorSpec& s) { return ShapeTuple(s.min_shape); })
      .def_property_readonly("max_shape", [](const mlrt::TensorSpec& s) { return ShapeTuple(s.max_shape); })
      .def_property_readonly("is_dynamic", &mlrt::TensorSpec::is_dynamic)
      .def("__repr__", [](const mlrt::TensorSpec& s) {
        std::string shape;
        for (size_t i = 0; i < s.shape.size(); ++i) {
          shape += i ? ", " : "";
          shape += s.shape[i] < 0 && i < s.symbols.size() ? "'" + s.symbols[i] + "'" : std::to_string(s.shape[i]);
        }
        if (s.shape.size() == 1) shape += ",";
        return "TensorSpec(name='" + s.name + "', dtype=" + mlrt::DTypeName(s.dtype) + ", shape=(" + shape + "))";
      });

  py::class_<mlrt::DynamicDim>(m, "DynamicDim")
      .def_readonly("name", &mlrt::DynamicDim::name)
      .def_readonly("min", &mlrt::DynamicDim::min)
      .def_readonly("max", &mlrt::DynamicDim::max)
      .def_property_readonly("buckets", [](const mlrt::DynamicDim& d) { return ShapeTuple(d.buckets); })
      .def_readonly("padded", &mlrt::DynamicDim::padded)
      .def_readonly("not_padded", &mlrt::DynamicDim::not_padded)
      .def("__repr__", [](const mlrt::DynamicDim& d) {
        std::string buckets;
        for (size_t i = 0; i < d.buckets.size(); ++i) buckets += (i ? ", " : "") + std::to_string(d.buckets[i]);
        if (d.buckets.size() == 1) buckets += ",";
        std::string r = "DynamicDim(name='" + d.name + "', min=" + std::to_string(d.min) + ", max=" +
                        std::to_string(d.max) + ", buckets=(" + buckets + "), padded=" + (d.padded ? "True" : "False");
        if (!d.padded) r += ", not_padded=" + std::string(py::repr(py::str(d.not_padded)));
        return r + ")";
      });

  py::class_<mlrt::Model, std::shared_ptr<mlrt::Model>>(m, "Model")
      .def_property_readonly("inputs", &mlrt::Model::inputs)
      .def_property_readonly("outputs", &mlrt::Model::outputs)
      .def_property_readonly("dynamic_dims", &mlrt::Model::dynamic_dims)
      .def_property_readonly("manifest_json", &mlrt::Model::manifest_json)
      .def_property_readonly("arena_bytes", &mlrt::Model::arena_bytes)
      .def_property_readonly("num_threads", &mlrt::Model::num_threads)
      .def_property_readonly("device", &mlrt::Model::device)
      .def_property_readonly("device_bytes", &mlrt::Model::device_bytes)
      .def_property_readonly("cpu_variant", &mlrt::Model::cpu_variant)
      .def_property_readonly("kernel_isa", &mlrt::Model::kernel_isa)
      .def("run_flat", &RunFlat, py::arg("inputs"))
      .def("output_shapes", &OutputShapes, py::arg("inputs"))
      .def("run_dlpack", &RunDLPack, py::arg("inputs"), py::arg("stream") = 1);

  py::class_<DeviceArray>(m, "DeviceArray")
      .def_property_readonly("shape", [](const DeviceArray& a) { return ShapeTuple(a.tensor->shape()); })
      .def_property_readonly("dtype", [](const DeviceArray& a) { return ToNumpy(a.tensor->dtype()); })
      .def_property_readonly("device",
                             [](const DeviceArray& a) { return "cuda:" + std::to_string(a.tensor->device_ordinal()); })
      .def_property_readonly("nbytes", [](const DeviceArray& a) { return a.tensor->num_bytes(); })
      .def_property_readonly("data_ptr",
                             [](const DeviceArray& a) { return reinterpret_cast<uintptr_t>(a.tensor->data()); })
      .def("__dlpack_device__", [](const DeviceArray& a) { return py::make_tuple(kDLCUDA, a.tensor->device_ordinal()); })
      .def("__dlpack__", &DLPackMethod, py::arg("stream") = py::none(), py::arg("max_version") = py::none(),
           py::arg("dl_device") = py::none(), py::arg("copy") = py::none())
      .def("numpy",
           [](const DeviceArray& a) {
             const mlrt::DeviceTensor& t = *a.tensor;
             std::vector<py::ssize_t> shape(t.shape().begin(), t.shape().end());
             py::array out(ToNumpy(t.dtype()), shape);
             mlrt::Status s;
             {
               py::gil_scoped_release release;
               s = t.CopyToHost(out.mutable_data());
             }
             if (!s.ok()) Raise(s);
             return out;
           })
      .def("__repr__", [](const DeviceArray& a) {
        const mlrt::DeviceTensor& t = *a.tensor;
        std::string shape;
        for (size_t i = 0; i < t.shape().size(); ++i) shape += (i ? ", " : "") + std::to_string(t.shape()[i]);
        if (t.shape().size() == 1) shape += ",";
        return "mlrt.DeviceArray(shape=(" + shape + "), dtype=" + mlrt::DTypeName(t.dtype()) + ", device='cuda:" +
               std::to_string(t.device_ordinal()) + "')";
      });

  m.def(
      "load",
      [](const std::string& path, const std::string& verify, int num_threads, const py::bytes& public_key,
         const std::string& device) {
        mlrt::LoadOptions options;
        options.num_threads = num_threads;
        options.device = device;
        options.public_key = public_key;
        if (verify == "fast") {
          options.verify = mlrt::LoadOptions::Verify::kFast;
        } else if (verify == "full") {
          options.verify = mlrt::LoadOptions::Verify::kFull;
        } else if (verify == "skip-weights") {
          options.verify = mlrt::LoadOptions::Verify::kSkipWeights;
        } else {
          Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument,
                             "verify must be 'fast', 'full' or 'skip-weights', got '" + verify + "'"));
        }
        mlrt::Result<std::shared_ptr<const mlrt::Model>> model = [&] {
          py::gil_scoped_release release;
          return mlrt::Model::Load(path, options);
        }();
        if (!model.ok()) Raise(model.status());
        // pybind11 holds non-const pointers; the Model API is const-only, so nothing can mutate it.
        return std::const_pointer_cast<mlrt::Model>(std::move(model).value());
      },
      py::arg("path"), py::arg("verify") = "fast", py::arg("num_threads") = 0, py::arg("public_key") = py::bytes(),
      py::arg("device") = "cpu");
  m.def("version", &mlrt::Version);
  m.def("max_bundle_format_version", &mlrt::MaxBundleFormatVersion);
}
