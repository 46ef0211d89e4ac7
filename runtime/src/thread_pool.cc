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

void ThreadPool::RunTasks() {
  for (int64_t i = next_.fetch_add(1, std::memory_order_relaxed); i < n_; i = next_.fetch_add(1, std::memory_order_relaxed)) {
    task_(ctx_, i);
  }
}

void ThreadPool::ParallelFor(int64_t n, TaskFn task, void* ctx) {
  if (n <= 1 || workers_.empty() || t_inside_task) return RunSerial(n, task, ctx);
  std::unique_lock<std::mutex> owner(dispatch_mutex_, std::try_to_lock);
  if (!owner.owns_lock()) return RunSerial(n, task, ctx);  // another Run holds the workers

  {
    std::lock_guard<std::mutex> lock(mutex_);
    task_ = task;
    ctx_ = ctx;
    n_ = n;
    next_.store(0, std::memory_order_relaxed);
    busy_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
  }
  work_cv_.notify_all();

  t_inside_task = true;
  RunTasks();
  t_inside_task = false;

  auto deadline = std::chrono::steady_clock::now() + kSpin;
  int spins = 0;
  while (busy_.load(std::memory_order_acquire) != 0) {
    if ((spins & 63) == 0 && std::chrono::steady_clock::now() > deadline) {
      std::unique_lock<std::mutex> lock(mutex_);
      done_cv_.wait(lock, [this] { return busy_.load(std::memory_order_acquire) == 0; });
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
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (stop_) return;
      seen = generation_.load(std::memory_order_acquire);
    }
    t_inside_task = true;
    RunTasks();
    t_inside_task = false;
    if (busy_.fetch_sub(1, std::memory_order_acq_rel) == 1) {
      std::lock_guard<std::mutex> lock(mutex_);
      done_cv_.notify_all();
    }
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
