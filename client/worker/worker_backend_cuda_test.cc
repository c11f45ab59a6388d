// The CUDA worker backend against the CPU one: the same DecodeWorker steps over the same kind of
// embedded Store (device tensors on CUDA, host tensors on the CPU) must attend the same pages and
// give the same outputs within fp16 / bf16 rounding. Skips where the CUDA backend is Unavailable
// (no CUDA build or no device: CI).
#include <cuda_runtime_api.h>
#include <stdlib.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pagoda/client/decode_worker.h"
#include "pagoda/kernels/dtype.h"
#include "pagoda/kernels/reference.h"
#include "pagoda/kvstore/prefix.h"

namespace pagoda {
namespace {

struct Shape {
  DType dtype;
  int kv, q, dim, layers, batch;
  int64_t prompt, steps, budget;
};

struct Record {
  std::vector<uint16_t> out;               // [layers][batch, q, dim]
  std::vector<std::vector<int32_t>> rows;  // every (layer, seq, head) row
};

uint16_t Bits(DType dt, float f) {
  return dt == DType::kBf16 ? kernels::FloatToBf16(f) : kernels::FloatToHalf(f);
}
float Float(DType dt, uint16_t b) {
  return dt == DType::kBf16 ? kernels::Bf16ToFloat(b) : kernels::HalfToFloat(b);
}

// A tensor on the backend's device holding `host` ([a, b, c]).
class Tensor {
 public:
  Tensor(Device dev, DType dt, std::vector<uint16_t> host, int64_t a, int64_t b, int64_t c)
      : dev_(dev), host_(std::move(host)) {
    void* data = host_.data();
    if (dev == Device::kCuda) {
      EXPECT_EQ(cudaMalloc(&dev_ptr_, host_.size() * 2), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(dev_ptr_, host_.data(), host_.size() * 2, cudaMemcpyHostToDevice),
                cudaSuccess);
      data = dev_ptr_;
    }
    view_ = TensorView::Contiguous(data, dt, {a, b, c}, dev);
  }
  ~Tensor() {
    if (dev_ptr_ != nullptr) cudaFree(dev_ptr_);
  }
  const TensorView& view() const { return view_; }
  std::vector<uint16_t> Read() {
    if (dev_ == Device::kCuda) {
      cudaDeviceSynchronize();
      EXPECT_EQ(cudaMemcpy(host_.data(), dev_ptr_, host_.size() * 2, cudaMemcpyDeviceToHost),
                cudaSuccess);
    }
    return host_;
  }

