// Splitting a kernel's work across the CPU's cores, shared by the kernel sources of src/.
#pragma once

#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <mutex>
#include <system_error>
#include <thread>

namespace bimlp {

// Threads for one kernel call: BIMLP_KERNEL_THREADS, else the CPUs this process may use.
inline int kernel_threads() {
  static const int threads = [] {
    const char *chosen = std::getenv("BIMLP_KERNEL_THREADS");
    if (chosen != nullptr && std::atoi(chosen) > 0) return std::atoi(chosen);
    cpu_set_t cpus;
    return sched_getaffinity(0, sizeof(cpus), &cpus) == 0 ? std::max(CPU_COUNT(&cpus), 1) : 1;
  }();
  return threads;
}

// Below this much work per thread (in values touched), waking a thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;

// kernel_threads() - 1 workers kept for the whole process. Between calls they sleep on a condition
// variable and never spin, so they do not compete with MindSpore's own thread pool for the cores
// (an OpenMP team waiting for those workers made the whole BiMLP_S forward 2x slower); starting a
// thread per call instead cost ~50 us, a tenth of a small kernel. The caller takes parts too, so a
// worker that wakes late leaves its part to the caller rather than making it wait.
class Workers {
 public:
  // The process's workers; a forked child (a data-loader process) gets its own.
  static Workers &get() {
    static Workers *workers = nullptr;
    static pid_t owner = 0;
    static std::mutex creating;
    std::lock_guard<std::mutex> lock(creating);
    if (workers == nullptr || owner != getpid()) {
      workers = new Workers(kernel_threads() - 1);  // never destroyed: workers may outlive exit handlers
      owner = getpid();
    }
    return *workers;
  }

  // Runs part(p) for p in [0, parts) and returns when all are done; false (nothing run) when another
  // call holds the workers.
  bool run(int64_t parts, const std::function<void(int64_t)> &part) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      part_ = &part;
      parts_ = parts;
      next_ = 0;
      unfinished_ = parts;
      ++generation_;
    }
    start_.notify_all();
    std::unique_lock<std::mutex> lock(mutex_);
    take_parts(lock);
    finished_.wait(lock, [&] { return unfinished_ == 0; });
    return true;
  }

 private:
  explicit Workers(int count) {
    for (int i = 0; i < count; ++i) {
      try {
        std::thread([this] { serve(); }).detach();
      } catch (const std::system_error &) {  // no thread available: the callers do the parts
        break;
      }
    }
  }

  void serve() {
    int64_t seen = 0;
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      start_.wait(lock, [&] { return generation_ != seen; });
      seen = generation_;
      take_parts(lock);
    }
  }

  // Runs parts not yet taken, the lock released while each runs.
  void take_parts(std::unique_lock<std::mutex> &lock) {
    while (next_ < parts_) {
      const int64_t p = next_++;
      lock.unlock();
      (*part_)(p);
      lock.lock();
      if (--unfinished_ == 0) finished_.notify_all();
    }
  }

  std::mutex busy_;   // held by the one call using the workers
  std::mutex mutex_;  // guards the fields below
  std::condition_variable start_, finished_;
  const std::function<void(int64_t)> *part_ = nullptr;
  int64_t parts_ = 0, next_ = 0, unfinished_ = 0, generation_ = 0;
};

// Runs body(begin, end) on contiguous ranges covering [0, count), one range per thread. Every value
// is computed by the same code whichever thread runs it: results do not depend on the thread count,
// nor on whether the workers were free.
template <typename Body>
void parallel_for(int64_t count, int64_t work_per_item, Body body) {
  const int64_t by_work = std::max<int64_t>(1, count * work_per_item / kMinWorkPerThread);
  const int64_t threads = std::min<int64_t>({kernel_threads(), count, by_work});
  if (threads <= 1 || !Workers::get().run(threads, [&](int64_t t) {
        body(count * t / threads, count * (t + 1) / threads);
      }))
    body(0, count);
}

}  // namespace bimlp
