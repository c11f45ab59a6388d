#include "npy.h"

#include <fstream>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace pagoda::bench {
namespace {

// The value text after 'key': in the header dict, up to the matching end.
absl::StatusOr<std::string> DictValue(absl::string_view header, absl::string_view key) {
  const std::string quoted = absl::StrCat("'", key, "'");
  size_t at = header.find(quoted);
  if (at == absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("npy: header lacks ", quoted));
  }
  at = header.find(':', at + quoted.size());
  if (at == absl::string_view::npos) return absl::InvalidArgumentError("npy: malformed header");
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(header.substr(at + 1));
  size_t end;
  if (!rest.empty() && rest[0] == '(') {
    end = rest.find(')');
    if (end == absl::string_view::npos) return absl::InvalidArgumentError("npy: malformed shape");
    ++end;
  } else {
    end = rest.find_first_of(",}");
    if (end == absl::string_view::npos) return absl::InvalidArgumentError("npy: malformed header");
  }
  return std::string(absl::StripAsciiWhitespace(rest.substr(0, end)));
}

}  // namespace

int64_t NpyArray::elements() const {
  int64_t n = 1;
  for (int64_t s : shape) {
    if (s == 0) return 0;  // before any product can overflow: (2^40, 2^40, 0) holds nothing
  }
  for (int64_t s : shape) n *= s;
  return n;
}

absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes) {
  if (bytes.size() < 10 || bytes.substr(0, 6) != "\x93NUMPY") {
    return absl::InvalidArgumentError("npy: not a .npy file (bad magic)");
  }
  const int major = static_cast<uint8_t>(bytes[6]);
  size_t header_len, offset;
  if (major == 1) {
    header_len = static_cast<uint8_t>(bytes[8]) | (static_cast<uint8_t>(bytes[9]) << 8);
    offset = 10;
  } else if (major == 2 || major == 3) {
    if (bytes.size() < 12) return absl::InvalidArgumentError("npy: truncated header");
    header_len = 0;
    for (int i = 0; i < 4; ++i) header_len |= size_t{static_cast<uint8_t>(bytes[8 + i])} << (8 * i);
    offset = 12;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("npy: unsupported format version ", major));
  }
  if (bytes.size() < offset + header_len)
    return absl::InvalidArgumentError("npy: truncated header");
  const absl::string_view header = bytes.substr(offset, header_len);
  NpyArray out;
  auto descr = DictValue(header, "descr");
  if (!descr.ok()) return descr.status();
  out.descr = std::string(absl::StripAsciiWhitespace(*descr));
  if (out.descr.size() >= 2 && (out.descr.front() == '\'' || out.descr.front() == '"')) {
    out.descr = out.descr.substr(1, out.descr.size() - 2);
  }
  if (out.descr != "<f2" && out.descr != "<f4" && out.descr != "<i4") {
    return absl::InvalidArgumentError(
        absl::StrCat("npy: dtype ", out.descr, " not supported (need <f2, <f4 or <i4)"));
  }
  auto fortran = DictValue(header, "fortran_order");
  if (!fortran.ok()) return fortran.status();
  if (*fortran != "False") return absl::InvalidArgumentError("npy: Fortran order not supported");
  auto shape = DictValue(header, "shape");
  if (!shape.ok()) return shape.status();
  absl::string_view dims = absl::StripAsciiWhitespace(*shape);
  // A tuple: "(...)". (Found by fuzzing: a shape of ")" or "" made the trimming below abort.)
  if (dims.size() < 2 || dims.front() != '(' || dims.back() != ')') {
    return absl::InvalidArgumentError(absl::StrCat("npy: shape is not a tuple: ", *shape));
  }
  dims.remove_prefix(1);
  dims.remove_suffix(1);
  const absl::string_view data = bytes.substr(offset + header_len);
  uint64_t elements = 1;
  for (absl::string_view part : absl::StrSplit(dims, ',', absl::SkipWhitespace())) {
    int64_t v;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &v) || v < 0) {
      return absl::InvalidArgumentError(absl::StrCat("npy: bad shape ", *shape));
    }
    // No product can exceed the bytes present; refusing early keeps it from overflowing.
    if (v != 0 && elements > data.size() / static_cast<uint64_t>(v))
      elements = data.size() + 1;
    else
      elements *= static_cast<uint64_t>(v);
    out.shape.push_back(v);
  }
  const uint64_t want = elements * static_cast<uint64_t>(out.itemsize());
  if (data.size() != want) {
    return absl::InvalidArgumentError(absl::StrCat("npy: shape ", *shape, " needs ", want,
                                                   " data bytes, file has ", data.size()));
  }
  out.data.assign(data.begin(), data.end());
  return out;
}

absl::StatusOr<NpyArray> ReadNpy(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::stringstream buf;
  buf << in.rdbuf();
  auto parsed = ParseNpy(buf.str());
  if (!parsed.ok())
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", parsed.status().message()));
  return parsed;
}

absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data, size_t bytes) {
  std::string dims;
  for (int64_t s : shape) absl::StrAppend(&dims, s, ",");
  if (shape.size() > 1) dims.pop_back();
  std::string header =
      absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (", dims, "), }");
  while ((10 + header.size() + 1) % 64 != 0) header.push_back(' ');
  header.push_back('\n');
  std::ofstream out(path, std::ios::binary);
  if (!out) return absl::NotFoundError(absl::StrCat("cannot create ", path));
  out.write("\x93NUMPY\x01\x00", 8);
  const char len[2] = {static_cast<char>(header.size() & 0xff),
                       static_cast<char>(header.size() >> 8)};
  out.write(len, 2);
  out.write(header.data(), static_cast<std::streamsize>(header.size()));
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!out) return absl::DataLossError(absl::StrCat("write failed: ", path));
  return absl::OkStatus();
}

}  // namespace pagoda::bench