 private:
  Device dev_;
  std::vector<uint16_t> host_;
  void* dev_ptr_ = nullptr;
  TensorView view_;
};

// A store in a fresh temporary directory (`dir`, removed by the caller): one layout, `host_pages`
// pages of host tier in segments of `segment_pages`, the rest on SSD.
std::unique_ptr<Store> OpenTempStore(const PageLayout& layout, uint64_t host_pages,
                                     uint64_t segment_pages, std::string& dir) {
  std::string t = (std::filesystem::temp_directory_path() / "worker_cuda_XXXXXX").string();
  dir = mkdtemp(t.data());
  StoreOptions so;
  so.layouts = {layout};
  so.host_capacity_bytes = host_pages * layout.PageBytes();
  so.segment_bytes = segment_pages * layout.PageBytes();
  so.data_dir = dir;
  auto store = Store::Open(so);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(*store) : nullptr;
}

std::vector<Record> Run(const Shape& sh, std::unique_ptr<WorkerBackend> backend) {
  const Device dev = backend->device();
  const PageLayout layout{sh.dtype, static_cast<uint32_t>(sh.kv), static_cast<uint32_t>(sh.dim),
                          16};
  std::string dir;
  std::unique_ptr<Store> store = OpenTempStore(layout, 64, 8, dir);  // the rest on SSD
  DecodeWorkerOptions o;
  o.layout = layout;
  o.q_heads = sh.q;
  o.num_layers = sh.layers;
  o.policy = retriever::Policy::kQuest;
  o.boundary_trigger = true;
  o.selector.budget_tokens = sh.budget;
  o.layer_streaming_heads.assign(sh.layers, {});
  o.layer_streaming_heads[0] = {1};  // prefill attention's Lambda mask on the device too
  // Room for one more sequence: halfway, the first sequence is forked.
  o.pool_slots_per_head =
      static_cast<int32_t>((sh.batch + 1) * (sh.budget / 16 + 8) + sh.layers * 2 * (sh.batch + 1));
  auto w = DecodeWorker::Create(store.get(), std::move(backend), o);
  EXPECT_TRUE(w.ok()) << w.status();
  std::mt19937 rng(17);
  std::normal_distribution<float> g(0.f, 1.f);
  auto random = [&](size_t n, float scale) {
    std::vector<uint16_t> x(n);
    for (auto& e : x) e = Bits(sh.dtype, scale * g(rng));
    return x;
  };
  std::vector<SequenceId> ids;
  Record prefill;  // the first sequence's prefill attention outputs, returned last
  for (int b = 0; b < sh.batch; ++b) {
    std::vector<int32_t> tokens(sh.prompt + b * 7);
    for (auto& tok : tokens) tok = static_cast<int32_t>(rng() % 5000);
    auto opened = (*w)->Open(tokens);
    EXPECT_TRUE(opened.ok());
    const int64_t n = static_cast<int64_t>(tokens.size());
    for (int l = 0; l < sh.layers; ++l) {
      if (b == 0) {  // with prefill attention, in chunks (AttendPrefill on the backend)
        for (int64_t t = 0; t < n; t += 200) {
          const int64_t m = std::min<int64_t>(200, n - t);
          Tensor q(dev, sh.dtype, random(m * sh.q * sh.dim, 2.f), m, sh.q, sh.dim);
          Tensor k(dev, sh.dtype, random(m * sh.kv * sh.dim, 1.f), m, sh.kv, sh.dim);
          Tensor v(dev, sh.dtype, random(m * sh.kv * sh.dim, 1.f), m, sh.kv, sh.dim);
          Tensor out(dev, sh.dtype, std::vector<uint16_t>(m * sh.q * sh.dim, 0), m, sh.q, sh.dim);
          const absl::Status st =
              (*w)->PrefillAttend(opened->id, l, q.view(), k.view(), v.view(), out.view());
          EXPECT_TRUE(st.ok()) << st;
          const std::vector<uint16_t> o = out.Read();
          prefill.out.insert(prefill.out.end(), o.begin(), o.end());
        }
        continue;
      }
      Tensor k(dev, sh.dtype, random(n * sh.kv * sh.dim, 1.f), n, sh.kv, sh.dim);
      Tensor v(dev, sh.dtype, random(n * sh.kv * sh.dim, 1.f), n, sh.kv, sh.dim);
      EXPECT_TRUE((*w)->Prefill(opened->id, l, k.view(), v.view()).ok());
    }
    ids.push_back(opened->id);
  }
  std::vector<Record> records;
  std::vector<float> topic((sh.batch + 1) * sh.q * sh.dim);
  for (int64_t s = 0; s < sh.steps; ++s) {
    if (s == sh.steps / 2) {  // a fork: its summaries are copied on the backend
      auto child = (*w)->Fork(ids[0]);
      EXPECT_TRUE(child.ok()) << child.status();
      if (child.ok()) ids.push_back(*child);
    }
    const int64_t B = static_cast<int64_t>(ids.size());
    if (s % 16 == 0) {
      for (float& x : topic) x = 2.f * g(rng);
    }
    std::vector<int32_t> next(B);
    for (auto& tok : next) tok = static_cast<int32_t>(rng() % 5000);
    auto plan = (*w)->Plan(ids, next);
    EXPECT_TRUE(plan.ok()) << plan.status();
    Record r;
    for (int l = 0; l < sh.layers; ++l) {
      std::vector<uint16_t> qh(B * sh.q * sh.dim);
      for (size_t i = 0; i < qh.size(); ++i) qh[i] = Bits(sh.dtype, topic[i] + 0.1f * g(rng));
      Tensor q(dev, sh.dtype, qh, B, sh.q, sh.dim);
      Tensor k(dev, sh.dtype, random(B * sh.kv * sh.dim, 1.f), B, sh.kv, sh.dim);
      Tensor v(dev, sh.dtype, random(B * sh.kv * sh.dim, 1.f), B, sh.kv, sh.dim);
      Tensor out(dev, sh.dtype, std::vector<uint16_t>(qh.size(), 0), B, sh.q, sh.dim);
      EXPECT_TRUE((*w)->Attend(*plan, l, q.view(), k.view(), v.view(), out.view()).ok());
      const std::vector<uint16_t> o = out.Read();
      r.out.insert(r.out.end(), o.begin(), o.end());
      for (SequenceId id : ids) {
        auto rows = (*w)->LastRows(id, l);
        EXPECT_TRUE(rows.ok());
        if (rows.ok()) r.rows.insert(r.rows.end(), rows->begin(), rows->end());
      }
    }
    auto stats = (*w)->Finish(*plan);
    EXPECT_TRUE(stats.ok());
    for (const absl::Status& st : stats->sequence_status) EXPECT_TRUE(st.ok()) << st;
    records.push_back(std::move(r));
  }
  records.push_back(std::move(prefill));
  w->reset();
  store.reset();
  std::filesystem::remove_all(dir);
  return records;
}

void ExpectAgree(const Shape& sh) {
  auto cuda = MakeCudaWorkerBackend();
  if (!cuda.ok()) {
    ASSERT_TRUE(absl::IsUnavailable(cuda.status())) << cuda.status();
    GTEST_SKIP() << cuda.status();
  }
  const std::vector<Record> cpu = Run(sh, MakeCpuWorkerBackend());
  const std::vector<Record> gpu = Run(sh, std::move(*cuda));
  ASSERT_EQ(cpu.size(), static_cast<size_t>(sh.steps) + 1);  // the steps, then the prefill
  ASSERT_EQ(gpu.size(), cpu.size());
  const double rel = sh.dtype == DType::kBf16 ? 2e-2 : 4e-3;
  const double abs_tol = sh.dtype == DType::kBf16 ? 1e-2 : 2e-3;
  for (size_t i = 0; i < cpu.size(); ++i) {
    ASSERT_EQ(gpu[i].rows, cpu[i].rows) << "step " << i;  // selection is the same host code
    ASSERT_EQ(gpu[i].out.size(), cpu[i].out.size()) << "step " << i;
    for (size_t j = 0; j < cpu[i].out.size(); ++j) {
      const double a = Float(sh.dtype, gpu[i].out[j]), b = Float(sh.dtype, cpu[i].out[j]);
      ASSERT_NEAR(a, b, abs_tol + rel * std::abs(b)) << "step " << i << " element " << j;
    }
  }
}

TEST(CudaWorkerBackendTest, MatchesCpuFp16Head64) {
  ExpectAgree({DType::kFp16, 4, 12, 64, 2, 3, 500, 40, 128});
}

TEST(CudaWorkerBackendTest, MatchesCpuBf16Head128Llama) {
  ExpectAgree({DType::kBf16, 8, 32, 128, 2, 4, 700, 40, 256});
}

// Quest steps between retrievals are capturable (StepPlan::capturable): two CUDA workers over the
// same inputs, one calling Attend at every step, the other capturing the first capturable step
// of each graph_key in a real CUDA graph (stream capture over its Attend calls, launched after)
// and replaying it at the later ones (Replayed instead of Attend). Outputs must be bit-identical:
// the same kernels read the same staged tables. The engine's tensors live in fixed device buffers.
TEST(CudaWorkerBackendTest, CapturedStepsReplayLikeAttendedOnes) {
  constexpr int kKvH = 8, kQH = 32, kD = 128, kL = 3, kB = 2;
  const PageLayout layout{DType::kBf16, kKvH, kD, 16};
  cudaStream_t streams[2] = {nullptr, nullptr};
  std::unique_ptr<WorkerBackend> backends[2];
  for (int i = 0; i < 2; ++i) {
    if (cudaStreamCreateWithFlags(&streams[i], cudaStreamNonBlocking) != cudaSuccess) {
      GTEST_SKIP() << "no CUDA device";
    }
    auto b = MakeCudaWorkerBackend({0, streams[i]});
    if (!b.ok()) GTEST_SKIP() << b.status();
    backends[i] = std::move(*b);
  }
  std::string dirs[2];
  std::unique_ptr<Store> stores[2];
  std::unique_ptr<DecodeWorker> workers[2];
  for (int i = 0; i < 2; ++i) {
    stores[i] = OpenTempStore(layout, 1024, 8, dirs[i]);
    ASSERT_NE(stores[i], nullptr);
    DecodeWorkerOptions o;
    o.layout = layout;
    o.q_heads = kQH;
    o.num_layers = kL;
    o.policy = retriever::Policy::kQuest;
    o.boundary_trigger = true;
    o.capturable_steps = true;
    o.selector.budget_tokens = 256;
    o.pool_slots_per_head = 1024;
    auto w = DecodeWorker::Create(stores[i].get(), std::move(backends[i]), o);
    ASSERT_TRUE(w.ok()) << w.status();
    workers[i] = std::move(*w);
  }
  std::mt19937 rng(23);
  std::normal_distribution<float> g(0.f, 1.f);
  auto random = [&](size_t n, float scale) {
    std::vector<uint16_t> x(n);
    for (auto& e : x) e = Bits(DType::kBf16, scale * g(rng));
    return x;
  };
  std::vector<SequenceId> ids[2];
  for (int b = 0; b < kB; ++b) {
    std::vector<int32_t> tokens(900 + 37 * b);
    for (auto& tok : tokens) tok = static_cast<int32_t>(rng() % 5000);
    const int64_t n = static_cast<int64_t>(tokens.size());
    std::vector<std::vector<uint16_t>> ks, vs;
    for (int l = 0; l < kL; ++l) {
      ks.push_back(random(n * kKvH * kD, 1.f));
      vs.push_back(random(n * kKvH * kD, 1.f));
    }
    for (int i = 0; i < 2; ++i) {
      auto opened = workers[i]->Open(tokens);
      ASSERT_TRUE(opened.ok()) << opened.status();
      for (int l = 0; l < kL; ++l) {
        Tensor k(Device::kCuda, DType::kBf16, ks[l], n, kKvH, kD);
        Tensor v(Device::kCuda, DType::kBf16, vs[l], n, kKvH, kD);
        ASSERT_TRUE(workers[i]->Prefill(opened->id, l, k.view(), v.view()).ok());
      }
      ids[i].push_back(opened->id);
    }
  }
  // The engine's per-layer tensors, at fixed addresses (what a captured graph reads).
  std::vector<std::unique_ptr<Tensor>> q[2], k[2], v[2], out[2];
  for (int i = 0; i < 2; ++i) {
    for (int l = 0; l < kL; ++l) {
      q[i].push_back(std::make_unique<Tensor>(Device::kCuda, DType::kBf16,
                                              std::vector<uint16_t>(kB * kQH * kD), kB, kQH, kD));
      k[i].push_back(std::make_unique<Tensor>(Device::kCuda, DType::kBf16,
                                              std::vector<uint16_t>(kB * kKvH * kD), kB, kKvH, kD));
      v[i].push_back(std::make_unique<Tensor>(Device::kCuda, DType::kBf16,
                                              std::vector<uint16_t>(kB * kKvH * kD), kB, kKvH, kD));
      out[i].push_back(std::make_unique<Tensor>(Device::kCuda, DType::kBf16,
                                                std::vector<uint16_t>(kB * kQH * kD), kB, kQH, kD));
    }
  }
  cudaGraphExec_t exec = nullptr;
  uint64_t key = 0;
  int captures = 0, replays = 0;
  std::vector<float> topic(kB * kQH * kD);
  for (int step = 0; step < 48; ++step) {
    if (step % 16 == 0) {
      for (float& x : topic) x = 2.f * g(rng);
    }
    std::vector<int32_t> next(kB);
    for (auto& tok : next) tok = static_cast<int32_t>(rng() % 5000);
    for (int l = 0; l < kL; ++l) {
      std::vector<uint16_t> qh(kB * kQH * kD);
      for (size_t e = 0; e < qh.size(); ++e) qh[e] = Bits(DType::kBf16, topic[e] + 0.1f * g(rng));
      const std::vector<uint16_t> kh = random(kB * kKvH * kD, 1.f),
                                  vh = random(kB * kKvH * kD, 1.f);
      for (int i = 0; i < 2; ++i) {
        ASSERT_EQ(
            cudaMemcpy(q[i][l]->view().data, qh.data(), qh.size() * 2, cudaMemcpyHostToDevice),
            cudaSuccess);
        ASSERT_EQ(
            cudaMemcpy(k[i][l]->view().data, kh.data(), kh.size() * 2, cudaMemcpyHostToDevice),
            cudaSuccess);
        ASSERT_EQ(
            cudaMemcpy(v[i][l]->view().data, vh.data(), vh.size() * 2, cudaMemcpyHostToDevice),
            cudaSuccess);
      }
    }
    for (int i = 0; i < 2; ++i) {
      auto plan = workers[i]->Plan(ids[i], next);
      ASSERT_TRUE(plan.ok()) << plan.status();
      const bool graph = i == 1 && plan->capturable;
      auto attend_all = [&] {
        for (int l = 0; l < kL; ++l) {
          const absl::Status st = workers[i]->Attend(*plan, l, q[i][l]->view(), k[i][l]->view(),
                                                     v[i][l]->view(), out[i][l]->view());
          ASSERT_TRUE(st.ok()) << st;
        }
      };
      if (graph && exec != nullptr && plan->graph_key == key) {
        ASSERT_EQ(cudaGraphLaunch(exec, streams[i]), cudaSuccess);
        ASSERT_TRUE(workers[i]->Replayed(*plan).ok());
        ++replays;
      } else if (graph) {
        if (exec != nullptr) cudaGraphExecDestroy(exec);
        cudaGraph_t captured = nullptr;
        ASSERT_EQ(cudaStreamBeginCapture(streams[i], cudaStreamCaptureModeThreadLocal),
                  cudaSuccess);
        attend_all();
        ASSERT_EQ(cudaStreamEndCapture(streams[i], &captured), cudaSuccess);
        ASSERT_EQ(cudaGraphInstantiate(&exec, captured, 0), cudaSuccess);
        cudaGraphDestroy(captured);
        ASSERT_EQ(cudaGraphLaunch(exec, streams[i]), cudaSuccess);
        key = plan->graph_key;
        ++captures;
      } else {
        attend_all();
      }
      auto stats = workers[i]->Finish(*plan);
      ASSERT_TRUE(stats.ok()) << stats.status();
      for (const absl::Status& st : stats->sequence_status) ASSERT_TRUE(st.ok()) << st;
      ASSERT_EQ(cudaStreamSynchronize(streams[i]), cudaSuccess);
    }
    for (int l = 0; l < kL; ++l) {
      ASSERT_EQ(out[0][l]->Read(), out[1][l]->Read()) << "step " << step << " layer " << l;
    }
  }
  EXPECT_GE(captures, 1);
  EXPECT_GE(replays, 20);
  if (exec != nullptr) cudaGraphExecDestroy(exec);
  for (int i = 0; i < 2; ++i) {
    workers[i].reset();
    stores[i].reset();
    std::filesystem::remove_all(dirs[i]);
    cudaStreamDestroy(streams[i]);
  }
}

// louiskv's clustering on the device: the k-means kernels through the backend against the CPU
// backend's reference, on keys with clear clusters (16 well-separated directions): the same
// assignment and cluster sizes, centroids within rounding.
TEST(CudaWorkerBackendTest, KMeansMatchesTheReference) {
  auto cuda = MakeCudaWorkerBackend({});
  if (absl::IsUnavailable(cuda.status())) GTEST_SKIP() << cuda.status();
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = MakeCpuWorkerBackend();
  const PageLayout layout{DType::kBf16, 8, 128, 16};
  ASSERT_TRUE((*cuda)->Init(layout, 32, 64).ok());
  ASSERT_TRUE(cpu->Init(layout, 32, 64).ok());
  const int kv = 8, d = 128, P = 16, pages = 64, n = pages * P, K = 16;
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<float> dirs(static_cast<size_t>(K) * d);
  for (float& x : dirs) x = 3.f * g(rng);
  std::vector<uint16_t> keys(static_cast<size_t>(pages) * kv * P * d);  // keys-only pages
  for (int p = 0; p < pages; ++p) {
    for (int h = 0; h < kv; ++h) {
      for (int t = 0; t < P; ++t) {
        const int c = static_cast<int>(rng() % K);
        for (int i = 0; i < d; ++i) {
          keys[((static_cast<size_t>(p) * kv + h) * P + t) * d + i] =
              kernels::FloatToBf16(dirs[c * d + i] + 0.1f * g(rng));
        }
      }
    }
  }
  std::vector<int32_t> ids(pages);
  for (int p = 0; p < pages; ++p) ids[p] = pages - 1 - p;  // not in order
  struct Out {
    std::vector<float> cent;
    std::vector<int32_t> asg, size;
  };
  auto run = [&](WorkerBackend& b, Out& o) {
    o.cent.assign(static_cast<size_t>(kv) * K * d, 0.f);
    o.asg.assign(static_cast<size_t>(kv) * n, -1);
    o.size.assign(static_cast<size_t>(kv) * K, -1);
    kernels::KMeansParams km;
    km.kv = kernels::PackedPagedKV(kernels::DType::kBFloat16, pages, P, kv, d, keys.data());
    km.kv.v = nullptr;
    km.kv.stride_page = int64_t{kv} * P * d;
    km.pages = ids.data();
    km.num_tokens = n;
    km.num_clusters = K;
    km.centroids = o.cent.data();
    km.assignment = o.asg.data();
    km.cluster_size = o.size.data();
    ASSERT_TRUE(kernels::KMeansInitReference(km).ok());
    ASSERT_TRUE(b.KMeans(km, 8).ok());
  };
  Out a, b;
  run(**cuda, a);
  run(*cpu, b);
  EXPECT_EQ(a.asg, b.asg);
  EXPECT_EQ(a.size, b.size);
  for (size_t i = 0; i < a.cent.size(); ++i) ASSERT_NEAR(a.cent[i], b.cent[i], 1e-3) << i;
}

// louiskv's exact rescoring on the device: ScorePages over the same pool bytes and query on both
// backends (Llama-3-8B shapes, a batch of 2, rows of up to ~600 slots as at a 4K budget) gives
// the same masses within float rounding.
TEST(CudaWorkerBackendTest, ScorePagesMatchesTheReference) {
  auto cuda = MakeCudaWorkerBackend({});
  if (absl::IsUnavailable(cuda.status())) GTEST_SKIP() << cuda.status();
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = MakeCpuWorkerBackend();
  const PageLayout layout{DType::kBf16, 8, 128, 16};
  const int kv = 8, q_heads = 32, d = 128, P = 16, slots = 700, B = 2;
  ASSERT_TRUE((*cuda)->Init(layout, q_heads, slots).ok());
  ASSERT_TRUE(cpu->Init(layout, q_heads, slots).ok());
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<HeadSlot> dst;
  for (int h = 0; h < kv; ++h) {
    for (int s = 0; s < slots; ++s) dst.push_back({h, s});
  }
  std::vector<uint8_t> bytes(dst.size() * 2 * P * d * 2);
  for (size_t i = 0; i < bytes.size(); i += 2) {
    const uint16_t x = kernels::FloatToBf16(g(rng));
    std::memcpy(bytes.data() + i, &x, 2);
  }
  ASSERT_TRUE((*cuda)->WriteHeads(dst, bytes).ok());
  ASSERT_TRUE(cpu->WriteHeads(dst, bytes).ok());
  std::vector<uint16_t> qh(static_cast<size_t>(B) * q_heads * d);
  for (auto& x : qh) x = kernels::FloatToBf16(2.f * g(rng));
  Tensor q_gpu(Device::kCuda, DType::kBf16, qh, B, q_heads, d);
  Tensor q_cpu(Device::kCpu, DType::kBf16, qh, B, q_heads, d);
  std::vector<int32_t> indptr = {0}, ids, len;
  for (int r = 0; r < B * kv; ++r) {
    const int n = r == 3 ? 0 : 100 + static_cast<int>(rng() % 500);
    for (int i = 0; i < n; ++i) {
      ids.push_back(static_cast<int32_t>(rng() % slots));
      len.push_back(i == n / 2 ? 1 + static_cast<int32_t>(rng() % P) : P);
    }
    indptr.push_back(static_cast<int32_t>(ids.size()));
  }
  for (auto reduce : {kernels::GroupReduce::kSum, kernels::GroupReduce::kMax}) {
    std::vector<float> got(ids.size(), -1.f), want(ids.size(), -2.f);
    ASSERT_TRUE(
        (*cuda)->ScorePages(q_gpu.view(), indptr, ids, len, reduce, absl::MakeSpan(got)).ok());
    ASSERT_TRUE(cpu->ScorePages(q_cpu.view(), indptr, ids, len, reduce, absl::MakeSpan(want)).ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      ASSERT_NEAR(got[i], want[i], 1e-6 + 1e-3 * want[i]) << "entry " << i;
    }
  }
}

// louiskv's closed-form step on the device: masses, the choice and the decode in one call, no
// host sync, against the CPU backend (the kernels' references). Each row hides `need` candidates
// whose keys follow its queries among random ones, so rounding cannot change the choice.
TEST(CudaWorkerBackendTest, AttendBestByMassMatchesTheCpuBackend) {
  auto cuda = MakeCudaWorkerBackend({});
  if (absl::IsUnavailable(cuda.status())) GTEST_SKIP() << cuda.status();
  ASSERT_TRUE(cuda.ok()) << cuda.status();
  auto cpu = MakeCpuWorkerBackend();
  const PageLayout layout{DType::kBf16, 8, 128, 16};
  const int kv = 8, q_heads = 32, d = 128, P = 16, slots = 900, B = 3, group = q_heads / kv;
  ASSERT_TRUE((*cuda)->Init(layout, q_heads, slots).ok());
  ASSERT_TRUE(cpu->Init(layout, q_heads, slots).ok());
  std::mt19937 rng(9);
  std::normal_distribution<float> g(0.f, 1.f);
  std::vector<uint16_t> qh(static_cast<size_t>(B) * q_heads * d);
  for (auto& x : qh) x = kernels::FloatToBf16(g(rng));
  // Slots 0..599 random; slot 600 + b * 24 + i of head h: row (b, h)'s strong candidate i, its
  // keys twice the mean of the group's queries.
  std::vector<HeadSlot> dst;
  std::vector<uint8_t> bytes;
  auto put = [&](float x) {
    const uint16_t v = kernels::FloatToBf16(x);
    bytes.push_back(static_cast<uint8_t>(v & 0xff));
    bytes.push_back(static_cast<uint8_t>(v >> 8));
  };
  for (int h = 0; h < kv; ++h) {
    for (int s = 0; s < slots; ++s) {
      dst.push_back({h, s});
      const int b = (s - 600) / 24;
      for (int t = 0; t < 2 * P; ++t) {  // K rows, then V rows
        for (int i = 0; i < d; ++i) {
          if (s >= 600 && b < B && t < P) {
            float mean = 0;
            for (int gq = 0; gq < group; ++gq) {
              mean += kernels::Bf16ToFloat(
                  qh[(static_cast<size_t>(b) * q_heads + h * group + gq) * d + i]);
            }
            put(2.f * mean / group + 0.1f * g(rng));
          } else {
            put(g(rng));
          }
        }
      }
    }
  }
  ASSERT_TRUE((*cuda)->WriteHeads(dst, bytes).ok());
  ASSERT_TRUE(cpu->WriteHeads(dst, bytes).ok());
  MassAttendRequest req;
  req.indptr = {0};
  req.out_indptr = {0};
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < kv; ++h) {
      const int r = b * kv + h;
      int32_t keep = 5, need = 10 + r % 8, n_cand = 300;
      if (r == 4) keep = 0;              // nothing kept
      if (r == 7) n_cand = 0, need = 0;  // a row that chooses nothing (a retrieval's row)
      if (r == 9) need = 0;              // candidates scored, none taken
      for (int i = 0; i < keep; ++i) {
        req.slots.push_back(static_cast<int32_t>(rng() % 600));
        req.page_len.push_back(i == keep - 1 ? 1 + static_cast<int32_t>(rng() % P) : P);
      }
      std::vector<int32_t> cand;
      for (int i = 0; i < n_cand; ++i) cand.push_back(static_cast<int32_t>(rng() % 600));
      for (int i = 0; i < need && n_cand > 0; ++i) {
        cand[rng() % cand.size()] = 600 + b * 24 + i;  // may overwrite an earlier strong one
      }
      int32_t strong = 0;
      for (int32_t c : cand) strong += c >= 600 ? 1 : 0;
      need = std::min(need, strong);  // exactly the strong ones are the best
      req.slots.insert(req.slots.end(), cand.begin(), cand.end());
      req.page_len.insert(req.page_len.end(), cand.size(), P);
      req.indptr.push_back(static_cast<int32_t>(req.slots.size()));
      req.keep.push_back(keep);
      req.split.push_back(keep / 2);
      req.need.push_back(need);
      req.out_indptr.push_back(req.out_indptr.back() + keep + std::min(need, n_cand));
      req.last_page_len.push_back(keep > 0 ? req.page_len[req.indptr[r] + keep - 1] : P);
    }
  }
  Tensor q_gpu(Device::kCuda, DType::kBf16, qh, B, q_heads, d);
  Tensor q_cpu(Device::kCpu, DType::kBf16, qh, B, q_heads, d);
  Tensor o_gpu(Device::kCuda, DType::kBf16, std::vector<uint16_t>(qh.size(), 0), B, q_heads, d);
  Tensor o_cpu(Device::kCpu, DType::kBf16, std::vector<uint16_t>(qh.size(), 0), B, q_heads, d);
  // With the late reads' host copies: q (contiguous: inside the mass kernel) and a strided view
  // of q's first half of heads (not contiguous: copied on the stream after the step).
  MassAttendRequest copying = req;
  TensorView half = q_gpu.view();
  half.shape[1] = q_heads / 2;
  copying.host_copies = {{q_gpu.view(), 20}, {half, 21}};
  ASSERT_TRUE((*cuda)->AttendBestByMass(q_gpu.view(), copying, 3, o_gpu.view()).ok());
  ASSERT_TRUE(cpu->AttendBestByMass(q_cpu.view(), req, 3, o_cpu.view()).ok());
  auto q_back = (*cuda)->FinishCopyToHost(20);
  ASSERT_TRUE(q_back.ok());
  EXPECT_EQ(std::vector<uint16_t>(q_back->begin(), q_back->end()), qh);
  auto half_back = (*cuda)->FinishCopyToHost(21);
  ASSERT_TRUE(half_back.ok());
  std::vector<uint16_t> want_half;
  for (int64_t b = 0; b < B; ++b) {
    want_half.insert(want_half.end(), qh.begin() + b * q_heads * d,
                     qh.begin() + b * q_heads * d + q_heads / 2 * d);
  }
  EXPECT_EQ(std::vector<uint16_t>(half_back->begin(), half_back->end()), want_half);
  auto got = (*cuda)->FinishChoices(3);
  auto want = cpu->FinishChoices(3);
  ASSERT_TRUE(got.ok() && want.ok());
  const std::vector<int32_t> first_choice(got->begin(), got->end());
  EXPECT_EQ(first_choice, std::vector<int32_t>(want->begin(), want->end()));
  const std::vector<uint16_t> a = o_gpu.Read(), b = o_cpu.Read();
  for (size_t i = 0; i < a.size(); ++i) {
    const double x = kernels::Bf16ToFloat(a[i]), y = kernels::Bf16ToFloat(b[i]);
    ASSERT_NEAR(x, y, 1e-2 + 2e-2 * std::abs(y)) << "element " << i;
  }
  // The candidates stored on both backends, then named instead of listed: the same choice.
  MassAttendRequest saving = req, named = req;
  const int rows = B * kv;
  saving.save.assign(rows, -1);
  saving.list.assign(rows, -1);
  saving.list_off.assign(rows, 0);
  saving.list_count.assign(rows, 0);
  named.slots.clear();
  named.page_len.clear();
  named.indptr = {0};
  named.save.assign(rows, -1);
  named.list.assign(rows, -1);
  named.list_off.assign(rows, 0);
  named.list_count.assign(rows, 0);
  for (int r = 0; r < rows; ++r) {
    const int32_t first = req.indptr[r], keep = req.keep[r], n = req.indptr[r + 1] - first;
    named.slots.insert(named.slots.end(), req.slots.begin() + first,
                       req.slots.begin() + first + keep);
    named.page_len.insert(named.page_len.end(), req.page_len.begin() + first,
                          req.page_len.begin() + first + keep);
    named.indptr.push_back(static_cast<int32_t>(named.slots.size()));
    if (n > keep) {
      saving.save[r] = 100 + r;
      named.list[r] = 100 + r;
      named.list_count[r] = n - keep;
    }
  }
  ASSERT_TRUE((*cuda)->AttendBestByMass(q_gpu.view(), saving, 3, o_gpu.view()).ok());
  ASSERT_TRUE(cpu->AttendBestByMass(q_cpu.view(), saving, 3, o_cpu.view()).ok());
  ASSERT_TRUE((*cuda)->AttendBestByMass(q_gpu.view(), named, 5, o_gpu.view()).ok());
  ASSERT_TRUE(cpu->AttendBestByMass(q_cpu.view(), named, 5, o_cpu.view()).ok());
  auto got_named = (*cuda)->FinishChoices(5);
  auto want_named = cpu->FinishChoices(5);
  ASSERT_TRUE(got_named.ok() && want_named.ok());
  EXPECT_EQ(std::vector<int32_t>(got_named->begin(), got_named->end()),
            std::vector<int32_t>(want_named->begin(), want_named->end()));
  EXPECT_EQ(std::vector<int32_t>(got_named->begin(), got_named->end()),
            first_choice);  // a row's entries are numbered alike, listed or named
  const std::vector<uint16_t> a2 = o_gpu.Read(), b2 = o_cpu.Read();
  EXPECT_EQ(a2, a);  // the same table as the listed request on the device
  for (size_t i = 0; i < a2.size(); ++i) {
    const double x = kernels::Bf16ToFloat(a2[i]), y = kernels::Bf16ToFloat(b2[i]);
    ASSERT_NEAR(x, y, 1e-2 + 2e-2 * std::abs(y)) << "element " << i;
  }
  // A request that does not add up is refused before anything runs.
  MassAttendRequest bad = req;
  bad.out_indptr.back() += 1;
  EXPECT_EQ((*cuda)->AttendBestByMass(q_gpu.view(), bad, 3, o_gpu.view()).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*cuda)->FinishChoices(4).status().code(), absl::StatusCode::kFailedPrecondition);
}

