// A one-line progress bar on stderr ("[#####.....]  52%  1.2 GiB/s").
#pragma once

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <string>

namespace pagoda::cli {

class Progress {
 public:
  Progress(std::string label, uint64_t total) : label_(std::move(label)), total_(total) {}
  // Redraws at most every 100 ms (and at the end).
  void Update(uint64_t done, double bytes) {
    auto now = std::chrono::steady_clock::now();
    if (finished_ || (done < total_ && now - last_ < std::chrono::milliseconds(100))) return;
    finished_ = done >= total_;
    last_ = now;
    const double secs = std::chrono::duration<double>(now - start_).count();
    const int width = 30;
    const int fill = total_ ? static_cast<int>(width * done / total_) : width;
    std::string bar(fill, '#');
    bar += std::string(width - fill, '.');
    std::fprintf(stderr, "\r%-10s [%s] %3d%%  %8.2f GiB/s", label_.c_str(), bar.c_str(),
                 total_ ? static_cast<int>(100 * done / total_) : 100,
                 secs > 0 ? bytes / secs / (1 << 30) : 0.0);
    if (done >= total_) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  std::string label_;
  uint64_t total_;
  std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point last_{};
  bool finished_ = false;
};

}  // namespace pagoda::cli
