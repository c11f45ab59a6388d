// libFuzzer target: pagodad's YAML config (ParseConfig over the embedded default, then
// ValidateConfig), the text an operator or a ConfigMap hands the service.
#include <cstddef>
#include <cstdint>
#include <string>

#include "pagoda/service/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const pagoda::service::ServiceConfig base = *pagoda::service::LoadConfig("");
  const std::string yaml(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<pagoda::service::ServiceConfig> c = pagoda::service::ParseConfig(yaml, base);
  if (c.ok()) {
    (void)pagoda::service::ValidateConfig(*c);
    (void)pagoda::service::LocalSocketPath(*c);
  } else if (c.status().message().empty()) {
    __builtin_trap();  // every rejection names what is wrong
  }
  return 0;
}
