// Prefill -> decode on one node: a prefill worker publishes each layer's freshly computed KV pages
// as soon as they are queued (asynchronously, while later layers still compute); a decode worker
// in another process, usually on another GPU, copies them into its own GPU pool as they land
// (CUDA IPC + one batched peer copy per layer). Built only with CUDA.
//
// Prefill:  auto tx = KvHandoffSender::Create("req-42", pool, pool_bytes, {layers, max_pages, pb});
//           for each layer: compute(stream); tx->PublishLayer(layer, page_offsets, stream);
// Decode:   auto rx = KvHandoffReceiver::Open("req-42", absl::Seconds(5));
//           for each layer: rx->ReceiveLayer(layer, my_pool_pages, stream, absl::Seconds(5));
//
// The i-th PublishLayer(l) pairs with the i-th ReceiveLayer(l); a layer is published again only
// after the receiver consumed it (PublishLayer waits for that). The channel is a POSIX
// shared-memory object named after `name`, removed when the sender goes.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace pagoda {

struct KvHandoffShape {
  int32_t num_layers = 0;
  int32_t max_pages_per_layer = 0;
  size_t page_bytes = 0;
};

class KvHandoffSender {
 public:
  // `pool` is device memory of the current device (inside one cudaMalloc allocation) holding the
  // pages to hand over. InvalidArgument for bad shapes / names; AlreadyExists when a channel of
  // that name is open.
  static absl::StatusOr<std::unique_ptr<KvHandoffSender>> Create(const std::string& name,
                                                                 void* pool, size_t pool_bytes,
                                                                 const KvHandoffShape& shape);
  virtual ~KvHandoffSender() = default;

  // Publishes `layer`: its pages are at `page_offsets` (bytes from `pool`, page_bytes each) and
  // are complete once the work queued on `stream` so far is done (an IPC event is recorded; the
  // call does not wait for the GPU). Waits (up to `timeout`) only if the receiver has not yet
  // consumed this layer's previous publication. InvalidArgument for a bad layer, too many pages,
  // or pages outside the pool (nothing published).
  virtual absl::Status PublishLayer(int layer, absl::Span<const uint64_t> page_offsets,
                                    cudaStream_t stream,
                                    absl::Duration timeout = absl::Seconds(30)) = 0;
  // Waits until every publication so far was copied out by the receiver.
  virtual absl::Status WaitConsumed(absl::Duration timeout) = 0;
};

class KvHandoffReceiver {
 public:
  // Opens the channel `name` (waiting up to `timeout` for the sender) and maps the sender's pool.
  static absl::StatusOr<std::unique_ptr<KvHandoffReceiver>> Open(const std::string& name,
                                                                 absl::Duration timeout);
  virtual ~KvHandoffReceiver() = default;

  const KvHandoffShape& shape() const { return shape_; }

  // Waits (host side, up to `timeout`) until `layer` is published, then enqueues on `stream`: a
  // wait for the sender's event and one batched copy of the layer's pages into `dst_pages`
  // (device pointers of this process, page_bytes each; at least as many as published). Returns
  // the number of pages. The receiver tells the sender the layer is consumed when the copy is done.
  // DeadlineExceeded when nothing was published in time; InvalidArgument for a bad layer or too
  // few destinations (nothing enqueued).
  virtual absl::StatusOr<size_t> ReceiveLayer(int layer, absl::Span<void* const> dst_pages,
                                              cudaStream_t stream, absl::Duration timeout) = 0;

 protected:
  KvHandoffShape shape_;
};

}  // namespace pagoda
