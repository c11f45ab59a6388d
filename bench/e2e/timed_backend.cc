#include "timed_backend.h"

#include <algorithm>
#include <chrono>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace pagoda::bench {

class TimedBackend final : public WorkerBackend {
 public:
  explicit TimedBackend(std::unique_ptr<WorkerBackend> inner) : inner_(std::move(inner)) {}

  absl::Status Init(const PageLayout& l, int q, int32_t s) override {
    return Timed("Init", [&] { return inner_->Init(l, q, s); });
  }
  Device device() const override { return inner_->device(); }
  int device_index() const override { return inner_->device_index(); }
  const char* name() const override { return inner_->name(); }
  absl::Status RegisterSource(const uint8_t* b, int64_t n) override {
    return Timed("RegisterSource", [&] { return inner_->RegisterSource(b, n); });
  }
  absl::Status Gather(absl::Span<const HeadFetch> f, absl::Span<uint8_t> bad) override {
    return Timed("Gather", [&] { return inner_->Gather(f, bad); });
  }
  absl::Status WriteTokens(const TensorView& k, const TensorView& v, absl::Span<const int32_t> s,
                           absl::Span<const int32_t> p) override {
    return Timed("WriteTokens", [&] { return inner_->WriteTokens(k, v, s, p); });
  }
  absl::Status WriteHeads(absl::Span<const HeadSlot> d, absl::Span<const uint8_t> b) override {
    return Timed("WriteHeads", [&] { return inner_->WriteHeads(d, b); });
  }
  absl::Status ReadHeads(absl::Span<const HeadSlot> s, absl::Span<uint8_t> b) override {
    return Timed("ReadHeads", [&] { return inner_->ReadHeads(s, b); });
  }
  absl::Status CopyHeads(absl::Span<const HeadSlot> s, absl::Span<const HeadSlot> d) override {
    return Timed("CopyHeads", [&] { return inner_->CopyHeads(s, d); });
  }
  absl::Status AssemblePages(const TensorView& k, const TensorView& v,
                             absl::Span<const int64_t> offsets,
                             absl::Span<uint64_t> sums) override {
    return Timed("AssemblePages", [&] { return inner_->AssemblePages(k, v, offsets, sums); });
  }
  absl::Status AttendPrefill(const TensorView& q, const kernels::PageTable& t, const PrefillMask& m,
                             const TensorView& o) override {
    return Timed("AttendPrefill", [&] { return inner_->AttendPrefill(q, t, m, o); });
  }
  absl::Status Attend(const TensorView& q, const kernels::PageTable& t,
                      const TensorView& o) override {
    return Timed("Attend", [&] { return inner_->Attend(q, t, o); });
  }
  absl::Status ScorePages(const TensorView& q, absl::Span<const int32_t> ip,
                          absl::Span<const int32_t> sl, absl::Span<const int32_t> len,
                          kernels::GroupReduce r, absl::Span<float> mass) override {
    return Timed("ScorePages", [&] { return inner_->ScorePages(q, ip, sl, len, r, mass); });
  }
  absl::Status AttendBestByMass(const TensorView& q, const MassAttendRequest& req, int tag,
                                const TensorView& o) override {
    return Timed("AttendBestByMass", [&] { return inner_->AttendBestByMass(q, req, tag, o); });
  }
  void DropSlotList(int64_t id) override { inner_->DropSlotList(id); }
  absl::StatusOr<absl::Span<const int32_t>> FinishChoices(int tag) override {
    absl::StatusOr<absl::Span<const int32_t>> out;
    (void)Timed("FinishChoices", [&] {
      out = inner_->FinishChoices(tag);
      return absl::OkStatus();
    });
    return out;
  }
  absl::Status CopyToHost(const TensorView& t, absl::Span<uint16_t> out) override {
    return Timed("CopyToHost", [&] { return inner_->CopyToHost(t, out); });
  }
  absl::Status StartCopyToHost(const TensorView& t, int tag) override {
    return Timed("StartCopyToHost", [&] { return inner_->StartCopyToHost(t, tag); });
  }
  absl::Status StartReadHeads(absl::Span<const HeadSlot> s, int tag) override {
    return Timed("StartReadHeads", [&] { return inner_->StartReadHeads(s, tag); });
  }
  absl::StatusOr<absl::Span<const uint16_t>> FinishCopyToHost(int tag) override {
    absl::StatusOr<absl::Span<const uint16_t>> out;
    (void)Timed("FinishCopyToHost", [&] {
      out = inner_->FinishCopyToHost(tag);
      return absl::OkStatus();
    });
    return out;
  }
  absl::Status InitSummaries(int64_t n) override {
    return Timed("InitSummaries", [&] { return inner_->InitSummaries(n); });
  }
  absl::Status WriteSummaries(absl::Span<const int32_t> s, absl::Span<const uint16_t> mn,
                              absl::Span<const uint16_t> mx, absl::Span<const int32_t> c) override {
    return Timed("WriteSummaries", [&] { return inner_->WriteSummaries(s, mn, mx, c); });
  }
  absl::Status UpdateSummaries(absl::Span<const int32_t> s, absl::Span<const int32_t> p,
                               absl::Span<const int32_t> o, absl::Span<const int32_t> n) override {
    return Timed("UpdateSummaries", [&] { return inner_->UpdateSummaries(s, p, o, n); });
  }
  absl::Status CopySummaries(absl::Span<const int32_t> s, absl::Span<const int32_t> d) override {
    return Timed("CopySummaries", [&] { return inner_->CopySummaries(s, d); });
  }
  absl::Status SummarizeTokens(const TensorView& k, absl::Span<const int32_t> s) override {
    return Timed("SummarizeTokens", [&] { return inner_->SummarizeTokens(k, s); });
  }
  absl::Status SelectQuest(const TensorView& q, const QuestRequest& r, std::vector<int32_t>& ip,
                           std::vector<int32_t>& ix) override {
    return Timed("SelectQuest", [&] { return inner_->SelectQuest(q, r, ip, ix); });
  }
  absl::Status KMeans(const kernels::KMeansParams& p, int iterations) override {
    return Timed("KMeans", [&] { return inner_->KMeans(p, iterations); });
  }
  absl::StatusOr<uint64_t> StageLayers(absl::Span<const StagedLayer> layers) override {
    absl::StatusOr<uint64_t> out;
    (void)Timed("StageLayers", [&] {
      out = inner_->StageLayers(layers);
      return absl::OkStatus();
    });
    return out;
  }
  absl::Status AttendStaged(int layer, const TensorView& q, const TensorView& k,
                            const TensorView& v, const TensorView& o) override {
    return Timed("AttendStaged", [&] { return inner_->AttendStaged(layer, q, k, v, o); });
  }
  absl::Status Sync() override {
    return Timed("Sync", [&] { return inner_->Sync(); });
  }

