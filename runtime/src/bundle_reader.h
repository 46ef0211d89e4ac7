// Reading a bundle: map the file, verify the container (magic, version, section table, hashes)
// and validate the manifest. Everything here treats the bytes as hostile until checked; sizes and
// offsets are checked with overflow-safe arithmetic. Layout: docs/bundle-format.md.
#pragma once

#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mlrt/mlrt.h"

namespace mlrt {

// 1: static; 2: dynamic dims (programs); 3: weights stored as bfloat16 (CUDA --precision bf16).
inline constexpr uint32_t kBundleFormatVersion = 3;
inline constexpr uint32_t kBFloat16WeightsVersion = 3;
// CPU code variants one bundle may carry (targets.cpu.variants).
inline constexpr size_t kMaxCpuVariants = 16;

// A read-only, private mapping of a whole file. Move-only; unmaps on destruction.
class MappedFile final {
 public:
  static Result<MappedFile> Open(const std::string& path);
  MappedFile(MappedFile&& other) noexcept;
  MappedFile& operator=(MappedFile&& other) noexcept;
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;
  ~MappedFile();
  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

struct SectionRef {
  std::string name;
  const uint8_t* data = nullptr;
  uint64_t offset = 0;
  uint64_t size = 0;
  std::array<uint8_t, 32> sha256{};  // as declared in the section table
};

struct BundleView {
  uint32_t format_version = 0;
  std::vector<SectionRef> sections;
  // Unless Verify::kSkipWeights, the weights section is checked after the manifest is read
  // (VerifyWeights), which may give per-chunk digests that let several threads share the work.
  bool weights_pending = false;
  LoadOptions::Verify verify = LoadOptions::Verify::kFast;
  const SectionRef* Find(std::string_view name) const;
};

// Verifies the container; hashes every section but `weights` (left to VerifyWeights).
Result<BundleView> ParseContainer(const uint8_t* data, size_t size, LoadOptions::Verify verify);

struct CallArg {
  enum class Kind : uint8_t { kInput, kWeight, kOutput, kArena };
  Kind kind = Kind::kInput;
  uint32_t index = 0;
};

struct WeightRef {
  std::string name;
  uint64_t offset = 0;
  uint64_t nbytes = 0;
};

// One CPU code variant: targets.cpu itself, or one entry of targets.cpu.variants.
struct CpuTarget {
  std::string arch;  // "x86_64" | "aarch64"
  std::string cpu;   // e.g. "x86-64-v3", "neoverse-n1"
  std::vector<std::string> features;  // cpuid (x86_64) or HWCAP (aarch64) names
  std::string section;  // static bundles; a dynamic bundle's are per program (Program::cpu_code)
  std::string entry;
  uint32_t host_abi = 0;  // version of the HostApi the code expects
};

struct CodeRef {
  std::string section;
  std::string entry;
};

// One kernel launch of the CUDA target (targets.cuda.launches[i]); dimensions already validated
// against CUDA's limits.
struct CudaLaunch {
  std::string kernel;
  std::array<uint32_t, 3> grid{};
  std::array<uint32_t, 3> block{};
  uint32_t shared_bytes = 0;
};

// The code of one CUDA program: targets.cuda itself in a static bundle, programs[i].cuda in a
// dynamic one.
struct CudaCode {
  std::string section;    // holds NUL-terminated ASCII PTX (checked)
  uint64_t arena_bytes = 0;
  std::vector<CudaLaunch> launches;
  // Optional machine code compiled at build time (sass): compute capability (major * 10 + minor)
  // -> section holding a cubin (ELF) for exactly that architecture.
  std::vector<std::pair<int, std::string>> sass;
};

struct CudaTarget {
  std::string ptx_isa;    // "8.0"
  int min_sm = 0;         // major * 10 + minor
  int min_driver = 0;     // cuDriverGetVersion() value
  std::string precision;  // fp32 | tf32 | fp16 | bf16
  CudaCode code;          // static bundles; a dynamic bundle's are per program (Program::cuda)
};

// One entry of dynamic_dims[s].padding.outputs: output `output`'s dim `dim` has size add + mul * v
// for a size v of the symbol (add + mul * bucket in the program; cut back after a padded run).
struct PadCut {
  uint32_t output = 0;
  uint32_t dim = 0;
  int64_t mul = 0;
  int64_t add = 0;
};

// One static program of a dynamic bundle (programs[i]): code, call list and shapes at one bucket
// per symbol.
struct Program {
  std::vector<int64_t> sizes;  // per symbol (dynamic_dims order): the bucket this program runs
  std::string section;         // CPU code of variant 0 (empty in a cuda-only bundle)
  std::string entry;
  std::vector<CodeRef> cpu_code;  // per CPU code variant (cpu_variants' order); [0] is section/entry
  CudaCode cuda;               // when the bundle has a CUDA target
  std::vector<CallArg> call;
  std::vector<std::vector<int64_t>> output_shapes;  // concrete, per output
  uint64_t arena_bytes = 0;
};

struct Manifest {
  std::string text;  // verbatim JSON
  std::vector<TensorSpec> inputs;
  std::vector<TensorSpec> outputs;
  std::vector<WeightRef> weights;
  std::vector<CallArg> call;  // static bundles only
  uint64_t arena_bytes = 0;   // dynamic bundles: the largest program's
  // Dynamic dims (format version 2 with `programs`); all empty for a static bundle.
  std::vector<DynamicDim> dynamic_dims;
  std::vector<std::vector<PadCut>> padding;       // per symbol; empty when not padded
  std::vector<std::vector<int>> input_symbols;    // per input, per dim: symbol index, or -1 (static)
  std::vector<Program> programs;
  // Program index by bucket combination: mixed radix over symbols, the last symbol fastest.
  std::vector<uint32_t> program_by_buckets;
  bool is_dynamic() const { return !programs.empty(); }
  bool has_cpu = false;
  // targets.cpu.variants, in order (the runtime runs the first this CPU can); without `variants`,
  // targets.cpu as the only one. Static bundles: each with its section and entry.
  std::vector<CpuTarget> cpu_variants;
  bool has_cuda = false;
  CudaTarget cuda;
  // `weights_sha256` (optional): SHA-256 of each weight_chunk_bytes-long piece of the weights section.
  uint64_t weight_chunk_bytes = 0;
  std::vector<std::array<uint8_t, 32>> weight_chunks;
  // `weights_xxh3` (optional): XXH3-64 of each weight_xxh3_chunk_bytes-long piece, for Verify::kFast.
  uint64_t weight_xxh3_chunk_bytes = 0;
  std::vector<uint64_t> weight_xxh3;
};

// Parses and validates the manifest against the container (weight ranges, sections, call list).
Result<Manifest> ParseManifest(const BundleView& bundle);

// Checks the weights section if ParseContainer left it pending: under Verify::kFast by the XXH3
// chunk checksums when the manifest lists them, else (and under kFull) by SHA-256: per chunk on up
// to `threads` threads when the manifest lists chunk digests, else as one digest. DATA_LOSS on a
// mismatch.
Status VerifyWeights(const BundleView& bundle, const Manifest& manifest, int threads);

}  // namespace mlrt
