/*
 * tests/model/test_safetensors.c - the safetensors reader and writer: round trips, a file built
 * byte by byte, dtype conversion (F16, BF16, F64), and hostile files that must be refused with
 * a precise message (bad lengths, bad JSON, bad entries, overlaps, gaps, every truncation).
 */
#include "tests/test.h"
#include "model/internal.h"

#include <stdint.h>

/* ------------------------------------------------------------------------------------------
 * Helpers
 * ---------------------------------------------------------------------------------------- */

static void put_u64le(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

/* A file of header hdr (hlen bytes) followed by data (dlen bytes, zeros when NULL). */
static unsigned char *make_file(const char *hdr, size_t hlen, const void *data, size_t dlen,
                                size_t *len)
{
    *len = 8 + hlen + dlen;
    unsigned char *buf = calloc(1, *len);
    if (buf == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    put_u64le(buf, hlen);
    memcpy(buf + 8, hdr, hlen);
    if (data != NULL)
        memcpy(buf + 8 + hlen, data, dlen);
    return buf;
}

/* st_parse(buf, len) fails with status, a message holding needle, and f untouched. */
static void expect_fail_buf(const unsigned char *buf, size_t len, int status, const char *needle,
                            int line)
{
    struct st_file f = {.n = 12345};
    struct err e = {0};
    int rc = st_parse(buf, len, &f, &e);
    CHECK_MSG(rc == status, "line %d: rc %d, want %d (%s)", line, rc, status, e.msg);
    CHECK_MSG(e.status == rc, "line %d", line);
    CHECK_MSG(strstr(e.msg, needle) != NULL, "line %d: error \"%s\" lacks \"%s\"", line, e.msg,
              needle);
    CHECK_MSG(f.n == 12345 && f.tensors == NULL, "line %d: output written on failure", line);
    if (rc == 0)
        st_file_deinit(&f);
}

/* The same with a file made of the JSON header hdr and dlen zero bytes of data. */
static void expect_fail_hdr(const char *hdr, size_t dlen, int status, const char *needle, int line)
{
    size_t len;
    unsigned char *buf = make_file(hdr, strlen(hdr), NULL, dlen, &len);
    expect_fail_buf(buf, len, status, needle, line);
    free(buf);
}

#define FAIL_HDR(hdr, dlen, status, needle) expect_fail_hdr(hdr, dlen, status, needle, __LINE__)
#define FAIL_BUF(buf, len, status, needle)  expect_fail_buf(buf, len, status, needle, __LINE__)

#define T1(name, dtype, shape, offs)                                                               \
    "\"" name "\":{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offs "}"

/* Parses a header of one tensor "t" of the given dtype over the bytes and converts it. */
static void convert(const char *dtype, const unsigned char *bytes, size_t nbytes, size_t numel,
                    float *out)
{
    char hdr[160];
    snprintf(hdr, sizeof hdr, "{\"t\":{\"dtype\":\"%s\",\"shape\":[%zu],\"data_offsets\":[0,%zu]}}",
             dtype, numel, nbytes);
    size_t len;
    /* an odd header length leaves the data misaligned: the reader must not care */
    unsigned char *buf = make_file(hdr, strlen(hdr), bytes, nbytes, &len);
    struct st_file f = {0};
    struct err e = {0};
    int rc = st_parse(buf, len, &f, &e);
    CHECK_MSG(rc == 0, "%s: %s", dtype, e.msg);
    if (rc == 0) {
        const struct st_tensor *t = st_find(&f, "t");
        CHECK(t != NULL && t->numel == numel && t->nbytes == nbytes);
        if (t != NULL)
            st_to_f32(t, out);
        st_file_deinit(&f);
    }
    free(buf);
}

/* ------------------------------------------------------------------------------------------
 * Valid files
 * ---------------------------------------------------------------------------------------- */

static void test_round_trip(void)
{
    float w[6] = {1.5f, -2.25f, 3e-38f, 1e30f, -0.0f, 7.0f};
    float bias[3] = {0.1f, 0.2f, 0.3f};
    float scalar = 42.0f;
    int64_t w_shape[2] = {2, 3}, b_shape[1] = {3}, z_shape[2] = {0, 4};
    struct st_out ts[] = {
        {"b.weight", 2, w_shape, w},
        {"a.bias", 1, b_shape, bias},
        {"c", 0, NULL, &scalar},
        {"z.empty", 2, z_shape, NULL},
    };
    json_t *meta = json_pack("{ssss}", "format", "pt", "note", "caf\xc3\xa9");
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    int rc = st_serialize(ts, 4, meta, &data, &len, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (rc != 0)
        goto out;

    uint64_t n = 0;
    for (int i = 7; i >= 0; i--)
        n = (n << 8) | (unsigned char)data[i];
    CHECK((8 + n) % 8 == 0);
    CHECK(len == 8 + n + (6 + 3 + 1) * 4);
    /* keys sorted, compact, padded with spaces */
    char *hdr = strndup(data + 8, n);
    CHECK(hdr != NULL);
    if (hdr != NULL) {
        const char *pa = strstr(hdr, "\"a.bias\":"), *pb = strstr(hdr, "\"b.weight\":");
        const char *pc = strstr(hdr, "\"c\":"), *pz = strstr(hdr, "\"z.empty\":");
        CHECK(pa != NULL && pb != NULL && pc != NULL && pz != NULL);
        CHECK(pa < pb && pb < pc && pc < pz);
        CHECK(strstr(hdr, "\"data_offsets\":[0,24],\"dtype\":\"F32\",\"shape\":[2,3]") != NULL);
        CHECK(strstr(hdr, "\"__metadata__\":{\"format\":\"pt\",\"note\":\"caf\xc3\xa9\"}") != NULL);
        CHECK(strchr(hdr, '\n') == NULL && strstr(hdr, ": ") == NULL);
        size_t tl = strlen(hdr);
        while (tl > 0 && hdr[tl - 1] == ' ')
            tl--;
        CHECK(tl > 0 && hdr[tl - 1] == '}' && n - tl < 8);
        free(hdr);
    }

    struct st_file f = {0};
    rc = st_parse(data, len, &f, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (rc != 0)
        goto out;
    CHECK(f.n == 4);
    for (size_t i = 1; i < f.n; i++)
        CHECK(strcmp(f.tensors[i - 1].name, f.tensors[i].name) < 0);
    CHECK(f.metadata != NULL && json_equal(f.metadata, meta));
    for (size_t i = 0; i < 4; i++) {
        const struct st_tensor *t = st_find(&f, ts[i].name);
        CHECK_MSG(t != NULL, "%s", ts[i].name);
        if (t == NULL)
            continue;
        CHECK(t->dtype == ST_F32 && t->rank == ts[i].rank);
        size_t numel = 1;
        for (int k = 0; k < t->rank; k++) {
            CHECK(t->shape[k] == ts[i].shape[k]);
            numel *= (size_t)ts[i].shape[k];
        }
        CHECK(t->numel == numel && t->nbytes == 4 * numel);
        float got[6] = {0};
        st_to_f32(t, got);
        CHECK(numel == 0 || memcmp(got, ts[i].data, numel * sizeof(float)) == 0);
    }
    /* data is written in the order given: b.weight first */
    const struct st_tensor *tb = st_find(&f, "b.weight");
    CHECK(tb != NULL && tb->data == (const unsigned char *)data + 8 + n);
    CHECK(st_find(&f, "nope") == NULL && st_find(&f, "") == NULL);
    st_file_deinit(&f);
    CHECK(f.n == 0 && f.tensors == NULL && f.metadata == NULL);
out:
    free(data);
    json_decref(meta);
}

static void test_empty_file_round_trip(void)
{
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    int rc = st_serialize(NULL, 0, NULL, &data, &len, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    CHECK(len == 16 && data != NULL && memcmp(data + 8, "{}      ", 8) == 0);
    struct st_file f = {0};
    rc = st_parse(data, len, &f, &e);
    CHECK_MSG(rc == 0 && f.n == 0 && f.metadata == NULL, "%s", e.msg);
    CHECK(st_find(&f, "x") == NULL);
    st_file_deinit(&f);
    free(data);
}

static void test_known_bytes(void)
{
    /* 57-byte header, so the data starts at the unaligned offset 65 */
    const char *hdr = "{\"w\":{\"dtype\":\"F32\",\"shape\":[1,2],\"data_offsets\":[0,8]}} ";
    const unsigned char bytes[8] = {0x00, 0x00, 0x80, 0x3F, 0x00, 0x00, 0x20, 0xC0};
    size_t len;
    unsigned char *buf = make_file(hdr, strlen(hdr), bytes, 8, &len);
    CHECK(len == 73);
    struct st_file f = {0};
    struct err e = {0};
    int rc = st_parse(buf, len, &f, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (rc == 0) {
        CHECK(f.n == 1 && f.metadata == NULL);
        const struct st_tensor *t = st_find(&f, "w");
        CHECK(t == &f.tensors[0]);
        CHECK(t->dtype == ST_F32 && t->rank == 2 && t->shape[0] == 1 && t->shape[1] == 2);
        CHECK(t->numel == 2 && t->nbytes == 8 && t->data == buf + 65);
        float out[2];
        st_to_f32(t, out);
        CHECK(out[0] == 1.0f && out[1] == -2.5f);
        st_file_deinit(&f);
    }
    free(buf);
}

static void test_zero_element_tensors(void)
{
    /* a zero-size tensor may sit at the boundary between two others, or alone at the end */
    const char *hdr = "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                      "\"z\":{\"dtype\":\"F16\",\"shape\":[3,0,2],\"data_offsets\":[8,8]},"
                      "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[8,12]},"
                      "\"y\":{\"dtype\":\"F64\",\"shape\":[0],\"data_offsets\":[12,12]}}";
    size_t len;
    unsigned char *buf = make_file(hdr, strlen(hdr), NULL, 12, &len);
    struct st_file f = {0};
    struct err e = {0};
    int rc = st_parse(buf, len, &f, &e);
    CHECK_MSG(rc == 0, "%s", e.msg);
    if (rc == 0) {
        const struct st_tensor *z = st_find(&f, "z");
        CHECK(f.n == 4 && z != NULL && z->numel == 0 && z->nbytes == 0 && z->rank == 3);
        CHECK(st_find(&f, "y") != NULL && st_find(&f, "y")->numel == 0);
        st_file_deinit(&f);
    }
    free(buf);
    /* as the reference reader: an overflowing partial product is refused even before a 0 */
    FAIL_HDR("{" T1("z", "F32", "[4294967296,4294967296,16,0]", "[0,0]") "}", 0, INF_EINVAL,
             "tensor \"z\": shape [4294967296, 4294967296, 16, 0] F32 overflows");
}

/* ------------------------------------------------------------------------------------------
 * Conversion
 * ---------------------------------------------------------------------------------------- */

static void test_f16(void)
{
    const unsigned char b[] = {
        0x00, 0x3C, /* 1.0 */
        0x00, 0xC0, /* -2.0 */
        0xFF, 0x7B, /* 65504, the largest half */
        0x01, 0x00, /* 2^-24, the smallest subnormal */
        0xFF, 0x03, /* 1023 * 2^-24, the largest subnormal */
        0x00, 0x04, /* 2^-14, the smallest normal */
        0x00, 0x7C, /* +inf */
        0x00, 0xFC, /* -inf */
        0x00, 0x7E, /* nan */
        0x00, 0x80, /* -0.0 */
        0x55, 0x35, /* 0.333251953125 */
    };
    float out[11];
    convert("F16", b, sizeof b, 11, out);
    CHECK(out[0] == 1.0f);
    CHECK(out[1] == -2.0f);
    CHECK(out[2] == 65504.0f);
    CHECK(out[3] == 0x1p-24f);
    CHECK(out[4] == 1023 * 0x1p-24f);
    CHECK(out[5] == 0x1p-14f);
    CHECK(isinf(out[6]) && out[6] > 0);
    CHECK(isinf(out[7]) && out[7] < 0);
    CHECK(isnan(out[8]));
    CHECK(out[9] == 0.0f && signbit(out[9]));
    CHECK(out[10] == 0.333251953125f);
}

static void test_bf16(void)
{
    const unsigned char b[] = {
        0x80, 0x3F, /* 1.0 */
        0xC0, 0xC0, /* -6.0 */
        0xAB, 0x3E, /* 0.333984375 */
        0x80, 0x7F, /* +inf */
        0xC0, 0x7F, /* nan */
        0x01, 0x00, /* 2^-133, a float subnormal */
    };
    float out[6];
    convert("BF16", b, sizeof b, 6, out);
    CHECK(out[0] == 1.0f);
    CHECK(out[1] == -6.0f);
    CHECK(out[2] == 0.333984375f);
    CHECK(isinf(out[3]) && out[3] > 0);
    CHECK(isnan(out[4]));
    CHECK(out[5] == 0x1p-133f);
}

static void test_f64(void)
{
    const double v[] = {1.0, -2.5, 0.1, 1e300, -1e300, 1e-50, 65504.0};
    unsigned char b[sizeof v];
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
        uint64_t u;
        memcpy(&u, &v[i], 8);
        put_u64le(b + 8 * i, u); /* little-endian whatever the host */
    }
    float out[7];
    convert("F64", b, sizeof b, 7, out);
    CHECK(out[0] == 1.0f);
    CHECK(out[1] == -2.5f);
    CHECK(out[2] == 0.1f);
    CHECK(isinf(out[3]) && out[3] > 0);
    CHECK(isinf(out[4]) && out[4] < 0);
    CHECK(out[5] == 0.0f);
    CHECK(out[6] == 65504.0f);
}

/* ------------------------------------------------------------------------------------------
 * Hostile files
 * ---------------------------------------------------------------------------------------- */

static void test_bad_lengths(void)
{
    unsigned char b[32] = {0};
    FAIL_BUF(b, 0, INF_EINVAL, "shorter than its 8-byte header length");
    FAIL_BUF(b, 7, INF_EINVAL, "7 bytes, shorter than");
    put_u64le(b, 100);
    FAIL_BUF(b, 20, INF_EINVAL, "header length 100 goes beyond the 20-byte file");
    put_u64le(b, (uint64_t)1 << 63);
    FAIL_BUF(b, 32, INF_ELIMIT, "header length 9223372036854775808 exceeds the limit");
    put_u64le(b, UINT64_MAX);
    FAIL_BUF(b, 32, INF_ELIMIT, "exceeds the limit");
    put_u64le(b, ST_MAX_HEADER + 1);
    FAIL_BUF(b, 32, INF_ELIMIT, "exceeds the limit of 104857600");
    put_u64le(b, 0);
    FAIL_BUF(b, 8, INF_EINVAL, "not valid JSON");
}

static void test_bad_json(void)
{
    FAIL_HDR("{\"a\": ", 0, INF_EINVAL, "header is not valid JSON");
    FAIL_HDR("garbage", 0, INF_EINVAL, "header is not valid JSON");
    FAIL_HDR("{} x", 0, INF_EINVAL, "header is not valid JSON");
    FAIL_HDR("[1, 2]", 0, INF_EINVAL, "header is a JSON array, expected an object");
    FAIL_HDR("{\"a\xff\":1}", 0, INF_EINVAL, "unable to decode byte 0xff");
    FAIL_HDR("{\"a\xc0\xaf\":1}", 0, INF_EINVAL, "not valid JSON");
    FAIL_HDR("{\"a\":[18446744073709551616]}", 0, INF_EINVAL, "too big integer");
    /* a NUL byte inside the header, padding made of NULs included */
    static const char nul[] = "{\"a\":1}\0 ";
    size_t len;
    unsigned char *buf = make_file(nul, sizeof nul - 1, NULL, 0, &len);
    FAIL_BUF(buf, len, INF_EINVAL, "header contains a NUL byte at byte 7");
    free(buf);
    /* duplicates: jansson would keep the last one silently */
    FAIL_HDR("{" T1("a", "F32", "[0]", "[0,0]") "," T1("a", "F32", "[0]", "[0,0]") "}", 0,
             INF_EINVAL, "duplicate key \"a\"");
    FAIL_HDR("{" T1("encoder.layers.11.attention.weight", "F32", "[0]", "[0,0]") "," T1(
                 "encoder.layers.11.attention.weight", "F32", "[0]", "[0,0]") "}",
             0, INF_EINVAL, "duplicate key \"encoder.layers.11.attention.weight\"");
    FAIL_HDR(
        "{" T1("q\\\"\\\\", "F32", "[0]", "[0,0]") "," T1("q\\\"\\\\", "F32", "[0]", "[0,0]") "}",
        0, INF_EINVAL, "duplicate key \"q\\\"\\\\\"");
    FAIL_HDR("{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\"}}", 0, INF_EINVAL,
             "duplicate key \"dtype\"");
}

static void test_bad_entries(void)
{
    FAIL_HDR("{\"a\":5}", 0, INF_EINVAL, "tensor \"a\": entry is not an object");
    FAIL_HDR("{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, INF_EINVAL,
             "tensor \"a\": missing \"dtype\"");
    FAIL_HDR("{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, INF_EINVAL,
             "tensor \"a\": missing \"shape\"");
    FAIL_HDR("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, INF_EINVAL,
             "tensor \"a\": missing \"data_offsets\"");
    FAIL_HDR("{" T1("a", "I64", "[1]", "[0,8]") "}", 8, INF_EINVAL,
             "tensor \"a\": dtype \"I64\" is not supported");
    FAIL_HDR("{" T1("a", "U8", "[1]", "[0,1]") "}", 1, INF_EINVAL, "dtype \"U8\" is not supported");
    FAIL_HDR("{" T1("a", "f32", "[1]", "[0,4]") "}", 4, INF_EINVAL, "dtype \"f32\"");
    FAIL_HDR("{\"a\":{\"dtype\":32,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, INF_EINVAL,
             "\"dtype\" is not a string");
    FAIL_HDR("{" T1("a", "F32", "4", "[0,16]") "}", 16, INF_EINVAL, "\"shape\" is not an array");
    FAIL_HDR("{" T1("a", "F32", "[2,-1]", "[0,4]") "}", 4, INF_EINVAL,
             "tensor \"a\": shape[1] is not a non-negative integer");
    FAIL_HDR("{" T1("a", "F32", "[2.0]", "[0,8]") "}", 8, INF_EINVAL,
             "shape[0] is not a non-negative integer");
    FAIL_HDR("{" T1("a", "F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", 4, INF_ELIMIT,
             "tensor \"a\": rank 9 exceeds the limit of 8");
    FAIL_HDR("{" T1("a", "F32", "[4294967296,4294967296,16]", "[0,4]") "}", 4, INF_EINVAL,
             "shape [4294967296, 4294967296, 16] F32 overflows");
    FAIL_HDR("{" T1("a", "F64", "[2305843009213693952]", "[0,8]") "}", 8, INF_EINVAL, "overflows");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[8,0]") "}", 8, INF_EINVAL,
             "tensor \"a\": data_offsets [8, 0] are reversed");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0]") "}", 8, INF_EINVAL,
             "\"data_offsets\" is not two non-negative integers");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[-8,0]") "}", 8, INF_EINVAL,
             "\"data_offsets\" is not two non-negative integers");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0,\"8\"]") "}", 8, INF_EINVAL,
             "\"data_offsets\" is not two non-negative integers");
    FAIL_HDR("{" T1("a", "F32", "[4]", "[0,16]") "}", 8, INF_EINVAL,
             "data_offsets [0, 16] end beyond the data (8 bytes)");
    FAIL_HDR("{" T1("0.weight", "F32", "[10,20]", "[0,400]") "}", 400, INF_EINVAL,
             "tensor \"0.weight\": data_offsets [0, 400] hold 400 bytes, shape [10, 20] F32 "
             "needs 800");
    FAIL_HDR("{" T1("a", "F16", "[3]", "[0,4]") "}", 4, INF_EINVAL, "shape [3] F16 needs 6");
    /* names from the file are escaped in messages: no terminal escapes reach a log */
    FAIL_HDR("{" T1("x\\u001b[31m", "I64", "[1]", "[0,8]") "}", 8, INF_EINVAL,
             "tensor \"x\\x1b[31m\": dtype");
    /* a long name is cut in messages, never past its buffer */
    char hdr[400], name[201];
    memset(name, 'n', 200);
    name[200] = '\0';
    snprintf(hdr, sizeof hdr, "{\"%s\":{\"dtype\":\"U8\"}}", name);
    FAIL_HDR(hdr, 0, INF_EINVAL, "nnnnnnnnnn...\": dtype \"U8\" is not supported");
    FAIL_HDR("{" T1("\\u009b2J\xc3\xa9", "I64", "[1]", "[0,8]") "}", 8, INF_EINVAL,
             "tensor \"\\xc2\\x9b2J\xc3\xa9\": dtype");
}

