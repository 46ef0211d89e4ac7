#include "npy.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <sstream>

namespace {

struct DescrMap {
  const char* descr;
  mlrt::DType dtype;
};
constexpr DescrMap kDescrs[] = {
    {"<f4", mlrt::DType::kFloat32}, {"<f8", mlrt::DType::kFloat64}, {"<f2", mlrt::DType::kFloat16},
    {"<i8", mlrt::DType::kInt64},   {"<i4", mlrt::DType::kInt32},   {"<i2", mlrt::DType::kInt16},
    {"|i1", mlrt::DType::kInt8},    {"|u1", mlrt::DType::kUInt8},   {"|b1", mlrt::DType::kBool},
};

mlrt::Status Bad(const std::string& path, const std::string& why) {
  return mlrt::Status(mlrt::StatusCode::kInvalidArgument, path + ": " + why);
}

// Value of 'key' in the header dict, as raw text up to the next top-level ',' or '}'.
std::string Field(const std::string& header, const std::string& key) {
  size_t k = header.find("'" + key + "'");
  if (k == std::string::npos) return "";
  size_t colon = header.find(':', k);
  if (colon == std::string::npos) return "";
  size_t start = colon + 1, end = start;
  int depth = 0;
  for (; end < header.size(); ++end) {
    char c = header[end];
    if (c == '(') ++depth;
    if (c == ')') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  std::string v = header.substr(start, end - start);
  size_t b = v.find_first_not_of(" '"), e = v.find_last_not_of(" '");
  return b == std::string::npos ? "" : v.substr(b, e - b + 1);
}

}  // namespace

mlrt::Result<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return mlrt::Status(mlrt::StatusCode::kNotFound, "cannot open " + path);
  char magic[8];
  if (!f.read(magic, 8) || std::memcmp(magic, "\x93NUMPY", 6) != 0) return Bad(path, "not a .npy file");
  uint32_t header_len = 0;
  if (magic[6] == 1) {
    unsigned char b[2];
    if (!f.read(reinterpret_cast<char*>(b), 2)) return Bad(path, "truncated header");
    header_len = b[0] | (b[1] << 8);
  } else {
    unsigned char b[4];
    if (!f.read(reinterpret_cast<char*>(b), 4)) return Bad(path, "truncated header");
    header_len = b[0] | (b[1] << 8) | (b[2] << 16) | (uint32_t{b[3]} << 24);
  }
  if (header_len > (1u << 20)) return Bad(path, "header too large");
  std::string header(header_len, '\0');
  if (!f.read(header.data(), header_len)) return Bad(path, "truncated header");

  NpyArray a;
  std::string descr = Field(header, "descr");
  bool found = false;
  for (const auto& d : kDescrs) {
    if (descr == d.descr) {
      a.dtype = d.dtype;
      found = true;
    }
  }
  if (!found) return Bad(path, "unsupported dtype '" + descr + "'");
  if (Field(header, "fortran_order") != "False") return Bad(path, "Fortran-order arrays are not supported");
  std::string shape = Field(header, "shape");
  std::stringstream ss(shape.substr(shape.find('(') + 1));
  int64_t dim;
  char sep;
  int64_t count = 1;
  while (ss >> dim) {
    if (dim < 0 || dim > (int64_t{1} << 40)) return Bad(path, "bad shape");
    a.shape.push_back(dim);
    count *= dim;
    if (count > (int64_t{1} << 40)) return Bad(path, "array too large");
    ss >> sep;
  }
  a.data.resize(static_cast<size_t>(count) * mlrt::DTypeSize(a.dtype));
  if (!f.read(a.data.data(), static_cast<std::streamsize>(a.data.size()))) return Bad(path, "truncated data");
  return a;
}

mlrt::Status WriteNpy(const std::string& path, mlrt::DType dtype, const std::vector<int64_t>& shape, const void* data,
                      size_t nbytes) {
  const char* descr = nullptr;
  for (const auto& d : kDescrs) {
    if (d.dtype == dtype) descr = d.descr;
  }
  std::string dims;
  for (int64_t d : shape) dims += std::to_string(d) + ",";
  if (shape.size() > 1) dims.pop_back();
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': (" + dims + "), }";
  size_t total = 10 + header.size() + 1;
  header.append((64 - total % 64) % 64, ' ');
  header.push_back('\n');
  std::ofstream f(path, std::ios::binary);
  if (!f) return mlrt::Status(mlrt::StatusCode::kInvalidArgument, "cannot write " + path);
  const unsigned char prefix[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
  f.write(reinterpret_cast<const char*>(prefix), 8);
  const unsigned char len[2] = {static_cast<unsigned char>(header.size() & 0xff),
                                static_cast<unsigned char>(header.size() >> 8)};
  f.write(reinterpret_cast<const char*>(len), 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(nbytes));
  return f ? mlrt::Status::Ok() : mlrt::Status(mlrt::StatusCode::kInvalidArgument, "write failed: " + path);
}
