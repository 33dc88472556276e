#ifndef COPENSSL_H
#define COPENSSL_H
#include <stddef.h>

/* TLS client sessions over a connected socket, with OpenSSL 3 loaded at run time (dlopen) the first time TLS is
 * asked for: a worker that never speaks TLS does not map libssl and libcrypto (about 1.7 MB of resident memory).
 * Every function that can fail writes a sentence into `error` (`size` bytes). Each session is used by one thread at
 * a time; contexts may be shared. */

typedef struct copenssl_context copenssl_context;
typedef struct copenssl_session copenssl_session;

/* Server certificate checks: none, or the certificate must verify (Python's CERT_OPTIONAL and CERT_REQUIRED alike,
 * for a client). */
enum { COPENSSL_VERIFY_NONE = 0, COPENSSL_VERIFY_PEER = 1 };

/* A client context. `ca_file` / `ca_path` / `ca_data` (any may be NULL; `ca_data` is PEM text of one or more
 * certificates) replace the system's authorities when given;
 * `certificate` / `key` (NULL: none; the key defaults to the certificate's file) are the client's, and `password`
 * (NULL: none) the passphrase of an encrypted key, which is never asked for on a terminal. `ciphers` (NULL: OpenSSL's
 * default) is an OpenSSL cipher list for TLS 1.2 and older; `min_version` (0: OpenSSL's default) the lowest protocol
 * version, by OpenSSL's numbers (TLS 1.2 is 0x0303), which are Python's `ssl.TLSVersion` values too.
 * `include_flags` and `exclude_flags` (X509_V_FLAG_*, Python's `ssl.VerifyFlags` values) are set, then cleared, on
 * the certificate checks. */
copenssl_context *copenssl_context_new(int verify, const char *ca_file, const char *ca_path, const char *ca_data,
                                       const char *certificate, const char *key, const char *password,
                                       const char *ciphers, int min_version, unsigned long include_flags,
                                       unsigned long exclude_flags, char *error, size_t size);
void copenssl_context_free(copenssl_context *context);

/* Runs the handshake on `socket` (blocking, within the socket's timeouts) with `host`, whose name or IP address the
 * certificate must carry when `check_host` is set. `timed_out` is set when it failed for the socket's timeout. */
copenssl_session *copenssl_connect(copenssl_context *context, int socket, const char *host, int check_host,
                                   int *timed_out, char *error, size_t size);
/* Sends close_notify without waiting for the answer, and frees the session (the socket stays open). */
void copenssl_session_free(copenssl_session *session);

/* What a read or write that did not move bytes means. */
enum {
    COPENSSL_AGAIN = -1,   /* no data: a TLS record that held none (a TLS 1.3 session ticket); read again or poll */
    COPENSSL_TIMEOUT = -2, /* the socket's timeout ran out (errno is EAGAIN) */
    COPENSSL_CLOSED = -3,  /* the server closed the connection */
    COPENSSL_FAILED = -4,  /* anything else: `error` says what */
};

/* Writes up to `length` bytes; returns how many, or one of the codes above. */
long copenssl_write(copenssl_session *session, const void *bytes, size_t length, char *error, size_t size);
/* Reads one record's worth, up to `capacity` bytes; returns how many, or one of the codes above. */
long copenssl_read(copenssl_session *session, void *bytes, size_t capacity, char *error, size_t size);
/* How many decrypted bytes the session holds that a read returns without touching the socket. */
int copenssl_pending(copenssl_session *session);

#endif