// One layer's fetch of two whole 9,600-token contexts (2 x 600 pages x 2 KV heads) goes to the
// device in four chunks, each leased and gathered while the next is leased, the verdicts read once
// after the last. A head-page corrupted in the arena after the worker took its checksums, in the
// last chunk, is never attended: its sequence fails with DataLoss and gets zeros, the other gets
// exactly what it gets with nothing corrupted.
struct CorruptRun {
  std::vector<uint16_t> out;
  WorkerStepStats stats;
};

CorruptRun RunWithCorruption(bool corrupt, std::unique_ptr<WorkerBackend> backend) {
  const PageLayout layout{DType::kBf16, 2, 64, 16};
  const int kv = 2, q_heads = 4, dim = 64;
  const int64_t prompt = 16 * 600 + 1;  // 600 closed pages and an open one
  std::string dir;
  std::unique_ptr<Store> store = OpenTempStore(layout, 1400, 64, dir);
  DecodeWorkerOptions o;
  o.layout = layout;
  o.q_heads = q_heads;
  o.num_layers = 1;
  o.policy = retriever::Policy::kQuest;
  o.selector.budget_tokens = 2 * prompt;  // the whole context
  o.pool_slots_per_head = 1400;
  const Device dev = backend->device();
  auto writer = DecodeWorker::Create(store.get(), MakeCpuWorkerBackend(), o);
  EXPECT_TRUE(writer.ok()) << writer.status();
  std::mt19937 rng(5);
  std::normal_distribution<float> g(0.f, 1.f);
  auto random = [&](size_t n) {
    std::vector<uint16_t> x(n);
    for (auto& e : x) e = kernels::FloatToBf16(g(rng));
    return x;
  };
  std::vector<std::vector<int32_t>> prompts(2, std::vector<int32_t>(prompt));
  for (int b = 0; b < 2; ++b) {
    for (auto& tok : prompts[b]) tok = static_cast<int32_t>(rng() % 5000);
    auto opened = (*writer)->Open(prompts[b]);
    EXPECT_TRUE(opened.ok());
    Tensor k(Device::kCpu, DType::kBf16, random(prompt * kv * dim), prompt, kv, dim);
    Tensor v(Device::kCpu, DType::kBf16, random(prompt * kv * dim), prompt, kv, dim);
    EXPECT_TRUE((*writer)->Prefill(opened->id, 0, k.view(), v.view()).ok());
  }
  EXPECT_TRUE((*writer)->Flush().ok());
  // A fresh worker on the backend finds both contexts in the store (checksums taken at Open).
  auto w = DecodeWorker::Create(store.get(), std::move(backend), o);
  EXPECT_TRUE(w.ok()) << w.status();
  std::vector<SequenceId> ids;
  for (int b = 0; b < 2; ++b) {
    auto opened = (*w)->Open(prompts[b]);
    EXPECT_TRUE(opened.ok());
    EXPECT_EQ(opened->cached_tokens, prompt - 1);  // the last token is the caller's
    Tensor k(dev, DType::kBf16, random(kv * dim), 1, kv, dim);
    Tensor v(dev, DType::kBf16, random(kv * dim), 1, kv, dim);
    EXPECT_TRUE((*w)->Prefill(opened->id, 0, k.view(), v.view()).ok());
    ids.push_back(opened->id);
  }
  if (corrupt) {  // head 1 of page 598 of the second sequence: in the last chunk
    const std::vector<PageKey> keys = ChainPageKeys(prompts[1], 16, {o.model_id, 0, o.salt});
    auto lease = store->AcquireRead(o.tenant, keys[598]);
    EXPECT_TRUE(lease.ok()) << lease.status();
    store->HostArenaInfo().base[lease->arena_offset + layout.PageBytes() / 4 + 3] ^= 0x10;
    EXPECT_TRUE(store->ReleaseRead(lease->lease_id).ok());
  }
  auto plan = (*w)->Plan(ids, {7, 8});
  EXPECT_TRUE(plan.ok()) << plan.status();
  Tensor q(dev, DType::kBf16, random(2 * q_heads * dim), 2, q_heads, dim);
  Tensor k(dev, DType::kBf16, random(2 * kv * dim), 2, kv, dim);
  Tensor v(dev, DType::kBf16, random(2 * kv * dim), 2, kv, dim);
  Tensor out(dev, DType::kBf16, std::vector<uint16_t>(2 * q_heads * dim, 1), 2, q_heads, dim);
  EXPECT_TRUE((*w)->Attend(*plan, 0, q.view(), k.view(), v.view(), out.view()).ok());
  CorruptRun r;
  r.out = out.Read();
  auto stats = (*w)->Finish(*plan);
  EXPECT_TRUE(stats.ok()) << stats.status();
  if (stats.ok()) r.stats = *stats;
  w->reset();
  writer->reset();
  store.reset();
  std::filesystem::remove_all(dir);
  return r;
}

