/* Counts heap allocations for the codec benchmark: preload it (LD_PRELOAD) and read malloc_count_total(). */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stddef.h>
#include <stdint.h>

static uint64_t total;
static void *(*real_malloc)(size_t);
static void *(*real_calloc)(size_t, size_t);
static void *(*real_realloc)(void *, size_t);
static int (*real_posix_memalign)(void **, size_t, size_t);

uint64_t malloc_count_total(void) { return __atomic_load_n(&total, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
    if (!real_malloc) real_malloc = dlsym(RTLD_NEXT, "malloc");
    __atomic_add_fetch(&total, 1, __ATOMIC_RELAXED);
    return real_malloc(size);
}

/* dlsym may call calloc before real_calloc is known: serve that from a small static buffer. */
static char bootstrap[4096];
static size_t bootstrap_used;

void *calloc(size_t count, size_t size) {
    if (!real_calloc) {
        size_t bytes = (count * size + 15) & ~(size_t)15;
        if (bootstrap_used + bytes <= sizeof bootstrap) {
            void *p = bootstrap + bootstrap_used;
            bootstrap_used += bytes;
            return p;
        }
        real_calloc = dlsym(RTLD_NEXT, "calloc");
    }
    __atomic_add_fetch(&total, 1, __ATOMIC_RELAXED);
    return real_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    if ((char *)pointer >= bootstrap && (char *)pointer < bootstrap + sizeof bootstrap) return malloc(size);
    if (!real_realloc) real_realloc = dlsym(RTLD_NEXT, "realloc");
    __atomic_add_fetch(&total, 1, __ATOMIC_RELAXED);
    return real_realloc(pointer, size);
}

int posix_memalign(void **pointer, size_t alignment, size_t size) {
    if (!real_posix_memalign) real_posix_memalign = dlsym(RTLD_NEXT, "posix_memalign");
    __atomic_add_fetch(&total, 1, __ATOMIC_RELAXED);
    return real_posix_memalign(pointer, alignment, size);
}

void free(void *pointer) {
    static void (*real_free)(void *);
    if ((char *)pointer >= bootstrap && (char *)pointer < bootstrap + sizeof bootstrap) return;
    if (!real_free) real_free = dlsym(RTLD_NEXT, "free");
    real_free(pointer);
}
