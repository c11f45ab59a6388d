// CPU reference of the exact page masses (PageMassParams).
//
// A page's keys are decoded and transposed ([head_dim][lanes]) so a query head's dots with all of
// the page's tokens run side by side in SIMD lanes; each dot still sums over d in order, so the
// logits equal a token-at-a-time loop's bit for bit.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "pagoda/kernels/reference.h"
#include "validate.h"

namespace pagoda::kernels {
namespace {

// fp16 bits -> float for all 65536 values (HalfToFloat's, looked up instead of decoded).
const float* HalfTable() {
  static const std::vector<float> table = [] {
    std::vector<float> t(65536);
    for (uint32_t b = 0; b < 65536; ++b) t[b] = HalfToFloat(static_cast<uint16_t>(b));
    return t;
  }();
  return table.data();
}

constexpr int kLanes = 8;

}  // namespace

absl::Status PageMassReference(const PageMassParams& p) {
  if (auto s = internal::ValidatePageMassShape(p); !s.ok()) return s;
  if (auto s = internal::ValidatePageMassHost(p); !s.ok()) return s;
  const PagedKV& kv = p.kv;
  const int d = kv.head_dim;
  const int group = p.num_qo_heads / kv.num_kv_heads;
  const int64_t q_count = int64_t{p.batch} * p.num_qo_heads * d;
  std::vector<float> qf(static_cast<size_t>(q_count));
  for (int64_t i = 0; i < q_count; ++i) {
    qf[i] = ToFloat(p.q[i], kv.dtype);
    if (!std::isfinite(qf[i])) return absl::InvalidArgumentError("page mass: non-finite query");
  }
  const float scale = p.sm_scale > 0.f ? p.sm_scale : 1.f / std::sqrt(static_cast<float>(d));
  const float* half = kv.dtype == DType::kFloat16 ? HalfTable() : nullptr;
  const int Pp = (kv.page_size + kLanes - 1) / kLanes * kLanes;
  std::vector<float> key_t(static_cast<size_t>(d) * Pp), acc(static_cast<size_t>(group) * Pp);
  std::vector<float> logits, head_mass;
  std::vector<int32_t> entry_of;  // the row's entry (from its first) of each token's logits
  for (int32_t b = 0; b < p.batch; ++b) {
    for (int32_t h = 0; h < kv.num_kv_heads; ++h) {
      const int32_t r = b * kv.num_kv_heads + h;
      const int32_t first = p.indptr[r], count = p.indptr[r + 1] - first;
      if (count == 0) continue;
      logits.clear();
      entry_of.clear();
      // Entry e's page and length: listed, then (with tails) the row's stored list.
      const int32_t listed_at = p.tails != nullptr ? p.listed[r] : first;
      const int32_t listed = p.tails != nullptr ? p.listed[r + 1] - listed_at : count;
      for (int32_t e = 0; e < count; ++e) {
        const int32_t n = e < listed ? p.page_len[listed_at + e] : p.tail_len;
        const int32_t id = e < listed ? p.indices[listed_at + e] : p.tails[r][e - listed];
        const uint16_t* page = kv.k + id * kv.stride_page + h * kv.stride_head;
        for (int32_t t = 0; t < n; ++t) {
          const uint16_t* k = page + t * kv.stride_token;
          float* col = key_t.data() + t;
          if (half != nullptr) {
            for (int j = 0; j < d; ++j) col[static_cast<size_t>(j) * Pp] = half[k[j]];
          } else {
            for (int j = 0; j < d; ++j) col[static_cast<size_t>(j) * Pp] = Bf16ToFloat(k[j]);
          }
        }
        // Lanes past n hold an earlier page's keys (or zeros): their sums are never read.
        for (int g = 0; g < group; ++g) {
          const float* qg = qf.data() + (int64_t{b} * p.num_qo_heads + h * group + g) * d;
          for (int t0 = 0; t0 < Pp; t0 += kLanes) {
            float lane[kLanes] = {};
            for (int j = 0; j < d; ++j) {
              const float qj = qg[j];
              const float* kj = key_t.data() + static_cast<size_t>(j) * Pp + t0;
              for (int t = 0; t < kLanes; ++t) lane[t] += qj * kj[t];
            }
            std::copy_n(lane, kLanes, acc.data() + static_cast<size_t>(g) * Pp + t0);
          }
        }
        for (int32_t t = 0; t < n; ++t) {
          for (int g = 0; g < group; ++g) logits.push_back(acc[static_cast<size_t>(g) * Pp + t]);
          entry_of.push_back(e);
        }
      }
      float* mass = p.mass + first;
      std::fill(mass, mass + count, 0.f);
      head_mass.resize(count);
      for (int g = 0; g < group; ++g) {
        float top = -std::numeric_limits<float>::infinity();
        for (size_t t = 0; t < entry_of.size(); ++t) top = std::max(top, logits[t * group + g]);
        double z = 0;
        std::fill(head_mass.begin(), head_mass.end(), 0.f);
        for (size_t t = 0; t < entry_of.size(); ++t) {
          const float x = std::exp((logits[t * group + g] - top) * scale);
          head_mass[entry_of[t]] += x;
          z += x;
        }
        for (int32_t e = 0; e < count; ++e) {
          const float prob = static_cast<float>(head_mass[e] / z);
          mass[e] = p.reduce == GroupReduce::kMax ? std::max(mass[e], prob) : mass[e] + prob;
        }
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace pagoda::kernels
