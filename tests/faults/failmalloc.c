/*
 * tests/faults/failmalloc.c - an LD_PRELOAD shim that makes the Nth heap allocation fail.
 *
 * It wraps malloc, calloc, realloc, reallocarray, posix_memalign, aligned_alloc, memalign and
 * valloc (glibc's strdup, asprintf, open_memstream, ... call malloc through the interposable
 * symbol, so they are covered too) and forwards to the next definition (libc's, or valgrind's
 * replacement of it) found with dlsym(RTLD_NEXT). Allocations are counted only while the shim
 * is armed; the Nth counted one (and the FAILMALLOC_COUNT - 1 after it) returns NULL with
 * errno ENOMEM. free() is never counted.
 *
 * Environment:
 *   FAILMALLOC_N=N         fail the Nth counted allocation (1-based); 0 or unset: count only
 *   FAILMALLOC_COUNT=M     fail M allocations from the Nth on (default 1; -1: every one after)
 *   FAILMALLOC_SKIP=K      do not count the first K allocations after arming
 *   FAILMALLOC_ARM=main    arm when main() is entered (so the dynamic loader's and library
 *                          constructors' allocations are never failed); disarm when it returns
 *   FAILMALLOC_ARM=FILE    (a path) armed while FILE exists. The shim looks at most every
 *                          FAILMALLOC_POLL_MS (default 2) milliseconds, from inside an
 *                          allocation, so an idle process arms at its first allocation after
 *                          the file appears. Each arming starts the count from zero again
 *                          and, if FILE holds a number, takes it as N (so one process can be
 *                          swept: write N to a temporary file, rename it to FILE); each
 *                          disarming logs "failmalloc: disarmed: counted C, failed F".
 *   FAILMALLOC_REPORT=FILE at exit, write "counted C failed F\n" there (C: counted allocations
 *                          of the last arming)
 *   FAILMALLOC_BT=1        print a backtrace to stderr at each failure
 *   FAILMALLOC_ONLY=NAME   inert (forwards only) unless the program's file name is NAME, so
 *                          shells and valgrind's launcher in between are left alone
 * Every failure logs "failmalloc: failing allocation #N (size S)" on stderr (write(2), no
 * stdio, no allocation).
 *
 * dlsym() itself may call calloc/malloc before the real functions are known: those requests
 * are served from a static bootstrap buffer, and free() ignores pointers into it.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dlfcn.h>
#include <errno.h>
#include <execinfo.h>
#include <fcntl.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef void *(*malloc_fn)(size_t);
typedef void *(*calloc_fn)(size_t, size_t);
typedef void *(*realloc_fn)(void *, size_t);
typedef void *(*reallocarray_fn)(void *, size_t, size_t);
typedef void (*free_fn)(void *);
typedef int (*posix_memalign_fn)(void **, size_t, size_t);
typedef void *(*aligned_alloc_fn)(size_t, size_t);
typedef void *(*memalign_fn)(size_t, size_t);
typedef void *(*valloc_fn)(size_t);
typedef int (*main_fn)(int, char **, char **);
int __libc_start_main(main_fn main_, int argc, char **argv, void (*init)(void),
                      void (*fini)(void), void (*rtld_fini)(void), void *stack_end);
typedef int (*start_main_fn)(main_fn, int, char **, void (*)(void), void (*)(void),
                             void (*)(void), void *);

/* The shim's whole state: one process-wide instance, by necessity (malloc has no context). */
static struct {
    malloc_fn malloc;
    calloc_fn calloc;
    realloc_fn realloc;
    reallocarray_fn reallocarray;
    free_fn free;
    posix_memalign_fn posix_memalign;
    aligned_alloc_fn aligned_alloc;
    memalign_fn memalign;
    valloc_fn valloc;
    int resolving;
    int ready;
    int inert;

