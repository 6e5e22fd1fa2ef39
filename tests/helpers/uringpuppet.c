/* uringpuppet: a TCP server and client that do their accepts and connects through io_uring
 * (liburing), never through accept(2) or connect(2), for leaktrace's io_uring tests.
 *
 *   uringpuppet serve leak|close single|multishot|async|sqpoll N
 *       listens on 127.0.0.1 (an ephemeral port, printed as `port P`), waits for a line on stdin
 *       (so a test can attach its probes between the listen and the first accept), submits its
 *       first accept (printing `accepting`), accepts N connections with IORING_OP_ACCEPT: one
 *       single-shot request at a time, one multishot request, or single-shot requests forced
 *       to an io-wq worker (IOSQE_ASYNC, so the accept completes in that worker thread), or
 *       single-shot requests on a ring whose SQPOLL thread submits them,
 *       printing `accepted K FD` for each; `leak` keeps every accepted socket open, `close`
 *       closes each at once. Then prints `done N` and waits for stdin to close.
 *   uringpuppet connect PORT N INTERVAL_MS [async]
 *       connects to 127.0.0.1:PORT N times with IORING_OP_CONNECT, INTERVAL_MS apart (`async`:
 *       forced to an io-wq worker with IOSQE_ASYNC), and never closes a socket
 *       (`connected K FD`); then `done N`, and waits for stdin to close.
 *
 * The functions a test looks for in a stack (submit_accept, dial_backend) are kept out of
 * line so that they are frames of their own.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define NOINLINE __attribute__((noinline))

static void die(const char *what, int err) {
    fprintf(stdout, "err %s: %s\n", what, strerror(err));
    fflush(stdout);
    exit(1);
}

static void wait_for_stdin_to_close(void) {
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
}

/* The call site a test expects leaktrace to name for the server's connections. */
enum requests { SINGLE, MULTISHOT, ASYNC, SQPOLL };

NOINLINE static void submit_accept(struct io_uring *ring, int listener, enum requests requests) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) die("io_uring_get_sqe", EBUSY);
    if (requests == MULTISHOT)
        io_uring_prep_multishot_accept(sqe, listener, NULL, NULL, 0);
    else
        io_uring_prep_accept(sqe, listener, NULL, NULL, 0);
    if (requests == ASYNC) sqe->flags |= IOSQE_ASYNC;
    io_uring_sqe_set_data64(sqe, 0xacce97);
    int ret = io_uring_submit(ring);
    if (ret < 0) die("io_uring_submit", -ret);
}

NOINLINE static int listen_loopback(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket", errno);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("bind", errno);
    if (listen(fd, 512) < 0) die("listen", errno);
    socklen_t len = sizeof addr;
    if (getsockname(fd, (struct sockaddr *)&addr, &len) < 0) die("getsockname", errno);
    printf("port %d\n", ntohs(addr.sin_port));
    return fd;
}

NOINLINE static void serve(int leak, enum requests requests, int n) {
    struct io_uring ring;
    int ret = io_uring_queue_init(64, &ring, requests == SQPOLL ? IORING_SETUP_SQPOLL : 0);
    if (ret < 0) die("io_uring_queue_init", -ret);
    int listener = listen_loopback();
    char line[64];
    if (!fgets(line, sizeof line, stdin)) die("stdin closed before the start line", EPIPE);
    /* One place submits every accept, so that they share one call site. */
    int in_flight = 0;
    for (int accepted = 0; accepted < n;) {
        if (!in_flight) {
            submit_accept(&ring, listener, requests);
            if (accepted == 0) printf("accepting\n");
            in_flight = 1;
        }
        struct io_uring_cqe *cqe;
        ret = io_uring_wait_cqe(&ring, &cqe);
        if (ret < 0) die("io_uring_wait_cqe", -ret);
        int fd = cqe->res;
        int more = cqe->flags & IORING_CQE_F_MORE;
        io_uring_cqe_seen(&ring, cqe);
        if (fd < 0) die("accept", -fd);
        accepted++;
        printf("accepted %d %d\n", accepted, fd);
        if (!leak) close(fd);
        if (!(requests == MULTISHOT && more)) in_flight = 0;
    }
    printf("done %d\n", n);
    wait_for_stdin_to_close();
}

/* The call site a test expects leaktrace to name for the client's connections. */
NOINLINE static int dial_backend(struct io_uring *ring, int port, int async) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) die("socket", errno);
    struct sockaddr_in addr = {
        .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    if (!sqe) die("io_uring_get_sqe", EBUSY);
    io_uring_prep_connect(sqe, fd, (struct sockaddr *)&addr, sizeof addr);
    if (async) sqe->flags |= IOSQE_ASYNC;
    int ret = io_uring_submit(ring);
    if (ret < 0) die("io_uring_submit", -ret);
    struct io_uring_cqe *cqe;
    ret = io_uring_wait_cqe(ring, &cqe);
    if (ret < 0) die("io_uring_wait_cqe", -ret);
    int res = cqe->res;
    io_uring_cqe_seen(ring, cqe);
    if (res < 0) die("connect", -res);
    return fd;
}

NOINLINE static void connect_many(int port, int n, int interval_ms, int async) {
    struct io_uring ring;
    int ret = io_uring_queue_init(8, &ring, 0);
    if (ret < 0) die("io_uring_queue_init", -ret);
    struct timespec pause = {.tv_sec = interval_ms / 1000, .tv_nsec = (long)(interval_ms % 1000) * 1000000};
    for (int i = 1; i <= n; i++) {
        int fd = dial_backend(&ring, port, async);
        printf("connected %d %d\n", i, fd);
        if (i < n) nanosleep(&pause, NULL);
    }
    printf("done %d\n", n);
    wait_for_stdin_to_close();
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0); /* a line per event, read by the test as it comes */
    if (argc == 5 && strcmp(argv[1], "serve") == 0) {
        int leak = strcmp(argv[2], "leak") == 0;
        enum requests requests = strcmp(argv[3], "multishot") == 0 ? MULTISHOT
                                 : strcmp(argv[3], "async") == 0   ? ASYNC
                                 : strcmp(argv[3], "sqpoll") == 0  ? SQPOLL
                                                                   : SINGLE;
        serve(leak, requests, atoi(argv[4]));
    } else if ((argc == 5 || argc == 6) && strcmp(argv[1], "connect") == 0) {
        connect_many(atoi(argv[2]), atoi(argv[3]), atoi(argv[4]), argc == 6 && strcmp(argv[5], "async") == 0);
    } else {
        fprintf(stderr,
                "usage: uringpuppet serve leak|close single|multishot|async|sqpoll N\n"
                "       uringpuppet connect PORT N INTERVAL_MS [async]\n");
        return 2;
    }
    return 0;
}
