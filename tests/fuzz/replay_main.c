/*
 * tests/fuzz/replay_main.c - runs a fuzz harness over its corpus without libFuzzer.
 *
 *     replay_<name> DIR_OR_FILE...
 *
 * Feeds every regular file under each directory (recursively, in byte order of the paths, so
 * runs are reproducible) and every file named directly to LLVMFuzzerTestOneInput(), once each,
 * from an exact-size heap buffer (so the ASan build catches a read one past the end). A harness
 * that finds a violated property aborts; a memory error aborts under the sanitizers. Prints one
 * line per input with REPLAY_VERBOSE=1 in the environment, and a summary at the end.
 *
 * Exit status: 0 when every input ran; 1 on a usage error or an input that cannot be read
 * (an empty corpus directory is an error too: a replay of nothing proves nothing).
 */
#include <dirent.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "tests/fuzz/fuzz.h"

struct paths {
    char **v;
    size_t n, cap;
};

static int paths_add(struct paths *p, const char *path)
{
    if (p->n == p->cap) {
        size_t nc = p->cap ? 2 * p->cap : 64;
        char **nv = realloc(p->v, nc * sizeof *nv);
        if (nv == NULL)
            return -1;
        p->v = nv;
        p->cap = nc;
    }
    if ((p->v[p->n] = strdup(path)) == NULL)
        return -1;
    p->n++;
    return 0;
}

/* Adds path if it is a regular file, or the regular files below it if it is a directory. */
static int collect(struct paths *p, const char *path)
{
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    if (S_ISREG(st.st_mode))
        return paths_add(p, path);
    if (!S_ISDIR(st.st_mode))
        return 0;
    DIR *d = opendir(path);
    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    int rc = 0;
    struct dirent *de;
    while (rc == 0 && (de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.') /* ., .., and hidden files such as editor swap files */
            continue;
        char child[4096];
        if ((size_t)snprintf(child, sizeof child, "%s/%s", path, de->d_name) >= sizeof child) {
            fprintf(stderr, "replay: path too long under %s\n", path);
            rc = -1;
            break;
        }
        rc = collect(p, child);
    }
    closedir(d);
    return rc;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Reads path into a new buffer of exactly its size (a 1-byte buffer for an empty file). */
static int read_all(const char *path, uint8_t **data, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return -1;
    int rc = -1;
    uint8_t *buf = NULL;
    long size;
    if (fseek(f, 0, SEEK_END) != 0 || (size = ftell(f)) < 0 || fseek(f, 0, SEEK_SET) != 0)
        goto out;
    buf = malloc(size > 0 ? (size_t)size : 1);
    if (buf == NULL || fread(buf, 1, (size_t)size, f) != (size_t)size)
        goto out;
    *data = buf;
    *len = (size_t)size;
    buf = NULL;
    rc = 0;
out:
    free(buf);
    fclose(f);
    return rc;
}

int main(int argc, char **argv)
{
    struct paths p = {0};
    int rc = 1;
    if (argc < 2) {
        fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE...\n", argv[0]);
        return 1;
    }
    for (int i = 1; i < argc; i++)
        if (collect(&p, argv[i]) != 0)
            goto out;
    if (p.n == 0) {
        fprintf(stderr, "replay: no inputs under the given paths\n");
        goto out;
    }
    qsort(p.v, p.n, sizeof *p.v, cmp_str);
    bool verbose = getenv("REPLAY_VERBOSE") != NULL && strcmp(getenv("REPLAY_VERBOSE"), "0") != 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    size_t bytes = 0;
    for (size_t i = 0; i < p.n; i++) {
        uint8_t *data = NULL;
        size_t len = 0;
        if (read_all(p.v[i], &data, &len) != 0) {
            fprintf(stderr, "replay: cannot read %s\n", p.v[i]);
            goto out;
        }
        if (verbose)
            fprintf(stderr, "replay: %s (%zu bytes)\n", p.v[i], len);
        LLVMFuzzerTestOneInput(data, len);
        bytes += len;
        free(data);
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    printf("replayed %zu inputs (%zu bytes) in %.3f s\n", p.n, bytes,
           (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
    rc = 0;
out:
    for (size_t i = 0; i < p.n; i++)
        free(p.v[i]);
    free(p.v);
    return rc;
}
