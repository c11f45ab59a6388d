// Opens an embedded store and a CPU decode worker through the installed package.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "pagoda/client/decode_worker.h"

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  pagoda::DecodeWorkerOptions o;
  o.layout = pagoda::PageLayout{pagoda::DType::kFp16, 2, 16, 4};
  o.q_heads = 4;
  o.pool_slots_per_head = 16;
  pagoda::StoreOptions so;
  so.layouts = {o.layout};
  so.host_capacity_bytes = 1 << 20;
  so.data_dir = argv[1];
  auto store = pagoda::Store::Open(so);
  if (!store.ok()) return 1;
  auto w = pagoda::DecodeWorker::Create(store->get(), pagoda::MakeCpuWorkerBackend(), o);
  if (!w.ok()) return 1;
  auto seq = (*w)->Open({1, 2, 3});
  std::printf("consumer: opened sequence %llu\n", static_cast<unsigned long long>(seq->id));
  return seq.ok() ? 0 : 1;
}
