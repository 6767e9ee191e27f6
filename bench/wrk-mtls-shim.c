/*
 * LD_PRELOAD shim that makes wrk present a client certificate (mTLS) and,
 * optionally, never resume TLS sessions (for full-handshake rates).
 *   WRK_CLIENT_CERT, WRK_CLIENT_KEY: PEM files loaded into every SSL_CTX wrk creates.
 *   WRK_NO_RESUME=1: session cache off and no tickets.
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
