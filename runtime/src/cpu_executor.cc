#include "cpu_executor.h"

#include <sys/mman.h>

#include <algorithm>
#include <cstring>

#include "block_copy.h"
#include "cpu_features.h"

namespace mlrt {

namespace {

// An arena of `bytes` (a multiple of 64). From 4 MiB up it starts on a 2 MiB boundary and asks
// for transparent huge pages: a ResNet-50's 13 MB arena then takes 6 page faults on its first
// run instead of ~3200, and its accesses far fewer TLB misses. The untouched alignment slack
// costs address space only.
void* AllocateArena(size_t bytes) {
  constexpr size_t kHuge = size_t{2} << 20;
  if (bytes < 2 * kHuge) return std::aligned_alloc(64, bytes);
  void* p = std::aligned_alloc(kHuge, (bytes + kHuge - 1) / kHuge * kHuge);
  if (p) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);  // advice: failure is harmless
  return p;
}

// Copies the leading block min(src_shape, dst_shape) (per dim) of a C-order tensor into another of
// the same rank: pads (src smaller) or cuts (dst smaller).
void CopyBlock(const uint8_t* src, const std::vector<int64_t>& src_shape, uint8_t* dst,
               const std::vector<int64_t>& dst_shape, size_t itemsize) {
  ForEachBlockRow(src_shape, dst_shape, itemsize,
                  [&](size_t from, size_t to, size_t bytes) { std::memcpy(dst + to, src + from, bytes); });
}

}  // namespace

Result<std::unique_ptr<Executor>> CpuExecutor::Create(const Manifest& manifest, const BundleView& bundle,
                                                      int num_threads) {
  if (!manifest.has_cpu) {
    if (manifest.has_cuda) {
      return Status(StatusCode::kFailedPrecondition,
                    "the bundle has no CPU code (it was built for cuda only): load it with "
                    "device=\"cuda:0\", or rebuild with mlpack build --target cpu,cuda");
    }
    return Status(StatusCode::kFailedPrecondition, "the bundle has no CPU code (built for another target)");
  }
  // The first code variant this CPU runs (its arch, its features, a host ABI we provide).
  auto chosen = SelectCpuVariant(manifest.cpu_variants, kHostAbiVersion);
  if (!chosen.ok()) return chosen.status();
  const size_t k = chosen.value();
  std::unique_ptr<CpuExecutor> e(new CpuExecutor());
  const CpuTarget& variant = manifest.cpu_variants[k];
  e->variant_ = variant.cpu + " (" + variant.arch + ")";
  std::vector<ProgramLayout> layouts = ProgramLayouts(manifest);
  for (size_t p = 0; p < layouts.size(); ++p) {
    // A static bundle's code is the variant's section; a dynamic bundle's, one section per program.
    const std::string& section = manifest.is_dynamic() ? manifest.programs[p].cpu_code[k].section : variant.section;
    const std::string& entry = manifest.is_dynamic() ? manifest.programs[p].cpu_code[k].entry : variant.entry;
    const SectionRef* code = bundle.Find(section);
    auto loaded = LoadedCode::Load(code->data, code->size, entry);
    if (!loaded.ok()) {
      if (!manifest.is_dynamic()) return loaded.status();
      return Status(loaded.status().code(),
                    "program for section '" + section + "': " + loaded.status().message());
    }
    // The kernels pick their instruction set from the CPU (AVX-512F tiles where it has them);
    // bundles built before 2026-12-06 do not say.
    using IsaFn = const char* (*)();
    if (auto isa = reinterpret_cast<IsaFn>(loaded.value().Symbol("mlrt_kernel_isa")); isa && p == 0) {
      e->kernel_isa_ = isa();
    }
    e->programs_.push_back(ProgramCode{std::move(loaded).value(), std::move(layouts[p])});
  }
  const SectionRef* weight_section = bundle.Find("weights");
  for (const auto& w : manifest.weights) e->weights_.push_back(weight_section->data + w.offset);
  e->arena_size_ = std::max<size_t>(64, (manifest.arena_bytes + 63) / 64 * 64);
  e->pool_ = std::make_unique<ThreadPool>(num_threads);
  e->host_ = HostApi{kHostAbiVersion, static_cast<uint32_t>(num_threads), e->pool_.get(),
                     &ThreadPool::ParallelForThunk};
  return std::unique_ptr<Executor>(std::move(e));
}

Result<CpuExecutor::Buffer> CpuExecutor::TakeArena() const {
  {
    std::lock_guard<std::mutex> lock(arena_mutex_);
    if (!idle_arenas_.empty()) {
      Buffer a = std::move(idle_arenas_.back());
      idle_arenas_.pop_back();
      return a;
    }
  }
  void* p = AllocateArena(arena_size_);
  if (!p) {
    return Status(StatusCode::kResourceExhausted,
                  "cannot allocate the model's " + std::to_string(arena_size_) + "-byte arena");
  }
  return Buffer(static_cast<uint8_t*>(p));
}

