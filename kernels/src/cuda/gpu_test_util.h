// Helpers of the GPU tests: device buffers mirroring host vectors, and a fixture that skips
// where no GPU is visible.
#ifndef PAGODA_KERNELS_SRC_CUDA_GPU_TEST_UTIL_H_
#define PAGODA_KERNELS_SRC_CUDA_GPU_TEST_UTIL_H_

#include <cuda_runtime_api.h>

#include <algorithm>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda::kernels {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

inline bool HaveGpu() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// A device copy of a host vector (or n zero-initialized elements).
template <typename T>
class Dev {
 public:
  explicit Dev(const std::vector<T>& h) : n_(h.size()) {
    Alloc();
    cudaMemcpy(p_, h.data(), bytes(), cudaMemcpyHostToDevice);
  }
  explicit Dev(size_t n) : n_(n) {
    Alloc();
    cudaMemset(p_, 0, bytes());
  }
  ~Dev() { cudaFree(p_); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  T* get() const { return p_; }
  size_t bytes() const { return std::max<size_t>(n_, 1) * sizeof(T); }
  std::vector<T> Host() const {
    std::vector<T> h(n_);
    cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
  void Put(const std::vector<T>& h) { cudaMemcpy(p_, h.data(), bytes(), cudaMemcpyHostToDevice); }

 private:
  void Alloc() { cudaMalloc(reinterpret_cast<void**>(&p_), bytes()); }
  size_t n_;
  T* p_ = nullptr;
};

class GpuTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!HaveGpu()) GTEST_SKIP() << "no GPU";
  }
};

}  // namespace pagoda::kernels

#endif  // PAGODA_KERNELS_SRC_CUDA_GPU_TEST_UTIL_H_
