// Plain-text tables with aligned columns for the CLI.
#pragma once

#include <string>
#include <vector>

namespace pagoda::cli {

class Table {
 public:
  explicit Table(std::vector<std::string> header) : header_(std::move(header)) {}
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Columns padded to their widest cell; numbers (cells starting with a digit) right-aligned.
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
};

}  // namespace pagoda::cli
