/*
 * tests/fuzz/fuzz.h - shared helpers of infera's fuzz harnesses.
 *
 * Every harness tests/fuzz/fuzz_<name>.c defines LLVMFuzzerTestOneInput(). It is built two
 * ways: with clang and libFuzzer by tests/fuzz/run (coverage-guided, ASan+UBSan), and with the
 * project's compiler against tests/fuzz/replay_main.c, which feeds every file of the corpus
 * directories to it once (the default test suite, also under the ASan build).
 *
 * A harness asserts properties with FUZZ_CHECK(): a violated property aborts, which libFuzzer
 * reports as a crash and the replay as a failed test. Memory errors are the sanitizers' job.
 *
 * libFuzzer's entry point has no context argument, so what a harness sets up once (models, a
 * scratch directory) lives in function-local statics: the one exception to "no mutable
 * globals" (STYLE.md), confined to tests/fuzz/. Everything here is static inline so that each
 * harness is one translation unit plus replay_main.c.
 */
#ifndef INFERA_TESTS_FUZZ_H
#define INFERA_TESTS_FUZZ_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "common/common.h"
#include "model/model.h"

/* The libFuzzer entry point every harness defines. Returns 0 (the input is always kept). */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Aborts with file:line and a message when cond is false. */
#define FUZZ_CHECK(cond, ...)                                                                      \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: FUZZ_CHECK failed: %s: ", __FILE__, __LINE__, #cond);          \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
            abort();                                                                               \
        }                                                                                          \
    } while (0)

