/*
 * bench/http/bare_mhd.c - the ceiling of the HTTP benchmark: a libmicrohttpd server that does
 * what any C inference server must do for a request and nothing more. It reads the body,
 * converts the numbers of inputs[0].data with a strtof loop, checks there are 784 of them,
 * and answers a fixed JSON of the size and shape of infera's answer (no model, no JSON
 * library, no routing, no logging, no metrics).
 *
 * Its daemon is set up like infera's (server/http.c): the same MHD flags, a thread pool of 16
 * (infera's default --http-threads), the same connection limit, timeout and per-connection
 * memory, a completion callback, and a body buffer per request grown the same way.
 *
 *     bare_mhd [PORT]     listens on 127.0.0.1:PORT (default 0: a free port), logs
 *                         "bare_mhd listening on 127.0.0.1 (port N)", stops on SIGTERM/SIGINT
 *
 * Built by bench/http/run: gcc -O2 -o bare_mhd bare_mhd.c -lmicrohttpd
 */
#include <arpa/inet.h>
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <microhttpd.h>

#ifndef HTTP_THREADS
#define HTTP_THREADS 16 /* infera's default --http-threads; -DHTTP_THREADS=N to try others */
#endif
#define MAX_CONNECTIONS 1024
#define CONN_TIMEOUT_S  30
#define CONN_MEMORY     (64 * 1024)
#define MAX_BODY        (32u << 20)
#define FEATURES        784

/* What infera answers for a batch-1 request to a 10-label classifier, with fixed values. */
static const char answer[] =
    "{\"model_name\":\"mlp784\",\"model_version\":\"1\",\"outputs\":[{\"name\":"
    "\"probabilities\",\"datatype\":\"FP32\",\"shape\":[1,10],\"data\":[0.107016042,"
    "0.108808435,0.105211459,0.0985317156,0.0935500115,0.093250148,0.0964089632,0.0974619538,"
    "0.100307591,0.0994536951]},{\"name\":\"label\",\"datatype\":\"BYTES\",\"shape\":[1],"
    "\"data\":[\"1\"]}]}";
static const char bad_request[] = "{\"error\":\"expected inputs[0].data with 784 numbers\"}";

/* One request's body (MHD's con_cls). */
struct body {
    char *buf; /* NUL-terminated */
    size_t len, cap;
};

/*
 * Converts the numbers of the first "data" array of buf (NUL-terminated) into x (cap floats).
 * Returns how many were read, or -1 if the array is missing, malformed or longer than cap.
 */
static long parse_data(const char *buf, float *x, size_t cap)
{
    const char *p = strstr(buf, "\"data\"");
    if (p == NULL)
        return -1;
    p = strchr(p + 6, '[');
    if (p == NULL)
        return -1;
    p++;
    size_t n = 0;
    for (;;) {
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
            p++;
        if (*p == ']')
            return (long)n;
        if (n == cap)
            return -1;
        char *end = NULL;
        x[n] = strtof(p, &end);
        if (end == p)
            return -1;
        n++;
        p = end;
        while (*p == ' ' || *p == '\n' || *p == '\t' || *p == '\r')
            p++;
        if (*p == ',')
            p++;
        else if (*p != ']')
            return -1;
    }
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned status, const char *json,
                               size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)json, MHD_RESPMEM_PERSISTENT);
    if (r == NULL)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/json");
    enum MHD_Result res = MHD_queue_response(conn, status, r);
    MHD_destroy_response(r);
    return res;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_data_size,
                                  void **con_cls)
{
    (void)cls;
    (void)url;
    (void)method;
    (void)version;
    struct body *b = *con_cls;
    if (b == NULL) {
        b = calloc(1, sizeof *b);
        if (b == NULL)
            return MHD_NO;
        *con_cls = b;
        return MHD_YES;
    }
    if (*upload_data_size > 0) {
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (b->len + n + 1 > MAX_BODY)
            return MHD_NO;
        if (b->len + n + 1 > b->cap) {
            size_t cap = b->cap ? b->cap : 16384;
            while (cap < b->len + n + 1)
                cap *= 2;
            char *nb = realloc(b->buf, cap);
            if (nb == NULL)
                return MHD_NO;
            b->buf = nb;
            b->cap = cap;
        }
        memcpy(b->buf + b->len, upload_data, n);
        b->len += n;
        b->buf[b->len] = '\0';
        return MHD_YES;
    }
    float x[FEATURES]; /* (784) */
    if (b->buf == NULL || parse_data(b->buf, x, FEATURES) != FEATURES)
        return respond(conn, MHD_HTTP_BAD_REQUEST, bad_request, sizeof bad_request - 1);
    return respond(conn, MHD_HTTP_OK, answer, sizeof answer - 1);
}

static void on_completed(void *cls, struct MHD_Connection *conn, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    (void)cls;
    (void)conn;
    (void)toe;
    struct body *b = *con_cls;
    if (b == NULL)
        return;
    free(b->buf);
    free(b);
    *con_cls = NULL;
}

int main(int argc, char **argv)
{
    unsigned long port = 0;
    if (argc > 2 || (argc == 2 && (port = strtoul(argv[1], NULL, 10)) > 65535)) {
        fprintf(stderr, "usage: bare_mhd [PORT]\n");
        return 2;
    }
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_in addr;
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    unsigned flags = MHD_USE_AUTO_INTERNAL_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    struct MHD_Daemon *d = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&addr,
        MHD_OPTION_THREAD_POOL_SIZE, (unsigned)HTTP_THREADS, MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)MAX_CONNECTIONS, MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)CONN_TIMEOUT_S,
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, MHD_OPTION_NOTIFY_COMPLETED,
        on_completed, NULL, MHD_OPTION_LISTENING_ADDRESS_REUSE, 1U, MHD_OPTION_END);
    if (d == NULL) {
        fprintf(stderr, "bare_mhd: cannot listen on 127.0.0.1:%lu\n", port);
        return 1;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
    fprintf(stderr, "bare_mhd listening on 127.0.0.1 (port %u), %d HTTP threads\n",
            info ? info->port : 0, HTTP_THREADS);
    int sig = 0;
    while (sigwait(&set, &sig) != 0 && errno == EINTR)
        ;
    MHD_stop_daemon(d);
    return 0;
}
