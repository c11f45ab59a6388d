#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cli.h"
#include "table.h"

namespace pagoda::cli {

std::string Bytes(double b) {
  const char* units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  int u = 0;
  while (b >= 1024 && u < 4) {
    b /= 1024;
    ++u;
  }
  return u == 0 ? absl::StrFormat("%.0f B", b) : absl::StrFormat("%.1f %s", b, units[u]);
}

void FillPage(const PageKey& key, uint8_t* out, size_t size) {
  uint64_t x = key.hi ^ (key.lo * 0x9E3779B97F4A7C15ULL) ^ 0x5bd1e995ULL;
  size_t i = 0;
  for (; i + 8 <= size; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    memcpy(out + i, &x, 8);
  }
  for (; i < size; ++i) out[i] = static_cast<uint8_t>(x >> (8 * (i % 8)));
}

LayoutId LayoutForBytes(Client& client, uint64_t page_bytes) {
  absl::StatusOr<ServiceHealth> h = client.Health();
  if (!h.ok()) return 0;
  for (const std::string& l : h->layouts) {
    uint32_t id = 0;
    if (!absl::SimpleAtoi(l.substr(0, l.find(':')), &id)) continue;
    absl::StatusOr<PageLayout> layout = PageLayout::FromId(id);
    if (layout.ok() && layout->PageBytes() == page_bytes) return id;
  }
  return 0;
}

int Status(Client& client) {
  absl::StatusOr<ServiceHealth> h = client.Health();
  if (!h.ok()) {
    std::cerr << "pagoda: " << h.status() << "\n";
    return 1;
  }
  Table t({"field", "value"}, false);
  t.Add({"serving", h->serving ? "yes" : "NO (draining)"});
  t.Add({"version", h->version});
  t.Add({"data path (this client)", client.data_path()});
  t.Add({"local socket", h->local_socket.empty() ? "off" : h->local_socket});
  t.Add({"host arena", Bytes(double(h->arena_bytes))});
  t.Add({"http port (/metrics)", h->http_port ? std::to_string(h->http_port) : "off"});
  for (const std::string& l : h->layouts) t.Add({"layout", l});
  std::cout << t.Render();
  return Stats(client);
}

int Stats(Client& client) {
  absl::StatusOr<ServiceStats> s = client.Stats();
  if (!s.ok()) {
    std::cerr << "pagoda: " << s.status() << "\n";
    return 1;
  }
  Table t({"tier", "capacity", "used", "used %", "pages", "hits", "promotions", "evictions"});
  for (const TierUsage& u : s->tiers) {
    const double pct =
        u.capacity_bytes ? 100.0 * double(u.used_bytes) / double(u.capacity_bytes) : 0.0;
    t.Add({u.name, u.capacity_bytes ? Bytes(double(u.capacity_bytes)) : "unbounded",
           Bytes(double(u.used_bytes)), absl::StrFormat("%.1f", pct), std::to_string(u.pages),
           std::to_string(u.hits), std::to_string(u.promotions), std::to_string(u.evictions)});
  }
  std::cout << "\n" << t.Render() << "\n";
  Table g({"store", "value"}, false);
  g.Add({"pages", std::to_string(s->pages)});
  g.Add({"misses", std::to_string(s->misses)});
  g.Add({"active leases", std::to_string(s->active_leases)});
  g.Add({"pinned", Bytes(double(s->pinned_bytes))});
  g.Add({"checksum failures", std::to_string(s->checksum_failures)});
  g.Add({"local clients", std::to_string(s->local_clients)});
  g.Add({"bytes in (gRPC)", Bytes(double(s->bytes_in))});
  g.Add({"bytes out (gRPC)", Bytes(double(s->bytes_out))});
  g.Add({"tenant quota (host)",
         s->tenant_quota_bytes ? Bytes(double(s->tenant_quota_bytes)) : "unlimited"});
  g.Add({"uptime", absl::StrFormat("%.0f s", s->uptime_s)});
  std::cout << g.Render();
  return 0;
}

// ---- Files as chains of pages ------------------------------------------------------------------
// A file named N is stored as data pages keyed by a chain over the model id "file:N", followed by
// a manifest page (magic, file size, XXH3 of the file) keyed as the chain's head; the manifest is
// written last, so a file is visible only once all its pages are.
namespace {

constexpr char kManifestMagic[8] = {'P', 'G', 'D', 'F', 'I', 'L', 'E', '1'};

struct FileKeys {
  PageKey manifest;
  std::vector<PageKey> pages;
};

FileKeys KeysForFile(const std::string& name, size_t pages) {
  const std::string model = "file:" + name;
  PageKeyExtra extra{model, 0, ""};
  FileKeys k;
  k.manifest = ChainPageKey(PageKey{}, {}, extra);
  PageKey parent = k.manifest;
  for (size_t i = 0; i < pages; ++i) {
    const int32_t idx = static_cast<int32_t>(i);
    parent = ChainPageKey(parent, absl::MakeConstSpan(&idx, 1), extra);
    k.pages.push_back(parent);
  }
  return k;
}

}  // namespace

int PutFile(Client& client, const std::string& path, const std::string& name, LayoutId layout_id) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::cerr << "pagoda: cannot read " << path << "\n";
    return 1;
  }
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string data = ss.str();
  absl::StatusOr<PageLayout> layout = PageLayout::FromId(layout_id);
  if (!layout.ok()) {
    std::cerr << "pagoda: " << layout.status() << "\n";
    return 1;
  }
  const size_t pb = layout->PageBytes();
  const size_t n = (data.size() + pb - 1) / pb;
  FileKeys keys = KeysForFile(name, n);
  std::vector<uint8_t> buf(n * pb, 0);
  memcpy(buf.data(), data.data(), data.size());
  std::vector<PutPage> puts;
  for (size_t i = 0; i < n; ++i) {
    puts.push_back({keys.pages[i], layout_id, absl::MakeConstSpan(buf.data() + i * pb, pb)});
  }
  std::vector<uint8_t> manifest(pb, 0);
  const uint64_t size = data.size();
  const uint64_t sum = PageChecksum(data.data(), data.size());
  memcpy(manifest.data(), kManifestMagic, 8);
  memcpy(manifest.data() + 8, &size, 8);
  memcpy(manifest.data() + 16, &sum, 8);
  std::vector<absl::Status> st = client.Put(puts);
  for (size_t i = 0; i < st.size(); ++i) {
    if (!st[i].ok() && !absl::IsAlreadyExists(st[i])) {
      std::cerr << "pagoda: page " << i << ": " << st[i] << "\n";
      return 1;
    }
  }
  std::vector<absl::Status> ms = client.Put({{keys.manifest, layout_id, manifest}});
  if (!ms[0].ok()) {
    std::cerr << "pagoda: manifest: " << ms[0] << "\n";
    return 1;
  }
  std::cout << "stored " << name << ": " << Bytes(double(size)) << " in " << n << " pages of "
            << layout->ToString() << " via the " << client.data_path() << " path\n";
  return 0;
}

