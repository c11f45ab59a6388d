// libFuzzer target: the .npy reader of the trace tools (ParseNpy). An array that parses holds
// exactly product(shape) x itemsize bytes.
#include <cstddef>
#include <cstdint>

#include "absl/strings/string_view.h"
#include "npy.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  absl::StatusOr<pagoda::bench::NpyArray> a =
      pagoda::bench::ParseNpy(absl::string_view(reinterpret_cast<const char*>(data), size));
  if (!a.ok()) return 0;
  if (a->elements() < 0 ||
      a->data.size() != static_cast<size_t>(a->elements()) * static_cast<size_t>(a->itemsize())) {
    __builtin_trap();
  }
  return 0;
}
