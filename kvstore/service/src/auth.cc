#include "auth.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace pagoda::service {
namespace {

// Compares in time independent of where the first difference is.
bool SameSecret(std::string_view a, std::string_view b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  for (size_t i = 0; i < b.size(); ++i) {
    diff |= static_cast<unsigned char>(b[i] ^ (i < a.size() ? a[i] : 0));
  }
  return diff == 0;
}

}  // namespace

Authorizer::Authorizer(const ServiceConfig& config)
    : global_token_(config.token), allow_unknown_(config.allow_unknown_tenants) {
  for (const auto& [name, t] : config.tenants) tenant_tokens_[name] = t.token;
}

absl::Status Authorizer::Check(std::string_view tenant, std::string_view token) const {
  if (tenant.empty() || tenant.size() > 128) {
    return absl::InvalidArgumentError("tenant must be 1..128 bytes");
  }
  for (char ch : tenant) {
    if (ch < 0x21 || ch > 0x7e) {
      return absl::InvalidArgumentError("tenant must be printable ASCII without spaces");
    }
  }
  auto it = tenant_tokens_.find(tenant);
  if (it == tenant_tokens_.end() && !allow_unknown_) {
    return absl::PermissionDeniedError(
        absl::StrCat("tenant '", std::string(tenant), "' is not configured"));
  }
  const std::string& want =
      (it != tenant_tokens_.end() && !it->second.empty()) ? it->second : global_token_;
  if (want.empty()) return absl::OkStatus();
  if (token.empty()) return absl::UnauthenticatedError("missing bearer token");
  if (!SameSecret(token, want)) {
    return absl::UnauthenticatedError(
        absl::StrCat("bad bearer token for tenant '", std::string(tenant), "'"));
  }
  return absl::OkStatus();
}

std::string_view Authorizer::TokenFromHeader(std::string_view header) {
  if (absl::StartsWithIgnoreCase(absl::string_view(header.data(), header.size()), "bearer ")) {
    return header.substr(7);
  }
  return "";
}

}  // namespace pagoda::service