int GetFile(Client& client, const std::string& name, const std::string& out_path) {
  FileKeys head = KeysForFile(name, 0);
  // The manifest has the layout's size; try each layout the server accepts.
  absl::StatusOr<ServiceHealth> h = client.Health();
  if (!h.ok()) {
    std::cerr << "pagoda: " << h.status() << "\n";
    return 1;
  }
  uint64_t largest = 0;
  for (const std::string& l : h->layouts) {
    uint32_t id = 0;
    absl::StatusOr<PageLayout> layout = absl::SimpleAtoi(l.substr(0, l.find(':')), &id)
                                            ? PageLayout::FromId(id)
                                            : absl::InvalidArgumentError("bad layout");
    if (layout.ok()) largest = std::max<uint64_t>(largest, layout->PageBytes());
  }
  std::vector<uint8_t> manifest(largest);
  std::vector<GetResult> r = client.Get({{head.manifest, absl::MakeSpan(manifest)}});
  if (!r[0].status.ok()) {
    std::cerr << "pagoda: " << name << ": " << r[0].status << "\n";
    return 1;
  }
  if (memcmp(manifest.data(), kManifestMagic, 8) != 0) {
    std::cerr << "pagoda: " << name << ": not a file manifest\n";
    return 1;
  }
  uint64_t size = 0, sum = 0;
  memcpy(&size, manifest.data() + 8, 8);
  memcpy(&sum, manifest.data() + 16, 8);
  const uint64_t pb = r[0].size;
  const size_t n = (size + pb - 1) / pb;
  FileKeys keys = KeysForFile(name, n);
  std::vector<uint8_t> buf(n * pb);
  std::vector<GetPage> gets;
  for (size_t i = 0; i < n; ++i)
    gets.push_back({keys.pages[i], absl::MakeSpan(buf.data() + i * pb, pb)});
  std::vector<GetResult> got = client.Get(gets);
  for (size_t i = 0; i < n; ++i) {
    if (!got[i].status.ok()) {
      std::cerr << "pagoda: page " << i << ": " << got[i].status << "\n";
      return 1;
    }
  }
  if (PageChecksum(buf.data(), size) != sum) {
    std::cerr << "pagoda: " << name << ": file checksum mismatch\n";
    return 1;
  }
  std::ofstream out(out_path, std::ios::binary);
  out.write(reinterpret_cast<const char*>(buf.data()), static_cast<std::streamsize>(size));
  if (!out) {
    std::cerr << "pagoda: cannot write " << out_path << "\n";
    return 1;
  }
  std::cout << "wrote " << out_path << ": " << Bytes(double(size)) << " (checksum verified)\n";
  return 0;
}

}  // namespace pagoda::cli
