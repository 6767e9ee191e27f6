/*
 * LD_PRELOAD shim that makes wrk present a client certificate (mTLS) and,
 * optionally, never resume TLS sessions (for full-handshake rates).
 *   WRK_CLIENT_CERT, WRK_CLIENT_KEY: PEM files loaded into every SSL_CTX wrk creates.
 *   WRK_NO_RESUME=1: every connection is a full handshake. wrk reuses one SSL object
 *     per connection slot, and SSL_clear() keeps its session, so without this the next
 *     connection would offer it (a TLS 1.3 ticket) and resume: the session is dropped
 *     before each handshake starts, and no cache or tickets are asked for. At exit the
 *     shim prints how many handshakes completed, how many resumed (the benchmark
 *     checks that none did) and how many were TLS 1.3.
 * Built by bench/run.ts with `cc -shared -fPIC`; symbols resolve against the libssl
 * wrk already loads, so no OpenSSL headers are needed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

typedef struct ssl_ctx_st SSL_CTX;
typedef struct ssl_method_st SSL_METHOD;
typedef struct ssl_st SSL;
typedef struct ssl_session_st SSL_SESSION;
extern int SSL_in_before(const SSL *);
extern int SSL_set_session(SSL *, SSL_SESSION *);
extern int SSL_session_reused(const SSL *);
extern int SSL_version(const SSL *);
extern int SSL_CTX_use_certificate_chain_file(SSL_CTX *, const char *);
extern int SSL_CTX_use_PrivateKey_file(SSL_CTX *, const char *, int);
extern long SSL_CTX_ctrl(SSL_CTX *, int, long, void *);
extern uint64_t SSL_CTX_set_options(SSL_CTX *, uint64_t);

#define X509_FILETYPE_PEM 1
#define SSL_CTRL_SET_SESS_CACHE_MODE 44
#define SSL_SESS_CACHE_OFF 0
#define SSL_OP_NO_TICKET ((uint64_t)1 << 14)

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
  static SSL_CTX *(*real)(const SSL_METHOD *) = 0;
  if (!real) real = (SSL_CTX * (*)(const SSL_METHOD *)) dlsym(RTLD_NEXT, "SSL_CTX_new");
  SSL_CTX *ctx = real(method);
  const char *cert = getenv("WRK_CLIENT_CERT"), *key = getenv("WRK_CLIENT_KEY");
  if (ctx && cert && key) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert) != 1 || SSL_CTX_use_PrivateKey_file(ctx, key, X509_FILETYPE_PEM) != 1) {
      fprintf(stderr, "wrk-mtls-shim: cannot load %s / %s\n", cert, key);
      abort();
    }
  }
  if (ctx && getenv("WRK_NO_RESUME")) {
    SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, NULL);
    SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  }
  return ctx;
}

static unsigned long handshakes, resumed, tls13;

int SSL_connect(SSL *ssl) {
  static int (*real)(SSL *) = 0;
  static int no_resume;
  if (!real) {
    real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    no_resume = getenv("WRK_NO_RESUME") != 0;
  }
  if (no_resume && SSL_in_before(ssl)) SSL_set_session(ssl, NULL);
  int r = real(ssl);
  if (r == 1) {
    handshakes++;
    if (SSL_session_reused(ssl)) resumed++;
    if (SSL_version(ssl) == 0x0304) tls13++;
  }
  return r;
}

__attribute__((destructor)) static void report(void) {
  if (handshakes) fprintf(stderr, "wrk-mtls-shim: %lu handshakes, %lu resumed, %lu TLSv1.3\n", handshakes, resumed, tls13);
}
