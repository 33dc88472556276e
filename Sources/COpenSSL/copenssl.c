#define _GNU_SOURCE
#include "copenssl.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* OpenSSL's functions, found in libssl.so.3 (and, through it, libcrypto.so.3) on first use. Each member has the type
 * of the function it points to, from OpenSSL's own headers. */
static struct {
    __typeof__(TLS_client_method) *TLS_client_method;
    __typeof__(SSL_CTX_new) *SSL_CTX_new;
    __typeof__(SSL_CTX_free) *SSL_CTX_free;
    __typeof__(SSL_CTX_set_options) *SSL_CTX_set_options;
    __typeof__(SSL_CTX_ctrl) *SSL_CTX_ctrl;
    __typeof__(SSL_CTX_set_verify) *SSL_CTX_set_verify;
    __typeof__(SSL_CTX_load_verify_locations) *SSL_CTX_load_verify_locations;
    __typeof__(SSL_CTX_set_default_verify_paths) *SSL_CTX_set_default_verify_paths;
    __typeof__(SSL_CTX_use_certificate_chain_file) *SSL_CTX_use_certificate_chain_file;
    __typeof__(SSL_CTX_use_PrivateKey_file) *SSL_CTX_use_PrivateKey_file;
    __typeof__(SSL_CTX_check_private_key) *SSL_CTX_check_private_key;
    __typeof__(SSL_CTX_set_default_passwd_cb) *SSL_CTX_set_default_passwd_cb;
    __typeof__(SSL_CTX_set_default_passwd_cb_userdata) *SSL_CTX_set_default_passwd_cb_userdata;
    __typeof__(SSL_CTX_set_cipher_list) *SSL_CTX_set_cipher_list;
    __typeof__(SSL_new) *SSL_new;
    __typeof__(SSL_free) *SSL_free;
    __typeof__(SSL_set_fd) *SSL_set_fd;
    __typeof__(SSL_ctrl) *SSL_ctrl;
    __typeof__(SSL_get0_param) *SSL_get0_param;
    __typeof__(X509_VERIFY_PARAM_set1_host) *X509_VERIFY_PARAM_set1_host;
    __typeof__(X509_VERIFY_PARAM_set1_ip_asc) *X509_VERIFY_PARAM_set1_ip_asc;
    __typeof__(SSL_connect) *SSL_connect;
    __typeof__(SSL_get_verify_result) *SSL_get_verify_result;
    __typeof__(X509_verify_cert_error_string) *X509_verify_cert_error_string;
    __typeof__(SSL_get_error) *SSL_get_error;
    __typeof__(SSL_read) *SSL_read;
    __typeof__(SSL_write) *SSL_write;
    __typeof__(SSL_pending) *SSL_pending;
    __typeof__(SSL_shutdown) *SSL_shutdown;
    __typeof__(ERR_peek_last_error) *ERR_peek_last_error;
    __typeof__(ERR_error_string_n) *ERR_error_string_n;
    __typeof__(ERR_clear_error) *ERR_clear_error;
    __typeof__(BIO_new_mem_buf) *BIO_new_mem_buf;
    __typeof__(BIO_free) *BIO_free;
    __typeof__(PEM_read_bio_X509) *PEM_read_bio_X509;
    __typeof__(X509_free) *X509_free;
    __typeof__(SSL_CTX_get_cert_store) *SSL_CTX_get_cert_store;
    __typeof__(X509_STORE_add_cert) *X509_STORE_add_cert;
    __typeof__(SSL_CTX_get0_param) *SSL_CTX_get0_param;
    __typeof__(X509_VERIFY_PARAM_set_flags) *X509_VERIFY_PARAM_set_flags;
    __typeof__(X509_VERIFY_PARAM_clear_flags) *X509_VERIFY_PARAM_clear_flags;
} openssl;

static pthread_once_t loading = PTHREAD_ONCE_INIT;
static char load_failure[256];

static void load(void) {
    void *library = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        snprintf(load_failure, sizeof(load_failure), "TLS needs OpenSSL 3 (libssl.so.3, Debian's libssl3): %s", dlerror());
        return;
    }
