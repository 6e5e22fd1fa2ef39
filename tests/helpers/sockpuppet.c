/*
 * sockpuppet: a process whose sockets the end-to-end tests drive one step at a time.
 * It reads one command per line on stdin and answers one line on stdout:
 *
 *   listen HOST PORT        -> "fd N port P"    (PORT 0: ephemeral; HOST "::" is dual-stack)
 *   connect HOST PORT       -> "fd N" | "err ERRNO"
 *   accept FD               -> "fd N"
 *   close FD                -> "ok"
 *   linger0 FD              -> "ok"             (the next close sends RST)
 *   write FD                -> "ok" | "err ERRNO" (sends one byte)
 *   spray HOST PORT N       -> "ok"             (N connects, each from a call stack of its own,
 *                                                each closed at once; refused ones count too)
 *   fork-spray HOST PORT P N -> "ok"            (P child processes in turn, each spraying N
 *                                                connects, then exiting)
 *   fork-hold FD            -> "pid C"          (child keeps FD until "release C", then closes it)
 *   release C               -> "ok"             (after the child has closed FD and exited)
 *   unix-listen PATH        -> "ok"
 *   send-fd PATH FD         -> "ok"             (SCM_RIGHTS to the process listening on PATH)
 *   recv-fd                 -> "fd N"           (accepts on the unix listener, receives one fd)
 *   exit                    -> (exits with its sockets open)
 *
 * Built by the tests with frame pointers and without PIE, so that the user stack the probes
 * take at connect() can be checked against `nm`: the connect path is
 * main -> run_command -> new_client -> dial -> open_conn -> connect(2).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static int unix_listener = -1;
static int hold_pipes[64];
static pid_t hold_pids[64];
static int holds;

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static socklen_t make_addr(const char *host, int port, struct sockaddr_storage *ss) {
    memset(ss, 0, sizeof(*ss));
    struct sockaddr_in *v4 = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons(port);
        return sizeof(*v4);
    }
    if (inet_pton(AF_INET6, host, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons(port);
        return sizeof(*v6);
    }
    return 0;
}

__attribute__((noinline)) static int open_conn(const struct sockaddr_storage *ss, socklen_t len) {
    int fd = socket(ss->ss_family, SOCK_STREAM, 0);
    if (fd < 0)
        return -errno;
    if (connect(fd, (const struct sockaddr *)ss, len) < 0) {
        int err = errno;
        close(fd);
        return -err;
    }
    return fd;
}

__attribute__((noinline)) static int dial(const char *host, int port) {
    struct sockaddr_storage ss;
    socklen_t len = make_addr(host, port, &ss);
    if (len == 0)
        return -EINVAL;
    int fd = open_conn(&ss, len);
    return fd;
}

__attribute__((noinline)) static int new_client(const char *host, int port) {
    int fd = dial(host, port);
    return fd;
}

/* One of two paths per bit of `path`, `bits` deep: 2^bits distinct call stacks down to dial(). */
__attribute__((noinline)) static int spray_right(const char *host, int port, unsigned path, int bits);
__attribute__((noinline)) static int spray_left(const char *host, int port, unsigned path, int bits) {
    if (bits == 0)
        return dial(host, port);
    int fd = (path & 1) ? spray_right(host, port, path >> 1, bits - 1) : spray_left(host, port, path >> 1, bits - 1);
    return fd;
}

__attribute__((noinline)) static int spray_right(const char *host, int port, unsigned path, int bits) {
    if (bits == 0)
        return dial(host, port);
    int fd = (path & 1) ? spray_right(host, port, path >> 1, bits - 1) : spray_left(host, port, path >> 1, bits - 1);
    return fd;
}

static void spray(const char *host, int port, int n) {
    for (int i = 0; i < n; i++) {
        int fd = spray_left(host, port, (unsigned)i, 16);
        if (fd >= 0)
            close(fd);
    }
    reply("ok");
}

static void fork_spray(const char *host, int port, int processes, int n) {
    for (int p = 0; p < processes; p++) {
        pid_t child = fork();
        if (child < 0) {
            reply("err %d", errno);
            return;
        }
        if (child == 0) {
            for (int i = 0; i < n; i++) {
                int fd = spray_left(host, port, (unsigned)(p * n + i), 16);
                if (fd >= 0)
                    close(fd);
            }
            _exit(0);
        }
        waitpid(child, NULL, 0);
    }
    reply("ok");
}

static void do_listen(const char *host, int port) {
    struct sockaddr_storage ss;
    socklen_t len = make_addr(host, port, &ss);
    int fd = socket(ss.ss_family, SOCK_STREAM, 0);
    int one = 1, zero = 0;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ss.ss_family == AF_INET6)
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
    if (len == 0 || bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0) {
        reply("err %d", errno);
        return;
    }
    len = sizeof(ss);
    getsockname(fd, (struct sockaddr *)&ss, &len);
    int bound = ss.ss_family == AF_INET ? ntohs(((struct sockaddr_in *)&ss)->sin_port)
                                        : ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    reply("fd %d port %d", fd, bound);
}

