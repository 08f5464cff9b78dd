// Splitting a kernel's work across the CPU's cores, shared by the kernel sources of src/.
#pragma once

#include <sched.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <system_error>
#include <thread>
#include <vector>

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

// Below this much work per thread (in values touched), starting a thread costs more than it saves.
constexpr int64_t kMinWorkPerThread = 1 << 15;

// Runs body(begin, end) on contiguous ranges covering [0, count), one range per thread.
// Plain threads started per call and joined: they never spin, so they do not compete with
// MindSpore's own thread pool for the cores (an OpenMP team waiting for those workers made
// the whole BiMLP_S forward 2x slower). Every value is computed by the same code whichever
// thread runs it: results do not depend on the thread count.
template <typename Body>
void parallel_for(int64_t count, int64_t work_per_item, Body body) {
  const int64_t by_work = std::max<int64_t>(1, count * work_per_item / kMinWorkPerThread);
  const int64_t threads = std::min<int64_t>({kernel_threads(), count, by_work});
  std::vector<std::thread> workers;
  int64_t begin = 0;
  for (int64_t t = 0; t + 1 < threads; ++t) {
    const int64_t end = count * (t + 1) / threads;
    try {
      workers.emplace_back(body, begin, end);
    } catch (const std::system_error &) {  // no thread available: this one does the range
      body(begin, end);
    }
    begin = end;
  }
  body(begin, count);
  for (auto &worker : workers) worker.join();
}

}  // namespace bimlp
