#include "ccompression.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>

/* Each member has the type of the function it points to, from the library's own header. */
static struct {
    __typeof__(BrotliEncoderMaxCompressedSize) *BrotliEncoderMaxCompressedSize;
    __typeof__(BrotliEncoderCompress) *BrotliEncoderCompress;
    __typeof__(BrotliDecoderCreateInstance) *BrotliDecoderCreateInstance;
    __typeof__(BrotliDecoderDestroyInstance) *BrotliDecoderDestroyInstance;
    __typeof__(BrotliDecoderDecompressStream) *BrotliDecoderDecompressStream;
    __typeof__(BrotliDecoderGetErrorCode) *BrotliDecoderGetErrorCode;
    __typeof__(BrotliDecoderErrorString) *BrotliDecoderErrorString;
} brotli;

static struct {
    __typeof__(ZSTD_compressBound) *ZSTD_compressBound;
    __typeof__(ZSTD_compress) *ZSTD_compress;
    __typeof__(ZSTD_isError) *ZSTD_isError;
    __typeof__(ZSTD_getErrorName) *ZSTD_getErrorName;
    __typeof__(ZSTD_createDCtx) *ZSTD_createDCtx;
    __typeof__(ZSTD_freeDCtx) *ZSTD_freeDCtx;
    __typeof__(ZSTD_decompressStream) *ZSTD_decompressStream;
} zstd;

static pthread_once_t brotli_loading = PTHREAD_ONCE_INIT, zstd_loading = PTHREAD_ONCE_INIT;
static char brotli_failure[300], zstd_failure[300];
/* NULL once loaded, else the reason it failed; written only by the loader, under pthread_once. */
static const char *brotli_result, *zstd_result;

/* A function to find in a library, and where its address goes. */
struct symbol {
    const char *name;
    void **slot;
};

/* Opens `file` and finds each of `symbols` in it (up to the one without a name). Returns NULL, or the reason it failed,
 * written into `failure`. The library stays loaded for the process's life. */
static const char *open_library(const char *file, const char *package, const struct symbol *symbols, char *failure,
                                size_t size) {
    void *library = dlopen(file, RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        snprintf(failure, size, "this needs %s (Debian's %s): %s", file, package, dlerror());
        return failure;
    }
    for (; symbols->name != NULL; symbols++) {
        /* POSIX guarantees a function's address survives the trip through `void *` (dlsym's contract). */
        if ((*symbols->slot = dlsym(library, symbols->name)) == NULL) {
            snprintf(failure, size, "%s has no %s", file, symbols->name);
            return failure;
        }
    }
    return NULL;
}

#define SLOT(table, name) {#name, (void **)&table.name}

static void load_brotli(void) {
    const struct symbol encoder[] = {SLOT(brotli, BrotliEncoderMaxCompressedSize), SLOT(brotli, BrotliEncoderCompress),
                                     {NULL, NULL}};
    const struct symbol decoder[] = {
        SLOT(brotli, BrotliDecoderCreateInstance), SLOT(brotli, BrotliDecoderDestroyInstance),
        SLOT(brotli, BrotliDecoderDecompressStream), SLOT(brotli, BrotliDecoderGetErrorCode),
        SLOT(brotli, BrotliDecoderErrorString), {NULL, NULL}};
    brotli_result = open_library("libbrotlienc.so.1", "libbrotli1", encoder, brotli_failure, sizeof(brotli_failure));
    if (brotli_result == NULL)
        brotli_result = open_library("libbrotlidec.so.1", "libbrotli1", decoder, brotli_failure, sizeof(brotli_failure));
}

static void load_zstd(void) {
    const struct symbol symbols[] = {SLOT(zstd, ZSTD_compressBound), SLOT(zstd, ZSTD_compress), SLOT(zstd, ZSTD_isError),
                                     SLOT(zstd, ZSTD_getErrorName), SLOT(zstd, ZSTD_createDCtx), SLOT(zstd, ZSTD_freeDCtx),
                                     SLOT(zstd, ZSTD_decompressStream), {NULL, NULL}};
    zstd_result = open_library("libzstd.so.1", "libzstd1", symbols, zstd_failure, sizeof(zstd_failure));
}
#undef SLOT

/* pthread_once orders the loader's writes before every caller's reads of the tables. */
const char *ccompression_brotli_load(void) {
    pthread_once(&brotli_loading, load_brotli);
    return brotli_result;
}

const char *ccompression_zstd_load(void) {
    pthread_once(&zstd_loading, load_zstd);
    return zstd_result;
}

size_t ccompression_BrotliEncoderMaxCompressedSize(size_t input_size) {
    return brotli.BrotliEncoderMaxCompressedSize(input_size);
}

BROTLI_BOOL ccompression_BrotliEncoderCompress(int quality, int lgwin, BrotliEncoderMode mode, size_t input_size,
                                               const uint8_t *input, size_t *encoded_size, uint8_t *encoded) {
    return brotli.BrotliEncoderCompress(quality, lgwin, mode, input_size, input, encoded_size, encoded);
}

BrotliDecoderState *ccompression_BrotliDecoderCreateInstance(void) {
    return brotli.BrotliDecoderCreateInstance(NULL, NULL, NULL);
}

void ccompression_BrotliDecoderDestroyInstance(BrotliDecoderState *state) { brotli.BrotliDecoderDestroyInstance(state); }

BrotliDecoderResult ccompression_BrotliDecoderDecompressStream(BrotliDecoderState *state, size_t *available_in,
                                                               const uint8_t **next_in, size_t *available_out,
                                                               uint8_t **next_out) {
    return brotli.BrotliDecoderDecompressStream(state, available_in, next_in, available_out, next_out, NULL);
}

const char *ccompression_BrotliDecoderError(const BrotliDecoderState *state) {
    return brotli.BrotliDecoderErrorString(brotli.BrotliDecoderGetErrorCode(state));
}

size_t ccompression_ZSTD_compressBound(size_t size) { return zstd.ZSTD_compressBound(size); }

size_t ccompression_ZSTD_compress(void *dst, size_t capacity, const void *src, size_t size, int level) {
    return zstd.ZSTD_compress(dst, capacity, src, size, level);
}

unsigned ccompression_ZSTD_isError(size_t code) { return zstd.ZSTD_isError(code); }

const char *ccompression_ZSTD_getErrorName(size_t code) { return zstd.ZSTD_getErrorName(code); }

ZSTD_DCtx *ccompression_ZSTD_createDCtx(void) { return zstd.ZSTD_createDCtx(); }

size_t ccompression_ZSTD_freeDCtx(ZSTD_DCtx *context) { return zstd.ZSTD_freeDCtx(context); }

size_t ccompression_ZSTD_decompressStream(ZSTD_DCtx *context, ZSTD_outBuffer *output, ZSTD_inBuffer *input) {
    return zstd.ZSTD_decompressStream(context, output, input);
}
