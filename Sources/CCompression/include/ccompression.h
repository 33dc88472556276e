#ifndef CCOMPRESSION_H
#define CCOMPRESSION_H
/* The compressions kombu registers that every Python build has: zlib (`application/x-gzip`), bzip2 and lzma (xz),
 * linked as usual; and the two it registers when their Python packages are installed, brotli and zstd, whose
 * libraries (Debian's libbrotli1 and libzstd1) are loaded at run time (dlopen) the first time one of them is asked
 * for: a worker that never meets them does not map them (about 240 kB of resident memory). Their headers give the
 * types and constants; call their functions only through the `ccompression_` ones below, after a load succeeded. */
#include <brotli/decode.h>
#include <brotli/encode.h>
#include <bzlib.h>
#include <lzma.h>
#include <stddef.h>
#include <stdint.h>
#include <zlib.h>
#include <zstd.h>

/* A macro Swift does not import (it is written with UINT32_C). */
static const uint32_t ccompression_lzma_concatenated = LZMA_CONCATENATED;

/* Load the library once (every later call returns at once): NULL when its functions below may be called, else a
 * sentence that says why not (the library is missing or too old). Safe from any thread. */
const char *ccompression_brotli_load(void);
const char *ccompression_zstd_load(void);

/* brotli's functions of the same names without the prefix (libbrotlienc.so.1, libbrotlidec.so.1). */
size_t ccompression_BrotliEncoderMaxCompressedSize(size_t input_size);
BROTLI_BOOL ccompression_BrotliEncoderCompress(int quality, int lgwin, BrotliEncoderMode mode, size_t input_size,
                                               const uint8_t *input, size_t *encoded_size, uint8_t *encoded);
BrotliDecoderState *ccompression_BrotliDecoderCreateInstance(void);
void ccompression_BrotliDecoderDestroyInstance(BrotliDecoderState *state);
BrotliDecoderResult ccompression_BrotliDecoderDecompressStream(BrotliDecoderState *state, size_t *available_in,
                                                               const uint8_t **next_in, size_t *available_out,
                                                               uint8_t **next_out);
/* The decoder's error, in brotli's words. */
const char *ccompression_BrotliDecoderError(const BrotliDecoderState *state);

/* zstd's functions of the same names without the prefix (libzstd.so.1). */
size_t ccompression_ZSTD_compressBound(size_t size);
size_t ccompression_ZSTD_compress(void *dst, size_t capacity, const void *src, size_t size, int level);
unsigned ccompression_ZSTD_isError(size_t code);
const char *ccompression_ZSTD_getErrorName(size_t code);
ZSTD_DCtx *ccompression_ZSTD_createDCtx(void);
size_t ccompression_ZSTD_freeDCtx(ZSTD_DCtx *context);
size_t ccompression_ZSTD_decompressStream(ZSTD_DCtx *context, ZSTD_outBuffer *output, ZSTD_inBuffer *input);

#endif
