// CPU reference of k-means over a sequence's keys, per KV head.
#include <algorithm>
#include <limits>
#include <vector>

#include "convert.h"
#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {
namespace {

absl::Status Validate(const KMeansParams& p) {
  if (auto s = internal::ValidateKMeansShape(p); !s.ok()) return s;
  const int64_t pages = (int64_t{p.num_tokens} + p.kv.page_size - 1) / p.kv.page_size;
  return internal::ValidatePageIdsHost(p.pages, pages, p.kv.num_pages, "kmeans pages");
}

const uint16_t* KeyAt(const KMeansParams& p, int32_t h, int32_t t) {
  const PagedKV& kv = p.kv;
  return kv.k + p.pages[t / kv.page_size] * kv.stride_page + h * kv.stride_head +
         (t % kv.page_size) * kv.stride_token;
}

}  // namespace

absl::Status KMeansInitReference(const KMeansParams& p) {
  if (auto s = Validate(p); !s.ok()) return s;
  if (p.num_clusters > p.num_tokens) {
    return absl::InvalidArgumentError("kmeans init: more clusters than tokens");
  }
  const int32_t dim = p.kv.head_dim;
  for (int32_t h = 0; h < p.kv.num_kv_heads; ++h) {
    for (int32_t c = 0; c < p.num_clusters; ++c) {
      const int32_t t = static_cast<int32_t>(int64_t{c} * p.num_tokens / p.num_clusters);
      const uint16_t* k = KeyAt(p, h, t);
      float* out = p.centroids + (int64_t{h} * p.num_clusters + c) * dim;
      internal::RowToFloat(k, dim, p.kv.dtype, out);
    }
  }
  return absl::OkStatus();
}

absl::Status KMeansAssignReference(const KMeansParams& p) {
  if (auto s = Validate(p); !s.ok()) return s;
  const int32_t dim = p.kv.head_dim;
  std::vector<float> x(dim);
  for (int32_t h = 0; h < p.kv.num_kv_heads; ++h) {
    const float* cent = p.centroids + int64_t{h} * p.num_clusters * dim;
    for (int32_t t = 0; t < p.num_tokens; ++t) {
      const uint16_t* k = KeyAt(p, h, t);
      internal::RowToFloat(k, dim, p.kv.dtype, x.data());
      float best = std::numeric_limits<float>::infinity();
      int32_t arg = 0;
      for (int32_t c = 0; c < p.num_clusters; ++c) {
        const float dist = internal::SquaredDistance(x.data(), cent + int64_t{c} * dim, dim);
        if (dist < best) {
          best = dist;
          arg = c;
        }
      }
      p.assignment[int64_t{h} * p.num_tokens + t] = arg;
    }
  }
  return absl::OkStatus();
}

absl::Status KMeansUpdateReference(const KMeansParams& p) {
  if (auto s = Validate(p); !s.ok()) return s;
  const int32_t dim = p.kv.head_dim;
  for (int64_t i = 0; i < int64_t{p.kv.num_kv_heads} * p.num_tokens; ++i) {
    if (p.assignment[i] < 0 || p.assignment[i] >= p.num_clusters) {
      return absl::OutOfRangeError("kmeans update: assignment out of range");
    }
  }
  std::vector<double> sum(static_cast<size_t>(p.num_clusters) * dim);
  std::vector<int32_t> size(p.num_clusters);
  for (int32_t h = 0; h < p.kv.num_kv_heads; ++h) {
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(size.begin(), size.end(), 0);
    for (int32_t t = 0; t < p.num_tokens; ++t) {
      const int32_t c = p.assignment[int64_t{h} * p.num_tokens + t];
      const uint16_t* k = KeyAt(p, h, t);
      double* s = &sum[static_cast<size_t>(c) * dim];
      for (int32_t d = 0; d < dim; ++d) s[d] += ToFloat(k[d], p.kv.dtype);
      ++size[c];
    }
    for (int32_t c = 0; c < p.num_clusters; ++c) {
      p.cluster_size[int64_t{h} * p.num_clusters + c] = size[c];
      if (size[c] == 0) continue;
      float* out = p.centroids + (int64_t{h} * p.num_clusters + c) * dim;
      for (int32_t d = 0; d < dim; ++d) {
        out[d] = static_cast<float>(sum[static_cast<size_t>(c) * dim + d] / size[c]);
      }
    }
  }
  return absl::OkStatus();
}

absl::Status KMeansReference(const KMeansParams& p, int iterations) {
  if (iterations < 0) return absl::InvalidArgumentError("kmeans: iterations must be >= 0");
  if (auto s = Validate(p); !s.ok()) return s;
  for (int i = 0; i < iterations; ++i) {
    if (auto s = KMeansAssignReference(p); !s.ok()) return s;
    if (auto s = KMeansUpdateReference(p); !s.ok()) return s;
  }
  return KMeansAssignReference(p);
}

}  // namespace pagoda::kernels
