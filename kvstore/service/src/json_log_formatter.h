// pagodad's `logging.json: true` line format: one JSON object per log line, built with
// nlohmann-json so that any message (quotes, backslashes, control characters, bytes that are not
// UTF-8) stays one valid object and cannot inject fields:
//   {"ts":"2026-12-04T23:59:59.123456Z","level":"info","logger":"pagodad","pid":42,"msg":"..."}
//
// Thread safety: spdlog clones a formatter per sink; one instance is used by one sink at a time.
#pragma once

#include <memory>

#include "spdlog/formatter.h"

namespace pagoda::service {

class JsonLogFormatter final : public spdlog::formatter {
 public:
  void format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) override;
  std::unique_ptr<spdlog::formatter> clone() const override;
};

}  // namespace pagoda::service
