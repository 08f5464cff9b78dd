// Splitting a kernel's work across the CPU's cores, shared by the kernel sources of src/.
#pragma once

#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdlib>
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
  using Part = void (*)(void *context, int64_t part);

  // The process's workers; a forked child (a data-loader process) starts its own if it needs them.
  static Workers &get() {
    static const bool forks_handled = pthread_atfork([] { creating().lock(); }, [] { creating().unlock(); },
                                                     [] {
                                                       instance().store(nullptr);
                                                       creating().unlock();
                                                     }) == 0;
    (void)forks_handled;
    Workers *workers = instance().load(std::memory_order_acquire);
    if (workers != nullptr) return *workers;
    std::lock_guard<std::mutex> lock(creating());
    workers = instance().load();
    if (workers == nullptr) {
      workers = new Workers(kernel_threads() - 1);  // never destroyed: workers may outlive exit handlers
      instance().store(workers, std::memory_order_release);
    }
    return *workers;
  }

  // Runs part(context, p) for p in [0, parts) and returns when all are done; false (nothing run) when
  // another call holds the workers, or when called from a part of a running call. A part that throws
  // ends the process, as it would on a thread of its own.
  bool run(int64_t parts, Part part, void *context) {
    if (inside_part()) return false;
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      part_ = part;
      context_ = context;
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

  static std::atomic<Workers *> &instance() {
    static std::atomic<Workers *> workers{nullptr};
    return workers;
  }

  static std::mutex &creating() {
    static std::mutex mutex;
    return mutex;
  }

  static bool &inside_part() {
    thread_local bool inside = false;
    return inside;
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
  void take_parts(std::unique_lock<std::mutex> &lock) noexcept {
    while (next_ < parts_) {
      const int64_t p = next_++;
      lock.unlock();
      inside_part() = true;
      part_(context_, p);
      inside_part() = false;
      lock.lock();
      if (--unfinished_ == 0) finished_.notify_all();
    }
  }

  std::mutex busy_;   // held by the one call using the workers
  std::mutex mutex_;  // guards the fields below
  std::condition_variable start_, finished_;
  Part part_ = nullptr;
  void *context_ = nullptr;
  int64_t parts_ = 0, next_ = 0, unfinished_ = 0, generation_ = 0;
};

// Runs body(begin, end) on contiguous ranges covering [0, count), one range per thread. Every value
// is computed by the same code whichever thread runs it: results do not depend on the thread count,
// nor on whether the workers were free.
template <typename Body>
void parallel_for(int64_t count, int64_t work_per_item, Body body) {
  const int64_t by_work = std::max<int64_t>(1, count * work_per_item / kMinWorkPerThread);
  const int64_t threads = std::min<int64_t>({kernel_threads(), count, by_work});
  struct Split {
    Body &body;
    int64_t count, threads;
    static void part(void *context, int64_t t) {
      const Split &split = *static_cast<Split *>(context);
      split.body(split.count * t / split.threads, split.count * (t + 1) / split.threads);
    }
  } split{body, count, threads};
  if (threads <= 1 || !Workers::get().run(threads, &Split::part, &split)) body(0, count);
}

}  // namespace bimlp
