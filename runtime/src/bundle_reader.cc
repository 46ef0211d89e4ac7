#include "bundle_reader.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <limits>
#include <set>

#include "host_api.h"
#include "json.h"
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
    bool check = verify == LoadOptions::Verify::kFull || s.name != "weights";
    if (check) {
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

Status ParseTensorSpec(const json::Value& v, const std::string& where, TensorSpec* out) {
  const json::Value* name = v.find("name");
  const json::Value* dtype = v.find("dtype");
  const json::Value* shape = v.find("shape");
  if (!name || !name->is_string() || !dtype || !dtype->is_string() || !shape || !shape->is_array()) {
    return BadManifest(where + ": needs string 'name', string 'dtype' and array 'shape'");
  }
  out->name = name->as_string();
  auto dt = DTypeFromName(dtype->as_string());
  if (!dt) return BadManifest(where + ": unknown dtype '" + dtype->as_string() + "'");
  out->dtype = *dt;
  if (shape->items().size() > kMaxRank) return BadManifest(where + ": rank above " + std::to_string(kMaxRank));
  int64_t elements = 1;
  for (const auto& d : shape->items()) {
    if (!d.is_int() || d.as_int() < 0 || d.as_int() > kMaxElements) {
      return BadManifest(where + ": shape dimensions must be integers in [0, 2^40]");
    }
    out->shape.push_back(d.as_int());
    // elements <= 2^40 and d <= 2^40 -> check before multiplying to stay far from overflow
    if (d.as_int() != 0 && elements > kMaxElements / d.as_int()) {
      return BadManifest(where + ": more than 2^40 elements");
    }
    elements *= d.as_int();
  }
  return Status::Ok();
}

Status ParseTensorList(const json::Value& root, const char* key, std::vector<TensorSpec>* out) {
  const json::Value* list = root.find(key);
  if (!list || !list->is_array()) return BadManifest(std::string("missing array '") + key + "'");
  for (size_t i = 0; i < list->items().size(); ++i) {
    TensorSpec spec;
    Status s = ParseTensorSpec(list->items()[i], std::string(key) + "[" + std::to_string(i) + "]", &spec);
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

Status ParseCudaTarget(const json::Value& t, const BundleView& bundle, CudaTarget* out) {
  const json::Value* sec = t.find("section");
  const json::Value* isa = t.find("ptx_isa");
  const json::Value* min_sm = t.find("min_sm");
  const json::Value* min_driver = t.find("min_driver");
  const json::Value* precision = t.find("precision");
  const json::Value* arena = t.find("arena_bytes");
  const json::Value* launches = t.find("launches");
  if (!sec || !sec->is_string() || !isa || !isa->is_string() || !min_sm || !min_sm->is_int() || !min_driver ||
      !min_driver->is_int() || !precision || !precision->is_string() || !arena || !arena->is_int() || !launches ||
      !launches->is_array()) {
    return BadManifest(
        "targets.cuda needs string section, ptx_isa and precision, integer min_sm, min_driver and arena_bytes, "
        "and array launches");
  }
  out->section = sec->as_string();
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
  if (arena->as_int() < 0 || static_cast<uint64_t>(arena->as_int()) > kMaxArenaBytes) {
    return BadManifest("targets.cuda.arena_bytes out of range");
  }
  out->arena_bytes = static_cast<uint64_t>(arena->as_int());

  const SectionRef* ptx = bundle.Find(out->section);
  if (!ptx) return BadManifest("CUDA section '" + out->section + "' is missing");
  if (out->section == "manifest" || out->section == "weights") {
    return BadManifest("targets.cuda.section may not be '" + out->section + "'");
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
    if (!sass->is_object() || sass->members().size() > 16) return BadManifest("targets.cuda.sass must be an object");
    for (const auto& [key, value] : sass->members()) {
      uint32_t cc = 0;
      if (!ReadIndex(key, &cc) || cc < 10 || cc > 10000 || !value.is_string()) {
        return BadManifest("targets.cuda.sass maps a compute capability like \"90\" to a section name");
      }
      const SectionRef* cubin = bundle.Find(value.as_string());
      if (!cubin || value.as_string() == "manifest" || value.as_string() == "weights") {
        return BadManifest("targets.cuda.sass section '" + value.as_string() + "' is missing");
      }
      if (cubin->size < 64 || std::memcmp(cubin->data, "\x7f" "ELF", 4) != 0) {
        return BadManifest("targets.cuda.sass section '" + value.as_string() + "' is not an ELF cubin");
      }
      out->sass.emplace_back(static_cast<int>(cc), value.as_string());
    }
  }

  if (launches->items().size() > kMaxCudaLaunches) return BadManifest("targets.cuda.launches has more than 1e6 entries");
  for (size_t i = 0; i < launches->items().size(); ++i) {
    const json::Value& l = launches->items()[i];
    std::string where = "targets.cuda.launches[" + std::to_string(i) + "]";
    const json::Value* kernel = l.find("kernel");
    const json::Value* shared = l.find("shared_bytes");
    if (!kernel || !kernel->is_string() || !shared || !shared->is_int()) {
      return BadManifest(where + ": needs string 'kernel', 'grid' and 'block' (3 integers each) and integer "
                                 "'shared_bytes'");
    }
    CudaLaunch launch;
    launch.kernel = kernel->as_string();
    if (!IsIdentifier(launch.kernel)) return BadManifest(where + ": kernel name is not an identifier");
    if (!ReadDim3(l.find("grid"), {(int64_t{1} << 31) - 1, 65535, 65535}, &launch.grid)) {
      return BadManifest(where + ": grid must be 3 integers, x in [1, 2^31-1], y and z in [1, 65535]");
    }
    if (!ReadDim3(l.find("block"), {1024, 1024, 64}, &launch.block) ||
        uint64_t{launch.block[0]} * launch.block[1] * launch.block[2] > 1024) {
      return BadManifest(where + ": block must be 3 positive integers (z <= 64) with at most 1024 threads");
    }
    if (shared->as_int() < 0 || shared->as_int() > kMaxSharedBytes) {
      return BadManifest(where + ": shared_bytes must be in [0, 228 KiB]");
    }
    launch.shared_bytes = static_cast<uint32_t>(shared->as_int());
    out->launches.push_back(std::move(launch));
  }
  return Status::Ok();
}


}  // namespace

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
  Status s = ParseTensorList(root, "inputs", &m.inputs);
  if (s.ok()) s = ParseTensorList(root, "outputs", &m.outputs);
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
    if (Status ws = ParseTensorSpec(w, where, &spec); !ws.ok()) return ws;
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

  // The call list: which pointer goes in each argument slot of the entry point.
  const json::Value* call = root.find("call");
  if (!call || !call->is_array() || call->items().empty()) return BadManifest("missing array 'call'");
  std::vector<int> output_seen(m.outputs.size(), 0);
  int arenas = 0;
  for (const auto& item : call->items()) {
    if (!item.is_string()) return BadManifest("call entries must be strings");
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
        return BadManifest("bad call entry '" + std::string(text) + "'");
      }
      if (kind == "input") {
        arg.kind = CallArg::Kind::kInput;
        limit = m.inputs.size();
      } else if (kind == "weight") {
        arg.kind = CallArg::Kind::kWeight;
        limit = m.weights.size();
      } else if (kind == "output") {
        arg.kind = CallArg::Kind::kOutput;
        limit = m.outputs.size();
      } else {
        return BadManifest("bad call entry '" + std::string(text) + "'");
      }
      if (arg.index >= limit) return BadManifest("call entry '" + std::string(text) + "' is out of range");
      if (arg.kind == CallArg::Kind::kOutput) ++output_seen[arg.index];
    }
    m.call.push_back(arg);
  }
  if (arenas != 1) return BadManifest("call list must name the arena exactly once");
  for (size_t i = 0; i < output_seen.size(); ++i) {
    if (output_seen[i] != 1) return BadManifest("output " + std::to_string(i) + " must appear exactly once in call");
  }

  const json::Value* plan = root.find("memory_plan");
  const json::Value* arena = plan ? plan->find("arena_bytes") : nullptr;
  if (!arena || !arena->is_int() || arena->as_int() < 0 || static_cast<uint64_t>(arena->as_int()) > kMaxArenaBytes) {
    return BadManifest("memory_plan.arena_bytes missing or out of range");
  }
  m.arena_bytes = static_cast<uint64_t>(arena->as_int());

  const json::Value* targets = root.find("targets");
  const json::Value* cpu = targets ? targets->find("cpu") : nullptr;
  if (cpu) {
    const json::Value* arch = cpu->find("arch");
    const json::Value* level = cpu->find("cpu");
    const json::Value* features = cpu->find("features");
    const json::Value* sec = cpu->find("section");
    const json::Value* entry = cpu->find("entry");
    if (!arch || !arch->is_string() || !level || !level->is_string() || !features || !features->is_array() || !sec ||
        !sec->is_string() || !entry || !entry->is_string()) {
      return BadManifest("targets.cpu needs arch, cpu, features, section and entry");
    }
    if (arch->as_string() != "x86_64") {
      return Status(StatusCode::kFailedPrecondition,
                    "bundle targets CPU architecture '" + arch->as_string() + "'; this runtime runs x86_64 code");
    }
    m.has_cpu = true;
    m.cpu.cpu = level->as_string();
    for (const auto& f : features->items()) {
      if (!f.is_string()) return BadManifest("targets.cpu.features must be strings");
      m.cpu.features.push_back(f.as_string());
    }
    m.cpu.section = sec->as_string();
    m.cpu.entry = entry->as_string();
    const json::Value* host_abi = cpu->find("host_abi");
    if (!host_abi || !host_abi->is_int() || host_abi->as_int() < 1) return BadManifest("targets.cpu.host_abi missing");
    if (host_abi->as_int() > kHostAbiVersion) {
      return Status(StatusCode::kUnimplemented, "bundle code expects host ABI " + std::to_string(host_abi->as_int()) +
                                                    ", newer than this runtime's " + std::to_string(kHostAbiVersion) +
                                                    "; upgrade mlrt");
    }
    m.cpu.host_abi = static_cast<uint32_t>(host_abi->as_int());
    if (!bundle.Find(m.cpu.section)) return BadManifest("code section '" + m.cpu.section + "' is missing");
  }
  const json::Value* cuda = targets ? targets->find("cuda") : nullptr;
  if (cuda) {
    if (!cuda->is_object()) return BadManifest("targets.cuda is not an object");
    if (Status cs = ParseCudaTarget(*cuda, bundle, &m.cuda); !cs.ok()) return cs;
    m.has_cuda = true;
  }
  return m;
}

}  // namespace mlrt
