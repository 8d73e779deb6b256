/* The runtime bench's workload (bench/runtime.py compiles it with cc and runs it in a sandbox pod).
 *
 *   rt_load exec N        N x (fork, execv /bin/true, waitpid)
 *   rt_load openat N PATH N x (openat PATH read-only, close)
 *   rt_load connect N PORT N x (TCP socket, connect to 127.0.0.1:PORT, where nothing listens; close);
 *                         a connect that fails with EPERM (denied) stops it
 *   rt_load burst N       fork N children that exit at once, as fast as possible, then reap them all
 *
 * Prints one JSON line: {"ops": done, "ns_per_op": ...} (burst: also "failed" forks).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int run_exec(long n) {
    char *const argv[] = {"/bin/true", NULL};
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid < 0) return -1;
        if (pid == 0) {
            execv(argv[0], argv);
            _exit(127);
        }
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) return -1;
    }
    return 0;
}

static int run_openat(long n, const char *path) {
    for (long i = 0; i < n; i++) {
        int fd = openat(AT_FDCWD, path, O_RDONLY);
        if (fd < 0 || close(fd) < 0) return -1;
    }
    return 0;
}

static int run_connect(long n, int port) {
    struct sockaddr_in to = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (long i = 0; i < n; i++) {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0) return -1;
        if (connect(fd, (struct sockaddr *)&to, sizeof(to)) == 0 || errno == EPERM) {
            close(fd);
            errno = EPERM;
            return -1;
        }
        close(fd);
    }
    return 0;
}

static long run_burst(long n, long *failed) {
    long forked = 0;
    for (long i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) _exit(0);
        if (pid < 0) (*failed)++;
        else forked++;
    }
    while (wait(NULL) > 0) {}
    return forked;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: rt_load exec|openat|connect|burst N [PATH|PORT]\n");
        return 2;
    }
    long n = atol(argv[2]);
    long long start = now_ns();
    if (strcmp(argv[1], "exec") == 0) {
        if (run_exec(n) < 0) { perror("rt_load exec"); return 1; }
    } else if (strcmp(argv[1], "openat") == 0 && argc == 4) {
        if (run_openat(n, argv[3]) < 0) { perror("rt_load openat"); return 1; }
    } else if (strcmp(argv[1], "connect") == 0 && argc == 4) {
        if (run_connect(n, atoi(argv[3])) < 0) { perror("rt_load connect (denied, or it connected)"); return 1; }
    } else if (strcmp(argv[1], "burst") == 0) {
        long failed = 0;
        long forked = run_burst(n, &failed);
        long long took = now_ns() - start;
        printf("{\"ops\": %ld, \"failed\": %ld, \"ns_per_op\": %.1f}\n", forked, failed,
               forked ? (double)took / forked : 0.0);
        return 0;
    } else {
        fprintf(stderr, "rt_load: unknown mode %s\n", argv[1]);
        return 2;
    }
    printf("{\"ops\": %ld, \"ns_per_op\": %.1f}\n", n, (double)(now_ns() - start) / n);
    return 0;
}
