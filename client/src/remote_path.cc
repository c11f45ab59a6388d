#include "remote_path.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace pagoda::client_internal {

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

absl::Status FromPageStatus(const v1::PageStatus& s) {
  if (s.code() == 0) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.code()), s.message());
}

RemotePath::RemotePath(v1::Pagoda::Stub* stub, std::string tenant, uint32_t chunk_bytes,
                       std::function<void(grpc::ClientContext*)> prepare)
    : stub_(stub),
      tenant_(std::move(tenant)),
      chunk_bytes_(chunk_bytes == 0 ? (1u << 20) : chunk_bytes),
      prepare_(std::move(prepare)) {}

std::vector<absl::Status> RemotePath::Put(absl::Span<const PutPage> pages) {
  if (pages.empty()) return {};
  size_t total_bytes = 0;
  for (const PutPage& p : pages) total_bytes += p.bytes.size();
  if (total_bytes <= chunk_bytes_) {
    // Small batch: one unary call with every page inline.
    grpc::ClientContext ctx;
    prepare_(&ctx);
    v1::PutBegin begin;
    begin.set_tenant(tenant_);
    for (const PutPage& p : pages) {
      v1::PutPage* pp = begin.add_pages();
      pp->mutable_key()->set_hi(p.key.hi);
      pp->mutable_key()->set_lo(p.key.lo);
      pp->set_layout_id(p.layout);
      pp->set_size(p.bytes.size());
      pp->set_checksum(PageChecksum(p.bytes.data(), p.bytes.size()));
      pp->set_data(p.bytes.data(), p.bytes.size());
    }
    v1::PutResponse response;
    absl::Status s = FromGrpc(stub_->PutInline(&ctx, begin, &response));
    if (s.ok() && response.results_size() != static_cast<int>(pages.size())) {
      s = absl::InternalError("Put: the server answered for a different number of pages");
    }
    if (!s.ok()) return std::vector<absl::Status>(pages.size(), s);
    std::vector<absl::Status> out;
    for (const v1::PageStatus& r : response.results()) out.push_back(FromPageStatus(r));
    return out;
  }
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::PutResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::PutRequest>> w = stub_->Put(&ctx, &response);
  v1::PutRequest msg;
  v1::PutBegin* begin = msg.mutable_begin();
  begin->set_tenant(tenant_);
  for (const PutPage& p : pages) {
    v1::PutPage* pp = begin->add_pages();
    pp->mutable_key()->set_hi(p.key.hi);
    pp->mutable_key()->set_lo(p.key.lo);
    pp->set_layout_id(p.layout);
    pp->set_size(p.bytes.size());
    pp->set_checksum(PageChecksum(p.bytes.data(), p.bytes.size()));
  }
  // Small batches travel whole in the first message; larger ones stream in chunks.
  size_t total = 0;
  for (const PutPage& p : pages) total += p.bytes.size();
  const bool inline_all = total <= chunk_bytes_;
  if (inline_all) {
    for (size_t i = 0; i < pages.size(); ++i) {
      begin->mutable_pages(static_cast<int>(i))
          ->set_data(pages[i].bytes.data(), pages[i].bytes.size());
    }
  }
  bool ok = inline_all ? w->Write(msg, grpc::WriteOptions().set_last_message()) : w->Write(msg);
  for (size_t i = 0; ok && !inline_all && i < pages.size(); ++i) {
    const absl::Span<const uint8_t> b = pages[i].bytes;
    for (size_t off = 0; ok && off < b.size(); off += chunk_bytes_) {
      msg.Clear();
      v1::PutChunk* c = msg.mutable_chunk();
      c->set_page_index(static_cast<uint32_t>(i));
      c->set_offset(off);
      c->set_data(b.data() + off, std::min<size_t>(chunk_bytes_, b.size() - off));
      ok = w->Write(msg);
    }
  }
  if (ok && !inline_all) w->WritesDone();
  absl::Status s = FromGrpc(w->Finish());
  if (s.ok() && response.results_size() != static_cast<int>(pages.size())) {
    s = absl::InternalError("Put: the server answered for a different number of pages");
  }
  if (!s.ok()) return std::vector<absl::Status>(pages.size(), s);
  std::vector<absl::Status> out;
  out.reserve(pages.size());
  for (const v1::PageStatus& r : response.results()) out.push_back(FromPageStatus(r));
  return out;
}