static void test_bad_layout(void)
{
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0,8]") "," T1("b", "F32", "[2]", "[4,12]") "}", 12,
             INF_EINVAL, "tensor \"b\": data_offsets [4, 12] overlap tensor \"a\" [0, 8]");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0,8]") "," T1("b", "F32", "[2]", "[0,8]") "}", 8,
             INF_EINVAL, "overlap tensor \"a\"");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0,8]") "," T1("z", "F32", "[0]", "[4,4]") "}", 8,
             INF_EINVAL, "tensor \"z\": data_offsets [4, 4] overlap tensor \"a\"");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0,8]") "," T1("b", "F32", "[2]", "[12,20]") "}", 20,
             INF_EINVAL, "data bytes [8, 12) before tensor \"b\" are not covered");
    FAIL_HDR("{" T1("b", "F32", "[2]", "[4,12]") "}", 12, INF_EINVAL,
             "data bytes [0, 4) before tensor \"b\" are not covered");
    FAIL_HDR("{" T1("a", "F32", "[2]", "[0,8]") "}", 12, INF_EINVAL,
             "data bytes [8, 12) after the last tensor are not covered");
    FAIL_HDR("{}", 4, INF_EINVAL, "data bytes [0, 4) after the last tensor");
    FAIL_HDR("{\"__metadata__\":{\"k\":1}}", 0, INF_EINVAL,
             "\"__metadata__\" value of \"k\" is not a string");
    FAIL_HDR("{\"__metadata__\":[\"k\"]}", 0, INF_EINVAL, "\"__metadata__\" is not an object");
}