    long n;      /* the first counted allocation to fail; 0: none */
    long count;  /* how many fail from the nth on; -1: all */
    long skip;   /* not counted after arming */
    int arm_main;
    char arm_file[4096];
    long poll_ns;
    int bt;
    char report[4096];

    int armed;               /* atomic */
    long counted;            /* atomic: counted allocations of this arming */
    long failed;             /* atomic */
    long long last_poll_ns;  /* atomic */
    main_fn main;
} fm;

static _Alignas(64) char boot_buf[65536];
static size_t boot_used;

static void *boot_alloc(size_t size)
{
    size = (size + 63) & ~(size_t)63;
    if (size > sizeof boot_buf - boot_used)
        return NULL;
    void *p = boot_buf + boot_used;
    boot_used += size;
    return p; /* static storage: already zero */
}

static int in_boot(const void *p)
{
    return (const char *)p >= boot_buf && (const char *)p < boot_buf + sizeof boot_buf;
}

static void say(const char *s)
{
    ssize_t r = write(2, s, strlen(s));
    (void)r;
}

static void say_num(char *buf, size_t cap, long v)
{
    char tmp[32];
    int i = 0;
    unsigned long u = v < 0 ? (unsigned long)-v : (unsigned long)v;
    do {
        tmp[i++] = (char)('0' + u % 10);
        u /= 10;
    } while (u && i < 30);
    size_t len = strlen(buf);
    if (v < 0 && len + 1 < cap)
        buf[len++] = '-';
    while (i > 0 && len + 1 < cap)
        buf[len++] = tmp[--i];
    buf[len] = '\0';
}

static long env_long(const char *name, long dflt)
{
    const char *s = getenv(name);
    if (s == NULL || *s == '\0')
        return dflt;
    return strtol(s, NULL, 10);
}

static void resolve(void)
{
    if (fm.ready || fm.resolving)
        return;
    fm.resolving = 1;
    fm.malloc = (malloc_fn)dlsym(RTLD_NEXT, "malloc");
    fm.calloc = (calloc_fn)dlsym(RTLD_NEXT, "calloc");
    fm.realloc = (realloc_fn)dlsym(RTLD_NEXT, "realloc");
    fm.reallocarray = (reallocarray_fn)dlsym(RTLD_NEXT, "reallocarray");
    fm.free = (free_fn)dlsym(RTLD_NEXT, "free");
    fm.posix_memalign = (posix_memalign_fn)dlsym(RTLD_NEXT, "posix_memalign");
    fm.aligned_alloc = (aligned_alloc_fn)dlsym(RTLD_NEXT, "aligned_alloc");
    fm.memalign = (memalign_fn)dlsym(RTLD_NEXT, "memalign");
    fm.valloc = (valloc_fn)dlsym(RTLD_NEXT, "valloc");

    /* getenv allocates nothing. */
    fm.n = env_long("FAILMALLOC_N", 0);
    fm.count = env_long("FAILMALLOC_COUNT", 1);
    fm.skip = env_long("FAILMALLOC_SKIP", 0);
    fm.poll_ns = env_long("FAILMALLOC_POLL_MS", 2) * 1000000L;
    fm.bt = env_long("FAILMALLOC_BT", 0) != 0;
    const char *arm = getenv("FAILMALLOC_ARM");
    if (arm != NULL && strcmp(arm, "main") == 0)
        fm.arm_main = 1;
    else if (arm != NULL && *arm != '\0' && strlen(arm) < sizeof fm.arm_file)
        strcpy(fm.arm_file, arm);
    else if (arm == NULL || *arm == '\0')
        __atomic_store_n(&fm.armed, 1, __ATOMIC_SEQ_CST); /* armed from the start */
    const char *only = getenv("FAILMALLOC_ONLY");
    if (only != NULL && *only != '\0') {
        char exe[4096];
        ssize_t k = readlink("/proc/self/exe", exe, sizeof exe - 1);
        exe[k > 0 ? k : 0] = '\0';
        const char *base = strrchr(exe, '/');
        base = base ? base + 1 : exe;
        if (strcmp(base, only) != 0) {
            fm.inert = 1;
            fm.arm_main = 0;
            fm.arm_file[0] = '\0';
            __atomic_store_n(&fm.armed, 0, __ATOMIC_SEQ_CST);
        }
    }
    const char *rep = getenv("FAILMALLOC_REPORT");
    if (rep != NULL && strlen(rep) < sizeof fm.report)
        strcpy(fm.report, rep);
    fm.resolving = 0;
    fm.ready = 1;
}