/* Prints a line on stderr when FUZZ_DEBUG is set (to see what each seed reaches). */
#define FUZZ_DEBUG(...)                                                                            \
    do {                                                                                           \
        if (fuzz_debug_on()) {                                                                     \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

static inline bool fuzz_debug_on(void)
{
    static int on = -1;
    if (on < 0)
        on = getenv("FUZZ_DEBUG") != NULL && getenv("FUZZ_DEBUG")[0] != '\0';
    return on > 0;
}

/* ------------------------------------------------------------------------------------------
 * One-time setup
 * ---------------------------------------------------------------------------------------- */

static inline void fuzz_log_discard(enum log_level level, const char *msg, void *user)
{
    (void)level;
    (void)msg;
    (void)user;
}

/*
 * What main() does before threads start, plus silence: the libraries log warnings (a keys file
 * readable by others, ...) that would only flood the fuzzer's output. Idempotent.
 */
static inline void fuzz_setup_once(void)
{
    static int done;
    if (done)
        return;
    done = 1;
    json_object_seed(1); /* deterministic hashing: a crash must replay */
    log_set_sink(fuzz_log_discard, NULL, LOG_ERROR);
}

/* ------------------------------------------------------------------------------------------
 * Models small enough to be fast, covering each input form
 * ---------------------------------------------------------------------------------------- */

enum fuzz_model_kind {
    FUZZ_MODEL_IMAGE, /* classifier, FP32 [2, 2, 2] (C, H, W) -> 3 labels "a" "b" "c" */
    FUZZ_MODEL_REG,   /* regressor, INT8 [3] -> 2 outputs */
    FUZZ_MODEL_TEXT,  /* text classifier, BYTES, hashing 16 dims, bigrams -> "x" "y" */
    FUZZ_MODELS
};

static inline const char *fuzz_model_config(enum fuzz_model_kind k)
{
    switch (k) {
        case FUZZ_MODEL_IMAGE:
            return "{\"format\":1,\"task\":\"classification\",\"input\":{\"name\":\"input\","
                   "\"datatype\":\"FP32\",\"shape\":[2,2,2],\"preprocess\":{\"scale\":0.5,"
                   "\"mean\":[0.5,0.25],\"std\":[2,4]}},\"labels\":[\"a\",\"b\",\"c\"],"
                   "\"layers\":[{\"type\":\"Flatten\"},{\"type\":\"Linear\",\"in_features\":8,"
                   "\"out_features\":3}]}";
        case FUZZ_MODEL_REG:
            return "{\"format\":1,\"task\":\"regression\",\"input\":{\"name\":\"x\","
                   "\"datatype\":\"INT8\",\"shape\":[3]},\"layers\":[{\"type\":\"Linear\","
                   "\"in_features\":3,\"out_features\":4},{\"type\":\"Tanh\"},{\"type\":"
                   "\"Linear\",\"in_features\":4,\"out_features\":2}]}";
        default:
            return "{\"format\":1,\"task\":\"classification\",\"input\":{\"name\":\"text\","
                   "\"datatype\":\"BYTES\",\"shape\":[1],\"featurizer\":{\"type\":\"hashing\","
                   "\"dims\":16,\"ngrams\":2}},\"labels\":[\"x\",\"y\"],\"layers\":[{\"type\":"
                   "\"Linear\",\"in_features\":16,\"out_features\":2}]}";
    }
}

/* Borrowed model of kind k, loaded on first use and kept for the process. */
static inline struct model *fuzz_model(enum fuzz_model_kind k)
{
    static struct model *models[FUZZ_MODELS];
    if (models[k] == NULL) {
        struct err e = {0};
        const char *cfg = fuzz_model_config(k);
        models[k] = model_load_buffers(cfg, strlen(cfg), NULL, 0, &e);
        FUZZ_CHECK(models[k] != NULL, "fuzz model %d: %s", (int)k, e.msg);
    }
    return models[k];
}

/* ------------------------------------------------------------------------------------------
 * Scratch files for APIs that take a path
 * ---------------------------------------------------------------------------------------- */

/* Removes the files of directory dir (not recursive) and dir itself; errors are ignored. */
static inline void fuzz_rmdir_files(const char *dir)
{
    DIR *d = opendir(dir);
    if (d != NULL) {
        struct dirent *de;
        char path[4096];
        while ((de = readdir(d)) != NULL) {
            if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0)
                continue;
            snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
}

/* The scratch directory's path, "" until fuzz_scratch_dir() made it. */
static inline char *fuzz_scratch_buf(void)
{
    static char path[256];
    return path;
}

static inline void fuzz_scratch_cleanup(void)
{
    if (fuzz_scratch_buf()[0] != '\0')
        fuzz_rmdir_files(fuzz_scratch_buf());
}

/*
 * A private, empty directory for this process, on tmpfs when there is one
 * (/dev/shm/infera-fuzz-<tag>-<pid>, else under $TMPDIR or /tmp), removed at exit.
 * Returns the borrowed path; aborts if it cannot be made.
 */
static inline const char *fuzz_scratch_dir(const char *tag)
{
    char *path = fuzz_scratch_buf();
    if (path[0] != '\0')
        return path;
    struct stat st;
    const char *base = getenv("TMPDIR");
    if (stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode) && access("/dev/shm", W_OK) == 0)
        base = "/dev/shm";
    else if (base == NULL || base[0] == '\0')
        base = "/tmp";
    snprintf(path, 256, "%s/infera-fuzz-%s-%ld", base, tag, (long)getpid());
    fuzz_rmdir_files(path); /* a leftover of a crashed run with a reused pid */
    FUZZ_CHECK(mkdir(path, 0700) == 0, "mkdir %s: %s", path, strerror(errno));
    atexit(fuzz_scratch_cleanup);
    return path;
}

/* Writes len bytes to path (created 0600 or truncated); aborts on error. */
static inline void fuzz_write_file(const char *path, const void *data, size_t len)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FUZZ_CHECK(fd >= 0, "open %s: %s", path, strerror(errno));
    const char *p = data;
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        FUZZ_CHECK(n > 0, "write %s: %s", path, strerror(errno));
        p += n;
        len -= (size_t)n;
    }
    close(fd);
}

#endif /* INFERA_TESTS_FUZZ_H */
