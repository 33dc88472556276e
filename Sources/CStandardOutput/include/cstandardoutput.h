#ifndef CSTANDARDOUTPUT_H
#define CSTANDARDOUTPUT_H

#include <stddef.h>
#include <stdio.h>
#include <sys/types.h>

/// Receives what is written to the C library's `stdout` once `celery_stdout_redirect` has replaced it: `size` bytes
/// at `buffer`, once per write (an unbuffered stream: each `fwrite`, each `printf`). Returns how many it took.
typedef ssize_t (*celery_stdout_writer)(void *context, const char *buffer, size_t size);

/// Replaces the C library's `stdout` stream (which Swift's `print`, `printf` and `puts` write to) with an unbuffered
/// stream that hands what is written to `writer`. The standard output descriptor itself is left as it is. A write
/// made while `writer` runs on the same thread (a log handler that prints) goes straight to the descriptor instead,
/// so the writer is never re-entered. Returns 0, or -1 with `errno` set when the stream cannot be made.
int celery_stdout_redirect(void *context, celery_stdout_writer writer);

#endif
