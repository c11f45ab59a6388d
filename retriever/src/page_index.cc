#include "pagoda/retriever/page_index.h"

#include <faiss/IndexFlat.h>
#include <faiss/IndexHNSW.h>
#include <faiss/IndexIDMap.h>
#include <faiss/IndexIVFFlat.h>

#include <algorithm>
#include <cmath>
#include <exception>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"

namespace pagoda::retriever {
namespace {

using faiss_idx_t = faiss::Index::idx_t;

// The one place FAISS exceptions become statuses.
template <typename F>
absl::Status CallFaiss(const char* what, F&& f) {
  try {
    f();
    return absl::OkStatus();
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("FAISS ", what, " failed: ", e.what()));
  }
}

}  // namespace

struct PageIndex::Impl {
  PageIndexOptions options;
  absl::flat_hash_set<int64_t> live;

  // kFlat / kIvf: FAISS keeps the ids.
  std::unique_ptr<faiss::IndexFlatIP> flat;
  std::unique_ptr<faiss::IndexIDMap> flat_map;
  std::unique_ptr<faiss::IndexFlatIP> ivf_quantizer;
  std::unique_ptr<faiss::IndexIVFFlat> ivf;

  // kHnsw: graph position -> id, the vectors (for rebuilds), tombstoned positions.
  std::unique_ptr<faiss::IndexHNSWFlat> hnsw;
  std::vector<int64_t> hnsw_ids;
  std::vector<float> hnsw_vectors;
  std::vector<char> hnsw_dead;
  int64_t hnsw_dead_count = 0;

  absl::Status MakeHnsw() {
    return CallFaiss("HNSW create", [&] {
      hnsw = std::make_unique<faiss::IndexHNSWFlat>(options.dim, options.hnsw_m,
                                                    faiss::METRIC_INNER_PRODUCT);
      hnsw->hnsw.efSearch = options.hnsw_ef_search;
      hnsw->hnsw.efConstruction = std::max(40, options.hnsw_ef_search);
    });
  }

  // Rebuilds the graph from live vectors only.
  absl::Status CompactHnsw() {
    std::vector<int64_t> ids;
    std::vector<float> vecs;
    const size_t d = options.dim;
    for (size_t i = 0; i < hnsw_ids.size(); ++i) {
      if (hnsw_dead[i]) continue;
      ids.push_back(hnsw_ids[i]);
      vecs.insert(vecs.end(), hnsw_vectors.begin() + i * d, hnsw_vectors.begin() + (i + 1) * d);
    }
    auto fresh = std::move(hnsw);
    if (absl::Status s = MakeHnsw(); !s.ok()) {
      hnsw = std::move(fresh);
      return s;
    }
    if (!ids.empty()) {
      absl::Status s = CallFaiss(
          "HNSW rebuild", [&] { hnsw->add(static_cast<faiss_idx_t>(ids.size()), vecs.data()); });
      if (!s.ok()) {
        hnsw = std::move(fresh);
        return s;
      }
    }
    hnsw_ids = std::move(ids);
    hnsw_vectors = std::move(vecs);
    hnsw_dead.assign(hnsw_ids.size(), 0);
    hnsw_dead_count = 0;
    return absl::OkStatus();
  }

  absl::Status TrainIvf(absl::Span<const float> vectors) {
    const int64_t n = static_cast<int64_t>(vectors.size()) / options.dim;
    int nlist = options.ivf_nlist;
    if (nlist <= 0) {
      // sqrt(n) lists, but at least ~39 training points per list (FAISS's own minimum).
      nlist = static_cast<int>(std::sqrt(static_cast<double>(n)));
      nlist = std::max(1, std::min<int>(nlist, static_cast<int>(n / 39)));
    }
    if (nlist > n) {
      return absl::InvalidArgumentError(absl::StrCat("PageIndex: IVF with ", nlist,
                                                     " lists needs at least that many training "
                                                     "vectors, got ",
                                                     n));
    }
    return CallFaiss("IVF train", [&] {
      auto q = std::make_unique<faiss::IndexFlatIP>(options.dim);
      auto index = std::make_unique<faiss::IndexIVFFlat>(q.get(), options.dim, nlist,
                                                         faiss::METRIC_INNER_PRODUCT);
      index->cp.verbose = false;
      index->train(n, vectors.data());
      index->nprobe = std::min(options.ivf_nprobe, nlist);
      ivf_quantizer = std::move(q);
      ivf = std::move(index);
    });
  }
};

PageIndex::PageIndex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
PageIndex::~PageIndex() = default;

