#include "npy.h"

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace pagoda::bench {
namespace {

std::string TempPath(const std::string& name) {
  return (std::filesystem::temp_directory_path() / (name + std::to_string(::getpid()))).string();
}

TEST(NpyTest, RoundTripsShapesAndBytes) {
  const std::string path = TempPath("npy_rt");
  std::vector<uint16_t> data(2 * 3 * 5);
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<uint16_t>(i * 977);
  ASSERT_TRUE(WriteNpy(path, "<f2", {2, 3, 5}, data.data(), data.size() * 2).ok());
  auto a = ReadNpy(path);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ(a->descr, "<f2");
  EXPECT_EQ(a->shape, (std::vector<int64_t>{2, 3, 5}));
  ASSERT_EQ(a->data.size(), data.size() * 2);
  EXPECT_EQ(0, std::memcmp(a->data.data(), data.data(), a->data.size()));
  std::vector<int32_t> ids = {7, 8, 9};
  ASSERT_TRUE(WriteNpy(path, "<i4", {3}, ids.data(), 12).ok());
  a = ReadNpy(path);
  ASSERT_TRUE(a.ok());
  EXPECT_EQ(a->shape, (std::vector<int64_t>{3}));
  std::remove(path.c_str());
}

TEST(NpyTest, RejectsMalformedFiles) {
  EXPECT_FALSE(ParseNpy("not an npy file").ok());
  auto make = [](const std::string& header, size_t data_bytes) {
    std::string h = header;
    while ((10 + h.size() + 1) % 64 != 0) h.push_back(' ');
    h.push_back('\n');
    std::string out("\x93NUMPY\x01\x00", 8);
    out.push_back(static_cast<char>(h.size()));
    out.push_back(0);
    return out + h + std::string(data_bytes, '\0');
  };
  const std::string ok = "{'descr': '<f2', 'fortran_order': False, 'shape': (2, 3), }";
  EXPECT_TRUE(ParseNpy(make(ok, 12)).ok());
  EXPECT_FALSE(ParseNpy(make(ok, 11)).ok());  // data shorter than the shape
  EXPECT_FALSE(ParseNpy(make(ok, 14)).ok());  // trailing bytes
  EXPECT_FALSE(
      ParseNpy(make("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16)).ok());
  EXPECT_FALSE(ParseNpy(make("{'descr': '<f2', 'fortran_order': True, 'shape': (2,), }", 4)).ok());
  EXPECT_FALSE(
      ParseNpy(make("{'descr': '<f2', 'fortran_order': False, 'shape': (-2,), }", 4)).ok());
  EXPECT_FALSE(ParseNpy(make("{'descr': '<f2', 'fortran_order': False}", 4)).ok());
  // Found by fuzzing (tests/fuzz/corpus/npy/crash-*): shapes that are not tuples aborted.
  for (const char* shape : {")", "(", "", "2", "  )"}) {
    EXPECT_FALSE(ParseNpy(make(std::string("{'descr': '<f2', 'fortran_order': False, 'shape': ") +
                                   shape + ", }",
                               4))
                     .ok())
        << shape;
  }
  // A shape whose element count overflows 64 bits is refused, not wrapped around.
  EXPECT_FALSE(ParseNpy(make("{'descr': '<f2', 'fortran_order': False, 'shape': "
                             "(4294967296, 4294967296, 4), }",
                             0))
                   .ok());
  EXPECT_EQ(ReadNpy("/nonexistent/x.npy").status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace pagoda::bench
