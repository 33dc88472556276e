#ifndef CHIREDIS_SHIM_H
#define CHIREDIS_SHIM_H
#include <hiredis/hiredis.h>
#include <errno.h>
#include <limits.h>
#include <string.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

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

/* TLS for `rediss://`. hiredis 0.14 (Debian 12's) has no TLS, so the worker opens the TCP connection with hiredis,
 * runs OpenSSL's handshake on its socket, and then moves bytes between the socket and hiredis's output buffer and
 * reader itself: these two stand in for `redisBufferWrite` and `redisBufferRead` and keep their contract (REDIS_OK /
 * REDIS_ERR, the context's `err` and `errstr` set on failure, a timeout a REDIS_ERR_IO with errno EAGAIN). */

static inline void chiredis_set_error(redisContext *c, int type, const char *text) {
    c->err = type;
    strncpy(c->errstr, text, sizeof(c->errstr) - 1);
    c->errstr[sizeof(c->errstr) - 1] = '\0';
}

/* What went wrong in an OpenSSL call that returned `result`, in the context's error (OpenSSL's own reason text). */
static inline void chiredis_tls_fail(redisContext *c, SSL *ssl, int result, int saved_errno) {
    int code = SSL_get_error(ssl, result);
    unsigned long queued = ERR_peek_last_error();
    if (code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE ||
        (code == SSL_ERROR_SYSCALL && queued == 0 && (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK))) {
        errno = EAGAIN; /* the socket's timeout ran out, as a plain read's EAGAIN */
        chiredis_set_error(c, REDIS_ERR_IO, "Resource temporarily unavailable");
    } else if (code == SSL_ERROR_ZERO_RETURN || (code == SSL_ERROR_SYSCALL && queued == 0 && saved_errno == 0)) {
        chiredis_set_error(c, REDIS_ERR_EOF, "Server closed the connection");
    } else if (code == SSL_ERROR_SYSCALL && queued == 0) {
        errno = saved_errno;
        chiredis_set_error(c, REDIS_ERR_IO, strerror(saved_errno));
    } else {
        char reason[200];
        ERR_error_string_n(queued, reason, sizeof(reason));
        chiredis_set_error(c, REDIS_ERR_IO, reason);
    }
    ERR_clear_error();
}

/* Writes what hiredis's output buffer holds through `ssl`, as `redisBufferWrite` writes it to the socket. */
static inline int chiredis_tls_write(redisContext *c, SSL *ssl, int *done) {
    if (c->err) return REDIS_ERR;
    size_t length = sdslen(c->obuf);
    if (length > 0) {
        ERR_clear_error();
        errno = 0;
        int written = SSL_write(ssl, c->obuf, length > INT_MAX ? INT_MAX : (int)length);
        if (written <= 0) {
            chiredis_tls_fail(c, ssl, written, errno);
            return REDIS_ERR;
        }
        if ((size_t)written == length) {
            sdsclear(c->obuf);
        } else {
            sdsrange(c->obuf, written, -1);
        }
    }
    if (done != NULL) *done = (sdslen(c->obuf) == 0);
    return REDIS_OK;
}

/* Reads one TLS record (blocking, within the socket's timeout) and hands what it held, and every decrypted byte
 * OpenSSL still holds, to hiredis's reader, as `redisBufferRead` reads the socket: nothing is left decrypted inside
 * OpenSSL, so a `poll` on the socket tells whether more can be read. A record that is not data (a TLS 1.3 session
 * ticket) reads nothing and is not an error. */
static inline int chiredis_tls_read(redisContext *c, SSL *ssl) {
    char buffer[1024 * 16];
    if (c->err) return REDIS_ERR;
    do {
        ERR_clear_error();
        errno = 0;
        int count = SSL_read(ssl, buffer, sizeof(buffer));
        if (count <= 0) {
            int saved_errno = errno;
            if (SSL_get_error(ssl, count) == SSL_ERROR_WANT_READ && saved_errno != EAGAIN && saved_errno != EWOULDBLOCK)
                return REDIS_OK; /* a handshake record, no data: the caller reads again or polls */
            chiredis_tls_fail(c, ssl, count, saved_errno);
            return REDIS_ERR;
        }
        if (redisReaderFeed(c->reader, buffer, (size_t)count) != REDIS_OK) {
            chiredis_set_error(c, c->reader->err, c->reader->errstr);
            return REDIS_ERR;
        }
    } while (SSL_pending(ssl) > 0);
    return REDIS_OK;
}

/* OpenSSL's macros, as functions Swift can call. */
static inline long chiredis_tls_context_setup(SSL_CTX *context) {
    SSL_CTX_set_options(context, SSL_OP_IGNORE_UNEXPECTED_EOF);
    SSL_CTX_clear_mode(context, SSL_MODE_AUTO_RETRY);
    return SSL_CTX_set_mode(context, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
}

static inline int chiredis_tls_set_server_name(SSL *ssl, const char *name) {
    return (int)SSL_set_tlsext_host_name(ssl, name);
}

/* The text of the last OpenSSL error queued on this thread (cleared), or `fallback` when none is. */
static inline void chiredis_tls_last_error(char *text, size_t size, const char *fallback) {
    unsigned long queued = ERR_peek_last_error();
    if (queued == 0) {
        strncpy(text, fallback, size - 1);
        text[size - 1] = '\0';
    } else {
        ERR_error_string_n(queued, text, size);
    }
    ERR_clear_error();
}

#endif