static void test_too_many_tensors(void)
{
    size_t cap = (size_t)(ST_MAX_TENSORS + 1) * 64 + 16, n = 0;
    char *hdr = malloc(cap);
    CHECK(hdr != NULL);
    if (hdr == NULL)
        return;
    hdr[n++] = '{';
    for (int i = 0; i <= ST_MAX_TENSORS; i++)
        n += (size_t)snprintf(hdr + n, cap - n,
                              "%s\"t%d\":{\"dtype\":\"F32\",\"shape\":[0],"
                              "\"data_offsets\":[0,0]}",
                              i ? "," : "", i);
    hdr[n++] = '}';
    hdr[n] = '\0';
    FAIL_HDR(hdr, 0, INF_ELIMIT, "lists 100001 tensors, the limit is 100000");
    free(hdr);
}

/* A valid file cut at every length must be refused, never read past its end (ASan). */
static void test_truncation(void)
{
    float a[4] = {1, 2, 3, 4}, b[2] = {5, 6}, c[1] = {7};
    int64_t sa[2] = {2, 2}, sb[1] = {2}, sc[1] = {1};
    struct st_out ts[] = {{"a", 2, sa, a}, {"b", 1, sb, b}, {"c", 1, sc, c}};
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};
    CHECK(st_serialize(ts, 3, NULL, &data, &len, &e) == 0);
    int refused = 0;
    for (size_t k = 0; k < len; k++) {
        unsigned char *cut = malloc(k > 0 ? k : 1);
        CHECK(cut != NULL);
        if (cut == NULL)
            break;
        memcpy(cut, data, k);
        struct st_file f = {0};
        struct err ek = {0};
        int rc = st_parse(cut, k, &f, &ek);
        CHECK_MSG(rc == INF_EINVAL && ek.msg[0] != '\0', "prefix %zu: rc %d", k, rc);
        refused += rc != 0;
        if (rc == 0)
            st_file_deinit(&f);
        free(cut);
    }
    CHECK(refused == (int)len);
    free(data);
}

