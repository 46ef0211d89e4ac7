// pybind11 bindings: numpy in, numpy out. The Python-facing conveniences (output structure,
// keyword inputs, non-contiguous inputs) live in python/mlrt/__init__.py.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

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

// Runs on already C-contiguous arrays (the Python layer guarantees it); returns a list of arrays.
py::list RunFlat(const mlrt::Model& model, const py::list& arrays) {
  const auto& specs = model.inputs();
  if (arrays.size() != specs.size()) {
    Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument, "expected " + std::to_string(specs.size()) +
                                                                " input(s), got " + std::to_string(arrays.size())));
  }
  std::vector<py::array> keep;  // keeps the inputs alive while the GIL is released
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
    if (!(a.flags() & py::array::c_style)) {
      Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument, "input " + std::to_string(i) + " is not C-contiguous"));
    }
    std::vector<int64_t> shape(a.shape(), a.shape() + a.ndim());
    inputs.push_back({a.data(), *dt, std::move(shape)});
    keep.push_back(std::move(a));
  }
  std::vector<py::array> outs;
  std::vector<mlrt::TensorView> views;
  for (const auto& spec : model.outputs()) {
    std::vector<py::ssize_t> shape(spec.shape.begin(), spec.shape.end());
    py::array out(ToNumpy(spec.dtype), shape);
    views.push_back({out.mutable_data(), spec.dtype, spec.shape});
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
      .def_property_readonly("shape", [](const mlrt::TensorSpec& s) { return ShapeTuple(s.shape); })
      .def("__repr__", [](const mlrt::TensorSpec& s) {
        std::string shape;
        for (size_t i = 0; i < s.shape.size(); ++i) shape += (i ? ", " : "") + std::to_string(s.shape[i]);
        if (s.shape.size() == 1) shape += ",";
        return "TensorSpec(name='" + s.name + "', dtype=" + mlrt::DTypeName(s.dtype) + ", shape=(" + shape + "))";
      });

  py::class_<mlrt::Model, std::shared_ptr<mlrt::Model>>(m, "Model")
      .def_property_readonly("inputs", &mlrt::Model::inputs)
      .def_property_readonly("outputs", &mlrt::Model::outputs)
      .def_property_readonly("manifest_json", &mlrt::Model::manifest_json)
      .def_property_readonly("arena_bytes", &mlrt::Model::arena_bytes)
      .def_property_readonly("num_threads", &mlrt::Model::num_threads)
      .def_property_readonly("device", &mlrt::Model::device)
      .def_property_readonly("device_bytes", &mlrt::Model::device_bytes)
      .def("run_flat", &RunFlat, py::arg("inputs"));

  m.def(
      "load",
      [](const std::string& path, const std::string& verify, int num_threads, const py::bytes& public_key,
         const std::string& device) {
        mlrt::LoadOptions options;
        options.num_threads = num_threads;
        options.device = device;
        options.public_key = public_key;
        if (verify == "full") {
          options.verify = mlrt::LoadOptions::Verify::kFull;
        } else if (verify == "skip-weights") {
          options.verify = mlrt::LoadOptions::Verify::kSkipWeights;
        } else {
          Raise(mlrt::Status(mlrt::StatusCode::kInvalidArgument,
                             "verify must be 'full' or 'skip-weights', got '" + verify + "'"));
        }
        mlrt::Result<std::shared_ptr<const mlrt::Model>> model = [&] {
          py::gil_scoped_release release;
          return mlrt::Model::Load(path, options);
        }();
        if (!model.ok()) Raise(model.status());
        // pybind11 holds non-const pointers; the Model API is const-only, so nothing can mutate it.
        return std::const_pointer_cast<mlrt::Model>(std::move(model).value());
      },
      py::arg("path"), py::arg("verify") = "full", py::arg("num_threads") = 0, py::arg("public_key") = py::bytes(),
      py::arg("device") = "cpu");
  m.def("version", &mlrt::Version);
  m.def("max_bundle_format_version", &mlrt::MaxBundleFormatVersion);
}
