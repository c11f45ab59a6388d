// Subcommands of the `pagoda` CLI. Each returns the process exit code.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "pagoda/client/client.h"

namespace pagoda::cli {

int Status(Client& client);
int Stats(Client& client);
int PutFile(Client& client, const std::string& path, const std::string& name, LayoutId layout);
int GetFile(Client& client, const std::string& name, const std::string& out_path);

struct BenchArgs {
  uint64_t pages = 2048;
  uint64_t page_bytes = 64 << 10;  // rounded to a layout the server accepts
  int batch = 16;
  int threads = 1;
};
int Bench(const ClientOptions& options, const BenchArgs& args);

struct DemoArgs {
  int prompts = 4;           // distinct shared system prompts
  int requests = 32;         // requests, each = a shared prompt + its own user turn
  int prompt_tokens = 1024;  // tokens of each shared system prompt
  int user_tokens = 256;     // tokens of each request's own part
  int layers = 4;            // transformer layers stored
  int decode_steps = 8;      // decode-like reads of the sequence per request
  std::string model = "demo-llama-8b";
};
int Demo(const ClientOptions& options, const DemoArgs& args);

// Deterministic pseudo-random page bytes derived from the key (so reads can be checked).
void FillPage(const PageKey& key, uint8_t* out, size_t size);

// Layout id of the first layout the server accepts whose page is `page_bytes` long (0 if none).
LayoutId LayoutForBytes(Client& client, uint64_t page_bytes);
// "64.0 KiB", "1.5 GiB".
std::string Bytes(double bytes);

}  // namespace pagoda::cli
