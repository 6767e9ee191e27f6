/*
 * LD_PRELOAD shim that makes wrk present a client certificate (mTLS) and,
 * optionally, never resume TLS sessions (for full-handshake rates).
 *   WRK_CLIENT_CERT, WRK_CLIENT_KEY: PEM files loaded into every SSL_CTX wrk creates.
 *   WRK_NO_RESUME=1: every connection is a full handshake. wrk reuses one SSL object
 *     per connection slot, and SSL_clear() keeps its session, so without this the next
 *     connection would offer it (a TLS 1.3 ticket) and resume: the session is dropped
 *     before each handshake starts, and no cache or tickets are asked for. At exit the
 *     shim prints how many handshakes completed, how many resumed (the benchmark
 *     checks that none did), how many were TLS 1.3, and how often wrk called SSL_connect.
 * wrk waits for a TLS handshake to progress with the socket registered for both reading
 * and writing (socket_connected in wrk.c), and SSL_connect answers "want read" until the
 * server's flight arrives. A connected socket is always writable, so whenever wrk had
 * nothing else to do its epoll loop called SSL_connect again at once: 454 times per
 * handshake against Portcullis (bench/RESULTS.md, fifteenth round). wrk's core then read
 * 97-99 % busy in every handshake run, whether wrk or the server was the limit. So when
 * SSL_connect wants to read, the shim narrows that socket's registration in wrk's epoll
 * set to readable only; wrk's own next registration (once the handshake is done)
 * restores both. The epoll set is the one this thread last changed (wrk runs one event
 * loop per thread). WRK_CONNECT_SPIN=1 keeps wrk's own behaviour, for comparison.
 * Built by bench/run.ts with `cc -shared -fPIC`; symbols resolve against the libssl
 * wrk already loads, so no OpenSSL headers are needed.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>

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
extern int SSL_get_error(const SSL *, int);
extern int SSL_get_fd(const SSL *);

#define X509_FILETYPE_PEM 1
#define SSL_CTRL_SET_SESS_CACHE_MODE 44
#define SSL_SESS_CACHE_OFF 0
#define SSL_OP_NO_TICKET ((uint64_t)1 << 14)
#define SSL_ERROR_WANT_READ 2
#define SSL_ERROR_WANT_WRITE 3

/* The epoll set this thread's event loop last changed: wrk runs one loop per thread. */
static __thread int loop_epfd = -1;

static int real_epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  static int (*real)(int, int, int, struct epoll_event *) = 0;
  if (!real) real = (int (*)(int, int, int, struct epoll_event *))dlsym(RTLD_NEXT, "epoll_ctl");
  return real(epfd, op, fd, ev);
}

int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev) {
  loop_epfd = epfd;
  return real_epoll_ctl(epfd, op, fd, ev);
}

/* Wait for the socket to become readable (or writable too) in wrk's epoll set, as wrk's
   own ae_epoll.c registers it: level-triggered, the fd in the event's data. */
static void want(int fd, uint32_t events) {
  if (loop_epfd < 0 || fd < 0) return;
  int saved = errno;
  struct epoll_event ev;
  memset(&ev, 0, sizeof ev);
  ev.events = events;
  ev.data.fd = fd;
  real_epoll_ctl(loop_epfd, EPOLL_CTL_MOD, fd, &ev);
  errno = saved;
}

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

static unsigned long handshakes, resumed, tls13, calls;

int SSL_connect(SSL *ssl) {
  static int (*real)(SSL *) = 0;
  static int no_resume, spin;
  if (!real) {
    real = (int (*)(SSL *))dlsym(RTLD_NEXT, "SSL_connect");
    no_resume = getenv("WRK_NO_RESUME") != 0;
    spin = getenv("WRK_CONNECT_SPIN") != 0;
  }
  if (no_resume && SSL_in_before(ssl)) SSL_set_session(ssl, NULL);
  calls++;
  int r = real(ssl);
  if (r == 1) {
    handshakes++;
    if (SSL_session_reused(ssl)) resumed++;
    if (SSL_version(ssl) == 0x0304) tls13++;
  } else if (!spin) {
    int e = SSL_get_error(ssl, r);
    if (e == SSL_ERROR_WANT_READ) want(SSL_get_fd(ssl), EPOLLIN);
    else if (e == SSL_ERROR_WANT_WRITE) want(SSL_get_fd(ssl), EPOLLIN | EPOLLOUT);
  }
  return r;
}

__attribute__((destructor)) static void report(void) {
  if (handshakes) fprintf(stderr, "wrk-mtls-shim: %lu handshakes, %lu resumed, %lu TLSv1.3, %lu SSL_connect calls\n", handshakes, resumed, tls13, calls);
}