#define FIND(name)                                                                                                     \
    if ((openssl.name = (__typeof__(openssl.name))dlsym(library, #name)) == NULL) {                                   \
        snprintf(load_failure, sizeof(load_failure), "libssl.so.3 has no %s: OpenSSL 3 is needed for TLS", #name);     \
        return;                                                                                                        \
    }
    FIND(TLS_client_method) FIND(SSL_CTX_new) FIND(SSL_CTX_free) FIND(SSL_CTX_set_options) FIND(SSL_CTX_ctrl)
    FIND(SSL_CTX_set_verify) FIND(SSL_CTX_load_verify_locations) FIND(SSL_CTX_set_default_verify_paths)
    FIND(SSL_CTX_use_certificate_chain_file) FIND(SSL_CTX_use_PrivateKey_file) FIND(SSL_CTX_check_private_key)
    FIND(SSL_CTX_set_default_passwd_cb) FIND(SSL_CTX_set_default_passwd_cb_userdata) FIND(SSL_CTX_set_cipher_list)
    FIND(SSL_new) FIND(SSL_free) FIND(SSL_set_fd) FIND(SSL_ctrl) FIND(SSL_get0_param) FIND(X509_VERIFY_PARAM_set1_host)
    FIND(X509_VERIFY_PARAM_set1_ip_asc) FIND(SSL_connect) FIND(SSL_get_verify_result)
    FIND(X509_verify_cert_error_string) FIND(SSL_get_error) FIND(SSL_read) FIND(SSL_write) FIND(SSL_pending)
    FIND(SSL_shutdown) FIND(ERR_peek_last_error) FIND(ERR_error_string_n) FIND(ERR_clear_error)
    FIND(BIO_new_mem_buf) FIND(BIO_free) FIND(PEM_read_bio_X509) FIND(X509_free) FIND(SSL_CTX_get_cert_store)
    FIND(X509_STORE_add_cert) FIND(SSL_CTX_get0_param) FIND(X509_VERIFY_PARAM_set_flags)
    FIND(X509_VERIFY_PARAM_clear_flags)
#undef FIND
}

/* OpenSSL's reason for the last failure on this thread (the queue is then cleared), or `fallback`. */
static void reason(char *error, size_t size, const char *doing, const char *fallback) {
    char text[200];
    unsigned long code = openssl.ERR_peek_last_error();
    if (code != 0) {
        openssl.ERR_error_string_n(code, text, sizeof(text));
    } else {
        snprintf(text, sizeof(text), "%s", fallback);
    }
    openssl.ERR_clear_error();
    snprintf(error, size, "%s%s%s", doing, doing[0] ? ": " : "", text);
}

/* The passphrase of an encrypted key: the one given, or none. OpenSSL's own callback would ask for it on the
 * terminal, and a worker started from one would wait there. */
static int give_password(char *buffer, int size, int writing, void *password) {
    (void)writing;
    if (password == NULL || size <= 0) return 0;
    size_t length = strlen((const char *)password);
    if (length > (size_t)size) return 0;
    memcpy(buffer, password, length);
    return (int)length;
}

/* Adds the PEM certificates of `pem` to the context's trusted authorities, as Python's `load_verify_locations(cadata=…)`
 * reads a string: at least one, and nothing but certificates. Returns 1, or 0 with OpenSSL's reason queued. */
static int add_authorities(SSL_CTX *context, const char *pem) {
    BIO *bio = openssl.BIO_new_mem_buf(pem, -1);
    if (bio == NULL) return 0;
    X509_STORE *store = openssl.SSL_CTX_get_cert_store(context);
    int added = 0;
    X509 *certificate;
    while ((certificate = openssl.PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
        int stored = openssl.X509_STORE_add_cert(store, certificate);
        openssl.X509_free(certificate);
        if (stored != 1) {
            openssl.BIO_free(bio);
            return 0;
        }
        added++;
    }
    openssl.BIO_free(bio);
    /* The read that ends the loop queues "no start line" at the end of the text: the expected end, once one was read. */
    unsigned long last = openssl.ERR_peek_last_error();
    if (added == 0 || ERR_GET_LIB(last) != ERR_LIB_PEM || ERR_GET_REASON(last) != PEM_R_NO_START_LINE) return 0;
    openssl.ERR_clear_error();
    return 1;
}

copenssl_context *copenssl_context_new(int verify, const char *ca_file, const char *ca_path, const char *ca_data,
                                       const char *certificate, const char *key, const char *password,
                                       const char *ciphers, int min_version, unsigned long include_flags,
                                       unsigned long exclude_flags, char *error, size_t size) {
    pthread_once(&loading, load);
    if (load_failure[0] != '\0') {
        snprintf(error, size, "%s", load_failure);
        return NULL;
    }
    SSL_CTX *context = openssl.SSL_CTX_new(openssl.TLS_client_method());
    if (context == NULL) {
        reason(error, size, "cannot create an OpenSSL context", "no reason given");
        return NULL;
    }
    /* A server that closes without close_notify reads as a close, not an error; a record without data (a session
     * ticket) returns from a read instead of blocking for the next; a write may send part of the buffer. */
    openssl.SSL_CTX_set_options(context, SSL_OP_IGNORE_UNEXPECTED_EOF);
    openssl.SSL_CTX_ctrl(context, SSL_CTRL_CLEAR_MODE, SSL_MODE_AUTO_RETRY, NULL);
    openssl.SSL_CTX_ctrl(context, SSL_CTRL_MODE, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER, NULL);
    openssl.SSL_CTX_set_verify(context, verify == COPENSSL_VERIFY_PEER ? SSL_VERIFY_PEER : SSL_VERIFY_NONE, NULL);
    char doing[PATH_MAX + 64];
    if (ciphers != NULL && openssl.SSL_CTX_set_cipher_list(context, ciphers) != 1) {
        snprintf(doing, sizeof(doing), "cannot use the ciphers '%.200s'", ciphers);
        goto failed;
    }
    if (min_version != 0 && openssl.SSL_CTX_ctrl(context, SSL_CTRL_SET_MIN_PROTO_VERSION, min_version, NULL) != 1) {
        snprintf(doing, sizeof(doing), "cannot set the minimum TLS version %d", min_version);
        goto failed;
    }
    if (ca_file != NULL || ca_path != NULL) {
        if (openssl.SSL_CTX_load_verify_locations(context, ca_file, ca_path) != 1) {
            snprintf(doing, sizeof(doing), "cannot load the certificate authorities from %s%s%s", ca_file ? ca_file : "",
                     ca_file && ca_path ? " and " : "", ca_path ? ca_path : "");
            goto failed;
        }
    }
    if (ca_data != NULL && !add_authorities(context, ca_data)) {
        snprintf(doing, sizeof(doing), "cannot load the certificate authorities of ssl_ca_data");
        goto failed;
    }
    /* As Python's `verify_flags |= flag` for each included flag, then `&= ~flag` for each excluded one. */
    X509_VERIFY_PARAM *parameters = openssl.SSL_CTX_get0_param(context);
    if (include_flags != 0) openssl.X509_VERIFY_PARAM_set_flags(parameters, include_flags);
    if (exclude_flags != 0) openssl.X509_VERIFY_PARAM_clear_flags(parameters, exclude_flags);
    if (ca_file == NULL && ca_path == NULL && ca_data == NULL && verify == COPENSSL_VERIFY_PEER) {
        openssl.SSL_CTX_set_default_verify_paths(context);
    }
    if (certificate != NULL) {
        if (key == NULL) key = certificate;
        openssl.SSL_CTX_set_default_passwd_cb(context, give_password);
        openssl.SSL_CTX_set_default_passwd_cb_userdata(context, (void *)password);
        if (openssl.SSL_CTX_use_certificate_chain_file(context, certificate) != 1) {
            snprintf(doing, sizeof(doing), "cannot load the client certificate %s", certificate);
            goto failed;
        }
        int loaded = openssl.SSL_CTX_use_PrivateKey_file(context, key, SSL_FILETYPE_PEM);
        openssl.SSL_CTX_set_default_passwd_cb_userdata(context, NULL); /* the caller's string is not kept */
        if (loaded != 1) {
            snprintf(doing, sizeof(doing), "cannot load the client key %s%s", key,
                     password == NULL ? " (if it is encrypted, ssl_password gives its passphrase)" : "");
            goto failed;
        }
        if (openssl.SSL_CTX_check_private_key(context) != 1) {
            snprintf(doing, sizeof(doing), "the client key %s does not match the certificate %s", key, certificate);
            goto failed;
        }
    }
    return (copenssl_context *)context;
failed:
    reason(error, size, doing, "no reason given");
    openssl.SSL_CTX_free(context);
    return NULL;
}

void copenssl_context_free(copenssl_context *context) {
    if (context != NULL) openssl.SSL_CTX_free((SSL_CTX *)context);
}

copenssl_session *copenssl_connect(copenssl_context *context, int socket, const char *host, int check_host,
                                   int *timed_out, char *error, size_t size) {
    *timed_out = 0;
    SSL *session = openssl.SSL_new((SSL_CTX *)context);
    if (session == NULL) {
        reason(error, size, "cannot create a TLS session", "no reason given");
        return NULL;
    }
    unsigned char address[sizeof(struct in6_addr)];
    int is_address = inet_pton(AF_INET, host, address) == 1 || inet_pton(AF_INET6, host, address) == 1;
    if (!is_address) openssl.SSL_ctrl(session, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name, (void *)host);
    if (check_host) {
        X509_VERIFY_PARAM *parameters = openssl.SSL_get0_param(session);
        int named = is_address ? openssl.X509_VERIFY_PARAM_set1_ip_asc(parameters, host)
                               : openssl.X509_VERIFY_PARAM_set1_host(parameters, host, 0);
        if (named != 1) {
            snprintf(error, size, "cannot check the certificate against '%s'", host);
            openssl.SSL_free(session);
            return NULL;
        }
    }
    openssl.SSL_set_fd(session, socket);
    openssl.ERR_clear_error();
    errno = 0;
    int result = openssl.SSL_connect(session);
    if (result == 1) return (copenssl_session *)session;
    int saved_errno = errno;
    long verification = openssl.SSL_get_verify_result(session);
    int code = openssl.SSL_get_error(session, result);
    if (verification != X509_V_OK) {
        snprintf(error, size, "certificate verify failed: %s", openssl.X509_verify_cert_error_string(verification));
        openssl.ERR_clear_error();
    } else if ((code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE || code == SSL_ERROR_SYSCALL) &&
               (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) {
        *timed_out = 1;
        snprintf(error, size, "the handshake timed out (does the server speak TLS on this port?)");
        openssl.ERR_clear_error();
    } else {
        reason(error, size, "", saved_errno != 0 ? strerror(saved_errno) : "the server closed the connection");
    }
    openssl.SSL_free(session);
    return NULL;
}

void copenssl_session_free(copenssl_session *session) {
    if (session == NULL) return;
    openssl.SSL_shutdown((SSL *)session);
    openssl.SSL_free((SSL *)session);
}

/* What a read or write that returned `result` <= 0 means; `error` says it for COPENSSL_FAILED. */
static long failure(SSL *session, int result, int saved_errno, char *error, size_t size) {
    int code = openssl.SSL_get_error(session, result);
    unsigned long queued = openssl.ERR_peek_last_error();
    if ((code == SSL_ERROR_WANT_READ || code == SSL_ERROR_WANT_WRITE || (code == SSL_ERROR_SYSCALL && queued == 0)) &&
        (saved_errno == EAGAIN || saved_errno == EWOULDBLOCK)) {
        openssl.ERR_clear_error();
        errno = EAGAIN;
        return COPENSSL_TIMEOUT;
    }
    if (code == SSL_ERROR_WANT_READ) {
        openssl.ERR_clear_error();
        return COPENSSL_AGAIN;
    }
    if (code == SSL_ERROR_ZERO_RETURN || (code == SSL_ERROR_SYSCALL && queued == 0 && saved_errno == 0)) {
        openssl.ERR_clear_error();
        return COPENSSL_CLOSED;
    }
    if (code == SSL_ERROR_SYSCALL && queued == 0) {
        openssl.ERR_clear_error();
        errno = saved_errno;
        snprintf(error, size, "%s", strerror(saved_errno));
        return COPENSSL_FAILED;
    }
    reason(error, size, "", "no reason given");
    return COPENSSL_FAILED;
}

long copenssl_write(copenssl_session *session, const void *bytes, size_t length, char *error, size_t size) {
    openssl.ERR_clear_error();
    errno = 0;
    int written = openssl.SSL_write((SSL *)session, bytes, length > INT_MAX ? INT_MAX : (int)length);
    if (written > 0) return written;
    long code = failure((SSL *)session, written, errno, error, size);
    /* A write never waits for a record to read (no renegotiation in TLS 1.3): treat "again" as the timeout. */
    return code == COPENSSL_AGAIN ? COPENSSL_TIMEOUT : code;
}

long copenssl_read(copenssl_session *session, void *bytes, size_t capacity, char *error, size_t size) {
    openssl.ERR_clear_error();
    errno = 0;
    int count = openssl.SSL_read((SSL *)session, bytes, capacity > INT_MAX ? INT_MAX : (int)capacity);
    if (count > 0) return count;
    return failure((SSL *)session, count, errno, error, size);
}

int copenssl_pending(copenssl_session *session) { return openssl.SSL_pending((SSL *)session); }
