#include "bundle_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <limits>
#include <set>
#include <thread>

#include "host_api.h"
#include "json.h"
#include "checksum.h"
#include "sha256.h"

namespace mlrt {
namespace {

constexpr char kMagic[8] = {'M', 'L', 'R', 'T', 'B', 'N', 'D', 'L'};
constexpr size_t kHeaderSize = 64;
constexpr size_t kSectionEntrySize = 80;
constexpr uint32_t kMaxSections = 64;
// Sanity bounds: a manifest may not declare tensors or arenas past these (2^40 elements / 1 TiB).
constexpr int64_t kMaxElements = int64_t{1} << 40;
constexpr uint64_t kMaxArenaBytes = uint64_t{1} << 40;
constexpr size_t kMaxRank = 16;

uint32_t ReadU32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, sizeof v);  // the format is little-endian, as is every supported host
  return v;
}
uint64_t ReadU64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

Status DataLoss(std::string msg) { return Status(StatusCode::kDataLoss, "corrupted bundle: " + std::move(msg)); }
Status BadManifest(std::string msg) { return Status(StatusCode::kDataLoss, "invalid bundle manifest: " + std::move(msg)); }

std::string Hex(const uint8_t* d, size_t n) {
  static const char* k = "0123456789abcdef";
  std::string s;
  for (size_t i = 0; i < n; ++i) {
    s.push_back(k[d[i] >> 4]);
    s.push_back(k[d[i] & 15]);
  }
  return s;
}

}  // namespace

// --------------------------------------------------------------------------- MappedFile

Result<MappedFile> MappedFile::Open(const std::string& path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    return Status(err == ENOENT ? StatusCode::kNotFound : StatusCode::kInvalidArgument,
                  "cannot open bundle '" + path + "': " + std::strerror(err));
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    return Status(StatusCode::kInvalidArgument, "'" + path + "' is not a regular file");
  }
  size_t size = static_cast<size_t>(st.st_size);
  if (size == 0) {
    ::close(fd);
    return DataLoss("'" + path + "' is empty");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (p == MAP_FAILED) {
    return Status(StatusCode::kResourceExhausted, "cannot map bundle '" + path + "': " + std::strerror(err));
  }
  return MappedFile(static_cast<const uint8_t*>(p), size);
}

MappedFile::MappedFile(MappedFile&& other) noexcept : data_(other.data_), size_(other.size_) {
  other.data_ = nullptr;
  other.size_ = 0;
}

MappedFile& MappedFile::operator=(MappedFile&& other) noexcept {
  if (this != &other) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    data_ = other.data_;
    size_ = other.size_;
    other.data_ = nullptr;
    other.size_ = 0;
  }
  return *this;
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// --------------------------------------------------------------------------- container

const SectionRef* BundleView::Find(std::string_view name) const {
  for (const auto& s : sections) {
    if (s.name == name) return &s;
  }
  return nullptr;
}

Result<BundleView> ParseContainer(const uint8_t* data, size_t size, LoadOptions::Verify verify) {
  if (size < kHeaderSize) {
    return DataLoss("file is " + std::to_string(size) + " bytes, shorter than the 64-byte header (truncated?)");
  }
  if (std::memcmp(data, kMagic, sizeof kMagic) != 0) {
    return Status(StatusCode::kInvalidArgument, "not an mlrt bundle (bad magic; expected 'MLRTBNDL')");
  }
  BundleView view;
  view.format_version = ReadU32(data + 8);
  uint32_t header_size = ReadU32(data + 12);
  uint32_t count = ReadU32(data + 16);
  uint32_t entry_size = ReadU32(data + 20);
  uint64_t table_offset = ReadU64(data + 24);
  uint64_t file_size = ReadU64(data + 32);

  if (view.format_version > kBundleFormatVersion) {
    return Status(StatusCode::kUnimplemented,
                  "bundle format version " + std::to_string(view.format_version) +
                      " is newer than this runtime supports (" + std::to_string(kBundleFormatVersion) +
                      "); upgrade mlrt to load it");
  }
  if (view.format_version == 0) return DataLoss("format version 0");
  if (header_size != kHeaderSize || entry_size != kSectionEntrySize) {
    return DataLoss("unexpected header/section-entry size " + std::to_string(header_size) + "/" +
                    std::to_string(entry_size));
  }
  if (file_size != size) {
    return DataLoss("header says the file is " + std::to_string(file_size) + " bytes but it is " +
                    std::to_string(size) + (size < file_size ? " (truncated)" : " (trailing bytes)"));
  }
  if (count == 0 || count > kMaxSections) return DataLoss("bad section count " + std::to_string(count));
  // count <= 64, so count * entry_size cannot overflow; compare without adding to table_offset.
  uint64_t table_bytes = uint64_t{count} * kSectionEntrySize;
  if (table_offset < kHeaderSize || table_offset > size || table_bytes > size - table_offset) {
    return DataLoss("section table lies outside the file");
  }

  std::set<std::string> names;
  for (uint32_t i = 0; i < count; ++i) {
    const uint8_t* e = data + table_offset + uint64_t{i} * kSectionEntrySize;
    const char* name_bytes = reinterpret_cast<const char*>(e);
    size_t name_len = strnlen(name_bytes, 16);
    bool printable = name_len > 0 && name_len < 16;
    for (size_t c = 0; c < name_len && printable; ++c) printable = name_bytes[c] > 0x20 && name_bytes[c] < 0x7f;
    if (!printable) return DataLoss("section " + std::to_string(i) + " has no valid name");
    SectionRef s;
    s.name.assign(name_bytes, name_len);
    uint64_t offset = ReadU64(e + 16);
    s.offset = offset;
    s.size = ReadU64(e + 24);
    uint64_t alignment = ReadU64(e + 32);
    const uint8_t* digest = e + 40;
    std::memcpy(s.sha256.data(), digest, 32);
    if (!names.insert(s.name).second) return DataLoss("duplicate section '" + s.name + "'");
    if (offset > size || s.size > size - offset) {
      return DataLoss("section '" + s.name + "' (offset " + std::to_string(offset) + ", " + std::to_string(s.size) +
                      " bytes) runs past the end of the " + std::to_string(size) + "-byte file (truncated?)");
    }
    if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment > 65536 || offset % alignment != 0) {
      return DataLoss("section '" + s.name + "' is misaligned or declares a bad alignment");
    }
    s.data = data + offset;
    if (s.name == "weights") {
      view.weights_pending = verify != LoadOptions::Verify::kSkipWeights;
      view.verify = verify;
    } else {
      Sha256Digest actual = Sha256(s.data, s.size);
      if (std::memcmp(actual.data(), digest, 32) != 0) {
        return DataLoss("section '" + s.name + "' fails its sha256 check (expected " + Hex(digest, 32) + ", got " +
                        Hex(actual.data(), 32) + ")");
      }
    }
    view.sections.push_back(std::move(s));
  }
  return view;
}

// --------------------------------------------------------------------------- manifest

