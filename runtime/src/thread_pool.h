// A small fork-join pool for the microkernels' parallel loops. The calling thread works too, so a
// pool of N threads spawns N-1 workers. Workers spin briefly before sleeping: a ResNet runs ~100
// parallel loops per inference, and a condition-variable wake-up each time would cost milliseconds.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <thread>
#include <vector>

#include "host_api.h"

namespace mlrt {

class ThreadPool final {
 public:
  explicit ThreadPool(int num_threads);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int num_threads() const { return static_cast<int>(workers_.size()) + 1; }

  // Runs task(ctx, i) for every i in [0, n) and returns when all are done. Thread-safe: while one
  // caller holds the workers, a concurrent caller (another Run) executes its loop on its own
  // thread; a loop started from inside a task runs inline.
  void ParallelFor(int64_t n, TaskFn task, void* ctx);

  // Adapter for HostApi::parallel_for.
  static void ParallelForThunk(void* pool, int64_t n, TaskFn task, void* ctx);

 private:
  void WorkerLoop();
  void RunTasks();

  std::mutex dispatch_mutex_;  // held by the caller owning the workers for one loop

  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  bool stop_ = false;
  std::atomic<uint64_t> generation_{0};
  std::atomic<int> busy_{0};

  // The current loop; written before generation_ is bumped, read after it is observed.
  TaskFn task_ = nullptr;
  void* ctx_ = nullptr;
  int64_t n_ = 0;
  std::atomic<int64_t> next_{0};

  std::vector<std::thread> workers_;
};

// Threads to use by default: MLRT_NUM_THREADS if set, else the physical cores this process may use.
int DefaultThreadCount();

}  // namespace mlrt