void ExpectCorruptionCaught(const std::function<std::unique_ptr<WorkerBackend>()>& make) {
  const CorruptRun clean = RunWithCorruption(false, make());
  const CorruptRun bad = RunWithCorruption(true, make());
  ASSERT_EQ(clean.stats.sequence_status.size(), 2u);
  ASSERT_EQ(bad.stats.sequence_status.size(), 2u);
  EXPECT_EQ(clean.stats.fetched_head_pages, 2 * 600 * 2);
  EXPECT_EQ(bad.stats.fetched_head_pages, 2 * 600 * 2);
  EXPECT_TRUE(clean.stats.sequence_status[1].ok()) << clean.stats.sequence_status[1];
  EXPECT_EQ(clean.stats.verify_failures, 0);
  EXPECT_EQ(bad.stats.verify_failures, 1);
  EXPECT_TRUE(bad.stats.sequence_status[0].ok()) << bad.stats.sequence_status[0];
  EXPECT_EQ(bad.stats.sequence_status[1].code(), absl::StatusCode::kDataLoss)
      << bad.stats.sequence_status[1];
  const size_t row = 4 * 64;
  ASSERT_EQ(bad.out.size(), 2 * row);
  for (size_t i = 0; i < row; ++i) {
    ASSERT_EQ(bad.out[i], clean.out[i]) << i;  // the other sequence: unchanged
    ASSERT_EQ(bad.out[row + i], 0) << i;       // the failed one: zeros, never wrong bytes
  }
  bool nonzero = false;
  for (size_t i = 0; i < row; ++i) nonzero = nonzero || clean.out[row + i] != 0;
  EXPECT_TRUE(nonzero);
}

TEST(CudaWorkerBackendTest, ACorruptHeadPageInTheLastChunkOfAFetchIsNeverAttended) {
  auto probe = MakeCudaWorkerBackend();
  if (!probe.ok()) {
    ASSERT_TRUE(absl::IsUnavailable(probe.status())) << probe.status();
    GTEST_SKIP() << probe.status();
  }
  probe->reset();
  ExpectCorruptionCaught([] { return std::move(*MakeCudaWorkerBackend()); });
}

// The same on the CPU backend (CI): the worker's chunked fetch, verdicts and fallback.
TEST(CpuWorkerBackendTest, ACorruptHeadPageInTheLastChunkOfAFetchIsNeverAttended) {
  ExpectCorruptionCaught([] { return MakeCpuWorkerBackend(); });
}

}  // namespace
}  // namespace pagoda
