#ifndef CCOMPRESSION_SHIM_H
#define CCOMPRESSION_SHIM_H
// The compressions kombu registers that every Python build has: zlib (`application/x-gzip`), bzip2 and lzma (xz).
#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>

// A macro Swift does not import (it is written with UINT32_C).
static const uint32_t ccompression_lzma_concatenated = LZMA_CONCATENATED;
#endif
