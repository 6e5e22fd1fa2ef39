/*
 * jitpuppet: a process that connects through code generated at run time, as a JIT runtime's
 * would be, and names that code in its perf map (/tmp/perf-PID.map) the way Java's perf-map
 * agent, Node's --perf-basic-prof and Python's -X perf do. One command per line on stdin:
 *
 *   connect PORT   -> "fd N" | "err ERRNO"   (via the generated trampoline; the fd is kept)
 *
 * The trampoline is x86-64 machine code with a frame pointer (push rbp; mov rbp, rsp;
 * call *rdi; pop rbp; ret) copied into an anonymous executable mapping and named
 * "jit_dial_trampoline". The connect path is
 * main -> jit_dial_trampoline -> dial_from_jit -> open_socket -> connect(2).
 * Built by the tests with frame pointers.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

static int target_port;

__attribute__((noinline)) static int open_socket(int port) {
    struct sockaddr_in sin;
    memset(&sin, 0, sizeof(sin));
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&sin, sizeof(sin)) < 0)
        return -errno;
    return fd;
}

__attribute__((noinline)) static int dial_from_jit(void) {
    int fd = open_socket(target_port);
    return fd;
}

int main(void) {
    static const unsigned char trampoline[] = {0x55, 0x48, 0x89, 0xe5, 0xff, 0xd7, 0x5d, 0xc3};
    unsigned char *code = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (code == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memcpy(code, trampoline, sizeof(trampoline));
    if (mprotect(code, 4096, PROT_READ | PROT_EXEC) < 0) {
        perror("mprotect");
        return 1;
    }
    char path[64];
    snprintf(path, sizeof(path), "/tmp/perf-%d.map", getpid());
    FILE *map = fopen(path, "w");
    if (!map) {
        perror(path);
        return 1;
    }
    fprintf(map, "%lx %zx jit_dial_trampoline\n", (unsigned long)code, sizeof(trampoline));
    fclose(map);
    int (*call_through)(int (*)(void)) = (int (*)(int (*)(void)))code;

    char line[128];
    while (fgets(line, sizeof(line), stdin)) {
        if (sscanf(line, "connect %d", &target_port) == 1) {
            int fd = call_through(dial_from_jit);
            if (fd < 0)
                printf("err %d\n", -fd);
            else
                printf("fd %d\n", fd);
        } else {
            printf("err %d\n", EINVAL);
        }
        fflush(stdout);
    }
    return 0;
}
