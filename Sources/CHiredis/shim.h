#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <string.h>

/* The worker reads replies from the reader's buffer itself (RESPReader); this drops the bytes it read up to `next`,
 * as hiredis's reader drops them: all of them once all are read, else the part read once it is 1 kB or more. In C,
 * so that it compiles against hiredis 0.14 and 1.x alike (`sdsrange` takes `int` in one and `ssize_t` in the other). */
static inline void chiredis_reader_consume(redisReader *reader, size_t next) {
    if (next >= reader->len) {
        sdsclear(reader->buf);
        reader->pos = 0;
        reader->len = 0;
    } else if (next >= 1024) {
        sdsrange(reader->buf, next, -1);
        reader->pos = 0;
        reader->len = sdslen(reader->buf);
    } else {
        reader->pos = next;
    }
}

/* For TLS, where the worker moves the bytes itself (hiredis 0.14 has no TLS): the length of hiredis's output buffer,
 * and dropping the first `count` bytes of it once they are written, as `redisBufferWrite` does. */
static inline size_t chiredis_output_length(redisContext *c) { return sdslen(c->obuf); }

static inline void chiredis_output_consume(redisContext *c, size_t count) {
    if (count >= sdslen(c->obuf)) {
        sdsclear(c->obuf);
    } else {
        sdsrange(c->obuf, count, -1);
    }
}

/* Marks the context failed with `type` (REDIS_ERR_IO, REDIS_ERR_EOF, …) and `text`, as hiredis marks it. */
static inline void chiredis_set_error(redisContext *c, int type, const char *text) {
    c->err = type;
    strncpy(c->errstr, text, sizeof(c->errstr) - 1);
    c->errstr[sizeof(c->errstr) - 1] = '\0';
}

#endif