/* Every byte of a valid file overwritten with a few values: parse or refuse, never crash. */
static void test_mutations(void)
{
    float a[3] = {1, 2, 3};
    int64_t sa[1] = {3};
    struct st_out ts[] = {{"w", 1, sa, a}};
    char *data = NULL;
    size_t len = 0;
    CHECK(st_serialize(ts, 1, NULL, &data, &len, NULL) == 0);
    const unsigned char vals[] = {0x00, 0xFF, '"', '9', '-', '[', '{', ','};
    for (size_t i = 0; data != NULL && i < len; i++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            unsigned char *m = malloc(len);
            if (m == NULL)
                continue;
            memcpy(m, data, len);
            m[i] = vals[v];
            struct st_file f = {0};
            struct err e = {0};
            int rc = st_parse(m, len, &f, &e);
            CHECK_MSG(rc == 0 || e.msg[0] != '\0', "byte %zu = %02x", i, vals[v]);
            for (size_t k = 0; rc == 0 && k < f.n; k++)
                CHECK(f.tensors[k].data + f.tensors[k].nbytes <= m + len);
            st_file_deinit(&f);
            free(m);
        }
    }
    free(data);
}

/* jansson's allocations fail after the first `jansson_budget` (a global: this test only). */
static long jansson_budget = -1;

