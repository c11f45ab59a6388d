#include "json_log_formatter.h"

#include <unistd.h>

#include <string>

#include "absl/time/time.h"
#include "nlohmann/json.hpp"

namespace pagoda::service {

void JsonLogFormatter::format(const spdlog::details::log_msg& msg, spdlog::memory_buf_t& dest) {
  nlohmann::ordered_json line;
  line["ts"] =
      absl::FormatTime("%Y-%m-%dT%H:%M:%E6SZ", absl::FromChrono(msg.time), absl::UTCTimeZone());
  const spdlog::string_view_t level = spdlog::level::to_string_view(msg.level);
  line["level"] = std::string(level.data(), level.size());
  line["logger"] = std::string(msg.logger_name.data(), msg.logger_name.size());
  line["pid"] = static_cast<int64_t>(::getpid());
  line["msg"] = std::string(msg.payload.data(), msg.payload.size());
  // Bytes that are not UTF-8 become U+FFFD instead of an exception in the logging path.
  const std::string text = line.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  dest.append(text.data(), text.data() + text.size());
  dest.push_back('\n');
}

std::unique_ptr<spdlog::formatter> JsonLogFormatter::clone() const {
  return std::make_unique<JsonLogFormatter>();
}

}  // namespace pagoda::service
