// libFuzzer target for the bundle reader: container parsing and manifest validation, the code
// that sees untrusted bytes first. Before parsing, the harness rewrites each section's SHA-256 in
// the table to match the (mutated) bytes, so mutations get past the hash checks and reach the
// table, alignment and manifest logic. It never loads code: only the parsing layers are fuzzed
// (executing fuzzed machine code would be the opposite of the point).
//
//   clang++ -fsanitize=fuzzer,address,undefined -Iinclude -Isrc fuzz/bundle_fuzzer.cc src/*.cc ...
#include <cstdint>
#include <cstring>
#include <vector>

#include "bundle_reader.h"
#include "json.h"
#include "sha256.h"

namespace {

void FixHashes(std::vector<uint8_t>& b) {
  if (b.size() < 64) return;
  uint32_t count;
  uint64_t table;
  std::memcpy(&count, b.data() + 16, 4);
  std::memcpy(&table, b.data() + 24, 8);
  if (count > 64 || table > b.size() || uint64_t{count} * 80 > b.size() - table) return;
  for (uint32_t i = 0; i < count; ++i) {
    uint8_t* e = b.data() + table + uint64_t{i} * 80;
    uint64_t off, size;
    std::memcpy(&off, e + 16, 8);
    std::memcpy(&size, e + 24, 8);
    if (off > b.size() || size > b.size() - off) continue;
    mlrt::Sha256Digest d = mlrt::Sha256(b.data() + off, size);
    std::memcpy(e + 40, d.data(), 32);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<uint8_t> bytes(data, data + size);
  // Keep the header's file size consistent too, so truncations/extensions are explored past it.
  if (bytes.size() >= 40 && (size % 2) == 0) {
    uint64_t n = bytes.size();
    std::memcpy(bytes.data() + 32, &n, 8);
  }
  FixHashes(bytes);
  auto view = mlrt::ParseContainer(bytes.data(), bytes.size(), mlrt::LoadOptions::Verify::kFull);
  if (view.ok()) {
    auto manifest = mlrt::ParseManifest(*view);
    if (manifest.ok()) (void)mlrt::VerifyWeights(*view, *manifest, 2);
  }
  // The JSON reader on the raw input as well.
  mlrt::json::Value v;
  std::string error;
  mlrt::json::Parse(std::string_view(reinterpret_cast<const char*>(data), size), &v, &error);
  return 0;
}
