// Checksum variant: generic (see checksum_impl.inc).
#define PAGODA_CHECKSUM_SUFFIX Generic
#include "checksum_impl.inc"
