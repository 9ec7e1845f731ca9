/*
 * model/safetensors.c - reads and writes the safetensors format: a u64 little-endian header
 * length N, N bytes of JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {..}},
 * then the raw little-endian data. The reader treats its input as hostile: lengths, offsets,
 * shapes and names are all checked before anything from the file is trusted or allocated.
 */
#include "internal.h"

#include "common/json_dump.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ST_META_KEY "__metadata__"

/* Room for a name quoted into an error message (truncated with "..."). */
#define QUOTE_MAX 96
/* Room for a shape printed as "[d0, d1, ...]": ST_MAX_RANK 20-digit numbers. */
#define SHAPE_STR_MAX (ST_MAX_RANK * 22 + 4)

static const struct {
    const char *name;
    size_t size;
} dtype_info[] = {
    [ST_F32] = {"F32", 4},
    [ST_F16] = {"F16", 2},
    [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},
};

/* ------------------------------------------------------------------------------------------
 * Messages: names and jansson's text come from the file, so they are escaped and truncated
 * before they reach a log line or a terminal.
 * ---------------------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at p (n bytes left, p[0] >= 0x80), or 0. */
static size_t utf8_len(const unsigned char *p, size_t n)
{
    static const unsigned min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    size_t len = p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : 2;
    if (p[0] < 0xC2 || p[0] > 0xF4 || len > n)
        return 0;
    unsigned cp = p[0] & (0x7Fu >> len);
    for (size_t i = 1; i < len; i++) {
        if ((p[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (p[i] & 0x3F);
    }
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
        return 0;
    return len;
}

static bool utf8_valid(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t n = strlen(s);
    for (size_t i = 0, w; i < n; i += w) {
        w = p[i] < 0x80 ? 1 : utf8_len(p + i, n - i);
        if (w == 0)
            return false;
    }
    return true;
}

/* Copies s (len bytes) into out as printable text: \" \\ \xNN escapes, "..." when cut. */
static const char *quote(char out[QUOTE_MAX], const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        char tmp[12];
        size_t tw = 1, adv = 1;
        size_t u = p[i] >= 0x80 ? utf8_len(p + i, len - i) : 0;
        if (u > 0 && !(p[i] == 0xC2 && p[i + 1] < 0xA0)) { /* C1 controls are escaped */
            memcpy(tmp, p + i, u);
            tw = adv = u;
        } else if (u > 0) {
            tw = (size_t)snprintf(tmp, sizeof tmp, "\\x%02x\\x%02x", p[i], p[i + 1]);
            adv = 2;
        } else if (p[i] == '"' || p[i] == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)p[i];
            tw = 2;
        } else if (p[i] < 0x20 || p[i] >= 0x7F) {
            tw = (size_t)snprintf(tmp, sizeof tmp, "\\x%02x", p[i]);
        } else {
            tmp[0] = (char)p[i];
        }
        if (o + tw + 4 > QUOTE_MAX) { /* keep room for "..." and the NUL */
            memcpy(out + o, "...", 3);
            o += 3;
            break;
        }
        memcpy(out + o, tmp, tw);
        o += tw;
        i += adv;
    }
    out[o] = '\0';
    return out;
}

/* Prints shape as "[d0, d1]" into out. */
static const char *shape_str(char out[SHAPE_STR_MAX], const int64_t *shape, int rank)
{
    size_t o = 0;
    out[o++] = '[';
    for (int i = 0; i < rank; i++)
        o += (size_t)snprintf(out + o, SHAPE_STR_MAX - o, "%s%lld", i ? ", " : "",
                              (long long)shape[i]);
    snprintf(out + o, SHAPE_STR_MAX - o, "]");
    return out;
}

/* ------------------------------------------------------------------------------------------
 * Parsing the header
 * ---------------------------------------------------------------------------------------- */

/* A tensor's byte range in the data buffer, for the coverage check. */
struct span {
    size_t begin, end;
    const char *name;
};

static uint64_t load_u64le(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

/* Reads a JSON integer in [0, SIZE_MAX]; false for anything else. */
static bool json_size(const json_t *j, size_t *out)
{
    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return false;
    uint64_t v = (uint64_t)json_integer_value(j);
#if SIZE_MAX < UINT64_MAX
    if (v > SIZE_MAX)
        return false;
#endif
    *out = (size_t)v;
    return true;
}

/*
 * Answers a jansson load failure. A duplicate key error carries only the position just past
 * the key, so the key's raw token is found there and decoded again to name it.
 */
static int header_json_error(const char *hdr, size_t n, const json_error_t *je, struct err *e)
{
    char q[QUOTE_MAX];
    enum json_error_code code = json_error_code(je);
    /* jansson leaves the text empty only where an allocation failed */
    if (je->text[0] == '\0' || code == json_error_out_of_memory)
        return err_set(e, INF_ENOMEM, "out of memory parsing the safetensors header");
    if (code == json_error_duplicate_key && je->position >= 2 && (size_t)je->position <= n &&
        hdr[je->position - 1] == '"') {
        size_t end = (size_t)je->position, j = end - 1;
        while (j > 0) { /* back to the opening quote: one not preceded by an odd run of \ */
            j--;
            if (hdr[j] != '"')
                continue;
            size_t bs = 0;
            while (bs < j && hdr[j - 1 - bs] == '\\')
                bs++;
            if (bs % 2 == 0)
                break;
        }
        json_t *key = json_loadb(hdr + j, end - j, JSON_DECODE_ANY, NULL);
        if (json_is_string(key)) {
            quote(q, json_string_value(key), json_string_length(key));
            json_decref(key);
            return err_set(e, INF_EINVAL, "safetensors header: duplicate key \"%s\"", q);
        }
        json_decref(key);
    }
    return err_set(e, INF_EINVAL, "safetensors header is not valid JSON: %s (at byte %d)",
                   quote(q, je->text, strlen(je->text)), je->position);
}

/* Returns the first key of object o whose value is not a string, or NULL. */
static const char *non_string_key(const json_t *o)
{
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)o, key, v) /* read only: jansson's iteration is not const */
    {
        if (!json_is_string(v))
            return key;
    }
    return NULL;
}