static void fork_hold(int fd) {
    int p[2];
    if (pipe(p) < 0 || holds == 64) {
        reply("err %d", errno);
        return;
    }
    pid_t child = fork();
    if (child == 0) {
        char byte;
        close(p[1]);
        if (read(p[0], &byte, 1) < 0)
            _exit(1);
        close(fd);
        _exit(0);
    }
    close(p[0]);
    hold_pipes[holds] = p[1];
    hold_pids[holds++] = child;
    reply("pid %d", child);
}

static void release(pid_t child) {
    for (int i = 0; i < holds; i++) {
        if (hold_pids[i] == child) {
            if (write(hold_pipes[i], "x", 1) != 1) {
                reply("err %d", errno);
                return;
            }
            waitpid(child, NULL, 0);
            reply("ok");
            return;
        }
    }
    reply("err %d", ESRCH);
}

static int unix_addr(const char *path, struct sockaddr_un *un) {
    memset(un, 0, sizeof(*un));
    un->sun_family = AF_UNIX;
    strncpy(un->sun_path, path, sizeof(un->sun_path) - 1);
    return sizeof(*un);
}

/* One byte of data and room for one SCM_RIGHTS descriptor: what send-fd and recv-fd exchange. */
struct fd_message {
    char data;
    struct iovec iov;
    union {
        char buf[CMSG_SPACE(sizeof(int))];
        struct cmsghdr align;
    } control;
};

static struct msghdr fd_message_init(struct fd_message *m) {
    memset(m, 0, sizeof(*m));
    m->data = 'f';
    m->iov.iov_base = &m->data;
    m->iov.iov_len = 1;
    struct msghdr msg = {.msg_iov = &m->iov, .msg_iovlen = 1, .msg_control = m->control.buf,
                         .msg_controllen = sizeof(m->control.buf)};
    return msg;
}

static void send_fd(const char *path, int fd) {
    struct sockaddr_un un;
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (connect(s, (struct sockaddr *)&un, unix_addr(path, &un)) < 0) {
        reply("err %d", errno);
        return;
    }
    struct fd_message m;
    struct msghdr msg = fd_message_init(&m);
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(sizeof(int));
    memcpy(CMSG_DATA(cmsg), &fd, sizeof(int));
    if (sendmsg(s, &msg, 0) < 0) {
        reply("err %d", errno);
        return;
    }
    close(s);
    reply("ok");
}

static void recv_fd(void) {
    int s = accept(unix_listener, NULL, NULL);
    struct fd_message m;
    struct msghdr msg = fd_message_init(&m);
    if (s < 0 || recvmsg(s, &msg, 0) < 0) {
        reply("err %d", errno);
        return;
    }
    struct cmsghdr *cmsg = CMSG_FIRSTHDR(&msg);
    int fd = -1;
    if (cmsg && cmsg->cmsg_type == SCM_RIGHTS)
        memcpy(&fd, CMSG_DATA(cmsg), sizeof(int));
    close(s);
    reply("fd %d", fd);
}

__attribute__((noinline)) static void run_command(char *line) {
    char host[128], path[108];
    int a, b, c;
    if (sscanf(line, "listen %127s %d", host, &a) == 2) {
        do_listen(host, a);
    } else if (sscanf(line, "connect %127s %d", host, &a) == 2) {
        int fd = new_client(host, a);
        if (fd < 0)
            reply("err %d", -fd);
        else
            reply("fd %d", fd);
    } else if (sscanf(line, "accept %d", &a) == 1) {
        int fd = accept(a, NULL, NULL);
        if (fd < 0)
            reply("err %d", errno);
        else
            reply("fd %d", fd);
    } else if (sscanf(line, "close %d", &a) == 1) {
        close(a);
        reply("ok");
    } else if (sscanf(line, "fork-spray %127s %d %d %d", host, &a, &b, &c) == 4) {
        fork_spray(host, a, b, c);
    } else if (sscanf(line, "spray %127s %d %d", host, &a, &b) == 3) {
        spray(host, a, b);
    } else if (sscanf(line, "write %d", &a) == 1) {
        if (send(a, "x", 1, MSG_NOSIGNAL) < 0)
            reply("err %d", errno);
        else
            reply("ok");
    } else if (sscanf(line, "linger0 %d", &a) == 1) {
        struct linger lg = {.l_onoff = 1, .l_linger = 0};
        setsockopt(a, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        reply("ok");
    } else if (sscanf(line, "fork-hold %d", &a) == 1) {
        fork_hold(a);
    } else if (sscanf(line, "release %d", &a) == 1) {
        release(a);
    } else if (sscanf(line, "unix-listen %107s", path) == 1) {
        struct sockaddr_un un;
        unlink(path);
        unix_listener = socket(AF_UNIX, SOCK_STREAM, 0);
        if (bind(unix_listener, (struct sockaddr *)&un, unix_addr(path, &un)) < 0 ||
            listen(unix_listener, 4) < 0)
            reply("err %d", errno);
        else
            reply("ok");
    } else if (sscanf(line, "send-fd %107s %d", path, &b) == 2) {
        send_fd(path, b);
    } else if (strncmp(line, "recv-fd", 7) == 0) {
        recv_fd();
    } else if (strncmp(line, "exit", 4) == 0) {
        exit(0);
    } else {
        reply("err unknown command: %s", line);
    }
}

int main(void) {
    char line[512];
    while (fgets(line, sizeof(line), stdin)) {
        line[strcspn(line, "\n")] = 0;
        run_command(line);
    }
    return 0;
}