namespace {

// `allow_dynamic`: a dim may be -1 (format version 2 inputs and outputs); the symbols and bounds
// are filled in later, by ParseDynamic. min_shape and max_shape are set to `shape` here.
// `bfloat16_storage`: a weight may be "bfloat16" (format version 3), read as its 2-byte storage
// (kFloat16): the runtime never interprets weight bytes, the bundle's kernels do.
Status ParseTensorSpec(const json::Value& v, const std::string& where, bool allow_dynamic, TensorSpec* out,
                       bool bfloat16_storage = false) {
  const json::Value* name = v.find("name");
  const json::Value* dtype = v.find("dtype");
  const json::Value* shape = v.find("shape");
  if (!name || !name->is_string() || !dtype || !dtype->is_string() || !shape || !shape->is_array()) {
    return BadManifest(where + ": needs string 'name', string 'dtype' and array 'shape'");
  }
  out->name = name->as_string();
  auto dt = bfloat16_storage && dtype->as_string() == "bfloat16" ? std::optional<DType>(DType::kFloat16)
                                                                  : DTypeFromName(dtype->as_string());
  if (!dt) return BadManifest(where + ": unknown dtype '" + dtype->as_string() + "'");
  out->dtype = *dt;
  if (shape->items().size() > kMaxRank) return BadManifest(where + ": rank above " + std::to_string(kMaxRank));
  int64_t elements = 1;
  for (const auto& d : shape->items()) {
    if (allow_dynamic && d.is_int() && d.as_int() == -1) {
      out->shape.push_back(-1);
      continue;
    }
    if (!d.is_int() || d.as_int() < 0 || d.as_int() > kMaxElements) {
      return BadManifest(where + (allow_dynamic ? ": shape dimensions must be -1 (dynamic) or integers in [0, 2^40]"
                                                : ": shape dimensions must be integers in [0, 2^40]"));
    }
    out->shape.push_back(d.as_int());
    // elements <= 2^40 and d <= 2^40 -> check before multiplying to stay far from overflow
    if (d.as_int() != 0 && elements > kMaxElements / d.as_int()) {
      return BadManifest(where + ": more than 2^40 elements");
    }
    elements *= d.as_int();
  }
  out->min_shape = out->shape;
  out->max_shape = out->shape;
  return Status::Ok();
}

Status ParseTensorList(const json::Value& root, const char* key, bool allow_dynamic, std::vector<TensorSpec>* out) {
  const json::Value* list = root.find(key);
  if (!list || !list->is_array()) return BadManifest(std::string("missing array '") + key + "'");
  for (size_t i = 0; i < list->items().size(); ++i) {
    TensorSpec spec;
    Status s = ParseTensorSpec(list->items()[i], std::string(key) + "[" + std::to_string(i) + "]", allow_dynamic, &spec);
    if (!s.ok()) return s;
    out->push_back(std::move(spec));
  }
  return Status::Ok();
}

bool ReadIndex(std::string_view s, uint32_t* out) {
  if (s.empty() || s.size() > 9) return false;
  uint32_t v = 0;
  for (char c : s) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + static_cast<uint32_t>(c - '0');
  }
  *out = v;
  return true;
}

// A C identifier (PTX kernel names as mlpack emits them), 1..256 chars.
bool IsIdentifier(std::string_view s) {
  if (s.empty() || s.size() > 256) return false;
  for (size_t i = 0; i < s.size(); ++i) {
    char c = s[i];
    bool alpha = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_';
    if (!alpha && !(i > 0 && ((c >= '0' && c <= '9') || c == '$'))) return false;
  }
  return true;
}

// Reads [x, y, z]: three integers in [1, max[i]].
bool ReadDim3(const json::Value* v, const std::array<int64_t, 3>& max, std::array<uint32_t, 3>* out) {
  if (!v || !v->is_array() || v->items().size() != 3) return false;
  for (size_t i = 0; i < 3; ++i) {
    const json::Value& d = v->items()[i];
    if (!d.is_int() || d.as_int() < 1 || d.as_int() > max[i]) return false;
    (*out)[i] = static_cast<uint32_t>(d.as_int());
  }
  return true;
}

constexpr uint64_t kMaxCudaLaunches = 1000000;
constexpr int64_t kMaxSharedBytes = 228 * 1024;  // the most any GPU gives one block (sm_90)

// One CUDA program's code (section, arena_bytes, launches, optional sass) at `where`:
// "targets.cuda" in a static bundle, "programs[i].cuda" in a dynamic one.
Status ParseCudaCode(const json::Value& t, const std::string& where, const BundleView& bundle, CudaCode* out) {
  if (!t.is_object()) return BadManifest(where + " is not an object");
  const json::Value* sec = t.find("section");
  const json::Value* arena = t.find("arena_bytes");
  const json::Value* launches = t.find("launches");
  if (!sec || !sec->is_string() || !arena || !arena->is_int() || !launches || !launches->is_array()) {
    return BadManifest(where + " needs string section, integer arena_bytes and array launches");
  }
  out->section = sec->as_string();
  if (arena->as_int() < 0 || static_cast<uint64_t>(arena->as_int()) > kMaxArenaBytes) {
    return BadManifest(where + ".arena_bytes out of range");
  }
  out->arena_bytes = static_cast<uint64_t>(arena->as_int());

  const SectionRef* ptx = bundle.Find(out->section);
  if (!ptx) return BadManifest("CUDA section '" + out->section + "' is missing");
  if (out->section == "manifest" || out->section == "weights") {
    return BadManifest(where + ".section may not be '" + out->section + "'");
  }
  // PTX text: ASCII (tab, newline, carriage return, printable), one terminating NUL.
  if (ptx->size < 2 || ptx->data[ptx->size - 1] != 0) return BadManifest("CUDA section '" + out->section + "' is not NUL-terminated PTX text");
  for (uint64_t i = 0; i + 1 < ptx->size; ++i) {
    uint8_t c = ptx->data[i];
    if (!((c >= 0x20 && c < 0x7f) || c == '\t' || c == '\n' || c == '\r')) {
      return BadManifest("CUDA section '" + out->section + "' holds a non-ASCII byte at offset " + std::to_string(i) +
                         " (PTX is ASCII text)");
    }
  }

  // Optional prebuilt machine code: {"90": "cuda.sm_90", ...}, each section an ELF cubin.
  if (const json::Value* sass = t.find("sass")) {
    if (!sass->is_object() || sass->members().size() > 16) return BadManifest(where + ".sass must be an object");
    for (const auto& [key, value] : sass->members()) {
      uint32_t cc = 0;
      if (!ReadIndex(key, &cc) || cc < 10 || cc > 10000 || !value.is_string()) {
        return BadManifest(where + ".sass maps a compute capability like \"90\" to a section name");
      }
      const SectionRef* cubin = bundle.Find(value.as_string());
      if (!cubin || value.as_string() == "manifest" || value.as_string() == "weights") {
        return BadManifest(where + ".sass section '" + value.as_string() + "' is missing");
      }
      if (cubin->size < 64 || std::memcmp(cubin->data, "\x7f" "ELF", 4) != 0) {
        return BadManifest(where + ".sass section '" + value.as_string() + "' is not an ELF cubin");
      }
      out->sass.emplace_back(static_cast<int>(cc), value.as_string());
    }
  }

  if (launches->items().size() > kMaxCudaLaunches) return BadManifest(where + ".launches has more than 1e6 entries");
  for (size_t i = 0; i < launches->items().size(); ++i) {
    const json::Value& l = launches->items()[i];
    std::string at = where + ".launches[" + std::to_string(i) + "]";
    const json::Value* kernel = l.find("kernel");
    const json::Value* shared = l.find("shared_bytes");
    if (!kernel || !kernel->is_string() || !shared || !shared->is_int()) {
      return BadManifest(at + ": needs string 'kernel', 'grid' and 'block' (3 integers each) and integer "
                              "'shared_bytes'");
    }
    CudaLaunch launch;
    launch.kernel = kernel->as_string();
    if (!IsIdentifier(launch.kernel)) return BadManifest(at + ": kernel name is not an identifier");
    if (!ReadDim3(l.find("grid"), {(int64_t{1} << 31) - 1, 65535, 65535}, &launch.grid)) {
      return BadManifest(at + ": grid must be 3 integers, x in [1, 2^31-1], y and z in [1, 65535]");
    }
    if (!ReadDim3(l.find("block"), {1024, 1024, 64}, &launch.block) ||
        uint64_t{launch.block[0]} * launch.block[1] * launch.block[2] > 1024) {
      return BadManifest(at + ": block must be 3 positive integers (z <= 64) with at most 1024 threads");
    }
    if (shared->as_int() < 0 || shared->as_int() > kMaxSharedBytes) {
      return BadManifest(at + ": shared_bytes must be in [0, 228 KiB]");
    }
    launch.shared_bytes = static_cast<uint32_t>(shared->as_int());
    out->launches.push_back(std::move(launch));
  }
  return Status::Ok();
}

