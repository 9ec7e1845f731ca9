/*
 * server/oip_fast.h - a fast path for the tensor "data" of an Open Inference Protocol v2
 * request. Internal to server/.
 *
 * jansson spends most of an inference request's parse time building one json_t per number of
 * inputs[0].data. oip_fast_extract_data() scans the body once, converts that array straight to
 * floats, and hands back the rest of the document - the same bytes with the array replaced by
 * `[]` - for jansson to parse as usual (name, shape, datatype, id, parameters, outputs).
 *
 * Intended use in oip_request_parse():
 *
 *     rc = oip_fast_extract_data(body, len, lim->max_elements, &vals, &n, dims, &rank,
 *                                &rest, &rest_len, e);
 *     if (rc == INF_ENOTFOUND)      -> the slow path: json_loadb(body) as today
 *     else if (rc != INF_OK)        -> answer the error (e holds the message)
 *     else                          -> json_loadb(rest, rest_len, JSON_REJECT_DUPLICATES)
 *                                      and validate the rest; if jansson rejects rest, the body
 *                                      is invalid JSON too (see below): for a message whose
 *                                      line/column match the client's body, run the slow path
 *                                      on body (an error path, so its cost does not matter).
 *
 * What INF_OK guarantees. The scanner checks the JSON grammar of every byte it walks (the
 * whole body) and the data array completely, but it leaves to jansson's parse of rest what
 * jansson checks there anyway: UTF-8 validity, \u escapes that decode to NUL or to unpaired
 * surrogates, range of numbers outside data, nesting depth, duplicate keys in other objects.
 * Since rest differs from body only by one JSON value replaced by another, jansson accepts
 * rest exactly when it accepts body, and then *vals is bit for bit what the slow path gets
 * from (float)json_number_value() of each element. So: INF_OK plus a successful parse of
 * rest means the body is valid; never skip the parse of rest.
 *
 * Values. Each element is (float)strtod(token) - rounded to double first, then to float,
 * exactly like the jansson path (this can differ from strtof(token) in the last bit for
 * tokens within half a double ulp of a float midpoint). One exception, also to match jansson:
 * the integer token `-0` gives +0.0 (jansson stores it as the integer 0); `-0.0` and `-0e0`
 * give -0.0. Integer tokens outside the int64 range (which jansson rejects as "too big
 * integer") are INF_EINVAL here. Most tokens (<= 15 significant digits, decimal exponent
 * within +-22) are converted without strtod, exactly (see oip_fast.c); the rest go through
 * strtod on a NUL-terminated copy of the token (any length; long tokens are copied to the
 * heap). strtod reads LC_NUMERIC: the server never calls setlocale, so it runs in the "C"
 * locale. Should a different locale make strtod stop at the '.', the call returns
 * INF_ENOTFOUND and the slow path (jansson converts in any locale) takes over.
 *
 * Build: needs IEEE double arithmetic without excess precision (FLT_EVAL_METHOD == 0, as on
 * x86-64 and aarch64) and must not be built with -ffast-math; oip_fast.c checks both.
 *
 * Thread safety: reentrant, no global state.
 */
#ifndef INFERA_SERVER_OIP_FAST_H
#define INFERA_SERVER_OIP_FAST_H

#include <stddef.h>
#include <stdint.h>

#include "common/common.h"

/* Deepest nesting of inputs[0].data the fast path handles; deeper data falls back. */
#define OIP_FAST_MAX_RANK 8

/*
 * Locates inputs[0].data in the OIP v2 request body (len bytes, need not be NUL-terminated;
 * nothing past body[len - 1] is read) and parses it without jansson.
 *
 * Only a key of the top-level object named "inputs" counts (after decoding escapes, so
 * "\u0069nputs" is "inputs", as for jansson), its value's first element, and that object's
 * own "data" key; the same names in string values or nested objects are ignored.
 *
 * INF_OK: *vals is a new array of *n floats (n >= 1) in row-major order; caller frees with
 *   free(). dims[0..*rank-1] (1 <= *rank <= OIP_FAST_MAX_RANK; dims needs room for
 *   OIP_FAST_MAX_RANK entries) describe the nesting: 6 numbers in a flat array give rank 1,
 *   dims [6]; [[1,2,3],[4,5,6]] gives rank 2, dims [2,3]. *rest is a new NUL-terminated
 *   buffer (caller frees with free()) holding body with the data array replaced by `[]`;
 *   *rest_len is its length without the NUL.
 *
 * INF_ENOTFOUND: the fast path does not apply; the caller runs the full jansson parse, which
 *   accepts the body or explains what is wrong with it. No output is written and e is left
 *   untouched (so jansson's message will be the one recorded). Returned when the body is not
 *   an object whose "inputs" key holds an array whose first element is an object with a
 *   "data" key holding a non-empty array of numbers and non-empty arrays of numbers; when
 *   that array holds a string, true/false/null or an object (BYTES and BOOL tensors, or
 *   errors the slow path words better), an empty array, or nests deeper than
 *   OIP_FAST_MAX_RANK; when the top-level object has two "inputs" keys or inputs[0] two
 *   "data" keys; when anything outside the data array breaks the JSON grammar (including
 *   trailing bytes after the top-level object and nesting deeper than 512 levels).
 *
 * INF_EINVAL: the data array itself is malformed. e names the flat element index the way the
 *   slow path does, "inputs[0].data[12]: invalid number \"012\"": a number that breaks the
 *   JSON grammar (leading '+' or zeros, ".5", "5.", NaN, Infinity, hex, trailing garbage),
 *   an integer outside int64, a value that is not a finite FP32 value once rounded (1e39),
 *   a missing or extra ',', an unterminated array, ragged nesting ([[1,2],[3]], [1,[2]]).
 *   A malformed element is reported as soon as it is met, even if a later part of the body
 *   would have made the fast path not apply.
 *
 * INF_ELIMIT: the data array holds more than max_elements numbers (e says so).
 * INF_ENOMEM: an allocation failed.
 *
 * On every status but INF_OK no output is written and nothing is left allocated.
 */
int oip_fast_extract_data(const char *body, size_t len, size_t max_elements, float **vals,
                          size_t *n, int64_t *dims, int *rank, char **rest, size_t *rest_len,
                          struct err *e);

/*
 * The same for the value of the top-level member key of a JSON object (a JSONL training line's
 * "input": {"input": [[0, 3], [1, 2]], "label": 1}), with the same statuses and guarantees:
 * only a top-level key counts (nested objects and string values are skipped), two such keys
 * or a value that is not an array of numbers give INF_ENOTFOUND, and *rest is the object with
 * that array replaced by `[]`. Error messages name the array by key ("input[12]: ...").
 * key NULL: INF_ENOTFOUND.
 */
int oip_fast_extract_member(const char *body, size_t len, const char *key, size_t max_elements,
                            float **vals, size_t *n, int64_t *dims, int *rank, char **rest,
                            size_t *rest_len, struct err *e);

#endif /* INFERA_SERVER_OIP_FAST_H */