static void *budget_malloc(size_t n)
{
    if (jansson_budget == 0)
        return NULL;
    if (jansson_budget > 0)
        jansson_budget--;
    return malloc(n);
}

/* Every jansson allocation failing in turn: ENOMEM with a message, no crash, no leak. */
static void test_out_of_memory(void)
{
    float a[2] = {1, 2};
    int64_t sa[1] = {2};
    struct st_out ts[] = {{"w", 1, sa, a}, {"v", 1, sa, a}};
    json_t *meta = json_pack("{ss}", "k", "v");
    char *data = NULL;
    size_t len = 0;
    CHECK(st_serialize(ts, 2, meta, &data, &len, NULL) == 0);
    json_set_alloc_funcs(budget_malloc, free);
    int parse_ok = 0, ser_ok = 0, parse_enomem = 0;
    for (long k = 0; k < 200 && !(parse_ok && ser_ok); k++) {
        struct st_file f = {0};
        struct err e = {0};
        jansson_budget = k;
        int rc = st_parse(data, len, &f, &e);
        /* jansson's lexer turns some failed allocations into syntax errors: EINVAL then */
        CHECK_MSG(rc == 0 || (rc == INF_ENOMEM && strstr(e.msg, "out of memory")) ||
                      (rc == INF_EINVAL && strstr(e.msg, "not valid JSON")),
                  "parse %ld: %s", k, e.msg);
        parse_enomem += rc == INF_ENOMEM;
        parse_ok = rc == 0;
        st_file_deinit(&f);

        char *d2 = NULL;
        size_t l2 = 0;
        err_clear(&e);
        jansson_budget = k;
        rc = st_serialize(ts, 2, meta, &d2, &l2, &e);
        CHECK_MSG(rc == 0 || (rc == INF_ENOMEM && strstr(e.msg, "out of memory")),
                  "serialize %ld: rc %d %s", k, rc, e.msg);
        ser_ok = rc == 0;
        CHECK(rc != 0 || (l2 == len && memcmp(d2, data, len) == 0));
        free(d2);
    }
    jansson_budget = -1;
    CHECK(parse_ok && ser_ok && parse_enomem > 0);
    json_decref(meta);
    free(data);
}

