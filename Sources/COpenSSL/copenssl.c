#define _GNU_SOURCE
#include "copenssl.h"

#include <arpa/inet.h>
#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
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
    /* Message signing's, from libcrypto. */
    __typeof__(EVP_get_digestbyname) *EVP_get_digestbyname;
    __typeof__(EVP_MD_get_size) *EVP_MD_get_size;
    __typeof__(PEM_read_bio_PrivateKey) *PEM_read_bio_PrivateKey;
    __typeof__(EVP_PKEY_free) *EVP_PKEY_free;
    __typeof__(EVP_PKEY_get_base_id) *EVP_PKEY_get_base_id;
    __typeof__(EVP_PKEY_get_bits) *EVP_PKEY_get_bits;
    __typeof__(EVP_PKEY_get_size) *EVP_PKEY_get_size;
    __typeof__(X509_get0_pubkey) *X509_get0_pubkey;
    __typeof__(X509_get_issuer_name) *X509_get_issuer_name;
    __typeof__(X509_NAME_entry_count) *X509_NAME_entry_count;
    __typeof__(X509_NAME_get_entry) *X509_NAME_get_entry;
    __typeof__(X509_NAME_ENTRY_get_data) *X509_NAME_ENTRY_get_data;
    __typeof__(ASN1_STRING_to_UTF8) *ASN1_STRING_to_UTF8;
    __typeof__(CRYPTO_free) *CRYPTO_free;
    __typeof__(X509_get0_serialNumber) *X509_get0_serialNumber;
    __typeof__(ASN1_INTEGER_to_BN) *ASN1_INTEGER_to_BN;
    __typeof__(BN_bn2dec) *BN_bn2dec;
    __typeof__(BN_free) *BN_free;
    __typeof__(X509_get0_notAfter) *X509_get0_notAfter;
    __typeof__(X509_cmp_current_time) *X509_cmp_current_time;
    __typeof__(EVP_MD_CTX_new) *EVP_MD_CTX_new;
    __typeof__(EVP_MD_CTX_free) *EVP_MD_CTX_free;
    __typeof__(EVP_DigestSignInit) *EVP_DigestSignInit;
    __typeof__(EVP_DigestSign) *EVP_DigestSign;
    __typeof__(EVP_DigestVerifyInit) *EVP_DigestVerifyInit;
    __typeof__(EVP_DigestVerify) *EVP_DigestVerify;
    __typeof__(EVP_PKEY_CTX_set_rsa_padding) *EVP_PKEY_CTX_set_rsa_padding;
    __typeof__(EVP_PKEY_CTX_set_rsa_pss_saltlen) *EVP_PKEY_CTX_set_rsa_pss_saltlen;
    __typeof__(EVP_PKEY_CTX_set_rsa_mgf1_md) *EVP_PKEY_CTX_set_rsa_mgf1_md;
} openssl;

static pthread_once_t loading = PTHREAD_ONCE_INIT;
static char load_failure[256];

