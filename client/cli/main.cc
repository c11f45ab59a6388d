// `pagoda`: the command-line client of pagodad.
//   pagoda status | stats | put FILE [--name N] | get NAME -o FILE | bench | demo
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli.h"

int main(int argc, char** argv) {
  CLI::App app{"pagoda: command-line client of the Pagoda KV-cache store"};
  app.require_subcommand(1);
  pagoda::ClientOptions o;
  bool remote = false, local = false;
  double timeout_s = 30;
  app.add_option("--target", o.target, "pagodad gRPC address")->capture_default_str();
  app.add_option("--tenant", o.tenant, "tenant to act as")->capture_default_str();
  app.add_option("--token", o.token, "bearer token (or env PAGODA_TOKEN)")->envname("PAGODA_TOKEN");
  app.add_flag("--remote", remote, "move bytes over gRPC even on pagodad's machine");
  app.add_flag("--local", local, "require the local zero-copy path");
  app.add_option("--tls-ca", o.tls_ca, "PEM CA of the server's certificate (enables TLS)");
  app.add_option("--tls-cert", o.tls_cert, "PEM client certificate (mTLS)");
  app.add_option("--tls-key", o.tls_key, "PEM client key (mTLS)");
  app.add_option("--timeout-s", timeout_s, "deadline of each call in seconds")
      ->capture_default_str();

  CLI::App* status = app.add_subcommand("status", "server health, layouts and tier usage");
  CLI::App* stats = app.add_subcommand("stats", "tier usage, hits and evictions as a table");
  std::string file, name, out;
  uint32_t layout = 0;
  CLI::App* put = app.add_subcommand("put", "store a file as a chain of pages");
  put->add_option("file", file, "file to store")->required();
  put->add_option("--name", name, "name to store it under (default: the file path)");
  put->add_option("--layout", layout, "layout id of the pages (default: the server's first)");
  CLI::App* get = app.add_subcommand("get", "fetch a file stored with put");
  get->add_option("name", name, "name it was stored under")->required();
  get->add_option("-o,--output", out, "where to write it")->required();
  pagoda::cli::BenchArgs bargs;
  uint64_t page_kib = 64;
  CLI::App* bench = app.add_subcommand("bench", "put/get throughput and latency, with progress");
  bench->add_option("--pages", bargs.pages, "pages in total")->capture_default_str();
  bench->add_option("--page-kib", page_kib, "page size in KiB (must match a layout)")
      ->capture_default_str();
  bench->add_option("--batch", bargs.batch, "pages per call")->capture_default_str();
  bench->add_option("--threads", bargs.threads, "client threads")->capture_default_str();
  pagoda::cli::DemoArgs dargs;
  CLI::App* demo = app.add_subcommand("demo", "prefill / decode / prefix-reuse demo workload");
  demo->add_option("--requests", dargs.requests, "requests")->capture_default_str();
  demo->add_option("--prompts", dargs.prompts, "shared system prompts")->capture_default_str();
  demo->add_option("--prompt-tokens", dargs.prompt_tokens, "tokens per shared prompt")
      ->capture_default_str();
  demo->add_option("--user-tokens", dargs.user_tokens, "own tokens per request")
      ->capture_default_str();
  demo->add_option("--layers", dargs.layers, "layers")->capture_default_str();
  demo->add_option("--decode-steps", dargs.decode_steps, "decode steps per request")
      ->capture_default_str();
  CLI11_PARSE(app, argc, argv);

  o.timeout = absl::Seconds(timeout_s);
  if (remote) o.data_path = pagoda::DataPathKind::kRemote;
  if (local) o.data_path = pagoda::DataPathKind::kLocal;
  if (*bench) {
    bargs.page_bytes = page_kib << 10;
    return pagoda::cli::Bench(o, bargs);
  }
  if (*demo) {
    if (dargs.prompts < 1 || dargs.requests < 0 || dargs.layers < 1 || dargs.prompt_tokens < 0 ||
        dargs.user_tokens < 0 || dargs.decode_steps < 0) {
      std::cerr << "pagoda demo: counts must be positive\n";
      return 2;
    }
    return pagoda::cli::Demo(o, dargs);
  }
  absl::StatusOr<std::unique_ptr<pagoda::Client>> client = pagoda::Client::Connect(o);
  if (!client.ok()) {
    std::cerr << "pagoda: " << client.status() << "\n";
    return 1;
  }
  if (*status) return pagoda::cli::Status(**client);
  if (*stats) return pagoda::cli::Stats(**client);
  if (*put) {
    if (layout == 0) layout = pagoda::PageLayout{}.Id();
    return pagoda::cli::PutFile(**client, file, name.empty() ? file : name, layout);
  }
  if (*get) return pagoda::cli::GetFile(**client, name, out);
  return 2;
}
