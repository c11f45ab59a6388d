#include "trace.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <regex>

#include "absl/strings/str_cat.h"
#include "npy.h"

namespace pagoda::bench {

absl::StatusOr<std::vector<TraceFiles>> FindTraces(const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (ec) return absl::NotFoundError(absl::StrCat("cannot read trace directory ", dir));
  const std::regex pattern(R"(doc(.+)_L(\d+)_q\.npy)");
  std::vector<TraceFiles> out;
  for (const fs::directory_entry& e : it) {
    const std::string name = e.path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, pattern)) continue;
    TraceFiles f;
    f.doc = m[1];
    f.layer = std::stoi(m[2]);
    const std::string stem =
        (fs::path(dir) / absl::StrCat("doc", f.doc, "_L", m[2].str())).string();
    f.q_path = stem + "_q.npy";
    f.k_path = stem + "_k.npy";
    if (!fs::exists(f.k_path)) continue;
    if (fs::exists(stem + "_v.npy")) f.v_path = stem + "_v.npy";
    out.push_back(f);
  }
  if (out.empty()) return absl::NotFoundError(absl::StrCat("no doc*_L*_q.npy + _k.npy in ", dir));
  std::sort(out.begin(), out.end(), [](const TraceFiles& a, const TraceFiles& b) {
    return a.doc != b.doc ? a.doc < b.doc : a.layer < b.layer;
  });
  return out;
}

absl::StatusOr<TraceLayer> LoadTrace(const TraceFiles& files) {
  TraceLayer t;
  t.doc = files.doc;
  t.layer = files.layer;
  auto bad = [&](const std::string& path, const std::string& why) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", why));
  };
  auto load = [&](const std::string& path, std::vector<uint16_t>* out,
                  std::vector<int64_t>* shape) -> absl::Status {
    auto a = ReadNpy(path);
    if (!a.ok()) return a.status();
    if (a->descr != "<f2" || a->shape.size() != 3) return bad(path, "expected a 3-D float16 array");
    out->resize(a->elements());
    std::memcpy(out->data(), a->data.data(), a->data.size());
    *shape = a->shape;
    return absl::OkStatus();
  };
  std::vector<int64_t> qs, ks, vs;
  if (absl::Status s = load(files.q_path, &t.q, &qs); !s.ok()) return s;
  if (absl::Status s = load(files.k_path, &t.k, &ks); !s.ok()) return s;
  if (!files.v_path.empty()) {
    if (absl::Status s = load(files.v_path, &t.v, &vs); !s.ok()) return s;
    if (vs != ks) return bad(files.v_path, "shape differs from k");
  }
  t.q_heads = static_cast<int>(qs[0]);
  t.queries = qs[1];
  t.kv_heads = static_cast<int>(ks[0]);
  t.tokens = ks[1];
  t.head_dim = static_cast<int>(ks[2]);
  if (qs[2] != ks[2]) return bad(files.q_path, "head_dim differs from k");
  if (t.kv_heads < 1 || t.q_heads % t.kv_heads != 0) {
    return bad(files.q_path, "q heads are not a multiple of kv heads");
  }
  if (t.queries < 1 || t.queries > t.tokens) return bad(files.q_path, "more queries than tokens");
  return t;
}

}  // namespace pagoda::bench
