// Plain-text tables with aligned columns for the CLI.
#pragma once

#include <string>
#include <vector>

namespace pagoda::cli {

class Table {
 public:
  // `align_numbers`: right-align cells that start with a digit (for columns of figures).
  explicit Table(std::vector<std::string> header, bool align_numbers = true)
      : header_(std::move(header)), align_numbers_(align_numbers) {}
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // Columns padded to their widest cell; numbers (cells starting with a digit) right-aligned.
  std::string Render() const;

 private:
  std::vector<std::string> header_;
  std::vector<std::vector<std::string>> rows_;
  bool align_numbers_;
};

}  // namespace pagoda::cli
