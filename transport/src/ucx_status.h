// The one place where UCX status codes become absl::Status.
#pragma once

#include <ucs/type/status.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace pagoda::internal {

absl::Status FromUcs(ucs_status_t status, absl::string_view what);

}  // namespace pagoda::internal
