#include "thread_pool.h"

#include <sched.h>

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>
#include <utility>

namespace mlrt {
namespace {

thread_local bool t_inside_task = false;

// One step of a spin-wait: pause; after a while also yield now and then, so that when threads
// outnumber free CPUs (another library's spinning pool, a busy host) the thread we wait for gets
// the CPU, without turning an idle wait into a stream of syscalls.
inline void SpinStep(int& spins) {
  if (++spins >= 1000 && (spins & 63) == 0) {
    std::this_thread::yield();
    return;
  }
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// How long an idle thread spins before sleeping.
constexpr auto kSpin = std::chrono::microseconds(200);

void RunSerial(int64_t n, TaskFn task, void* ctx) {
  for (int64_t i = 0; i < n; ++i) task(ctx, i);
}

}  // namespace

ThreadPool::ThreadPool(int num_threads) {
  for (int i = 1; i < num_threads; ++i) workers_.emplace_back([this] { WorkerLoop(); });
}

ThreadPool::~ThreadPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  work_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

void ThreadPool::RunTasks(const Loop& loop) {
  const uint64_t tag = static_cast<uint64_t>(loop.generation) << 32;
  uint64_t c = claim_.load(std::memory_order_relaxed);
  while ((c & ~0xffffffffULL) == tag && static_cast<int64_t>(c & 0xffffffffULL) < loop.n) {
    if (!claim_.compare_exchange_weak(c, c + 1, std::memory_order_relaxed)) continue;
    loop.task(loop.ctx, static_cast<int64_t>(c & 0xffffffffULL));
    if (done_.fetch_add(1, std::memory_order_acq_rel) + 1 == loop.n) {
      std::lock_guard<std::mutex> lock(mutex_);  // the caller may be asleep on done_cv_
      done_cv_.notify_all();
    }
    c = claim_.load(std::memory_order_relaxed);
  }
}

void ThreadPool::ParallelFor(int64_t n, TaskFn task, void* ctx) {
  if (n <= 1 || workers_.empty() || t_inside_task || n > 0xffffffffLL) return RunSerial(n, task, ctx);
  std::unique_lock<std::mutex> owner(dispatch_mutex_, std::try_to_lock);
  if (!owner.owns_lock()) return RunSerial(n, task, ctx);  // another Run holds the workers

  Loop loop;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    const uint64_t generation = generation_.load(std::memory_order_relaxed) + 1;
    loop = {task, ctx, n, static_cast<uint32_t>(generation)};
    loop_ = loop;
    done_.store(0, std::memory_order_relaxed);
    claim_.store(static_cast<uint64_t>(loop.generation) << 32, std::memory_order_relaxed);
    generation_.store(generation, std::memory_order_release);
  }
  work_cv_.notify_all();

  t_inside_task = true;
  RunTasks(loop);
  t_inside_task = false;

  auto deadline = std::chrono::steady_clock::now() + kSpin;
  int spins = 0;
  while (done_.load(std::memory_order_acquire) != n) {
    if ((spins & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [&] { return done_.load(std::memory_order_acquire) == n; });
      break;
    }
    SpinStep(spins);
  }
}

void ThreadPool::ParallelForThunk(void* pool, int64_t n, TaskFn task, void* ctx) {
  static_cast<ThreadPool*>(pool)->ParallelFor(n, task, ctx);
}

void ThreadPool::WorkerLoop() {
  uint64_t seen = 0;
  while (true) {
    auto deadline = std::chrono::steady_clock::now() + kSpin;
    int spins = 0;
    while (generation_.load(std::memory_order_acquire) == seen) {
      if ((spins & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
        std::unique_lock<std::mutex> lock(mutex_);
        work_cv_.wait(lock, [&] { return stop_ || generation_.load(std::memory_order_acquire) != seen; });
        break;
      }
      SpinStep(spins);
    }
    Loop loop;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
      loop = loop_;  // the loop current now: maybe newer than the one that woke us
    }
    t_inside_task = true;
    RunTasks(loop);
    t_inside_task = false;
  }
}

int DefaultThreadCount() {
  if (const char* env = std::getenv("MLRT_NUM_THREADS")) {
    int n = std::atoi(env);
    if (n > 0) return n;
  }
  cpu_set_t set;
  CPU_ZERO(&set);
  int allowed = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
  // Physical cores: distinct (package, core) pairs among the CPUs we may run on.
  std::set<std::pair<std::string, std::string>> cores;
  for (int cpu = 0; cpu < CPU_SETSIZE && allowed > 0; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    std::string base = "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/";
    std::ifstream pkg(base + "physical_package_id"), core(base + "core_id");
    std::string p, c;
    if (!(pkg >> p) || !(core >> c)) {
      cores.clear();
      break;
    }
    cores.emplace(p, c);
  }
  if (!cores.empty()) return static_cast<int>(cores.size());
  if (allowed > 0) return allowed;
  unsigned hw = std::thread::hardware_concurrency();
  return hw ? static_cast<int>(hw) : 1;
}

}  // namespace mlrt
