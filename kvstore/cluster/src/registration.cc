#include "pagoda/cluster/registration.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "spdlog/spdlog.h"

namespace pagoda::cluster {

absl::StatusOr<std::unique_ptr<NodeRegistration>> NodeRegistration::Start(
    EtcdClient* etcd, NodeInfo node, RegistrationOptions options) {
  if (etcd == nullptr) return absl::InvalidArgumentError("registration: no etcd client");
  absl::Status st = ValidateNodeInfo(node);
  if (!st.ok()) return st;
  if (options.prefix.empty()) return absl::InvalidArgumentError("registration: empty prefix");
  if (options.lease_ttl_seconds < 2) {
    return absl::InvalidArgumentError("registration: lease_ttl_seconds must be >= 2");
  }
  if (options.keepalive_interval <= absl::ZeroDuration() ||
      options.keepalive_interval >= absl::Seconds(options.lease_ttl_seconds)) {
    return absl::InvalidArgumentError(
        "registration: keepalive_interval must be positive and below the lease TTL");
  }
  std::unique_ptr<NodeRegistration> reg(
      new NodeRegistration(etcd, std::move(node), std::move(options)));
  st = reg->Register();
  if (!st.ok()) {
    if (reg->options_.require_first_registration) return st;
    spdlog::warn("cluster: node {} not registered yet ({}); retrying in the background",
                 reg->node_.id, st.ToString());
  }
  reg->thread_ = std::thread([r = reg.get()] { r->Loop(); });
  return reg;
}

NodeRegistration::NodeRegistration(EtcdClient* etcd, NodeInfo node, RegistrationOptions options)
    : etcd_(etcd),
      node_(std::move(node)),
      options_(std::move(options)),
      key_(absl::StrCat(options_.prefix, node_.id)),
      value_(NodeInfoToJson(node_)) {}

NodeRegistration::~NodeRegistration() { Stop(true); }

absl::Status NodeRegistration::Register() {
  absl::StatusOr<EtcdLease> lease = etcd_->GrantLease(options_.lease_ttl_seconds);
  if (!lease.ok()) return lease.status();
  // A plain Put, not put-if-absent: a node restarted within its old lease's TTL takes its key
  // over (the key moves to the new lease, so the old lease's expiry no longer removes it).
  absl::StatusOr<int64_t> rev = etcd_->Put(key_, value_, lease->id);
  if (!rev.ok()) {
    etcd_->RevokeLease(lease->id).IgnoreError();
    return rev.status();
  }
  lease_id_ = lease->id;
  registered_ = true;
  ++registrations_;
  spdlog::info("cluster: registered node {} at {} (lease {:x}, ttl {} s)", node_.id, key_,
               lease->id, lease->ttl_seconds);
  return absl::OkStatus();
}

absl::Status NodeRegistration::Refresh() {
  absl::StatusOr<int64_t> ttl = etcd_->KeepAliveOnce(lease_id_);
  if (absl::IsNotFound(ttl.status())) {
    spdlog::warn("cluster: lease of node {} is gone; registering again", node_.id);
    return Register();
  }
  if (!ttl.ok()) return ttl.status();
  // The lease lives; make sure our key is still on it with our value (someone may have deleted
  // it, or another process with our id took it over).
  absl::StatusOr<EtcdRangeResult> cur = etcd_->Get(key_);
  if (!cur.ok()) return cur.status();
  if (cur->kvs.empty() || cur->kvs[0].lease != lease_id_ || cur->kvs[0].value != value_) {
    spdlog::warn("cluster: key of node {} missing or changed; registering again", node_.id);
    etcd_->RevokeLease(lease_id_).IgnoreError();
    return Register();
  }
  return absl::OkStatus();
}

void NodeRegistration::Loop() {
  while (true) {
    const absl::Duration wait = registered_ ? options_.keepalive_interval : options_.retry_interval;
    {
      absl::MutexLock lock(&mu_);
      auto stop_requested = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
      if (mu_.AwaitWithTimeout(absl::Condition(&stop_requested), wait)) break;
    }
    // Each etcd call is bounded by the client's rpc_timeout, so Stop() waits at most that long.
    absl::Status st = lease_id_ != 0 ? Refresh() : Register();
    if (!st.ok()) {
      if (registered_) {
        spdlog::warn("cluster: keep-alive of node {} failed: {}", node_.id, st.ToString());
      }
      registered_ = false;
    } else {
      registered_ = true;
    }
  }
}

void NodeRegistration::Stop(bool deregister) {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (deregister && lease_id_ != 0) {
    absl::Status st = etcd_->RevokeLease(lease_id_);
    if (!st.ok() && !absl::IsNotFound(st)) {
      spdlog::warn("cluster: could not deregister node {}: {}", node_.id, st.ToString());
    }
  }
  registered_ = false;
}

bool NodeRegistration::registered() const { return registered_.load(); }

int64_t NodeRegistration::registrations() const { return registrations_.load(); }

}  // namespace pagoda::cluster