static void load(void) {
    void *library = dlopen("libssl.so.3", RTLD_NOW | RTLD_LOCAL);
    if (library == NULL) {
        snprintf(load_failure, sizeof(load_failure), "TLS and message signing need OpenSSL 3 (libssl.so.3, Debian's libssl3): %s", dlerror());
        return;
    }
#define FIND(name)                                                                                                     \
    if ((openssl.name = (__typeof__(openssl.name))dlsym(library, #name)) == NULL) {                                   \
        snprintf(load_failure, sizeof(load_failure), "libssl.so.3 has no %s: TLS and message signing need OpenSSL 3", #name);     \
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
    FIND(EVP_get_digestbyname) FIND(EVP_MD_get_size) FIND(PEM_read_bio_PrivateKey) FIND(EVP_PKEY_free)
    FIND(EVP_PKEY_get_base_id) FIND(EVP_PKEY_get_bits) FIND(EVP_PKEY_get_size) FIND(X509_get0_pubkey)
    FIND(X509_get_issuer_name) FIND(X509_NAME_entry_count) FIND(X509_NAME_get_entry) FIND(X509_NAME_ENTRY_get_data)
    FIND(ASN1_STRING_to_UTF8) FIND(CRYPTO_free) FIND(X509_get0_serialNumber) FIND(ASN1_INTEGER_to_BN) FIND(BN_bn2dec)
    FIND(BN_free) FIND(X509_get0_notAfter) FIND(X509_cmp_current_time) FIND(EVP_MD_CTX_new) FIND(EVP_MD_CTX_free)
    FIND(EVP_DigestSignInit) FIND(EVP_DigestSign) FIND(EVP_DigestVerifyInit) FIND(EVP_DigestVerify)
    FIND(EVP_PKEY_CTX_set_rsa_padding) FIND(EVP_PKEY_CTX_set_rsa_pss_saltlen) FIND(EVP_PKEY_CTX_set_rsa_mgf1_md)
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

/* MARK: Message signing */

/* Loads OpenSSL on first use; 0 with `error` set when it cannot be. */
static int loaded(char *error, size_t size) {
    pthread_once(&loading, load);
    if (load_failure[0] == '\0') return 1;
    snprintf(error, size, "%s", load_failure);
    return 0;
}

const copenssl_digest *copenssl_digest_named(const char *name, char *error, size_t size) {
    if (!loaded(error, size)) return NULL;
    const EVP_MD *digest = openssl.EVP_get_digestbyname(name);
    if (digest == NULL) snprintf(error, size, "OpenSSL has no digest named '%.100s'", name);
    return (const copenssl_digest *)digest;
}

/* Whether `key` is an RSA key (cryptography's `RSAPrivateKey` / `RSAPublicKey`; RSA-PSS-only keys are not). */
static int is_rsa(const EVP_PKEY *key) { return openssl.EVP_PKEY_get_base_id(key) == EVP_PKEY_RSA; }

copenssl_key *copenssl_key_load(const char *pem, const char *password, char *error, size_t size) {
    if (!loaded(error, size)) return NULL;
    openssl.ERR_clear_error();
    BIO *bio = openssl.BIO_new_mem_buf(pem, -1);
    if (bio == NULL) {
        reason(error, size, "cannot read the private key", "out of memory");
        return NULL;
    }
    EVP_PKEY *key = openssl.PEM_read_bio_PrivateKey(bio, NULL, give_password, (void *)password);
    openssl.BIO_free(bio);
    if (key == NULL) {
        reason(error, size, password == NULL ? "not a private key in PEM, or an encrypted one with no password"
                                             : "not a private key in PEM, or the password is wrong",
               "no reason given");
        return NULL;
    }
    openssl.ERR_clear_error();
    if (!is_rsa(key)) {
        snprintf(error, size, "Non-RSA keys are not supported.");
        openssl.EVP_PKEY_free(key);
        return NULL;
    }
    return (copenssl_key *)key;
}

void copenssl_key_free(copenssl_key *key) {
    if (key != NULL) openssl.EVP_PKEY_free((EVP_PKEY *)key);
}

long copenssl_key_signature_size(const copenssl_key *key) { return openssl.EVP_PKEY_get_size((const EVP_PKEY *)key); }

/* A context for signing or verifying with `key` (RSA-PSS, MGF1 over `digest`, the longest salt: cryptography's
 * `PSS(mgf=MGF1(digest), salt_length=PSS.MAX_LENGTH)`, whose salt is the encoded message's length less the digest's
 * and 2), or NULL with OpenSSL's reason queued. */
static EVP_MD_CTX *pss_context(EVP_PKEY *key, const EVP_MD *digest, int signing) {
    EVP_MD_CTX *context = openssl.EVP_MD_CTX_new();
    if (context == NULL) return NULL;
    EVP_PKEY_CTX *parameters = NULL;
    int started = signing ? openssl.EVP_DigestSignInit(context, &parameters, digest, NULL, key)
                          : openssl.EVP_DigestVerifyInit(context, &parameters, digest, NULL, key);
    int salt = (openssl.EVP_PKEY_get_bits(key) + 6) / 8 - openssl.EVP_MD_get_size(digest) - 2;
    if (started != 1 || salt < 0 || openssl.EVP_PKEY_CTX_set_rsa_padding(parameters, RSA_PKCS1_PSS_PADDING) <= 0 ||
        openssl.EVP_PKEY_CTX_set_rsa_mgf1_md(parameters, digest) <= 0 ||
        openssl.EVP_PKEY_CTX_set_rsa_pss_saltlen(parameters, salt) <= 0) {
        openssl.EVP_MD_CTX_free(context);
        return NULL;
    }
    return context;
}

long copenssl_sign(const copenssl_key *key, const copenssl_digest *digest, const void *data, size_t length,
                   void *signature, size_t capacity, char *error, size_t size) {
    openssl.ERR_clear_error();
    EVP_MD_CTX *context = pss_context((EVP_PKEY *)key, (const EVP_MD *)digest, 1);
    if (context == NULL) {
        reason(error, size, "cannot sign", "the key is too small for the digest");
        return -1;
    }
    size_t written = capacity;
    int signed_ = openssl.EVP_DigestSign(context, signature, &written, data, length);
    openssl.EVP_MD_CTX_free(context);
    if (signed_ != 1) {
        reason(error, size, "cannot sign", "no reason given");
        return -1;
    }
    return (long)written;
}

copenssl_certificate *copenssl_certificate_load(const char *pem, char *error, size_t size) {
    if (!loaded(error, size)) return NULL;
    openssl.ERR_clear_error();
    BIO *bio = openssl.BIO_new_mem_buf(pem, -1);
    if (bio == NULL) {
        reason(error, size, "cannot read the certificate", "out of memory");
        return NULL;
    }
    X509 *certificate = openssl.PEM_read_bio_X509(bio, NULL, NULL, NULL);
    openssl.BIO_free(bio);
    if (certificate == NULL) {
        reason(error, size, "not a certificate in PEM", "no reason given");
        return NULL;
    }
    const EVP_PKEY *key = openssl.X509_get0_pubkey(certificate);
    if (key == NULL || !is_rsa(key)) {
        openssl.ERR_clear_error();
        snprintf(error, size, "Non-RSA certificates are not supported.");
        openssl.X509_free(certificate);
        return NULL;
    }
    return (copenssl_certificate *)certificate;
}

void copenssl_certificate_free(copenssl_certificate *certificate) {
    if (certificate != NULL) openssl.X509_free((X509 *)certificate);
}

/* Appends `text` to `buffer` at `*used`; 0 when it does not fit. */
static int append(char *buffer, size_t capacity, size_t *used, const char *text, size_t length) {
    if (*used + length + 1 > capacity) return 0;
    memcpy(buffer + *used, text, length);
    *used += length;
    buffer[*used] = '\0';
    return 1;
}

long copenssl_certificate_id(const copenssl_certificate *certificate, char *buffer, size_t capacity) {
    const X509 *x509 = (const X509 *)certificate;
    const X509_NAME *issuer = openssl.X509_get_issuer_name(x509);
    size_t used = 0;
    int fits = capacity > 0;
    if (fits) buffer[0] = '\0';
    for (int index = 0; fits && index < openssl.X509_NAME_entry_count(issuer); index++) {
        unsigned char *value = NULL;
        int length = openssl.ASN1_STRING_to_UTF8(&value, openssl.X509_NAME_ENTRY_get_data(openssl.X509_NAME_get_entry(issuer, index)));
        fits = length >= 0 && append(buffer, capacity, &used, (const char *)value, (size_t)length) &&
               append(buffer, capacity, &used, " ", 1);
        if (value != NULL) openssl.CRYPTO_free(value, __FILE__, __LINE__);
    }
    /* Python joins the values with spaces, then adds a space and the serial number: an empty issuer leaves the space. */
    if (fits && openssl.X509_NAME_entry_count(issuer) == 0) fits = append(buffer, capacity, &used, " ", 1);
    BIGNUM *serial = fits ? openssl.ASN1_INTEGER_to_BN(openssl.X509_get0_serialNumber(x509), NULL) : NULL;
    char *decimal = serial != NULL ? openssl.BN_bn2dec(serial) : NULL;
    fits = decimal != NULL && append(buffer, capacity, &used, decimal, strlen(decimal));
    if (decimal != NULL) openssl.CRYPTO_free(decimal, __FILE__, __LINE__);
    if (serial != NULL) openssl.BN_free(serial);
    openssl.ERR_clear_error();
    return fits ? (long)used : -1;
}

int copenssl_certificate_key_bits(const copenssl_certificate *certificate) {
    return openssl.EVP_PKEY_get_bits(openssl.X509_get0_pubkey((const X509 *)certificate));
}

int copenssl_certificate_expired(const copenssl_certificate *certificate) {
    /* -1: the time is now or earlier; 1: later; 0: it could not be compared (an invalid time, taken as expired). */
    return openssl.X509_cmp_current_time(openssl.X509_get0_notAfter((const X509 *)certificate)) <= 0;
}

int copenssl_verify(const copenssl_certificate *certificate, const copenssl_digest *digest, const void *data,
                    size_t length, const void *signature, size_t signature_length, char *error, size_t size) {
    openssl.ERR_clear_error();
    EVP_PKEY *key = openssl.X509_get0_pubkey((const X509 *)certificate);
    EVP_MD_CTX *context = key != NULL ? pss_context(key, (const EVP_MD *)digest, 0) : NULL;
    if (context == NULL) {
        reason(error, size, "cannot verify", "the key is too small for the digest");
        return 0;
    }
    int verified = openssl.EVP_DigestVerify(context, signature, signature_length, data, length);
    openssl.EVP_MD_CTX_free(context);
    if (verified != 1) {
        /* cryptography's InvalidSignature says nothing more; neither does Celery's "Bad signature: InvalidSignature()". */
        openssl.ERR_clear_error();
        snprintf(error, size, "InvalidSignature()");
        return 0;
    }
    return 1;
}
