#define _GNU_SOURCE
#include "cstandardoutput.h"

#include <errno.h>
#include <unistd.h>

static celery_stdout_writer redirected_writer;
/// Set while the writer runs on this thread.
static _Thread_local int writing;

static ssize_t write_descriptor(const char *buffer, size_t size) {
    size_t written = 0;
    while (written < size) {
        ssize_t count = write(STDOUT_FILENO, buffer + written, size - written);
        if (count < 0) {
            if (errno == EINTR) continue;
            return written > 0 ? (ssize_t)written : -1;
        }
        written += (size_t)count;
    }
    return (ssize_t)written;
}

static ssize_t cookie_write(void *context, const char *buffer, size_t size) {
    if (writing) return write_descriptor(buffer, size);
    writing = 1;
    ssize_t taken = redirected_writer(context, buffer, size);
    writing = 0;
    return taken;
}

int celery_stdout_redirect(void *context, celery_stdout_writer writer) {
#ifndef __GLIBC__
    // fopencookie is glibc's; elsewhere the stream stays as it is.
    (void)context;
    (void)writer;
    (void)cookie_write;
    errno = ENOSYS;
    return -1;
#else
    cookie_io_functions_t functions = {.read = NULL, .write = cookie_write, .seek = NULL, .close = NULL};
    redirected_writer = writer;
    FILE *stream = fopencookie(context, "w", functions);
    if (stream == NULL) return -1;
    setvbuf(stream, NULL, _IONBF, 0);
    fflush(stdout);
    stdout = stream;
    return 0;
#endif
}
