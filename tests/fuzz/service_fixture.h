// What the service fuzz targets run against: a real Store (host tier, two small layouts), the
// authorizer of a config with a token and one listed tenant, real metrics. Built once per
// fuzzing process; the targets drive the service code over it input after input.
#pragma once

#include <memory>
#include <string>

#include "auth.h"
#include "metrics.h"
#include "pagoda/kvstore/store.h"
#include "pagoda/service/config.h"

namespace pagoda::fuzz {

inline constexpr char kTenant[] = "t";
inline constexpr char kToken[] = "fuzz-token";

struct ServiceFixture {
  service::ServiceConfig config;
  std::unique_ptr<Store> store;
  std::unique_ptr<service::Authorizer> auth;
  std::unique_ptr<service::ServiceMetrics> metrics;

  // Aborts (the fuzzer cannot run) when the store cannot open.
  static ServiceFixture& Get() {
    static ServiceFixture* f = [] {
      auto* x = new ServiceFixture();
      x->config = *service::LoadConfig("");
      x->config.token = kToken;
      x->config.allow_unknown_tenants = false;
      x->config.tenants[kTenant] = service::TenantConfig{};
      x->config.layouts = {{"fp16", 1, 8, 16}, {"bf16", 2, 16, 16}};
      StoreOptions o;
      o.host_capacity_bytes = 8 << 20;
      o.layouts = {PageLayout{DType::kFp16, 1, 8, 16}, PageLayout{DType::kBf16, 2, 16, 16}};
      x->store = std::move(*Store::Open(o));
      x->auth = std::make_unique<service::Authorizer>(x->config);
      x->metrics = std::make_unique<service::ServiceMetrics>();
      return x;
    }();
    return *f;
  }
};

}  // namespace pagoda::fuzz