/* Checks "__metadata__": an object of strings (null counts as absent). */
static int parse_metadata(json_t *meta, json_t **out, struct err *e)
{
    char q[QUOTE_MAX];
    const char *bad = json_is_object(meta) ? non_string_key(meta) : NULL;
    if (json_is_null(meta))
        return INF_OK;
    if (!json_is_object(meta))
        return err_set(e, INF_EINVAL, "\"__metadata__\" is not an object");
    if (bad != NULL)
        return err_set(e, INF_EINVAL, "\"__metadata__\" value of \"%s\" is not a string",
                       quote(q, bad, strlen(bad)));
    *out = json_incref(meta);
    return INF_OK;
}

/*
 * Fills t and sp from one header entry. data/data_len are the data buffer; t->name is set by
 * the caller.
 */
static int parse_entry(const char *name, const json_t *obj, const unsigned char *data,
                       size_t data_len, struct st_tensor *t, struct span *sp, struct err *e)
{
    char q[QUOTE_MAX], sh[SHAPE_STR_MAX];
    quote(q, name, strlen(name));
    if (!json_is_object(obj))
        return err_set(e, INF_EINVAL, "tensor \"%s\": entry is not an object", q);

    const json_t *dt = json_object_get(obj, "dtype");
    if (dt == NULL)
        return err_set(e, INF_EINVAL, "tensor \"%s\": missing \"dtype\"", q);
    if (!json_is_string(dt))
        return err_set(e, INF_EINVAL, "tensor \"%s\": \"dtype\" is not a string", q);
    size_t nd = sizeof dtype_info / sizeof dtype_info[0], d;
    for (d = 0; d < nd; d++) {
        if (strcmp(json_string_value(dt), dtype_info[d].name) == 0)
            break;
    }
    if (d == nd) {
        char qd[QUOTE_MAX];
        return err_set(e, INF_EINVAL,
                       "tensor \"%s\": dtype \"%s\" is not supported (F32, F16, BF16, F64 are)", q,
                       quote(qd, json_string_value(dt), json_string_length(dt)));
    }
    t->dtype = (enum st_dtype)d;

    const json_t *shape = json_object_get(obj, "shape");
    if (shape == NULL)
        return err_set(e, INF_EINVAL, "tensor \"%s\": missing \"shape\"", q);
    if (!json_is_array(shape))
        return err_set(e, INF_EINVAL, "tensor \"%s\": \"shape\" is not an array", q);
    if (json_array_size(shape) > ST_MAX_RANK)
        return err_set(e, INF_ELIMIT, "tensor \"%s\": rank %zu exceeds the limit of %d", q,
                       json_array_size(shape), ST_MAX_RANK);
    t->rank = (int)json_array_size(shape);
    /* As the reference reader, any overflowing partial product is an error, even before a 0. */
    size_t numel = 1, nbytes = 0;
    bool overflow = false;
    for (int i = 0; i < t->rank; i++) {
        size_t dim;
        if (!json_size(json_array_get(shape, (size_t)i), &dim))
            return err_set(e, INF_EINVAL, "tensor \"%s\": shape[%d] is not a non-negative integer",
                           q, i);
        t->shape[i] = (int64_t)dim;
        overflow = overflow || !size_mul_ok(numel, dim, &numel);
    }
    if (overflow || !size_mul_ok(numel, dtype_info[d].size, &nbytes))
        return err_set(e, INF_EINVAL, "tensor \"%s\": shape %s %s overflows the size type", q,
                       shape_str(sh, t->shape, t->rank), dtype_info[d].name);
    t->numel = numel;
    t->nbytes = nbytes;

    const json_t *offs = json_object_get(obj, "data_offsets");
    size_t begin, end;
    if (offs == NULL)
        return err_set(e, INF_EINVAL, "tensor \"%s\": missing \"data_offsets\"", q);
    if (!json_is_array(offs) || json_array_size(offs) != 2 ||
        !json_size(json_array_get(offs, 0), &begin) || !json_size(json_array_get(offs, 1), &end))
        return err_set(e, INF_EINVAL,
                       "tensor \"%s\": \"data_offsets\" is not two non-negative integers", q);
    if (begin > end)
        return err_set(e, INF_EINVAL, "tensor \"%s\": data_offsets [%zu, %zu] are reversed", q,
                       begin, end);
    if (end > data_len)
        return err_set(e, INF_EINVAL,
                       "tensor \"%s\": data_offsets [%zu, %zu] end beyond the data (%zu bytes)", q,
                       begin, end, data_len);
    if (end - begin != nbytes)
        return err_set(e, INF_EINVAL,
                       "tensor \"%s\": data_offsets [%zu, %zu] hold %zu bytes, shape %s %s "
                       "needs %zu",
                       q, begin, end, end - begin, shape_str(sh, t->shape, t->rank),
                       dtype_info[d].name, nbytes);
    t->data = data + begin;
    sp->begin = begin;
    sp->end = end;
    sp->name = name;
    return INF_OK;
}

