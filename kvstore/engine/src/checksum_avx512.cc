// Checksum variant: avx512 (see checksum_impl.inc).
#define PAGODA_CHECKSUM_SUFFIX Avx512
#include "checksum_impl.inc"
