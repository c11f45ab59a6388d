// A device-timeline recorder for any CUDA program, loaded by the driver through CUPTI's injection
// hook (no change to the program, no Nsight needed on the GPU machine):
//
//   CUDA_INJECTION64_PATH=libpagoda_kernel_trace.so PAGODA_TRACE_OUT=trace.txt ./worker_layer_bench
//
// Every kernel, memcpy and memset the program runs on the GPU, and every CUDA runtime call its
// host threads make, is written to PAGODA_TRACE_OUT at exit, one per line, in time order:
//
//   <kind> <start ns> <end ns> <stream or thread id> <name>
//
// kind is K (kernel), C (memcpy; name is its direction and byte count), S (memset) or R (runtime
// call on the host). Times are CUPTI's, one clock for host and device. bench/gpu/trace_summary.py
// turns the file into per-kernel time, device busy / idle time and host-call time per step.
#include <cupti.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>
#include <vector>

namespace {

constexpr size_t kBufferBytes = 8 << 20;

struct Record {
  char kind;
  uint64_t start, end;
  uint32_t where;
  std::string name;
};

std::mutex g_mu;
std::vector<Record> g_records;

void CUPTIAPI BufferRequested(uint8_t** buffer, size_t* size, size_t* max_records) {
  *buffer = static_cast<uint8_t*>(std::aligned_alloc(8, kBufferBytes));
  *size = kBufferBytes;
  *max_records = 0;
}

const char* CopyKind(uint8_t kind) {
  switch (kind) {
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOD:
      return "HtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOH:
      return "DtoH";
    case CUPTI_ACTIVITY_MEMCPY_KIND_DTOD:
      return "DtoD";
    case CUPTI_ACTIVITY_MEMCPY_KIND_HTOH:
      return "HtoH";
    default:
      return "other";
  }
}

void CUPTIAPI BufferCompleted(CUcontext, uint32_t, uint8_t* buffer, size_t, size_t valid) {
  std::vector<Record> got;
  CUpti_Activity* rec = nullptr;
  while (cuptiActivityGetNextRecord(buffer, valid, &rec) == CUPTI_SUCCESS) {
    switch (rec->kind) {
      case CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL:
      case CUPTI_ACTIVITY_KIND_KERNEL: {
        auto* k = reinterpret_cast<CUpti_ActivityKernel10*>(rec);
        got.push_back({'K', k->start, k->end, k->streamId, k->name ? k->name : "?"});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMCPY: {
        auto* c = reinterpret_cast<CUpti_ActivityMemcpy6*>(rec);
        got.push_back({'C', c->start, c->end, c->streamId,
                       std::string(CopyKind(c->copyKind)) + ":" + std::to_string(c->bytes)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_MEMSET: {
        auto* m = reinterpret_cast<CUpti_ActivityMemset4*>(rec);
        got.push_back({'S', m->start, m->end, m->streamId, "memset:" + std::to_string(m->bytes)});
        break;
      }
      case CUPTI_ACTIVITY_KIND_RUNTIME: {
        auto* a = reinterpret_cast<CUpti_ActivityAPI*>(rec);
        const char* name = nullptr;
        if (cuptiGetCallbackName(CUPTI_CB_DOMAIN_RUNTIME_API, a->cbid, &name) != CUPTI_SUCCESS) {
          name = "?";
        }
        got.push_back({'R', a->start, a->end, a->threadId, name ? name : "?"});
        break;
      }
      default:
        break;
    }
  }
  std::free(buffer);
  std::lock_guard<std::mutex> lock(g_mu);
  g_records.insert(g_records.end(), got.begin(), got.end());
}

void Flush() {
  cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
  const char* path = std::getenv("PAGODA_TRACE_OUT");
  std::FILE* f = std::fopen(path != nullptr ? path : "pagoda_trace.txt", "w");
  if (f == nullptr) {
    std::perror("kernel_trace: open");
    return;
  }
  std::lock_guard<std::mutex> lock(g_mu);
  std::sort(g_records.begin(), g_records.end(),
            [](const Record& a, const Record& b) { return a.start < b.start; });
  for (const Record& r : g_records) {
    std::fprintf(f, "%c %llu %llu %u %s\n", r.kind, static_cast<unsigned long long>(r.start),
                 static_cast<unsigned long long>(r.end), r.where, r.name.c_str());
  }
  std::fclose(f);
  std::fprintf(stderr, "kernel_trace: %zu records\n", g_records.size());
}

}  // namespace

// Called by the CUDA driver when CUDA_INJECTION64_PATH names this library.
extern "C" int InitializeInjection() {
  if (cuptiActivityRegisterCallbacks(BufferRequested, BufferCompleted) != CUPTI_SUCCESS) {
    std::fprintf(stderr, "kernel_trace: cuptiActivityRegisterCallbacks failed\n");
    return 0;
  }
  const CUpti_ActivityKind kinds[] = {CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL,
                                      CUPTI_ACTIVITY_KIND_MEMCPY, CUPTI_ACTIVITY_KIND_MEMSET,
                                      CUPTI_ACTIVITY_KIND_RUNTIME};
  for (CUpti_ActivityKind k : kinds) {
    if (cuptiActivityEnable(k) != CUPTI_SUCCESS) {
      std::fprintf(stderr, "kernel_trace: cannot enable activity kind %d\n", static_cast<int>(k));
    }
  }
  std::atexit(Flush);
  return 1;
}