absl::StatusOr<std::unique_ptr<PageIndex>> PageIndex::Create(const PageIndexOptions& options) {
  if (options.dim < 1) return absl::InvalidArgumentError("PageIndex: dim must be >= 1");
  if (options.ivf_nlist < 0 || options.ivf_nprobe < 1 || options.hnsw_m < 2 ||
      options.hnsw_ef_search < 1 ||
      !(options.hnsw_compact_fraction > 0 && options.hnsw_compact_fraction <= 1)) {
    return absl::InvalidArgumentError(
        "PageIndex: need ivf_nlist >= 0, ivf_nprobe >= 1, hnsw_m >= 2, hnsw_ef_search >= 1, "
        "hnsw_compact_fraction in (0, 1]");
  }
  auto impl = std::make_unique<Impl>();
  impl->options = options;
  absl::Status s;
  switch (options.kind) {
    case AnnKind::kFlat:
      s = CallFaiss("flat create", [&] {
        impl->flat = std::make_unique<faiss::IndexFlatIP>(options.dim);
        impl->flat_map = std::make_unique<faiss::IndexIDMap>(impl->flat.get());
      });
      break;
    case AnnKind::kIvf:
      break;  // built at training
    case AnnKind::kHnsw:
      s = impl->MakeHnsw();
      break;
  }
  if (!s.ok()) return s;
  return std::unique_ptr<PageIndex>(new PageIndex(std::move(impl)));
}

bool PageIndex::trained() const {
  return impl_->options.kind != AnnKind::kIvf || impl_->ivf != nullptr;
}

absl::Status PageIndex::Train(absl::Span<const float> vectors) {
  if (impl_->options.kind != AnnKind::kIvf) return absl::OkStatus();
  if (impl_->ivf) return absl::FailedPreconditionError("PageIndex: IVF index already trained");
  if (vectors.empty() || vectors.size() % impl_->options.dim != 0) {
    return absl::InvalidArgumentError(absl::StrCat("PageIndex: Train needs [n >= 1, ",
                                                   impl_->options.dim, "] vectors, got ",
                                                   vectors.size(), " values"));
  }
  return impl_->TrainIvf(vectors);
}

absl::Status PageIndex::Add(absl::Span<const int64_t> ids, absl::Span<const float> vectors) {
  const size_t d = impl_->options.dim;
  if (vectors.size() != ids.size() * d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PageIndex: ", ids.size(), " ids need ", ids.size() * d, " values, got ", vectors.size()));
  }
  if (ids.empty()) return absl::OkStatus();
  absl::flat_hash_set<int64_t> batch;
  for (int64_t id : ids) {
    if (id < 0) return absl::InvalidArgumentError(absl::StrCat("PageIndex: negative id ", id));
    if (impl_->live.contains(id) || !batch.insert(id).second) {
      return absl::AlreadyExistsError(absl::StrCat("PageIndex: id ", id, " already present"));
    }
  }
  for (float x : vectors) {
    if (!std::isfinite(x)) return absl::InvalidArgumentError("PageIndex: non-finite vector");
  }
  const auto n = static_cast<faiss_idx_t>(ids.size());
  absl::Status s;
  switch (impl_->options.kind) {
    case AnnKind::kFlat:
      s = CallFaiss("flat add",
                    [&] { impl_->flat_map->add_with_ids(n, vectors.data(), ids.data()); });
      break;
    case AnnKind::kIvf:
      if (!impl_->ivf) s = impl_->TrainIvf(vectors);
      if (s.ok()) {
        s = CallFaiss("IVF add", [&] { impl_->ivf->add_with_ids(n, vectors.data(), ids.data()); });
      }
      break;
    case AnnKind::kHnsw:
      s = CallFaiss("HNSW add", [&] { impl_->hnsw->add(n, vectors.data()); });
      if (s.ok()) {
        impl_->hnsw_ids.insert(impl_->hnsw_ids.end(), ids.begin(), ids.end());
        impl_->hnsw_vectors.insert(impl_->hnsw_vectors.end(), vectors.begin(), vectors.end());
        impl_->hnsw_dead.resize(impl_->hnsw_ids.size(), 0);
      }
      break;
  }
  if (!s.ok()) return s;
  impl_->live.insert(ids.begin(), ids.end());
  return absl::OkStatus();
}