static int span_cmp(const void *a, const void *b)
{
    const struct span *x = a, *y = b;
    if (x->begin != y->begin)
        return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end)
        return x->end < y->end ? -1 : 1;
    return strcmp(x->name, y->name);
}

static int tensor_cmp(const void *a, const void *b)
{
    return strcmp(((const struct st_tensor *)a)->name, ((const struct st_tensor *)b)->name);
}

/*
 * As the reference reader: sorted by offset, the tensors must tile the data buffer exactly,
 * with no overlap, gap or trailing byte (which could hide data or alias two tensors).
 */
static int check_coverage(struct span *sp, size_t n, size_t data_len, struct err *e)
{
    char q1[QUOTE_MAX], q2[QUOTE_MAX];
    size_t at = 0;
    if (n > 1)
        qsort(sp, n, sizeof *sp, span_cmp);
    for (size_t i = 0; i < n; i++) {
        if (sp[i].begin < at)
            return err_set(e, INF_EINVAL,
                           "tensor \"%s\": data_offsets [%zu, %zu] overlap tensor \"%s\" "
                           "[%zu, %zu]",
                           quote(q1, sp[i].name, strlen(sp[i].name)), sp[i].begin, sp[i].end,
                           quote(q2, sp[i - 1].name, strlen(sp[i - 1].name)), sp[i - 1].begin,
                           sp[i - 1].end);
        if (sp[i].begin > at)
            return err_set(e, INF_EINVAL,
                           "data bytes [%zu, %zu) before tensor \"%s\" are not covered", at,
                           sp[i].begin, quote(q1, sp[i].name, strlen(sp[i].name)));
        at = sp[i].end;
    }
    if (at != data_len)
        return err_set(e, INF_EINVAL, "data bytes [%zu, %zu) after the last tensor are not covered",
                       at, data_len);
    return INF_OK;
}

