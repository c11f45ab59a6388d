// e2e_bench --mode diffusion: DiffusionSession (FreeCache-style block denoising) over one trace
// layer. See diffusion_mode.cc for what is simulated and measured.
#ifndef PAGODA_BENCH_E2E_DIFFUSION_MODE_H_
#define PAGODA_BENCH_E2E_DIFFUSION_MODE_H_

#include <cstdint>
#include <string>

#include "trace.h"

namespace pagoda::bench {

struct DiffusionArgs {
  std::string ssd_dir = "/tmp/pagoda_e2e_ssd";
  std::string policy = "quest";
  int64_t budget_tokens = 512;  // per KV head over the cached part; 0: dense (every cached page)
  int pool_pages = 0;           // 0: enough for one step, x2 when sparse
  int host_pages = 128;
  int sink_pages = 1;
  int window_pages = 1;
  int block_tokens = 32;
  int denoise_steps = 4;  // per block
  int blocks = 8;         // generated blocks, from the first traced query on
  float noise = 0.5f;     // masked tokens' K/V: true + noise x rms x N(0,1), fading over the steps
  std::string unmask = "ltr";  // order tokens become final within a block: ltr | random
};

// Runs the mode over one (doc, layer); prints one result line. Returns a process exit code.
int RunDiffusionLayer(const DiffusionArgs& a, const TraceFiles& files);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_E2E_DIFFUSION_MODE_H_
