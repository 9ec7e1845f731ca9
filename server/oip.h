/*
 * server/oip.h - Open Inference Protocol v2 (KServe / Triton) request and response bodies,
 * and the JSON -> tensor conversion shared with training files. Internal to server/.
 *
 * Everything here parses hostile input: element counts are checked against limits before
 * allocation, datatypes are enforced (an INT8 tensor holding 300 is an error, not a wrap),
 * non-finite numbers are rejected, nesting must match the declared shape.
 */
#ifndef INFERA_SERVER_OIP_H
#define INFERA_SERVER_OIP_H

#include <jansson.h>

#include "model/model.h"

/* Limits applied to one request. */
struct oip_limits {
    size_t max_batch;    /* samples per request */
    size_t max_elements; /* B * R */
    size_t max_text;     /* bytes per BYTES element */
};

/* Sensible defaults for a public-facing server. */
struct oip_limits oip_limits_default(void);

/* Which outputs the client asked for (all by default). */
enum oip_output {
    OIP_OUT_PROBABILITIES = 1 << 0,
    OIP_OUT_LABEL = 1 << 1,
    OIP_OUT_TOP_K_LABELS = 1 << 2,
    OIP_OUT_OUTPUT = 1 << 3,
    OIP_OUT_TOP_K_PROBABILITIES = 1 << 4,
};

struct oip_request {
    char *id;                /* the request "id" to echo, or NULL; owned */
    size_t batch;            /* B */
    float *raw;              /* (B, R) tensor input as sent (tensor models); owned */
    float *x;                /* (B, F) features for the first layer; owned */
    char **texts;            /* (B) NUL-terminated texts (text models); owned */
    size_t *text_lens;       /* (B) byte lengths (texts may hold NUL bytes) */
    unsigned outputs;        /* enum oip_output bits requested */
    unsigned binary_outputs; /* of those, the ones to send as binary data */
    bool binary_all;         /* parameters.binary_data_output */
    int top_k;               /* parameters.top_k, 0 if absent */
    json_t *params;          /* "parameters" object or NULL; new reference */
};

/*
 * Parses an inference request body (len bytes of JSON) for model m into req (zeroed first).
 * On error returns INF_EINVAL / INF_ELIMIT with a message that names the field, e.g.
 * `inputs[0].shape: [2, 63] does not match the model's input [-1, 64]`. req needs
 * oip_request_deinit() after success and after failure alike.
 */
int oip_request_parse(const struct model *m, const char *body, size_t len,
                      const struct oip_limits *lim, struct oip_request *req, struct err *e);
void oip_request_deinit(struct oip_request *req);

/*
 * The same for a body in Triton's binary tensor form: the first json_len bytes are the JSON
 * header (Inference-Header-Content-Length), the rest the input's raw little-endian elements
 * (BYTES: 4-byte length + bytes each), sized by inputs[0].parameters.binary_data_size.
 */
int oip_request_parse_binary(const struct model *m, const char *body, size_t len, size_t json_len,
                             const struct oip_limits *lim, struct oip_request *req, struct err *e);

/*
 * Encodes the whole response for req from out (B, O): JSON, followed (when the request asked
 * for binary outputs) by the binary data of those outputs in order. On success *buf is a new
 * NUL-terminated buffer of *len bytes (the NUL not counted) that the caller frees with free(),
 * and *json_len is the JSON part's length (== *len when nothing is binary).
 *
 * The JSON is byte for byte json_dump_checked(oip_response_build(...), JSON_COMPACT |
 * JSON_REAL_PRECISION(9)). When req->binary_outputs == 0 (the common case) it is written
 * straight into one growing buffer without building a json_t (one allocation for most
 * responses, two with top_k); with binary outputs it goes through oip_response_build().
 *
 * Returns INF_OK, or INF_ENOMEM whenever oip_response_build() or the dump would fail: out of
 * memory, a text over JSON_DUMP_MAX, a NaN or infinity among the numbers the document holds
 * (json_real() refuses them), or a name, version, id or label that is NULL (name, version) or
 * not valid UTF-8 (json_string() refuses it). On failure nothing is written to *buf, *len or
 * *json_len and nothing stays allocated. req must be as oip_request_parse() leaves it (top_k
 * from 0 to O; label outputs for classifiers only). m, the strings, req and out are borrowed
 * for the call. Reentrant; assumes printf's rounding mode is round-to-nearest (the default).
 */
int oip_response_encode(const struct model *m, const char *model_name, const char *model_version,
                        const struct oip_request *req, const float *out, char **buf, size_t *len,
                        size_t *json_len);

/*
 * Builds the response for req from out (B, O): probabilities (after softmax) for a classifier,
 * values for a regressor. Returns a new JSON object (caller decrefs), or NULL on out of memory,
 * a non-finite number in an output it builds, or a string that is NULL or not UTF-8 (see
 * oip_response_encode(), whose direct writer must stay in step with this function: change
 * both, tests/server/test_oip_fast.c compares them).
 */
json_t *oip_response_build(const struct model *m, const char *model_name, const char *model_version,
                           const struct oip_request *req, const float *out);

/*
 * Converts a JSON tensor to floats: data is a flat array of n numbers or arrays nested exactly
 * as dims (rank entries). datatype ("FP32", "UINT8", ...) bounds the values. Writes n floats
 * to out. what names the field in errors ("inputs[0].data", "line 7: input").
 */
int oip_tensor_from_json(const json_t *data, const char *datatype, const int64_t *dims, int rank,
                         size_t n, float *out, const char *what, struct err *e);

/* Returns the index of label in m's labels, or -1. */
int oip_label_index(const struct model *m, const char *label);

#endif /* INFERA_SERVER_OIP_H */
