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
  struct Loop {
    TaskFn task;
    void* ctx;
    int64_t n;
    uint32_t generation;
  };
  void WorkerLoop();
  // Claims and runs tasks of `loop` until none is left or the loop is no longer current.
  void RunTasks(const Loop& loop);

  std::mutex dispatch_mutex_;  // held by the caller owning the workers for one loop

  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  bool stop_ = false;
  std::atomic<uint64_t> generation_{0};

  // The current loop, written under mutex_ before generation_ is bumped and read under mutex_.
  Loop loop_{nullptr, nullptr, 0, 0};
  // The loop's generation (high 32 bits) and next task index (low 32 bits): a task is claimed only
  // while its loop is current, so a worker that wakes late never runs a finished loop's task.
  std::atomic<uint64_t> claim_{0};
  // Tasks of the current loop finished. The caller returns when all are: it never waits for a
  // worker that has not woken up (on a busy machine that can take a scheduler time slice).
  std::atomic<int64_t> done_{0};

  std::vector<std::thread> workers_;
};

// Threads to use by default: MLRT_NUM_THREADS if set, else the physical cores this process may use.
int DefaultThreadCount();

}  // namespace mlrt