// targets.cuda: what every program shares (ptx_isa, min_sm, min_driver, precision) and, in a static
// bundle, the code (ParseCudaCode). A dynamic bundle's code is per program (ParseCudaPrograms).
Status ParseCudaTarget(const json::Value& t, const BundleView& bundle, bool dynamic, CudaTarget* out) {
  const json::Value* isa = t.find("ptx_isa");
  const json::Value* min_sm = t.find("min_sm");
  const json::Value* min_driver = t.find("min_driver");
  const json::Value* precision = t.find("precision");
  if (!isa || !isa->is_string() || !min_sm || !min_sm->is_int() || !min_driver || !min_driver->is_int() ||
      !precision || !precision->is_string() ||
      (!dynamic && (!t.find("section") || !t.find("arena_bytes") || !t.find("launches")))) {
    return BadManifest(dynamic ? "targets.cuda needs string ptx_isa and precision, integer min_sm and min_driver"
                               : "targets.cuda needs string section, ptx_isa and precision, integer min_sm, "
                                 "min_driver and arena_bytes, and array launches");
  }
  out->ptx_isa = isa->as_string();
  const std::string& v = out->ptx_isa;
  size_t dot = v.find('.');
  uint32_t part = 0;
  if (dot == std::string::npos || !ReadIndex(std::string_view(v).substr(0, dot), &part) ||
      !ReadIndex(std::string_view(v).substr(dot + 1), &part)) {
    return BadManifest("targets.cuda.ptx_isa must look like '8.0', got '" + v + "'");
  }
  if (min_sm->as_int() < 10 || min_sm->as_int() > 10000) return BadManifest("targets.cuda.min_sm out of range");
  out->min_sm = static_cast<int>(min_sm->as_int());
  if (min_driver->as_int() < 0 || min_driver->as_int() > 1000000) {
    return BadManifest("targets.cuda.min_driver out of range");
  }
  out->min_driver = static_cast<int>(min_driver->as_int());
  out->precision = precision->as_string();
  if (out->precision != "fp32" && out->precision != "tf32" && out->precision != "fp16" && out->precision != "bf16") {
    return BadManifest("targets.cuda.precision must be fp32, tf32, fp16 or bf16, got '" + out->precision + "'");
  }
  return dynamic ? Status::Ok() : ParseCudaCode(t, "targets.cuda", bundle, &out->code);
}

// The argument list of an entry point (`call`, top level or per program): `input:i`, `weight:i`,
// `output:i` (each output exactly once) and `arena` (exactly once). `where` prefixes errors.
Status ParseCallList(const json::Value* call, const std::string& where, size_t num_inputs, size_t num_weights,
                     size_t num_outputs, std::vector<CallArg>* out) {
  if (!call || !call->is_array() || call->items().empty()) return BadManifest("missing array '" + where + "'");
  std::vector<int> output_seen(num_outputs, 0);
  int arenas = 0;
  for (const auto& item : call->items()) {
    if (!item.is_string()) return BadManifest(where + " entries must be strings");
    std::string_view text = item.as_string();
    CallArg arg;
    size_t colon = text.find(':');
    std::string_view kind = text.substr(0, colon);
    size_t limit = 0;
    if (kind == "arena" && colon == std::string_view::npos) {
      arg.kind = CallArg::Kind::kArena;
      ++arenas;
    } else {
      if (colon == std::string_view::npos || !ReadIndex(text.substr(colon + 1), &arg.index)) {
        return BadManifest("bad " + where + " entry '" + std::string(text) + "'");
      }
      if (kind == "input") {
        arg.kind = CallArg::Kind::kInput;
        limit = num_inputs;
      } else if (kind == "weight") {
        arg.kind = CallArg::Kind::kWeight;
        limit = num_weights;
      } else if (kind == "output") {
        arg.kind = CallArg::Kind::kOutput;
        limit = num_outputs;
      } else {
        return BadManifest("bad " + where + " entry '" + std::string(text) + "'");
      }
      if (arg.index >= limit) return BadManifest(where + " entry '" + std::string(text) + "' is out of range");
      if (arg.kind == CallArg::Kind::kOutput) ++output_seen[arg.index];
    }
    out->push_back(arg);
  }
  if (arenas != 1) return BadManifest(where + " list must name the arena exactly once");
  for (size_t i = 0; i < output_seen.size(); ++i) {
    if (output_seen[i] != 1) {
      return BadManifest("output " + std::to_string(i) + " must appear exactly once in " + where);
    }
  }
  return Status::Ok();
}

// ------------------------------------------------------------------ dynamic dims (format version 2)

constexpr size_t kMaxSymbols = 16;
constexpr size_t kMaxBuckets = 64;
constexpr size_t kMaxPrograms = kMaxSections;  // each program has its own code section
constexpr size_t kMaxPadCuts = 1024;
constexpr int64_t kMaxPadMul = int64_t{1} << 20;

// A symbol name: 1..128 printable ASCII characters, no spaces (it appears in messages and in
// mlrt_serve's READY line).
bool IsSymbolName(const std::string& s) {
  if (s.empty() || s.size() > 128) return false;
  for (char c : s) {
    if (!(c > 0x20 && c < 0x7f)) return false;
  }
  return true;
}

std::string Range(int64_t lo, int64_t hi) { return std::to_string(lo) + ".." + std::to_string(hi); }

// An integer member in [lo, hi]; false when missing, not an integer or out of range.
bool ReadInt(const json::Value& obj, const char* key, int64_t lo, int64_t hi, int64_t* out) {
  const json::Value* v = obj.find(key);
  if (!v || !v->is_int() || v->as_int() < lo || v->as_int() > hi) return false;
  *out = v->as_int();
  return true;
}

