#include "table.h"

#include <algorithm>
#include <cctype>

namespace pagoda::cli {

std::string Table::Render() const {
  std::vector<size_t> w(header_.size(), 0);
  auto widen = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < r.size() && i < w.size(); ++i) w[i] = std::max(w[i], r[i].size());
  };
  widen(header_);
  for (const auto& r : rows_) widen(r);
  std::string out;
  auto line = [&](const std::vector<std::string>& r) {
    for (size_t i = 0; i < w.size(); ++i) {
      const std::string cell = i < r.size() ? r[i] : "";
      const bool num =
          align_numbers_ && !cell.empty() && std::isdigit(static_cast<unsigned char>(cell[0]));
      const std::string pad(w[i] - cell.size(), ' ');
      out += i ? "  " : "";
      out += num ? pad + cell : cell + pad;
    }
    while (!out.empty() && out.back() == ' ') out.pop_back();
    out += "\n";
  };
  line(header_);
  size_t total = 0;
  for (size_t x : w) total += x;
  out += std::string(total + 2 * (w.empty() ? 0 : w.size() - 1), '-') + "\n";
  for (const auto& r : rows_) line(r);
  return out;
}

}  // namespace pagoda::cli