int st_parse(const void *buf, size_t len, struct st_file *f, struct err *e)
{
    const unsigned char *p = buf;
    struct st_file out = {0};
    struct span *spans = NULL;
    json_t *root = NULL;
    int rc;

    if (len < 8) {
        rc = err_set(e, INF_EINVAL,
                     "safetensors file is %zu bytes, shorter than its 8-byte header length", len);
        goto out;
    }
    uint64_t n = load_u64le(p);
    if (n > ST_MAX_HEADER) {
        rc = err_set(e, INF_ELIMIT, "safetensors header length %llu exceeds the limit of %zu",
                     (unsigned long long)n, ST_MAX_HEADER);
        goto out;
    }
    if (n > len - 8) {
        rc = err_set(e, INF_EINVAL, "safetensors header length %llu goes beyond the %zu-byte file",
                     (unsigned long long)n, len);
        goto out;
    }
    const char *hdr = (const char *)p + 8;
    const unsigned char *data = p + 8 + n;
    size_t data_len = len - 8 - (size_t)n;

    /* jansson reads a NUL as the end of input and would report a misleading error. */
    const char *nul = memchr(hdr, '\0', (size_t)n);
    if (nul != NULL) {
        rc = err_set(e, INF_EINVAL, "safetensors header contains a NUL byte at byte %zu",
                     (size_t)(nul - hdr));
        goto out;
    }
    json_error_t je = {0}; /* jansson sets the code byte of its text only on some paths */
    root = json_loadb(hdr, (size_t)n, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL) {
        rc = header_json_error(hdr, (size_t)n, &je, e);
        goto out;
    }
    if (!json_is_object(root)) {
        rc = err_set(e, INF_EINVAL, "safetensors header is a JSON %s, expected an object",
                     json_is_array(root) ? "array" : "value");
        goto out;
    }

    json_t *meta = json_object_get(root, ST_META_KEY);
    size_t count = json_object_size(root) - (meta != NULL);
    if (count > ST_MAX_TENSORS) {
        rc = err_set(e, INF_ELIMIT, "safetensors header lists %zu tensors, the limit is %d", count,
                     ST_MAX_TENSORS);
        goto out;
    }
    if (meta != NULL && (rc = parse_metadata(meta, &out.metadata, e)) != INF_OK)
        goto out;

    if (count > 0) {
        out.tensors = calloc(count, sizeof *out.tensors);
        spans = calloc(count, sizeof *spans);
        if (out.tensors == NULL || spans == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory for %zu safetensors entries", count);
            goto out;
        }
    }
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val)
    {
        if (strcmp(key, ST_META_KEY) == 0)
            continue;
        struct st_tensor *t = &out.tensors[out.n];
        rc = parse_entry(key, val, data, data_len, t, &spans[out.n], e);
        if (rc != INF_OK)
            goto out;
        if ((t->name = strdup(key)) == NULL) {
            rc = err_set(e, INF_ENOMEM, "out of memory for a safetensors tensor name");
            goto out;
        }
        spans[out.n].name = t->name; /* outlives root */
        out.n++;
    }
    if ((rc = check_coverage(spans, out.n, data_len, e)) != INF_OK)
        goto out;
    if (out.n > 1)
        qsort(out.tensors, out.n, sizeof *out.tensors, tensor_cmp);

    *f = out;
    memset(&out, 0, sizeof out);
    rc = INF_OK;
out:
    st_file_deinit(&out);
    free(spans);
    json_decref(root);
    return rc;
}