Status ParseDynamicDims(const json::Value& root, Manifest* m) {
  const json::Value* dims = root.find("dynamic_dims");
  if (!dims || !dims->is_array() || dims->items().empty()) {
    return BadManifest("a manifest with 'programs' needs a non-empty array 'dynamic_dims'");
  }
  if (dims->items().size() > kMaxSymbols) {
    return BadManifest("dynamic_dims has more than " + std::to_string(kMaxSymbols) + " symbols");
  }
  for (size_t s = 0; s < dims->items().size(); ++s) {
    const json::Value& d = dims->items()[s];
    std::string where = "dynamic_dims[" + std::to_string(s) + "]";
    if (!d.is_object()) return BadManifest(where + " is not an object");
    DynamicDim dim;
    const json::Value* name = d.find("name");
    if (!name || !name->is_string() || !IsSymbolName(name->as_string())) {
      return BadManifest(where + ": 'name' must be 1..128 printable characters without spaces");
    }
    dim.name = name->as_string();
    for (const auto& other : m->dynamic_dims) {
      if (other.name == dim.name) return BadManifest(where + ": duplicate symbol '" + dim.name + "'");
    }
    where += " ('" + dim.name + "')";
    if (!ReadInt(d, "min", 0, kMaxElements, &dim.min) || !ReadInt(d, "max", 0, kMaxElements, &dim.max)) {
      return BadManifest(where + ": 'min' and 'max' must be integers in [0, 2^40]");
    }
    if (dim.min > dim.max) return BadManifest(where + ": min " + std::to_string(dim.min) + " > max " + std::to_string(dim.max));
    const json::Value* buckets = d.find("buckets");
    if (!buckets || !buckets->is_array() || buckets->items().empty() || buckets->items().size() > kMaxBuckets) {
      return BadManifest(where + ": 'buckets' must be an array of 1.." + std::to_string(kMaxBuckets) + " sizes");
    }
    for (const auto& b : buckets->items()) {
      if (!b.is_int() || b.as_int() < dim.min || b.as_int() > dim.max) {
        return BadManifest(where + ": buckets must be integers within " + Range(dim.min, dim.max));
      }
      if (!dim.buckets.empty() && b.as_int() <= dim.buckets.back()) {
        return BadManifest(where + ": buckets must be strictly increasing");
      }
      dim.buckets.push_back(b.as_int());
    }
    if (dim.buckets.back() != dim.max) {
      return BadManifest(where + ": the last bucket (" + std::to_string(dim.buckets.back()) + ") must equal max (" +
                         std::to_string(dim.max) + ")");
    }
    std::vector<PadCut> cuts;
    const json::Value* padding = d.find("padding");
    if (padding && padding->kind() != json::Value::Kind::kNull) {
      const json::Value* outs = padding->find("outputs");
      if (!padding->is_object() || !outs || !outs->is_array() || outs->items().size() > kMaxPadCuts) {
        return BadManifest(where + ": 'padding' must be null or {\"outputs\": [...]}");
      }
      for (size_t k = 0; k < outs->items().size(); ++k) {
        const json::Value& c = outs->items()[k];
        std::string at = where + ".padding.outputs[" + std::to_string(k) + "]";
        int64_t output = 0, dim_index = 0;
        PadCut cut;
        if (!c.is_object() || !ReadInt(c, "output", 0, kMaxElements, &output) ||
            !ReadInt(c, "dim", 0, kMaxElements, &dim_index) || !ReadInt(c, "mul", 0, kMaxPadMul, &cut.mul) ||
            !ReadInt(c, "add", -kMaxElements, kMaxElements, &cut.add)) {
          return BadManifest(at + ": needs integers output, dim, mul (in [0, 2^20]) and add (in [-2^40, 2^40])");
        }
        if (static_cast<uint64_t>(output) >= m->outputs.size()) {
          return BadManifest(at + ": output " + std::to_string(output) + " is out of range (" +
                             std::to_string(m->outputs.size()) + " outputs)");
        }
        const TensorSpec& spec = m->outputs[static_cast<size_t>(output)];
        if (static_cast<uint64_t>(dim_index) >= spec.shape.size()) {
          return BadManifest(at + ": dim " + std::to_string(dim_index) + " is out of range for output " +
                             std::to_string(output) + " of rank " + std::to_string(spec.shape.size()));
        }
        if (spec.shape[static_cast<size_t>(dim_index)] != -1) {
          return BadManifest(at + ": output " + std::to_string(output) + " dim " + std::to_string(dim_index) +
                             " is static (its shape says " + std::to_string(spec.shape[static_cast<size_t>(dim_index)]) +
                             "), so padding cannot cut it");
        }
        if (cut.add + cut.mul * dim.min < 0) {
          return BadManifest(at + ": add + mul * min is negative");
        }
        cut.output = static_cast<uint32_t>(output);
        cut.dim = static_cast<uint32_t>(dim_index);
        for (const auto& seen : m->padding) {
          for (const auto& p : seen) {
            if (p.output == cut.output && p.dim == cut.dim) {
              return BadManifest(at + ": output " + std::to_string(output) + " dim " + std::to_string(dim_index) +
                                 " is already cut by another symbol");
            }
          }
        }
        for (const auto& p : cuts) {
          if (p.output == cut.output && p.dim == cut.dim) return BadManifest(at + ": lists that output dim twice");
        }
        cuts.push_back(cut);
      }
      dim.padded = true;
    }
    if (const json::Value* why = d.find("not_padded")) {
      if (why->is_string()) {
        dim.not_padded = why->as_string();
      } else if (why->kind() != json::Value::Kind::kNull) {
        return BadManifest(where + ": 'not_padded' must be a string");
      }
    }
    m->dynamic_dims.push_back(std::move(dim));
    m->padding.push_back(std::move(cuts));
  }
  return Status::Ok();
}

int FindSymbol(const Manifest& m, const std::string& name) {
  for (size_t s = 0; s < m.dynamic_dims.size(); ++s) {
    if (m.dynamic_dims[s].name == name) return static_cast<int>(s);
  }
  return -1;
}

// inputs[i].symbols: which symbol sizes each -1 dim. Fills the specs' symbols and bounds.
Status ParseInputSymbols(const json::Value& root, Manifest* m) {
  const json::Value& list = *root.find("inputs");  // checked by ParseTensorList
  std::vector<bool> used(m->dynamic_dims.size(), false);
  for (size_t i = 0; i < m->inputs.size(); ++i) {
    TensorSpec& spec = m->inputs[i];
    std::string where = "inputs[" + std::to_string(i) + "]";
    const json::Value* symbols = list.items()[i].find("symbols");
    std::vector<int> index(spec.shape.size(), -1);
    const bool dynamic = spec.is_dynamic();
    if (symbols && symbols->kind() != json::Value::Kind::kNull) {
      if (!symbols->is_array() || symbols->items().size() != spec.shape.size()) {
        return BadManifest(where + ": 'symbols' must be an array with one entry per dim");
      }
      for (size_t d = 0; d < spec.shape.size(); ++d) {
        const json::Value& sym = symbols->items()[d];
        if (spec.shape[d] != -1) {
          if (sym.kind() != json::Value::Kind::kNull) {
            return BadManifest(where + ": dim " + std::to_string(d) + " is static, so its symbol must be null");
          }
          continue;
        }
        int s = sym.is_string() ? FindSymbol(*m, sym.as_string()) : -1;
        if (s < 0) {
          return BadManifest(where + ": dynamic dim " + std::to_string(d) + " must name a symbol of dynamic_dims" +
                             (sym.is_string() ? " (got '" + sym.as_string() + "')" : ""));
        }
        index[d] = s;
        used[static_cast<size_t>(s)] = true;
      }
    } else if (dynamic) {
      return BadManifest(where + ": a shape with -1 needs 'symbols'");
    }
    if (dynamic) {
      spec.symbols.assign(spec.shape.size(), "");
      int64_t elements = 1;
      for (size_t d = 0; d < spec.shape.size(); ++d) {
        if (index[d] >= 0) {
          const DynamicDim& dim = m->dynamic_dims[static_cast<size_t>(index[d])];
          spec.symbols[d] = dim.name;
          spec.min_shape[d] = dim.min;
          spec.max_shape[d] = dim.max;
        }
        int64_t n = spec.max_shape[d];
        if (n != 0 && elements > kMaxElements / n) return BadManifest(where + ": more than 2^40 elements at max sizes");
        elements *= n;
      }
    }
    m->input_symbols.push_back(std::move(index));
  }
  for (size_t s = 0; s < used.size(); ++s) {
    if (!used[s]) {
      return BadManifest("dynamic_dims[" + std::to_string(s) + "] ('" + m->dynamic_dims[s].name +
                         "') sizes no input dim");
    }
  }
  return Status::Ok();
}

