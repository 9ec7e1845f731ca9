/*
 * tests/test.h - a tiny assertion harness for infera's C unit tests.
 *
 * Each test program defines test functions, runs them with RUN(fn) from main and returns
 * test_finish(). A failed CHECK prints file:line and the expression and marks the program
 * failed, but lets the rest run so one run shows every failure.
 */
#ifndef INFERA_TEST_H
#define INFERA_TEST_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int test_failures;
static int test_checks;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        test_checks++;                                                                             \
        if (!(cond)) {                                                                             \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        test_checks++;                                                                             \
        if (!(cond)) {                                                                             \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* |a - b| <= tol, NaN never passes. */
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double ca_ = (double)(a), cb_ = (double)(b);                                               \
        test_checks++;                                                                             \
        if (!(fabs(ca_ - cb_) <= (tol))) {                                                         \
            test_failures++;                                                                       \
            fprintf(stderr, "%s:%d: CHECK_NEAR failed: %s = %.9g, %s = %.9g, tol %g\n", __FILE__,  \
                    __LINE__, #a, ca_, #b, cb_, (double)(tol));                                    \
        }                                                                                          \
    } while (0)

/* The message of e contains needle. */
#define CHECK_ERR_HAS(e, needle)                                                                   \
    CHECK_MSG(strstr((e)->msg, (needle)) != NULL, "error \"%s\" lacks \"%s\"", (e)->msg, (needle))

#define RUN(fn)                                                                                    \
    do {                                                                                           \
        int before_ = test_failures;                                                               \
        fn();                                                                                      \
        fprintf(stderr, "%s %s\n", test_failures == before_ ? "ok  " : "FAIL", #fn);               \
    } while (0)

/* True under slow runners (the valgrind setup sets INFERA_TEST_QUICK=1): randomized tests
 * then run fewer iterations. */
static inline int test_quick(void)
{
    const char *q = getenv("INFERA_TEST_QUICK");
    return q != NULL && q[0] == '1';
}

static inline int test_finish(void)
{
    fprintf(stderr, "%d checks, %d failed\n", test_checks, test_failures);
    if (test_checks == 0) {
        fprintf(stderr, "no checks ran\n");
        return 1;
    }
    return test_failures == 0 ? 0 : 1;
}

#endif /* INFERA_TEST_H */
