/*
 * server/dataset.h - training files (JSONL, DESIGN §5) -> featurized data sets.
 * Internal to server/.
 *
 * One JSON object per line: {"input": <tensor or text>, "label": <label>} for classifiers,
 * {"input": ..., "target": <number or array>} for regressors. A label is one of the model's
 * label strings or an integer class index. "weight", "id" and "metadata" fields are ignored.
 * Blank lines are skipped. Errors name the line.
 */
#ifndef INFERA_SERVER_DATASET_H
#define INFERA_SERVER_DATASET_H

#include <jansson.h>

#include "model/model.h"
#include "oip_fast.h"

#define DATASET_MAX_LINE  ((size_t)1 << 20) /* bytes per line */
#define DATASET_MAX_LINES ((size_t)10000000)

/*
 * Optional rewrite of each text input before featurizing (e.g. PII masking). Returns a new
 * string the caller frees (and its length in *out_len), or NULL on out of memory.
 */
typedef char *(*dataset_text_fn)(const char *text, size_t len, size_t *out_len, void *user);

/*
 * Parses len bytes of JSONL for model m into ds (initialized here; caller deinits on
 * success). On error returns INF_EINVAL/INF_ELIMIT with "line N: ..." and leaves ds empty.
 *
 * Speed: for a tensor model with FP32 input, a line's "input" array is converted without
 * jansson (oip_fast_extract_member: the same floats, bit for bit) and jansson parses only the
 * rest of the line; about 4x faster on digits-like lines. Anything the fast path does not
 * take, and every error, goes through jansson, so the messages are the same.
 */
int dataset_parse_jsonl(const struct model *m, const char *data, size_t len,
                        dataset_text_fn text_fn, void *user, struct model_dataset *ds,
                        struct err *e);

/*
 * The fast path's split of one line (len bytes) for dataset_parse_jsonl and the upload check
 * (files.c): the top-level "input" array converted without jansson (at most max_values
 * numbers; *vals new, *n of them, nested as dims[0..*rank)) and the rest of the line parsed
 * by jansson with "input" as [] (*rest, a new reference). INF_OK, INF_ENOMEM, or
 * INF_ENOTFOUND when the line is for the slow path (also every error: jansson words it).
 */
int dataset_fast_split(const char *line, size_t len, size_t max_values, float **vals, size_t *n,
                       int64_t *dims, int *rank, json_t **rest);

/* dataset_parse_jsonl with every line through jansson: the reference tests compare with. */
int dataset_parse_jsonl_reference(const struct model *m, const char *data, size_t len,
                                  dataset_text_fn text_fn, void *user, struct model_dataset *ds,
                                  struct err *e);

/* Is key a field a training line may carry? "input", "label", "target" are read; "weight",
 * "id" and "metadata" (some exporters add them) are ignored. One rule for dataset_parse_jsonl
 * and the upload check (files.c). */
bool dataset_field_known(const char *key);

/* Reads the file at path (at most max_bytes) and parses it as dataset_parse_jsonl. */
int dataset_load_jsonl(const struct model *m, const char *path, size_t max_bytes,
                       struct model_dataset *ds, struct err *e);

#endif /* INFERA_SERVER_DATASET_H */