Status ParsePrograms(const json::Value& root, const BundleView& bundle, Manifest* m) {
  const json::Value* programs = root.find("programs");
  if (!programs->is_array() || programs->items().empty() || programs->items().size() > kMaxPrograms) {
    return BadManifest("'programs' must be an array of 1.." + std::to_string(kMaxPrograms) + " programs");
  }
  const size_t num_symbols = m->dynamic_dims.size();
  // Every combination of buckets has exactly one program.
  uint64_t combinations = 1;
  for (const auto& d : m->dynamic_dims) {
    combinations *= d.buckets.size();  // <= 64 * 64 before the check below stops it
    if (combinations > kMaxPrograms) break;
  }
  if (combinations != programs->items().size()) {
    return BadManifest("'programs' must hold one program per combination of buckets: " + std::to_string(combinations) +
                       (combinations > kMaxPrograms ? "+" : "") + " combination(s), " +
                       std::to_string(programs->items().size()) + " program(s)");
  }
  m->program_by_buckets.assign(static_cast<size_t>(combinations), UINT32_MAX);
  for (size_t p = 0; p < programs->items().size(); ++p) {
    const json::Value& v = programs->items()[p];
    std::string where = "programs[" + std::to_string(p) + "]";
    if (!v.is_object()) return BadManifest(where + " is not an object");
    Program prog;
    const json::Value* sizes = v.find("sizes");
    if (!sizes || !sizes->is_object()) return BadManifest(where + ": needs an object 'sizes'");
    prog.sizes.assign(num_symbols, -1);
    size_t flat = 0;
    std::vector<size_t> bucket_index(num_symbols, 0);
    for (const auto& [key, value] : sizes->members()) {
      int s = FindSymbol(*m, key);
      if (s < 0) return BadManifest(where + ".sizes names '" + key + "', which is not a symbol of dynamic_dims");
      const DynamicDim& dim = m->dynamic_dims[static_cast<size_t>(s)];
      if (prog.sizes[static_cast<size_t>(s)] != -1) return BadManifest(where + ".sizes names '" + key + "' twice");
      size_t b = 0;
      while (b < dim.buckets.size() && !(value.is_int() && value.as_int() == dim.buckets[b])) ++b;
      if (b == dim.buckets.size()) return BadManifest(where + ".sizes." + key + " is not one of its buckets");
      prog.sizes[static_cast<size_t>(s)] = dim.buckets[b];
      bucket_index[static_cast<size_t>(s)] = b;
    }
    for (size_t s = 0; s < num_symbols; ++s) {
      if (prog.sizes[s] == -1) return BadManifest(where + ".sizes misses symbol '" + m->dynamic_dims[s].name + "'");
      flat = flat * m->dynamic_dims[s].buckets.size() + bucket_index[s];
    }
    if (m->program_by_buckets[flat] != UINT32_MAX) {
      return BadManifest(where + " has the same sizes as programs[" + std::to_string(m->program_by_buckets[flat]) + "]");
    }
    m->program_by_buckets[flat] = static_cast<uint32_t>(p);

    // CPU code; a cuda-only bundle's programs have none (required once targets.cpu is known).
    const json::Value* section = v.find("section");
    const json::Value* entry = v.find("entry");
    if (section || entry) {
      if (!section || !section->is_string() || section->as_string().empty() || !entry || !entry->is_string() ||
          entry->as_string().empty()) {
        return BadManifest(where + ": needs strings 'section' and 'entry'");
      }
      prog.section = section->as_string();
      prog.entry = entry->as_string();
      if (prog.section == "manifest" || prog.section == "weights" || prog.section == "signature") {
        return BadManifest(where + ": code section may not be '" + prog.section + "'");
      }
      if (!bundle.Find(prog.section)) return BadManifest(where + ": code section '" + prog.section + "' is missing");
    }
    if (Status s = ParseCallList(v.find("call"), where + ".call", m->inputs.size(), m->weights.size(),
                                 m->outputs.size(), &prog.call);
        !s.ok()) {
      return s;
    }
    int64_t arena = 0;
    if (!ReadInt(v, "arena_bytes", 0, static_cast<int64_t>(kMaxArenaBytes), &arena)) {
      return BadManifest(where + ": 'arena_bytes' missing or out of range");
    }
    prog.arena_bytes = static_cast<uint64_t>(arena);

    const json::Value* shapes = v.find("output_shapes");
    if (!shapes || !shapes->is_array() || shapes->items().size() != m->outputs.size()) {
      return BadManifest(where + ": 'output_shapes' must hold one shape per output");
    }
    for (size_t o = 0; o < m->outputs.size(); ++o) {
      const TensorSpec& spec = m->outputs[o];
      const json::Value& sv = shapes->items()[o];
      std::string at = where + ".output_shapes[" + std::to_string(o) + "]";
      if (!sv.is_array() || sv.items().size() != spec.shape.size()) {
        return BadManifest(at + ": must have the output's rank (" + std::to_string(spec.shape.size()) + ")");
      }
      std::vector<int64_t> shape;
      int64_t elements = 1;
      for (size_t d = 0; d < spec.shape.size(); ++d) {
        const json::Value& n = sv.items()[d];
        if (!n.is_int() || n.as_int() < 0 || n.as_int() > kMaxElements) {
          return BadManifest(at + ": dimensions must be integers in [0, 2^40]");
        }
        if (spec.shape[d] >= 0 && n.as_int() != spec.shape[d]) {
          return BadManifest(at + ": dim " + std::to_string(d) + " is " + std::to_string(n.as_int()) +
                             ", but the output's shape says " + std::to_string(spec.shape[d]));
        }
        if (n.as_int() != 0 && elements > kMaxElements / n.as_int()) return BadManifest(at + ": more than 2^40 elements");
        elements *= n.as_int();
        shape.push_back(n.as_int());
      }
      prog.output_shapes.push_back(std::move(shape));
    }
    for (size_t s = 0; s < num_symbols; ++s) {
      for (const PadCut& c : m->padding[s]) {
        int64_t expected = c.add + c.mul * prog.sizes[s];  // |add| <= 2^40, mul <= 2^20, size <= 2^40: no overflow
        if (prog.output_shapes[c.output][c.dim] != expected) {
          return BadManifest(where + ".output_shapes[" + std::to_string(c.output) + "][" + std::to_string(c.dim) +
                             "] is " + std::to_string(prog.output_shapes[c.output][c.dim]) + ", but the padding of '" +
                             m->dynamic_dims[s].name + "' says " + std::to_string(c.add) + " + " +
                             std::to_string(c.mul) + " * " + std::to_string(prog.sizes[s]) + " = " +
                             std::to_string(expected));
        }
      }
    }
    m->arena_bytes = std::max(m->arena_bytes, prog.arena_bytes);
    m->programs.push_back(std::move(prog));
  }
  // A padded symbol's run cuts only the output dims its padding lists: every other output dim must
  // be the same in two programs that differ in that symbol's bucket alone.
  for (size_t p = 0; p < m->programs.size(); ++p) {
    for (size_t q = p + 1; q < m->programs.size(); ++q) {
      const Program &a = m->programs[p], &b = m->programs[q];
      size_t differing = 0, symbol = 0;
      for (size_t s = 0; s < num_symbols; ++s) {
        if (a.sizes[s] != b.sizes[s]) ++differing, symbol = s;
      }
      if (differing != 1 || !m->dynamic_dims[symbol].padded) continue;
      for (size_t o = 0; o < m->outputs.size(); ++o) {
        for (size_t d = 0; d < a.output_shapes[o].size(); ++d) {
          bool cut = false;
          for (const PadCut& c : m->padding[symbol]) cut = cut || (c.output == o && c.dim == d);
          if (!cut && a.output_shapes[o][d] != b.output_shapes[o][d]) {
            return BadManifest("output " + std::to_string(o) + " dim " + std::to_string(d) + " changes with symbol '" +
                               m->dynamic_dims[symbol].name + "' (programs " + std::to_string(p) + " and " +
                               std::to_string(q) + "), but its padding does not list it");
          }
        }
      }
    }
  }
  return Status::Ok();
}