void CpuExecutor::ReturnArena(Buffer arena) const {
  std::lock_guard<std::mutex> lock(arena_mutex_);
  idle_arenas_.push_back(std::move(arena));
}

Status CpuExecutor::Call(const ProgramCode& program, const std::vector<const void*>& inputs,
                         const std::vector<void*>& outputs) const {
  auto arena = TakeArena();
  if (!arena.ok()) return arena.status();
  const std::vector<CallArg>& call = program.layout.call;
  std::vector<void*> args(call.size());
  for (size_t i = 0; i < call.size(); ++i) {
    const CallArg& c = call[i];
    switch (c.kind) {
      case CallArg::Kind::kInput: args[i] = const_cast<void*>(inputs[c.index]); break;  // read-only by contract
      case CallArg::Kind::kWeight: args[i] = const_cast<void*>(weights_[c.index]); break;
      case CallArg::Kind::kOutput: args[i] = outputs[c.index]; break;
      case CallArg::Kind::kArena: args[i] = arena->get(); break;
    }
  }
  program.code.entry()(args.data(), &host_);
  ReturnArena(std::move(arena).value());
  return Status::Ok();
}

Result<CpuExecutor::Buffer> CpuExecutor::AllocateZeroed(size_t bytes, const std::string& what) {
  size_t rounded = std::max<size_t>(64, (bytes + 63) / 64 * 64);
  void* p = std::aligned_alloc(64, rounded);
  if (!p) {
    return Status(StatusCode::kResourceExhausted, "cannot allocate " + std::to_string(bytes) + " bytes for " + what);
  }
  std::memset(p, 0, rounded);
  return Buffer(static_cast<uint8_t*>(p));
}

// At the program's shapes (a static bundle, or a dynamic one at a bucket) the code reads and writes
// the caller's buffers directly. Below a bucket, each smaller input is copied into a zeroed buffer
// of the program's shape, and each smaller output is written to a temporary of the program's
// shape, whose leading block is copied out afterwards. Temporaries belong to the call, so
// concurrent runs at different shapes share nothing but the (read-only) code and weights.
Status CpuExecutor::Run(size_t program, const std::vector<ConstTensorView>& inputs,
                        const std::vector<TensorView>& outputs) const {
  if (program >= programs_.size()) {
    return Status(StatusCode::kInternal, "device 'cpu': no program " + std::to_string(program));
  }
  const ProgramCode& p = programs_[program];
  const ProgramLayout& layout = p.layout;
  std::vector<const void*> in(inputs.size());
  std::vector<void*> out(outputs.size());
  std::vector<Buffer> temporaries;
  for (size_t i = 0; i < inputs.size(); ++i) {
    in[i] = inputs[i].data;
    if (inputs[i].shape == layout.input_shapes[i]) continue;
    const std::vector<int64_t>& shape = layout.input_shapes[i];
    const size_t itemsize = DTypeSize(inputs[i].dtype);
    auto buffer = AllocateZeroed(static_cast<size_t>(NumElements(shape)) * itemsize,
                                 "padding input " + std::to_string(i) + " to " + ShapeString(shape));
    if (!buffer.ok()) return buffer.status();
    CopyBlock(static_cast<const uint8_t*>(inputs[i].data), inputs[i].shape, buffer->get(), shape, itemsize);
    in[i] = buffer->get();
    temporaries.push_back(std::move(buffer).value());
  }
  std::vector<size_t> cut;  // outputs written to a temporary first
  for (size_t o = 0; o < outputs.size(); ++o) {
    out[o] = outputs[o].data;
    if (outputs[o].shape == layout.output_shapes[o]) continue;
    const size_t bytes = static_cast<size_t>(NumElements(layout.output_shapes[o])) * DTypeSize(outputs[o].dtype);
    auto buffer = AllocateZeroed(bytes, "output " + std::to_string(o) + " at " + ShapeString(layout.output_shapes[o]));
    if (!buffer.ok()) return buffer.status();
    out[o] = buffer->get();
    temporaries.push_back(std::move(buffer).value());
    cut.push_back(o);
  }
  if (Status s = Call(p, in, out); !s.ok()) return s;
  for (size_t o : cut) {
    CopyBlock(static_cast<const uint8_t*>(out[o]), layout.output_shapes[o], static_cast<uint8_t*>(outputs[o].data),
              outputs[o].shape, DTypeSize(outputs[o].dtype));
  }
  return Status::Ok();
}

}  // namespace mlrt