std::vector<GetResult> RemotePath::GetInline(absl::Span<const GetPage> pages, bool* fits) {
  std::vector<GetResult> out(pages.size());
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::GetRequest req;
  req.set_tenant(tenant_);
  for (const GetPage& p : pages) {
    v1::PageKey* k = req.add_keys();
    k->set_hi(p.key.hi);
    k->set_lo(p.key.lo);
  }
  v1::GetInlineResponse resp;
  absl::Status s = FromGrpc(stub_->GetInline(&ctx, req, &resp));
  *fits = !absl::IsResourceExhausted(s);
  if (s.ok() && resp.pages_size() != static_cast<int>(pages.size())) {
    s = absl::InternalError("Get: the server answered for a different number of pages");
  }
  for (size_t i = 0; i < pages.size(); ++i) {
    if (!s.ok()) {
      out[i].status = s;
      continue;
    }
    const v1::GetPageHeader& h = resp.pages(static_cast<int>(i));
    out[i].status = FromPageStatus(h.status());
    if (!out[i].status.ok()) continue;
    if (h.data().size() != h.size()) {
      out[i].status = absl::DataLossError("Get: page bytes incomplete");
    } else if (pages[i].out.size() < h.size()) {
      out[i].status = absl::InvalidArgumentError(absl::StrCat(
          "output buffer of ", pages[i].out.size(), " bytes for a ", h.size(), "-byte page"));
    } else {
      memcpy(pages[i].out.data(), h.data().data(), h.size());
      if (PageChecksum(pages[i].out.data(), h.size()) != h.checksum()) {
        out[i].status = absl::DataLossError("Get: checksum mismatch");
      } else {
        out[i].layout = h.layout_id();
        out[i].size = h.size();
      }
    }
  }
  return out;
}

std::vector<GetResult> RemotePath::GetOnce(absl::Span<const GetPage> pages) {
  // Batches whose buffers fit one message go unary (the server says so if the pages do not).
  size_t want = 0;
  for (const GetPage& p : pages) want += p.out.size();
  if (want <= chunk_bytes_) {
    bool fits = true;
    std::vector<GetResult> r = GetInline(pages, &fits);
    if (fits) return r;
  }
  std::vector<GetResult> out(pages.size());
  grpc::ClientContext ctx;
  prepare_(&ctx);
  v1::GetRequest req;
  req.set_tenant(tenant_);
  req.set_chunk_bytes(chunk_bytes_);
  for (const GetPage& p : pages) {
    v1::PageKey* k = req.add_keys();
    k->set_hi(p.key.hi);
    k->set_lo(p.key.lo);
  }
  std::unique_ptr<grpc::ClientReader<v1::GetResponse>> r = stub_->Get(&ctx, req);
  std::vector<uint64_t> received(pages.size(), 0), checksums(pages.size(), 0);
  std::vector<bool> seen(pages.size(), false);
  v1::GetResponse msg;
  absl::Status protocol;
  auto take = [&](uint32_t index, uint64_t offset, const std::string& data) {
    GetResult& res = out[index];
    if (!res.status.ok()) return;
    if (offset != received[index] || data.size() > res.size - offset) {
      protocol = absl::InternalError("Get: chunks out of order or beyond the page");
      return;
    }
    memcpy(pages[index].out.data() + offset, data.data(), data.size());
    received[index] += data.size();
  };
  while (protocol.ok() && r->Read(&msg)) {
    if (msg.has_header()) {
      const v1::GetPageHeader& h = msg.header();
      if (h.index() >= pages.size() || seen[h.index()]) {
        protocol = absl::InternalError("Get: bad page index in reply");
        break;
      }
      seen[h.index()] = true;
      GetResult& res = out[h.index()];
      res.status = FromPageStatus(h.status());
      if (!res.status.ok()) continue;
      if (pages[h.index()].out.size() < h.size()) {
        res.status = absl::InvalidArgumentError(
            absl::StrCat("output buffer of ", pages[h.index()].out.size(), " bytes for a ",
                         h.size(), "-byte page"));
        continue;
      }
      res.layout = h.layout_id();
      res.size = h.size();
      checksums[h.index()] = h.checksum();
      take(h.index(), 0, h.data());
    } else if (msg.has_chunk()) {
      const v1::GetChunk& c = msg.chunk();
      if (c.index() >= pages.size() || !seen[c.index()]) {
        protocol = absl::InternalError("Get: chunk before its header");
        break;
      }
      take(c.index(), c.offset(), c.data());
    }
  }
  if (!protocol.ok()) ctx.TryCancel();
  absl::Status s = FromGrpc(r->Finish());
  if (s.ok()) s = protocol;
  for (size_t i = 0; i < pages.size(); ++i) {
    if (!s.ok()) {
      out[i].status = s;
    } else if (!seen[i]) {
      out[i].status = absl::InternalError("Get: no answer for this page");
    } else if (out[i].status.ok()) {
      if (received[i] != out[i].size) {
        out[i].status = absl::DataLossError("Get: page bytes incomplete");
      } else if (PageChecksum(pages[i].out.data(), out[i].size) != checksums[i]) {
        out[i].status = absl::DataLossError("Get: checksum mismatch");
      }
    }
  }
  return out;
}

std::vector<GetResult> RemotePath::Get(absl::Span<const GetPage> pages) {
  if (pages.empty()) return {};
  std::vector<GetResult> out = GetOnce(pages);
  for (size_t i = 0; i < pages.size(); ++i) {
    if (absl::IsDataLoss(out[i].status)) out[i] = GetOnce(pages.subspan(i, 1))[0];
  }
  return out;
}

}  // namespace pagoda::client_internal
