#include "json_log_formatter.h"

#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "spdlog/logger.h"
#include "spdlog/sinks/ostream_sink.h"

namespace pagoda::service {
namespace {

// Logs each message through the JSON formatter and returns the lines written.
std::vector<std::string> LogLines(const std::vector<std::string>& messages) {
  std::ostringstream out;
  auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(out);
  spdlog::logger logger("pagodad", sink);
  logger.set_formatter(std::make_unique<JsonLogFormatter>());
  for (const std::string& m : messages) logger.critical("pagodad: {}", m);
  logger.flush();
  return absl::StrSplit(out.str(), '\n', absl::SkipEmpty());
}

TEST(JsonLogFormatterTest, EveryMessageStaysOneValidObject) {
  const std::vector<std::string> messages = {
      // The SSD tier's format error names a directory, which may hold any character.
      R"(SSD tier: /data/"x" has on-disk format version 1; this build reads version 2 only)",
      R"(injected", "level": "info)", "back\\slash, tab\t, newline\n, bell\x07, {braces} and {}",
      std::string("not utf-8: \xff\xfe end"), ""};
  const std::vector<std::string> lines = LogLines(messages);
  ASSERT_EQ(lines.size(), messages.size()) << "a newline in a message must not split its line";
  for (size_t i = 0; i < lines.size(); ++i) {
    const nlohmann::json j = nlohmann::json::parse(lines[i], nullptr, /*allow_exceptions=*/false);
    ASSERT_TRUE(j.is_object()) << lines[i];
    EXPECT_EQ(j.size(), 5u) << "no injected fields: " << lines[i];
    EXPECT_EQ(j.value("level", ""), "critical");
    EXPECT_EQ(j.value("logger", ""), "pagodad");
    EXPECT_TRUE(j["pid"].is_number_integer());
    const std::string ts = j.value("ts", "");
    EXPECT_EQ(ts.size(), 27u) << ts;  // 2026-12-04T23:59:59.123456Z
    EXPECT_EQ(ts.back(), 'Z');
    if (i != 3) {
      EXPECT_EQ(j.value("msg", ""), "pagodad: " + messages[i]);
    } else {  // the invalid bytes become U+FFFD, the rest survives
      EXPECT_EQ(j.value("msg", ""), "pagodad: not utf-8: \xEF\xBF\xBD\xEF\xBF\xBD end");
    }
  }
}

}  // namespace
}  // namespace pagoda::service