absl::Status PageIndex::Remove(absl::Span<const int64_t> ids) {
  absl::flat_hash_set<int64_t> batch;
  for (int64_t id : ids) {
    if (!impl_->live.contains(id) || !batch.insert(id).second) {
      return absl::NotFoundError(absl::StrCat("PageIndex: id ", id, " is not in the index"));
    }
  }
  if (ids.empty()) return absl::OkStatus();
  absl::Status s;
  switch (impl_->options.kind) {
    case AnnKind::kFlat:
    case AnnKind::kIvf: {
      faiss::IDSelectorBatch sel(static_cast<size_t>(ids.size()), ids.data());
      size_t removed = 0;
      s = CallFaiss("remove", [&] {
        removed = impl_->options.kind == AnnKind::kFlat ? impl_->flat_map->remove_ids(sel)
                                                        : impl_->ivf->remove_ids(sel);
      });
      if (s.ok() && removed != ids.size()) {
        return absl::InternalError(
            absl::StrCat("PageIndex: FAISS removed ", removed, " of ", ids.size(), " ids"));
      }
      break;
    }
    case AnnKind::kHnsw:
      for (size_t i = 0; i < impl_->hnsw_ids.size(); ++i) {
        if (!impl_->hnsw_dead[i] && batch.contains(impl_->hnsw_ids[i])) {
          impl_->hnsw_dead[i] = 1;
          ++impl_->hnsw_dead_count;
        }
      }
      break;
  }
  if (!s.ok()) return s;
  for (int64_t id : ids) impl_->live.erase(id);
  if (impl_->options.kind == AnnKind::kHnsw &&
      impl_->hnsw_dead_count >
          impl_->options.hnsw_compact_fraction * static_cast<double>(impl_->hnsw_ids.size())) {
    return impl_->CompactHnsw();
  }
  return absl::OkStatus();
}

absl::StatusOr<IndexSearchResult> PageIndex::Search(absl::Span<const float> query, int k) const {
  const int d = impl_->options.dim;
  if (query.size() != static_cast<size_t>(d)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PageIndex: query has ", query.size(), " values, expected ", d));
  }
  if (k < 1) return absl::InvalidArgumentError("PageIndex: k must be >= 1");
  for (float x : query) {
    if (!std::isfinite(x)) return absl::InvalidArgumentError("PageIndex: non-finite query");
  }
  IndexSearchResult out;
  const int64_t n = static_cast<int64_t>(impl_->live.size());
  if (n == 0) return out;
  // HNSW over-fetches past tombstones; the others hold only live vectors.
  const int64_t stored =
      impl_->options.kind == AnnKind::kHnsw ? static_cast<int64_t>(impl_->hnsw_ids.size()) : n;
  const int64_t fetch = std::min<int64_t>(
      stored, k + (impl_->options.kind == AnnKind::kHnsw ? impl_->hnsw_dead_count : 0));
  std::vector<float> scores(fetch);
  std::vector<faiss_idx_t> labels(fetch, -1);
  absl::Status s;
  switch (impl_->options.kind) {
    case AnnKind::kFlat:
      s = CallFaiss("flat search", [&] {
        impl_->flat_map->search(1, query.data(), fetch, scores.data(), labels.data());
      });
      out.vectors_scanned = n;
      break;
    case AnnKind::kIvf: {
      const auto& ivf = *impl_->ivf;
      const int nprobe = static_cast<int>(std::min<size_t>(ivf.nprobe, ivf.nlist));
      std::vector<float> cd(nprobe);
      std::vector<faiss_idx_t> lists(nprobe, -1);
      s = CallFaiss("IVF search", [&] {
        ivf.quantizer->search(1, query.data(), nprobe, cd.data(), lists.data());
        ivf.search(1, query.data(), fetch, scores.data(), labels.data());
      });
      out.vectors_scanned = static_cast<int64_t>(ivf.nlist);
      for (faiss_idx_t l : lists) {
        if (l >= 0) out.vectors_scanned += static_cast<int64_t>(ivf.invlists->list_size(l));
      }
      break;
    }
    case AnnKind::kHnsw:
      s = CallFaiss("HNSW search", [&] {
        impl_->hnsw->search(1, query.data(), fetch, scores.data(), labels.data());
      });
      out.vectors_scanned = std::min<int64_t>(
          stored, static_cast<int64_t>(impl_->options.hnsw_ef_search) * 2 * impl_->options.hnsw_m);
      break;
  }
  if (!s.ok()) return s;
  for (int64_t i = 0; i < fetch && static_cast<int>(out.hits.size()) < k; ++i) {
    faiss_idx_t label = labels[i];
    if (label < 0) continue;
    if (impl_->options.kind == AnnKind::kHnsw) {
      if (impl_->hnsw_dead[label]) continue;
      label = impl_->hnsw_ids[label];
    }
    out.hits.push_back({label, scores[i]});
  }
  return out;
}

int64_t PageIndex::size() const { return static_cast<int64_t>(impl_->live.size()); }
bool PageIndex::Contains(int64_t id) const { return impl_->live.contains(id); }
const PageIndexOptions& PageIndex::options() const { return impl_->options; }

}  // namespace pagoda::retriever
