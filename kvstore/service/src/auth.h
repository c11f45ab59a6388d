// Who may use which tenant: bearer-token checks and tenant-name rules, shared by the gRPC API and
// the local zero-copy path.
//
// Thread safety: immutable after construction; safe for concurrent use.
#pragma once

#include <map>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "pagoda/service/config.h"

namespace pagoda::service {

class Authorizer {
 public:
  explicit Authorizer(const ServiceConfig& config);

  // OK when `token` may act as `tenant`. InvalidArgument for an empty / over-long / non-printable
  // tenant name; PermissionDenied for a tenant the config does not allow; Unauthenticated for a
  // missing or wrong token. A tenant with its own token accepts only that token; other tenants
  // accept the global token (or anything when no global token is set).
  absl::Status Check(std::string_view tenant, std::string_view token) const;

  // The token from a gRPC "authorization" metadata value ("Bearer <token>"); "" when absent.
  static std::string_view TokenFromHeader(std::string_view header);

 private:
  std::string global_token_;
  std::map<std::string, std::string, std::less<>> tenant_tokens_;
  bool allow_unknown_;
};

}  // namespace pagoda::service