void st_file_deinit(struct st_file *f)
{
    if (f == NULL)
        return;
    for (size_t i = 0; i < f->n; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    json_decref(f->metadata);
    memset(f, 0, sizeof *f);
}

static int find_cmp(const void *key, const void *elem)
{
    return strcmp(key, ((const struct st_tensor *)elem)->name);
}

const struct st_tensor *st_find(const struct st_file *f, const char *name)
{
    if (f == NULL || f->n == 0 || name == NULL)
        return NULL;
    return bsearch(name, f->tensors, f->n, sizeof *f->tensors, find_cmp);
}

/* ------------------------------------------------------------------------------------------
 * Conversion to float. Bytes are assembled one by one: the data is little-endian whatever the
 * host, and a tensor inside the file may sit at any alignment.
 * ---------------------------------------------------------------------------------------- */

static float bits_to_f32(uint32_t u)
{
    float x;
    memcpy(&x, &u, sizeof x);
    return x;
}

static float f16_to_f32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h >> 15) << 31;
    uint32_t exp = (h >> 10) & 0x1F;
    uint32_t mant = h & 0x3FF;
    if (exp == 0) {
        /* zero and subnormals: mant * 2^-24, exact in float */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    }
    if (exp == 31) /* inf and nan, payload kept */
        return bits_to_f32(sign | 0x7F800000u | (mant << 13));
    return bits_to_f32(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

void st_to_f32(const struct st_tensor *t, float *out)
{
    const unsigned char *p = t->data;
    for (size_t i = 0; i < t->numel; i++) {
        switch (t->dtype) {
            case ST_F32:
                out[i] = bits_to_f32((uint32_t)p[4 * i] | (uint32_t)p[4 * i + 1] << 8 |
                                     (uint32_t)p[4 * i + 2] << 16 | (uint32_t)p[4 * i + 3] << 24);
                break;
            case ST_F16:
                out[i] = f16_to_f32((uint16_t)(p[2 * i] | p[2 * i + 1] << 8));
                break;
            case ST_BF16:
                out[i] = bits_to_f32(((uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8) << 16);
                break;
            case ST_F64: {
                uint64_t u = load_u64le(p + 8 * i);
                double d;
                memcpy(&d, &u, sizeof d);
                /* IEEE 754 (C Annex F): out-of-range values round to +-inf, not UB. */
                out[i] = (float)d;
                break;
            }
        }
    }
}

/* ------------------------------------------------------------------------------------------
 * Writing
 * ---------------------------------------------------------------------------------------- */

/* Builds one header entry for ts at byte offset begin; *nbytes gets its size. */
static int entry_json(const struct st_out *ts, size_t begin, json_t **entry, size_t *nbytes,
                      struct err *e)
{
    char q[QUOTE_MAX];
    json_t *obj = NULL, *shape = NULL;
    size_t numel = 1, nb;

    quote(q, ts->name, strlen(ts->name));
    if (ts->rank < 0 || ts->rank > ST_MAX_RANK || (ts->rank > 0 && ts->shape == NULL))
        return err_set(e, INF_EINVAL, "tensor \"%s\": rank %d (or its shape) is invalid", q,
                       ts->rank);
    for (int i = 0; i < ts->rank; i++) {
        if (ts->shape[i] < 0 || (uint64_t)ts->shape[i] > SIZE_MAX ||
            !size_mul_ok(numel, (size_t)ts->shape[i], &numel))
            return err_set(e, INF_EINVAL, "tensor \"%s\": shape[%d] = %lld is invalid", q, i,
                           (long long)ts->shape[i]);
    }
    if (!size_mul_ok(numel, sizeof(float), &nb) || begin + nb < begin ||
        begin + nb > (size_t)LLONG_MAX)
        return err_set(e, INF_ELIMIT, "tensor \"%s\": data too large to serialize", q);
    if (nb > 0 && ts->data == NULL)
        return err_set(e, INF_EINVAL, "tensor \"%s\": data is NULL", q);

    if ((obj = json_object()) == NULL || (shape = json_array()) == NULL)
        goto out;
    for (int i = 0; i < ts->rank; i++) {
        if (json_array_append_new(shape, json_integer((json_int_t)ts->shape[i])) != 0)
            goto out;
    }
    /* json_object_set_new steals its value even when it fails (or is given NULL). */
    int bad = json_object_set_new(obj, "dtype", json_string("F32"));
    bad |= json_object_set_new(obj, "shape", shape);
    shape = NULL;
    bad |= json_object_set_new(obj, "data_offsets",
                               json_pack("[II]", (json_int_t)begin, (json_int_t)(begin + nb)));
    if (bad)
        goto out;
    *entry = obj;
    *nbytes = nb;
    return INF_OK;
out:
    json_decref(shape);
    json_decref(obj);
    return err_set(e, INF_ENOMEM, "out of memory building the safetensors header");
}

static void store_u64le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

int st_serialize(const struct st_out *ts, size_t n, const json_t *metadata, char **data,
                 size_t *len, struct err *e)
{
    char q[QUOTE_MAX];
    json_t *hdr = NULL;
    char *text = NULL;
    unsigned char *buf = NULL;
    size_t data_len = 0;
    int rc;

    if (n > ST_MAX_TENSORS) {
        rc = err_set(e, INF_ELIMIT, "%zu tensors exceed the safetensors limit of %d", n,
                     ST_MAX_TENSORS);
        goto out;
    }
    if (n > 0 && ts == NULL) {
        rc = err_set(e, INF_EINVAL, "%zu tensors to serialize but no array of them", n);
        goto out;
    }
    if ((hdr = json_object()) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory building the safetensors header");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        json_t *entry = NULL;
        size_t nb = 0;
        if (ts[i].name == NULL || !utf8_valid(ts[i].name) || strcmp(ts[i].name, ST_META_KEY) == 0 ||
            json_object_get(hdr, ts[i].name) != NULL) {
            rc = err_set(e, INF_EINVAL,
                         "tensor %zu: name \"%s\" is missing, not UTF-8, reserved or repeated", i,
                         ts[i].name ? quote(q, ts[i].name, strlen(ts[i].name)) : "");
            goto out;
        }
        if ((rc = entry_json(&ts[i], data_len, &entry, &nb, e)) != INF_OK)
            goto out;
        if (json_object_set_new(hdr, ts[i].name, entry) != 0) {
            rc = err_set(e, INF_ENOMEM, "out of memory building the safetensors header");
            goto out;
        }
        data_len += nb; /* entry_json checked begin + nb */
    }
    if (metadata != NULL) {
        json_t *copy = NULL;
        if (!json_is_object(metadata) || non_string_key(metadata) != NULL) {
            rc = err_set(e, INF_EINVAL, "safetensors metadata is not an object of strings");
            goto out;
        }
        if ((copy = json_deep_copy(metadata)) == NULL ||
            json_object_set_new(hdr, ST_META_KEY, copy) != 0) {
            rc = err_set(e, INF_ENOMEM, "out of memory building the safetensors header");
            goto out;
        }
    }
    if ((text = json_dump_checked(hdr, JSON_COMPACT | JSON_SORT_KEYS)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory writing the safetensors header");
        goto out;
    }
    /* Spaces (valid JSON whitespace) pad 8 + N to a multiple of 8, so the data is aligned. */
    size_t tlen = strlen(text);
    size_t hlen = tlen + (8 - tlen % 8) % 8;
    size_t total;
    if (hlen > ST_MAX_HEADER) {
        rc = err_set(e, INF_ELIMIT, "safetensors header of %zu bytes exceeds the limit of %zu",
                     hlen, ST_MAX_HEADER);
        goto out;
    }
    if (!size_add_ok(8 + hlen, data_len, &total)) {
        rc = err_set(e, INF_ELIMIT, "safetensors file too large");
        goto out;
    }
    if ((buf = malloc(total)) == NULL) {
        rc = err_set(e, INF_ENOMEM, "out of memory for a %zu-byte safetensors file", total);
        goto out;
    }
    store_u64le(buf, hlen);
    memcpy(buf + 8, text, tlen);
    memset(buf + 8 + tlen, ' ', hlen - tlen);
    unsigned char *w = buf + 8 + hlen;
    for (size_t i = 0; i < n; i++) {
        size_t numel = 1;
        for (int k = 0; k < ts[i].rank; k++)
            numel *= (size_t)ts[i].shape[k]; /* checked in entry_json */
        for (size_t k = 0; k < numel; k++) {
            uint32_t u;
            memcpy(&u, &ts[i].data[k], sizeof u);
            for (int b = 0; b < 4; b++)
                *w++ = (unsigned char)(u >> (8 * b));
        }
    }
    *data = (char *)buf;
    *len = total;
    buf = NULL;
    rc = INF_OK;
out:
    free(buf);
    free(text);
    json_decref(hdr);
    return rc;
}
