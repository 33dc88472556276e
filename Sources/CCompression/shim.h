#ifndef CCOMPRESSION_SHIM_H
#define CCOMPRESSION_SHIM_H
// The compressions kombu registers that every Python build has: zlib (`application/x-gzip`), bzip2 and lzma (xz);
// and the two it registers when their Python packages are installed: brotli and zstd.
#include <brotli/decode.h>
#include <brotli/encode.h>
#include <bzlib.h>
#include <lzma.h>
#include <zlib.h>
#include <zstd.h>

// A macro Swift does not import (it is written with UINT32_C).
static const uint32_t ccompression_lzma_concatenated = LZMA_CONCATENATED;
#endif