  double seconds = 0;
  std::map<std::string, double> by_call;  // seconds per backend method

 private:
  template <typename F>
  absl::Status Timed(const char* call, F&& f) {
    const auto t0 = std::chrono::steady_clock::now();
    absl::Status s = f();
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    seconds += dt;
    by_call[call] += dt;
    return s;
  }

  std::unique_ptr<WorkerBackend> inner_;
};

std::unique_ptr<WorkerBackend> MakeTimedBackend(std::unique_ptr<WorkerBackend> inner,
                                                TimedBackend** timer) {
  auto b = std::make_unique<TimedBackend>(std::move(inner));
  *timer = b.get();
  return b;
}

double BackendSeconds(const TimedBackend& timer) { return timer.seconds; }
void ResetBackendSeconds(TimedBackend& timer) { timer.seconds = 0; }
void ResetBackendBreakdown(TimedBackend& timer) { timer.by_call.clear(); }

std::string BackendBreakdown(const TimedBackend& timer, double divisor) {
  std::vector<std::pair<double, std::string>> calls;
  for (const auto& [call, s] : timer.by_call) calls.emplace_back(s, call);
  std::sort(calls.rbegin(), calls.rend());
  std::string out;
  for (const auto& [s, call] : calls) {
    absl::StrAppend(&out, out.empty() ? "" : ", ", call, " ",
                    absl::StrFormat("%.3f", s * 1e3 / divisor));
  }
  return out;
}

}  // namespace pagoda::bench