// outputs[i]: bounds of each -1 dim (over the programs, and the cut at `min` of a padded symbol),
// and a name for it: outputs[i].symbols[d] when the manifest gives one, else derived ("batch",
// "2*batch+1", or "<output>_dim<d>" when no symbol alone explains it).
Status ParseOutputSymbols(const json::Value& root, Manifest* m) {
  const json::Value& list = *root.find("outputs");
  for (size_t o = 0; o < m->outputs.size(); ++o) {
    TensorSpec& spec = m->outputs[o];
    std::string where = "outputs[" + std::to_string(o) + "]";
    const json::Value* symbols = list.items()[o].find("symbols");
    if (symbols && symbols->kind() != json::Value::Kind::kNull &&
        (!symbols->is_array() || symbols->items().size() != spec.shape.size())) {
      return BadManifest(where + ": 'symbols' must be an array with one entry per dim");
    }
    if (!spec.is_dynamic()) {
      if (symbols && symbols->is_array()) {
        for (const auto& sym : symbols->items()) {
          if (sym.kind() != json::Value::Kind::kNull) return BadManifest(where + ": a static dim's symbol must be null");
        }
      }
      continue;
    }
    spec.symbols.assign(spec.shape.size(), "");
    for (size_t d = 0; d < spec.shape.size(); ++d) {
      const json::Value* given = symbols && symbols->is_array() ? &symbols->items()[d] : nullptr;
      if (spec.shape[d] != -1) {
        if (given && given->kind() != json::Value::Kind::kNull) {
          return BadManifest(where + ": dim " + std::to_string(d) + " is static, so its symbol must be null");
        }
        continue;
      }
      int64_t lo = INT64_MAX, hi = 0;
      for (const Program& p : m->programs) {
        lo = std::min(lo, p.output_shapes[o][d]);
        hi = std::max(hi, p.output_shapes[o][d]);
      }
      std::string name;
      for (size_t s = 0; s < m->dynamic_dims.size(); ++s) {
        for (const PadCut& c : m->padding[s]) {
          if (c.output != o || c.dim != d) continue;
          const std::string& sym = m->dynamic_dims[s].name;
          lo = c.add + c.mul * m->dynamic_dims[s].min;
          name = c.mul == 0 ? std::to_string(c.add) : (c.mul == 1 ? sym : std::to_string(c.mul) + "*" + sym);
          if (c.mul != 0 && c.add > 0) name += "+" + std::to_string(c.add);
          if (c.mul != 0 && c.add < 0) name += std::to_string(c.add);
        }
      }
      for (size_t s = 0; s < m->dynamic_dims.size() && name.empty(); ++s) {
        bool same = true;
        for (const Program& p : m->programs) same = same && p.output_shapes[o][d] == p.sizes[s];
        if (same) name = m->dynamic_dims[s].name;
      }
      if (given && given->kind() != json::Value::Kind::kNull) {
        if (!given->is_string() || !IsSymbolName(given->as_string())) {
          return BadManifest(where + ": symbols[" + std::to_string(d) + "] must be null or a name");
        }
        name = given->as_string();
      }
      if (name.empty()) name = spec.name + "_dim" + std::to_string(d);
      spec.symbols[d] = std::move(name);
      spec.min_shape[d] = lo;
      spec.max_shape[d] = hi;
    }
  }
  return Status::Ok();
}

}  // namespace

