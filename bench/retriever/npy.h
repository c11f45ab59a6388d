// A small reader for NumPy .npy files (format versions 1-3, C order, little-endian).
//
// Only what the trace tools need: dtypes float16 ('<f2'), float32 ('<f4') and int32 ('<i4').
// Thread safety: pure functions.
#ifndef PAGODA_BENCH_RETRIEVER_NPY_H_
#define PAGODA_BENCH_RETRIEVER_NPY_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace pagoda::bench {

struct NpyArray {
  std::string descr;           // "<f2", "<f4" or "<i4"
  std::vector<int64_t> shape;  // C order
  std::vector<uint8_t> data;   // element bytes, exactly product(shape) * itemsize
  int64_t elements() const;
  int itemsize() const { return descr == "<f2" ? 2 : 4; }
};

// Parses an .npy image. InvalidArgument for a bad magic, header, dtype, Fortran order, or a data
// size that does not match the shape.
absl::StatusOr<NpyArray> ParseNpy(absl::string_view bytes);

// Reads and parses a file (NotFound when it cannot be opened).
absl::StatusOr<NpyArray> ReadNpy(const std::string& path);

// Writes a C-order array (tests and tools).
absl::Status WriteNpy(const std::string& path, const std::string& descr,
                      const std::vector<int64_t>& shape, const void* data, size_t bytes);

}  // namespace pagoda::bench

#endif  // PAGODA_BENCH_RETRIEVER_NPY_H_
