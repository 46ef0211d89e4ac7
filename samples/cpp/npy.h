// Minimal .npy (numpy format v1/v2) reading and writing for the sample: C-order arrays of the
// dtypes mlrt supports. Not a general npy library.
#pragma once

#include <string>
#include <vector>

#include "mlrt/mlrt.h"

struct NpyArray {
  mlrt::DType dtype = mlrt::DType::kFloat32;
  std::vector<int64_t> shape;
  std::vector<char> data;
};

mlrt::Result<NpyArray> ReadNpy(const std::string& path);
mlrt::Status WriteNpy(const std::string& path, mlrt::DType dtype, const std::vector<int64_t>& shape, const void* data,
                      size_t nbytes);
