/* New-connection latency and rate: the first-packet cost of a firewall.
 *
 *   connbench server PORT              accept, send one byte, close (forever)
 *   connbench client IP PORT SECONDS   connect → the byte → EOF → close, one at a time;
 *                                      prints: count conns_per_s p50_us p99_us failed
 *   connbench probe IP PORT0 COUNT MS  for port PORT0, PORT0+1, …: a fresh connect every
 *                                      MS ms until the port answers (accept or RST both
 *                                      mean "allowed"; silence means "dropped"); prints
 *                                      "k t" when port PORT0+k first answers, t on the
 *                                      CLOCK_MONOTONIC clock (Python's time.monotonic)
 *   connbench probe IP PORT0 COUNT MS connected
 *                                      the same, but only a completed connection counts: for
 *                                      a firewall that rejects (ICMP port-unreachable reads as
 *                                      "refused"), with `listen` serving every probed port
 *   connbench listen PORT0 COUNT       accept and close on ports PORT0 … PORT0+COUNT-1 (forever)
 *   connbench flood IP PORT SECONDS    64-byte UDP datagrams as fast as one socket sends them;
 *                                      prints: sent packets_per_s (what a firewall that drops
 *                                      them costs the sender: veth delivery runs in its context)
 *
 * Every connection is new to conntrack, so each one walks the ruleset once (SYN), and
 * the rest of it is established traffic. Python is far too slow to generate this load.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int server(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = INADDR_ANY};
    if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 4096)) { perror("bind/listen"); return 1; }
    for (;;) {
        int c = accept(s, NULL, NULL);
        if (c < 0) continue;
        (void)!write(c, "x", 1);
        close(c);
    }
}

static int client(const char *ip, int port, double seconds) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    size_t cap = 1 << 20, n = 0, failed = 0;
    double *lat = malloc(cap * sizeof *lat), start = now(), end = start + seconds;
    while (now() < end && n < cap) {
        double t = now();
        int s = socket(AF_INET, SOCK_STREAM, 0);
        struct timeval tv = {.tv_sec = 1};
        setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
        setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        char b;
        /* Read to EOF before closing: the server closes first and keeps the TIME_WAIT,
         * otherwise the client's connect() slows down searching for a free port. */
        if (connect(s, (struct sockaddr *)&a, sizeof a) == 0 && read(s, &b, 1) == 1 && read(s, &b, 1) == 0) {
            lat[n++] = now() - t;
        } else {
            failed++;
        }
        close(s);
    }
    double elapsed = now() - start;
    if (!n) { printf("0 0 0 0 %zu\n", failed); return 1; }
    qsort(lat, n, sizeof *lat, cmp);
    printf("%zu %.0f %.1f %.1f %zu\n", n, n / elapsed, lat[n / 2] * 1e6, lat[(size_t)(n * 0.99)] * 1e6, failed);
    return 0;
}

/* One attempt: 1 when the port answered (connected, or refused unless `connected` is asked
 * for), 0 on silence. */
static int answered(const struct sockaddr_in *a, int ms, int connected) {
    int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), r = 0;
    if (connect(s, (const struct sockaddr *)a, sizeof *a) == 0) {
        r = 1;
    } else if (errno == EINPROGRESS) {
        struct pollfd p = {.fd = s, .events = POLLOUT};
        if (poll(&p, 1, ms) == 1) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(s, SOL_SOCKET, SO_ERROR, &err, &len);
            r = err == 0 || (!connected && err == ECONNREFUSED);
        }
    } else {
        r = !connected && errno == ECONNREFUSED;
    }
    /* Drop the half-open attempt without a FIN/RST dance: linger 0. */
    struct linger l = {.l_onoff = 1, .l_linger = 0};
    setsockopt(s, SOL_SOCKET, SO_LINGER, &l, sizeof l);
    close(s);
    return r;
}

static int probe(const char *ip, int port0, int count, int ms, int connected) {
    struct sockaddr_in a = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int k = 0; k < count; k++) {
        a.sin_port = htons(port0 + k);
        for (;;) {
            double t = now();
            if (answered(&a, ms, connected)) { printf("%d %.6f\n", k, now()); break; }
            double left = t + ms / 1e3 - now();  /* a refused-fast error still waits its turn */
            if (left > 0) { struct timespec ts = {0, (long)(left * 1e9)}; nanosleep(&ts, NULL); }
        }
    }
    return 0;
}

static int listen_many(int port0, int count) {
    struct pollfd *p = calloc(count, sizeof *p);
    for (int k = 0; k < count; k++) {
        int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port0 + k), .sin_addr.s_addr = INADDR_ANY};
        if (bind(s, (struct sockaddr *)&a, sizeof a) || listen(s, 128)) { perror("bind/listen"); return 1; }
        p[k] = (struct pollfd){.fd = s, .events = POLLIN};
    }
    for (;;) {
        if (poll(p, count, -1) < 0) continue;
        for (int k = 0; k < count; k++) {
            if (!(p[k].revents & POLLIN)) continue;
            int c;
            while ((c = accept(p[k].fd, NULL, NULL)) >= 0) close(c);
        }
    }
}

static int flood(const char *ip, int port, double seconds) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port)};
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) { fprintf(stderr, "bad address\n"); return 2; }
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    char buf[64] = {0};
    long sent = 0;
    double start = now(), end = start + seconds;
    while (now() < end) {
        for (int i = 0; i < 256; i++)
            if (sendto(s, buf, sizeof buf, 0, (struct sockaddr *)&a, sizeof a) == sizeof buf) sent++;
    }
    printf("%ld %.0f\n", sent, sent / (now() - start));
    close(s);
    return 0;
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "server")) return server(atoi(argv[2]));
    if (argc == 5 && !strcmp(argv[1], "client")) return client(argv[2], atoi(argv[3]), atof(argv[4]));
    if ((argc == 6 || (argc == 7 && !strcmp(argv[6], "connected"))) && !strcmp(argv[1], "probe"))
        return probe(argv[2], atoi(argv[3]), atoi(argv[4]), atoi(argv[5]), argc == 7);
    if (argc == 4 && !strcmp(argv[1], "listen")) return listen_many(atoi(argv[2]), atoi(argv[3]));
    if (argc == 5 && !strcmp(argv[1], "flood")) return flood(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: connbench server PORT | connbench client IP PORT SECONDS | connbench probe IP PORT0 COUNT MS | "
                    "connbench flood IP PORT SECONDS | connbench probe IP PORT0 COUNT MS connected | connbench listen PORT0 COUNT\n");
    return 2;
}
