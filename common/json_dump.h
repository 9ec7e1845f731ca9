/*
 * common/json_dump.h - json_dumps() that never returns truncated JSON.
 *
 * Why: jansson 2.14's json_dumps() ignores the result of dump_string() for object keys
 * (dump.c, do_dump, both the sorted and the unsorted branch). When its buffer cannot grow while
 * a key is written, the key is dropped or cut, the next, smaller writes succeed, and the call
 * returns a string that is not JSON. Out of memory then looks like success.
 *
 * What can fail inside json_dump_callback() (jansson 2.14, src/dump.c), and how each failure
 * is caught here:
 *   - the writer callback (our buffer growth): the writer latches its first failure and
 *     refuses every later write, so the separator after a failed key fails too and
 *     do_dump() returns -1;
 *   - hashtable_init() of the loop-detection set, hashtable_set() in jsonp_loop_check() for
 *     every array and object, the key array of JSON_SORT_KEYS: results checked by jansson,
 *     reported as -1;
 *   - string escaping and numbers use stack buffers (no allocation); a value string that is not
 *     UTF-8 is reported as -1;
 *   - a key that is not UTF-8 (only the *_nocheck setters can insert one; infera uses none)
 *     makes dump_string() stop after the opening quote, unchecked: no write fails, so the
 *     writer cannot see it. The finished text is therefore also scanned once (linear, no
 *     allocation) and rejected unless it is exactly one well-formed JSON value.
 *
 * Thread safety: reentrant; jansson's allocation functions must not change during a call.
 */
#ifndef INFERA_JSON_DUMP_H
#define INFERA_JSON_DUMP_H

#include <stddef.h>

#include <jansson.h>

/* The longest text json_dump_checked() produces (1 GiB, without the NUL); longer is a failure. */
#define JSON_DUMP_MAX ((size_t)1 << 30)

/* Nesting deeper than this fails (2048, the depth json_loads() accepts). */
#define JSON_DUMP_MAX_DEPTH 2048

/*
 * Serialises v like json_dumps(v, flags): the same flags, the same text, the same allocator
 * (jansson's, see json_set_alloc_funcs()). Returns a new NUL-terminated string that the caller
 * frees with free() (with jansson's free function if json_set_alloc_funcs() replaced it), or
 * NULL if v is NULL, flags hold JSON_EMBED (its output is not a JSON text, so it cannot be
 * checked), any allocation failed, the text would exceed JSON_DUMP_MAX or JSON_DUMP_MAX_DEPTH,
 * or jansson refused v (e.g. a non-container without JSON_ENCODE_ANY, a circular reference, a
 * string that is not UTF-8). A non-NULL result is always one complete, well-formed JSON value.
 * v is borrowed and left unchanged.
 */
char *json_dump_checked(const json_t *v, size_t flags);

#endif /* INFERA_JSON_DUMP_H */
