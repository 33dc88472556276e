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

/* Celery's message signing (the `auth` serializer): RSA keys and X.509 certificates in PEM, and RSA-PSS signatures
 * with MGF1 over the message digest and the longest salt the key allows, as Python's `cryptography` makes them
 * (`celery/security`). Keys, certificates and digests may be used by several threads at once: signing and
 * verifying only read them (OpenSSL 3's rule for an EVP_PKEY, X509 or EVP_MD that is no longer changed). */
typedef struct copenssl_key copenssl_key;
typedef struct copenssl_certificate copenssl_certificate;
typedef struct copenssl_digest copenssl_digest;

/* A message digest by OpenSSL's name (`sha256`, `sha3-256`, `sha512-224` …), or NULL when OpenSSL has none of that
 * name (`error` says so, or why OpenSSL could not be loaded). */
const copenssl_digest *copenssl_digest_named(const char *name, char *error, size_t size);

/* The first private key of `pem`, decrypted with `password` (NULL: none) when it is encrypted; RSA keys only. */
copenssl_key *copenssl_key_load(const char *pem, const char *password, char *error, size_t size);
void copenssl_key_free(copenssl_key *key);
/* Signs `length` bytes into `signature` (`capacity` bytes; the key's size in bytes is enough). Returns the
 * signature's length, or -1. */
long copenssl_sign(const copenssl_key *key, const copenssl_digest *digest, const void *data, size_t length,
                   void *signature, size_t capacity, char *error, size_t size);
/* The size of the key's signatures, in bytes. */
long copenssl_key_signature_size(const copenssl_key *key);

/* The first certificate of `pem`; certificates of RSA keys only. */
copenssl_certificate *copenssl_certificate_load(const char *pem, char *error, size_t size);
void copenssl_certificate_free(copenssl_certificate *certificate);
/* Celery's id of a certificate (`Certificate.get_id`): the values of the issuer's attributes in their order, each
 * followed by a space, then the serial number in decimal. Returns its length, or -1 when `capacity` is too small. */
long copenssl_certificate_id(const copenssl_certificate *certificate, char *buffer, size_t capacity);
/* The size in bits of the certificate's key. */
int copenssl_certificate_key_bits(const copenssl_certificate *certificate);
/* Whether the certificate's `notAfter` is now or past (Celery's `Certificate.has_expired`). */
int copenssl_certificate_expired(const copenssl_certificate *certificate);
/* Whether the certificate's key verifies `signature` over `length` bytes of `data`: 1, or 0 with `error` set. */
int copenssl_verify(const copenssl_certificate *certificate, const copenssl_digest *digest, const void *data,
                    size_t length, const void *signature, size_t signature_length, char *error, size_t size);

#endif
