#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>

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
#endif
