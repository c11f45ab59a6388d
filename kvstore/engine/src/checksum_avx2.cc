// Checksum variant: avx2 (see checksum_impl.inc).
#define PAGODA_CHECKSUM_SUFFIX Avx2
#include "checksum_impl.inc"