namespace {

int HexValue(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

// `weights_sha256` / `weights_xxh3`: {"chunk_bytes": power of two in [4 KiB, 1 GiB], "chunks": one
// lowercase hex digest per chunk (64 digits for SHA-256, 16 for XXH3-64), ceil(section size /
// chunk_bytes) of them}. Each digest is handed to `add` as bytes, most significant first.
template <typename Add>
Status ParseWeightChunks(const json::Value* v, const char* key, size_t digest_bytes, uint64_t weight_bytes,
                         uint64_t* chunk_bytes, Add add) {
  if (!v || v->kind() == json::Value::Kind::kNull) return Status::Ok();
  const std::string where = std::string("'") + key + "'";
  const json::Value* size = v->is_object() ? v->find("chunk_bytes") : nullptr;
  const json::Value* chunks = v->is_object() ? v->find("chunks") : nullptr;
  if (!size || !size->is_int() || !chunks || !chunks->is_array()) {
    return BadManifest(where + " needs integer 'chunk_bytes' and array 'chunks'");
  }
  const int64_t n = size->as_int();
  if (n < 4096 || n > (int64_t{1} << 30) || (n & (n - 1)) != 0) {
    return BadManifest(where + ": chunk_bytes must be a power of two in [4096, 2^30]");
  }
  const uint64_t count = (weight_bytes + static_cast<uint64_t>(n) - 1) / static_cast<uint64_t>(n);
  if (chunks->items().size() != count) {
    return BadManifest(where + " lists " + std::to_string(chunks->items().size()) + " chunks, the " +
                       std::to_string(weight_bytes) + "-byte weights section has " + std::to_string(count));
  }
  *chunk_bytes = static_cast<uint64_t>(n);
  for (const json::Value& c : chunks->items()) {
    std::array<uint8_t, 32> d{};
    bool ok = c.is_string() && c.as_string().size() == 2 * digest_bytes;
    for (size_t i = 0; ok && i < digest_bytes; ++i) {
      const int hi = HexValue(c.as_string()[2 * i]), lo = HexValue(c.as_string()[2 * i + 1]);
      ok = hi >= 0 && lo >= 0;
      d[i] = static_cast<uint8_t>(ok ? hi * 16 + lo : 0);
    }
    if (!ok) {
      return BadManifest(where + ": a chunk digest is not " + std::to_string(2 * digest_bytes) +
                         " lowercase hex digits");
    }
    add(d);
  }
  return Status::Ok();
}

// Runs check(i) for every chunk i on up to `threads` threads; returns the first failing chunk, or count.
template <typename Check>
size_t FirstBadChunk(size_t count, int threads, Check check) {
  std::atomic<size_t> next{0};
  std::atomic<size_t> bad{count};
  auto work = [&] {
    for (size_t i; (i = next.fetch_add(1)) < count;) {
      if (!check(i)) {
        size_t seen = bad.load();
        while (i < seen && !bad.compare_exchange_weak(seen, i)) {
        }
      }
    }
  };
  std::vector<std::thread> helpers;
  const size_t extra = std::min<size_t>(count, static_cast<size_t>(std::max(threads, 1))) - 1;
  for (size_t t = 0; t < extra; ++t) helpers.emplace_back(work);
  work();
  for (auto& t : helpers) t.join();
  return bad.load();
}

}  // namespace

Status VerifyWeights(const BundleView& bundle, const Manifest& manifest, int threads) {
  const SectionRef* w = bundle.Find("weights");
  if (!bundle.weights_pending || !w) return Status::Ok();
  // The manifest holding the chunk digests was itself verified, so they cover every byte the
  // section table's digest would. Chunks are independent: threads take them in turn.
  auto chunk = [&](uint64_t chunk_bytes, size_t i) {
    const uint64_t off = i * chunk_bytes;
    return std::make_pair(w->data + off, std::min<uint64_t>(chunk_bytes, w->size - off));
  };
  if (bundle.verify == LoadOptions::Verify::kFast && !manifest.weight_xxh3.empty()) {
    const size_t count = manifest.weight_xxh3.size();
    const size_t bad = FirstBadChunk(count, threads, [&](size_t i) {
      auto [data, len] = chunk(manifest.weight_xxh3_chunk_bytes, i);
      return Xxh3_64(data, len) == manifest.weight_xxh3[i];
    });
    if (bad < count) {
      return DataLoss("section 'weights' fails its xxh3 check (chunk " + std::to_string(bad) + " of " +
                      std::to_string(count) + ")");
    }
    return Status::Ok();
  }
  if (manifest.weight_chunks.empty()) {
    Sha256Digest actual = Sha256(w->data, w->size);
    if (std::memcmp(actual.data(), w->sha256.data(), 32) != 0) {
      return DataLoss("section 'weights' fails its sha256 check (expected " + Hex(w->sha256.data(), 32) + ", got " +
                      Hex(actual.data(), 32) + ")");
    }
    return Status::Ok();
  }
  const size_t count = manifest.weight_chunks.size();
  const size_t bad = FirstBadChunk(count, threads, [&](size_t i) {
    auto [data, len] = chunk(manifest.weight_chunk_bytes, i);
    Sha256Digest d = Sha256(data, len);
    return std::memcmp(d.data(), manifest.weight_chunks[i].data(), 32) == 0;
  });
  if (bad < count) {
    return DataLoss("section 'weights' fails its sha256 check (chunk " + std::to_string(bad) + " of " +
                    std::to_string(count) + ")");
  }
  return Status::Ok();
}

// programs[i].variants: each CPU code variant's section and entry for this program, in the order
// of targets.cpu.variants; absent (one variant) means the program's own section and entry.
static Status ParseProgramVariants(const json::Value& v, const std::string& where, const BundleView& bundle,
                            size_t num_variants, Program* prog) {
  const json::Value* variants = v.find("variants");
  if (!variants) {
    if (num_variants != 1) return BadManifest(where + ": needs 'variants' (targets.cpu has " +
                                              std::to_string(num_variants) + ")");
    prog->cpu_code = {CodeRef{prog->section, prog->entry}};
    return Status::Ok();
  }
  if (!variants->is_array() || variants->items().size() != num_variants) {
    return BadManifest(where + ".variants must have one entry per targets.cpu.variants");
  }
  for (size_t k = 0; k < num_variants; ++k) {
    const json::Value& c = variants->items()[k];
    const json::Value* section = c.find("section");
    const json::Value* entry = c.find("entry");
    if (!section || !section->is_string() || section->as_string().empty() || !entry || !entry->is_string() ||
        entry->as_string().empty()) {
      return BadManifest(where + ".variants[" + std::to_string(k) + "]: needs strings 'section' and 'entry'");
    }
    const std::string& name = section->as_string();
    if (name == "manifest" || name == "weights" || name == "signature" || !bundle.Find(name)) {
      return BadManifest(where + ".variants[" + std::to_string(k) + "]: code section '" + name + "' is missing");
    }
    prog->cpu_code.push_back(CodeRef{name, entry->as_string()});
  }
  if (prog->cpu_code[0].section != prog->section) {
    return BadManifest(where + ": 'section' disagrees with variants[0]");
  }
  return Status::Ok();
}

// One CPU code variant (targets.cpu, or an entry of targets.cpu.variants).
static Status ParseCpuVariant(const json::Value& v, const std::string& where, const BundleView& bundle, bool dynamic,
                       CpuTarget* out) {
  const json::Value* arch = v.find("arch");
  const json::Value* level = v.find("cpu");
  const json::Value* features = v.find("features");
  const json::Value* sec = v.find("section");
  const json::Value* entry = v.find("entry");
  if (!v.is_object() || !arch || !arch->is_string() || !level || !level->is_string() || !features ||
      !features->is_array() || (!dynamic && (!sec || !sec->is_string() || !entry || !entry->is_string()))) {
    return BadManifest(dynamic ? where + " needs arch, cpu and features"
                               : where + " needs arch, cpu, features, section and entry");
  }
  out->arch = arch->as_string();
  out->cpu = level->as_string();
  for (const auto& f : features->items()) {
    if (!f.is_string()) return BadManifest(where + ".features must be strings");
    out->features.push_back(f.as_string());
  }
  const json::Value* host_abi = v.find("host_abi");
  if (!host_abi || !host_abi->is_int() || host_abi->as_int() < 1 || host_abi->as_int() > UINT32_MAX) {
    return BadManifest(where + ".host_abi missing");
  }
  out->host_abi = static_cast<uint32_t>(host_abi->as_int());
  if (!dynamic) {  // dynamic bundles: per program
    out->section = sec->as_string();
    out->entry = entry->as_string();
    if (out->section == "manifest" || out->section == "weights" || out->section == "signature") {
      return BadManifest(where + ": code section may not be '" + out->section + "'");
    }
    if (!bundle.Find(out->section)) return BadManifest("code section '" + out->section + "' is missing");
  }
  return Status::Ok();
}

Result<Manifest> ParseManifest(const BundleView& bundle) {
  const SectionRef* section = bundle.Find("manifest");
  if (!section) return BadManifest("no 'manifest' section");
  Manifest m;
  m.text.assign(reinterpret_cast<const char*>(section->data), section->size);
  json::Value root;
  std::string error;
  if (!json::Parse(m.text, &root, &error)) return BadManifest("JSON " + error);
  if (!root.is_object()) return BadManifest("top level is not an object");

  const json::Value* version = root.find("format_version");
  if (!version || !version->is_int() || version->as_int() != bundle.format_version) {
    return BadManifest("format_version disagrees with the header");
  }
  // Format version 2 adds dynamic dims: `programs` (one static program per bucket combination),
  // `dynamic_dims`, and -1 dims in the inputs and outputs. A version-2 manifest without `programs`
  // is static, read like version 1.
  const json::Value* programs = bundle.format_version >= 2 ? root.find("programs") : nullptr;
  const bool dynamic = programs != nullptr && programs->kind() != json::Value::Kind::kNull;
  if (!dynamic && bundle.format_version >= 2) {
    const json::Value* dims = root.find("dynamic_dims");
    if (dims && !(dims->is_array() && dims->items().empty()) && dims->kind() != json::Value::Kind::kNull) {
      return BadManifest("'dynamic_dims' without 'programs'");
    }
  }
  Status s = ParseTensorList(root, "inputs", dynamic, &m.inputs);
  if (s.ok()) s = ParseTensorList(root, "outputs", dynamic, &m.outputs);
  if (!s.ok()) return s;

  // Weights: each a byte range of the weights section, consistent with its dtype and shape.
  const json::Value* weights = root.find("weights");
  if (!weights || !weights->is_array()) return BadManifest("missing array 'weights'");
  const SectionRef* weight_section = bundle.Find("weights");
  uint64_t weight_bytes = weight_section ? weight_section->size : 0;
  for (size_t i = 0; i < weights->items().size(); ++i) {
    const json::Value& w = weights->items()[i];
    std::string where = "weights[" + std::to_string(i) + "]";
    TensorSpec spec;
    // bfloat16 weights (CUDA fp16/bf16 bundles store GEMM and conv weights narrowed) come with
    // format version 3, which older runtimes refuse by the header; a lower version claiming them
    // is malformed.
    const bool bf16_ok = bundle.format_version >= kBFloat16WeightsVersion;
    if (const json::Value* dt = w.find("dtype"); !bf16_ok && dt && dt->is_string() && dt->as_string() == "bfloat16") {
      return BadManifest(where + ": dtype 'bfloat16' needs bundle format version " +
                         std::to_string(kBFloat16WeightsVersion) + ", the header says " +
                         std::to_string(bundle.format_version));
    }
    if (Status ws = ParseTensorSpec(w, where, /*allow_dynamic=*/false, &spec, bf16_ok); !ws.ok()) return ws;
    const json::Value* offset = w.find("offset");
    const json::Value* nbytes = w.find("nbytes");
    if (!offset || !offset->is_int() || offset->as_int() < 0 || !nbytes || !nbytes->is_int() || nbytes->as_int() < 0) {
      return BadManifest(where + ": needs non-negative integer 'offset' and 'nbytes'");
    }
    WeightRef ref{spec.name, static_cast<uint64_t>(offset->as_int()), static_cast<uint64_t>(nbytes->as_int())};
    if (ref.nbytes != spec.num_bytes()) return BadManifest(where + ": nbytes does not match dtype x shape");
    if (ref.offset > weight_bytes || ref.nbytes > weight_bytes - ref.offset) {
      return BadManifest(where + " ('" + ref.name + "') lies outside the weights section");
    }
    if (ref.offset % DTypeSize(spec.dtype) != 0) return BadManifest(where + ": misaligned offset");
    m.weights.push_back(std::move(ref));
  }
  if (Status cs = ParseWeightChunks(root.find("weights_sha256"), "weights_sha256", 32, weight_bytes,
                                    &m.weight_chunk_bytes,
                                    [&](const std::array<uint8_t, 32>& d) { m.weight_chunks.push_back(d); });
      !cs.ok()) {
    return cs;
  }
  if (Status cs = ParseWeightChunks(root.find("weights_xxh3"), "weights_xxh3", 8, weight_bytes,
                                    &m.weight_xxh3_chunk_bytes,
                                    [&](const std::array<uint8_t, 32>& d) {
                                      uint64_t v = 0;
                                      for (int i = 0; i < 8; ++i) v = v << 8 | d[i];
                                      m.weight_xxh3.push_back(v);
                                    });
      !cs.ok()) {
    return cs;
  }

  if (dynamic) {
    // Top-level call and memory_plan are the last program's, for tools; the runtime reads the programs'.
    if (Status ds = ParseDynamicDims(root, &m); !ds.ok()) return ds;
    if (Status ds = ParseInputSymbols(root, &m); !ds.ok()) return ds;
    if (Status ds = ParsePrograms(root, bundle, &m); !ds.ok()) return ds;
    if (Status ds = ParseOutputSymbols(root, &m); !ds.ok()) return ds;
  } else {
    // The call list: which pointer goes in each argument slot of the entry point.
    if (Status cs = ParseCallList(root.find("call"), "call", m.inputs.size(), m.weights.size(), m.outputs.size(), &m.call);
        !cs.ok()) {
      return cs;
    }
    const json::Value* plan = root.find("memory_plan");
    const json::Value* arena = plan ? plan->find("arena_bytes") : nullptr;
    if (!arena || !arena->is_int() || arena->as_int() < 0 || static_cast<uint64_t>(arena->as_int()) > kMaxArenaBytes) {
      return BadManifest("memory_plan.arena_bytes missing or out of range");
    }
    m.arena_bytes = static_cast<uint64_t>(arena->as_int());
  }

  const json::Value* targets = root.find("targets");
  const json::Value* cpu = targets ? targets->find("cpu") : nullptr;
  if (cpu) {
    if (!cpu->is_object()) return BadManifest("targets.cpu is not an object");
    // targets.cpu is variant 0 as an older runtime reads it; `variants` (optional) lists them all.
    const json::Value* variants = cpu->find("variants");
    std::vector<const json::Value*> entries;
    if (variants) {
      if (!variants->is_array() || variants->items().empty() || variants->items().size() > kMaxCpuVariants) {
        return BadManifest("targets.cpu.variants must be an array of 1.." + std::to_string(kMaxCpuVariants) +
                           " objects");
      }
      for (const auto& v : variants->items()) entries.push_back(&v);
    } else {
      entries.push_back(cpu);
    }
    for (size_t i = 0; i < entries.size(); ++i) {
      const json::Value& v = *entries[i];
      const std::string where = variants ? "targets.cpu.variants[" + std::to_string(i) + "]" : "targets.cpu";
      if (Status vs = ParseCpuVariant(v, where, bundle, dynamic, &m.cpu_variants.emplace_back()); !vs.ok()) return vs;
    }
    if (variants) {  // targets.cpu must be variant 0, or an older runtime would run other code
      const CpuTarget& first = m.cpu_variants.front();
      const json::Value* sec = cpu->find("section");
      const json::Value* level = cpu->find("cpu");
      const json::Value* arch = cpu->find("arch");
      if (!level || !level->is_string() || level->as_string() != first.cpu || !arch || !arch->is_string() ||
          arch->as_string() != first.arch || (!dynamic && (!sec || !sec->is_string() || sec->as_string() != first.section))) {
        return BadManifest("targets.cpu disagrees with targets.cpu.variants[0]");
      }
    }
    m.has_cpu = true;
  }
  const json::Value* cuda = targets ? targets->find("cuda") : nullptr;
  if (cuda) {
    if (!cuda->is_object()) return BadManifest("targets.cuda is not an object");
    if (Status cs = ParseCudaTarget(*cuda, bundle, dynamic, &m.cuda); !cs.ok()) return cs;
    m.has_cuda = true;
  }
  if (dynamic) {
    if (!m.has_cpu && !m.has_cuda) return BadManifest("a manifest with 'programs' needs targets.cpu or targets.cuda");
    // Each program has the code of every target: CPU code in programs[i].section, CUDA code in
    // programs[i].cuda (its own PTX, launches and device arena).
    const json::Value* programs_json = root.find("programs");
    for (size_t p = 0; p < m.programs.size(); ++p) {
      const std::string where = "programs[" + std::to_string(p) + "]";
      if (m.has_cpu && m.programs[p].section.empty()) return BadManifest(where + ": needs strings 'section' and 'entry'");
      if (m.has_cpu) {
        if (Status vs = ParseProgramVariants(programs_json->items()[p], where, bundle, m.cpu_variants.size(),
                                             &m.programs[p]);
            !vs.ok()) {
          return vs;
        }
      }
      if (!m.has_cuda) continue;
      const json::Value* code = programs_json->items()[p].find("cuda");
      if (!code) return BadManifest(where + ": needs an object 'cuda' (the bundle has a CUDA target)");
      if (Status cs = ParseCudaCode(*code, where + ".cuda", bundle, &m.programs[p].cuda); !cs.ok()) return cs;
    }
  }
  return m;
}

}  // namespace mlrt