static void test_serialize_errors(void)
{
    float x[2] = {1, 2};
    int64_t s1[1] = {2}, s9[9] = {1, 1, 1, 1, 1, 1, 1, 1, 2}, sneg[1] = {-2};
    char *data = NULL;
    size_t len = 0;
    struct err e = {0};

    struct st_out dup[] = {{"a", 1, s1, x}, {"a", 1, s1, x}};
    CHECK(st_serialize(dup, 2, NULL, &data, &len, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "\"a\" is missing, not UTF-8, reserved or repeated");
    err_clear(&e);
    struct st_out bad_utf8[] = {{"a\xff", 1, s1, x}};
    CHECK(st_serialize(bad_utf8, 1, NULL, &data, &len, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "\"a\\xff\" is missing, not UTF-8");
    err_clear(&e);
    struct st_out deep[] = {{"a", 9, s9, x}};
    CHECK(st_serialize(deep, 1, NULL, &data, &len, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "rank 9");
    err_clear(&e);
    struct st_out neg[] = {{"a", 1, sneg, x}};
    CHECK(st_serialize(neg, 1, NULL, &data, &len, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "shape[0] = -2 is invalid");
    err_clear(&e);
    json_t *meta = json_pack("{si}", "k", 1);
    struct st_out ok[] = {{"a", 1, s1, x}};
    CHECK(st_serialize(ok, 1, meta, &data, &len, &e) == INF_EINVAL);
    CHECK_ERR_HAS(&e, "metadata is not an object of strings");
    json_decref(meta);
    CHECK(data == NULL && len == 0);
}

int main(void)
{
    RUN(test_round_trip);
    RUN(test_empty_file_round_trip);
    RUN(test_known_bytes);
    RUN(test_zero_element_tensors);
    RUN(test_f16);
    RUN(test_bf16);
    RUN(test_f64);
    RUN(test_bad_lengths);
    RUN(test_bad_json);
    RUN(test_bad_entries);
    RUN(test_bad_layout);
    RUN(test_too_many_tensors);
    RUN(test_truncation);
    RUN(test_mutations);
    RUN(test_serialize_errors);
    RUN(test_out_of_memory);
    return test_finish();
}