/* FILE's number, or -1 (no allocation: open/read/close only). */
static long arm_file_number(void)
{
    int fd = open(fm.arm_file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[32];
    ssize_t r = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (r <= 0)
        return -1;
    buf[r] = '\0';
    long v = 0;
    for (ssize_t i = 0; i < r && buf[i] >= '0' && buf[i] <= '9'; i++)
        v = v * 10 + (buf[i] - '0');
    return (buf[0] >= '0' && buf[0] <= '9') ? v : -1;
}

static void set_armed(int on)
{
    int was = __atomic_load_n(&fm.armed, __ATOMIC_SEQ_CST);
    if (was == on)
        return;
    if (on && fm.arm_file[0] != '\0') {
        long n = arm_file_number();
        if (n >= 0)
            fm.n = n;
    }
    __atomic_store_n(&fm.armed, on, __ATOMIC_SEQ_CST);
    if (on) {
        __atomic_store_n(&fm.counted, 0, __ATOMIC_SEQ_CST);
        __atomic_store_n(&fm.failed, 0, __ATOMIC_SEQ_CST);
        say("failmalloc: armed\n");
    } else {
        char buf[128] = "failmalloc: disarmed: counted ";
        say_num(buf, sizeof buf, __atomic_load_n(&fm.counted, __ATOMIC_SEQ_CST));
        strcat(buf, ", failed ");
        say_num(buf, sizeof buf, __atomic_load_n(&fm.failed, __ATOMIC_SEQ_CST));
        strcat(buf, "\n");
        say(buf);
    }
}

static void poll_arm_file(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    long long last = __atomic_load_n(&fm.last_poll_ns, __ATOMIC_RELAXED);
    if (now - last < fm.poll_ns)
        return;
    if (!__atomic_compare_exchange_n(&fm.last_poll_ns, &last, now, 0, __ATOMIC_SEQ_CST,
                                     __ATOMIC_RELAXED))
        return; /* another thread polls now */
    set_armed(access(fm.arm_file, F_OK) == 0);
}

/* 1 when this allocation must fail. */
static int should_fail(size_t size)
{
    if (!fm.ready || fm.inert)
        return 0;
    if (fm.arm_file[0] != '\0')
        poll_arm_file();
    if (!__atomic_load_n(&fm.armed, __ATOMIC_SEQ_CST))
        return 0;
    long c = __atomic_add_fetch(&fm.counted, 1, __ATOMIC_SEQ_CST) - fm.skip;
    if (fm.n <= 0 || c < fm.n)
        return 0;
    if (fm.count >= 0 && c >= fm.n + fm.count)
        return 0;
    __atomic_add_fetch(&fm.failed, 1, __ATOMIC_SEQ_CST);
    char buf[128] = "failmalloc: failing allocation #";
    say_num(buf, sizeof buf, c);
    strcat(buf, " (size ");
    say_num(buf, sizeof buf, (long)size);
    strcat(buf, ")\n");
    say(buf);
    if (fm.bt) {
        void *frames[48];
        int k = backtrace(frames, 48);
        backtrace_symbols_fd(frames, k, 2);
    }
    errno = ENOMEM;
    return 1;
}

void *malloc(size_t size)
{
    if (!fm.ready) {
        if (fm.resolving)
            return boot_alloc(size);
        resolve();
    }
    if (should_fail(size))
        return NULL;
    return fm.malloc(size);
}

void *calloc(size_t n, size_t size)
{
    if (!fm.ready) {
        if (fm.resolving) {
            if (size != 0 && n > SIZE_MAX / size)
                return NULL;
            return boot_alloc(n * size);
        }
        resolve();
    }
    if (should_fail(n * size))
        return NULL;
    return fm.calloc(n, size);
}

void *realloc(void *p, size_t size)
{
    if (!fm.ready)
        resolve();
    if (in_boot(p)) {
        /* Rare: a bootstrap block grows. Copy what may be there (bounded by the buffer). */
        void *q = malloc(size);
        if (q != NULL) {
            size_t avail = (size_t)(boot_buf + sizeof boot_buf - (char *)p);
            memcpy(q, p, size < avail ? size : avail);
        }
        return q;
    }
    if ((p == NULL || size != 0) && should_fail(size)) /* realloc(p, 0) frees: never fails */
        return NULL;
    return fm.realloc(p, size);
}

void *reallocarray(void *p, size_t n, size_t size)
{
    if (size != 0 && n > SIZE_MAX / size) {
        errno = ENOMEM;
        return NULL;
    }
    return realloc(p, n * size);
}

void free(void *p)
{
    if (p == NULL || in_boot(p))
        return;
    if (!fm.ready)
        resolve();
    fm.free(p);
}

int posix_memalign(void **out, size_t align, size_t size)
{
    if (!fm.ready)
        resolve();
    if (should_fail(size))
        return ENOMEM;
    return fm.posix_memalign(out, align, size);
}

void *aligned_alloc(size_t align, size_t size)
{
    if (!fm.ready)
        resolve();
    if (should_fail(size))
        return NULL;
    return fm.aligned_alloc(align, size);
}

void *memalign(size_t align, size_t size)
{
    if (!fm.ready)
        resolve();
    if (should_fail(size))
        return NULL;
    return fm.memalign(align, size);
}

void *valloc(size_t size)
{
    if (!fm.ready)
        resolve();
    if (should_fail(size))
        return NULL;
    return fm.valloc(size);
}

/* ------------------------------------------------------------------------------------------
 * FAILMALLOC_ARM=main: wrap main through __libc_start_main
 * ---------------------------------------------------------------------------------------- */

static int wrapped_main(int argc, char **argv, char **envp)
{
    if (fm.arm_main)
        set_armed(1);
    int rc = fm.main(argc, argv, envp);
    if (fm.arm_main)
        __atomic_store_n(&fm.armed, 0, __ATOMIC_SEQ_CST);
    return rc;
}

int __libc_start_main(main_fn main_, int argc, char **argv, void (*init)(void),
                      void (*fini)(void), void (*rtld_fini)(void), void *stack_end)
{
    if (!fm.ready)
        resolve();
    start_main_fn real = (start_main_fn)dlsym(RTLD_NEXT, "__libc_start_main");
    fm.main = main_;
    if (fm.bt) {
        void *frames[4];
        backtrace(frames, 4); /* loads libgcc_s now, not inside a failing allocation */
    }
    return real(wrapped_main, argc, argv, init, fini, rtld_fini, stack_end);
}

__attribute__((destructor)) static void failmalloc_report(void)
{
    if (fm.report[0] == '\0' || fm.inert)
        return;
    int fd = open(fm.report, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    char buf[128] = "counted ";
    say_num(buf, sizeof buf, __atomic_load_n(&fm.counted, __ATOMIC_SEQ_CST) - fm.skip);
    strcat(buf, " failed ");
    say_num(buf, sizeof buf, __atomic_load_n(&fm.failed, __ATOMIC_SEQ_CST));
    strcat(buf, "\n");
    ssize_t r = write(fd, buf, strlen(buf));
    (void)r;
    close(fd);
}
