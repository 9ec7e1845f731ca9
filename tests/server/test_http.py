"""Integration tests of infera's HTTP API (DESIGN.md section 5) against a real server.

One shared server on the trained example models (digits, cnn, text, reg) answers most tests;
two more start only where options or the repository differ: a server with
--max-body-bytes 2048 (body limits) and a server on a repository copy with an extra broken
model (repository extension: index, unload/load, uploads). Every check is what a client relies
on: exact status codes, headers (X-Request-Id, Allow, Content-Type, Connection) and body
fields; answers equal `infera predict` on the same request; every error is
{"error": "<message naming the problem>"} and never a 5xx for a client's mistake.

Run: cd tests && INFERA_BIN=../build/infera python3 server/test_http.py
"""
import base64
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import EXAMPLES, main, predict, read_jsonl  # noqa: E402
import serverlib  # noqa: E402
from serverlib import SLOW, Server, digits_request, digits_rows, trained_repo  # noqa: E402

MODELS = ("digits", "cnn", "text", "reg")
GENERATED_ID = re.compile(r"req-[0-9a-f]+")
VALID_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

# ------------------------------------------------------------------------------------------
# Servers: started lazily, shared, stopped (SIGTERM, must exit 0) when the run ends
# ------------------------------------------------------------------------------------------

_servers = {}
_tmpdirs = []


def main_server():
    """The trained examples with default options."""
    if "main" not in _servers:
        _servers["main"] = Server(models=trained_repo()).start()
    return _servers["main"]


def limited_server():
    """The trained examples with --max-body-bytes 2048."""
    if "limited" not in _servers:
        _servers["limited"] = Server(models=trained_repo(),
                                     args=["--max-body-bytes", "2048"]).start()
    return _servers["limited"]


def repo_server():
    """A copy of the trained repository plus "broken" (model.json {"task":"x"}); tests here
    unload, load and upload models, so the shared server stays untouched."""
    if "repo" not in _servers:
        repo = os.path.join(tempfile.mkdtemp(prefix="infera-http-repo-"), "models")
        _tmpdirs.append(os.path.dirname(repo))
        shutil.copytree(trained_repo(), repo)
        os.mkdir(os.path.join(repo, "broken"))
        with open(os.path.join(repo, "broken", "model.json"), "w") as f:
            f.write('{"task":"x"}')
        _servers["repo"] = Server(models=repo).start()
    return _servers["repo"]


def close_servers():
    errors = []
    for name, srv in list(_servers.items()):
        try:
            srv.stop(check=True)
        except AssertionError as exc:
            errors.append("%s server: %s" % (name, exc))
        finally:
            shutil.rmtree(srv.tmp, ignore_errors=True)
    _servers.clear()
    for d in _tmpdirs:
        shutil.rmtree(d, ignore_errors=True)
    if "repo" in serverlib._trained:  # the trained examples, cached per process
        shutil.rmtree(serverlib._trained.pop("repo"), ignore_errors=True)
    if errors:
        raise AssertionError("\n".join(errors))


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------

def call(srv, method, path, body=None, headers=None):
    """(status, body: parsed JSON for application/json else text, headers lower-cased).
    A bytes/str body goes as is with Content-Type application/json unless headers say else."""
    hdrs = dict(headers or {})
    if isinstance(body, (bytes, str)) and not any(k.lower() == "content-type" for k in hdrs):
        hdrs["Content-Type"] = "application/json"
    return srv.request(method, path, body=body, headers=hdrs)


def ok(srv, method, path, body=None, headers=None):
    status, out, hdrs = call(srv, method, path, body, headers)
    assert status == 200, (method, path, status, out)
    assert hdrs["content-type"] == "application/json", hdrs
    assert VALID_ID.fullmatch(hdrs.get("x-request-id", "")), hdrs
    return out, hdrs


def expect_error(srv, method, path, body, status, needle=None, headers=None):
    """Asserts an error answer: exact status, JSON {"error": "..."} naming the problem."""
    got, out, hdrs = call(srv, method, path, body, headers)
    assert got == status, ("%s %s: expected %d, got %d: %r" % (method, path, status, got,
                                                               out))
    assert hdrs.get("content-type") == "application/json", hdrs
    assert isinstance(out, dict) and set(out) == {"error"}, out
    assert isinstance(out["error"], str) and out["error"].strip(), out
    if needle is not None:
        assert needle in out["error"], (needle, out["error"])
    assert VALID_ID.fullmatch(hdrs.get("x-request-id", "")), hdrs
    return out["error"], hdrs


def raw_http(port, data, timeout=10 * SLOW):
    """Sends raw bytes; returns (status, headers lower-cased, body bytes) or None if the
    server closed the connection without an answer."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    buf = b""
    try:
        s.sendall(data)
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            buf += chunk
            head, sep, body = buf.partition(b"\r\n\r\n")
            m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
            if sep and m and len(body) >= int(m.group(1)):
                break
    finally:
        s.close()
    if not buf:
        return None
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return status, hdrs, body


def chunked(body, size=1000):
    parts = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def outputs_by_name(res):
    return {o["name"]: o for o in res["outputs"]}


def assert_close(a, b, tol=1e-6):
    assert len(a) == len(b), (len(a), len(b))
    for i, (x, y) in enumerate(zip(a, b)):
        assert abs(x - y) <= tol, (i, x, y)


def assert_same_outputs(got, want, tol=1e-6):
    """The outputs of two OIP answers agree: names, datatypes, shapes, data (FP32 within
    tol, everything else exactly)."""
    g, w = outputs_by_name(got), outputs_by_name(want)
    assert set(g) == set(w), (sorted(g), sorted(w))
    for name in w:
        assert g[name]["datatype"] == w[name]["datatype"], name
        assert g[name]["shape"] == w[name]["shape"], (name, g[name]["shape"], w[name]["shape"])
        if w[name]["datatype"] == "FP32":
            assert_close(g[name]["data"], w[name]["data"], tol)
        else:
            assert g[name]["data"] == w[name]["data"], name


def cnn_request(rows):
    return {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 1, 8, 8],
                        "data": [v for r in rows for v in r["input"]]}]}


def text_request(texts):
    return {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [len(texts)],
                        "data": list(texts)}]}


def reg_request():
    with open(os.path.join(EXAMPLES, "regression", "request.json")) as f:
        return json.load(f)


def metric_samples(text):
    """{'name{labels}': value} of a Prometheus text exposition."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, val = line.rpartition(" ")
        out[key] = float(val)
    return out


def request_count(srv, route, method, code):
    status, text, _ = srv.request("GET", "/metrics")
    assert status == 200
    key = 'infera_http_requests_total{route="%s",method="%s",code="%s"}' % (route, method, code)
    return metric_samples(text).get(key, 0.0)


def wait_count(srv, route, method, code, want):
    """Request metrics are recorded when a response completes, just after the client has it:
    poll briefly for the count to reach want."""
    deadline = time.time() + 2 * SLOW
    while True:
        n = request_count(srv, route, method, code)
        if n >= want or time.time() > deadline:
            return n
        time.sleep(0.02)


# ------------------------------------------------------------------------------------------
# Health and metadata
# ------------------------------------------------------------------------------------------

def test_health_live_ready_and_server_metadata():
    srv = main_server()
    out, _ = ok(srv, "GET", "/v2/health/live")
    assert out == {"live": True}, out
    out, _ = ok(srv, "GET", "/v2/health/ready")
    assert out == {"ready": True}, out
    out, _ = ok(srv, "GET", "/v2")
    assert out["name"] == "infera", out
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", out["version"]), out
    assert set(out["extensions"]) >= {"model_repository", "explain", "metrics"}, out
    # A trailing slash is tolerated.
    out, _ = ok(srv, "GET", "/v2/health/live/")
    assert out == {"live": True}


def test_models_list():
    out, _ = ok(main_server(), "GET", "/v2/models")
    models = {m["name"]: m for m in out["models"]}
    assert set(models) == set(MODELS), out
    for name in MODELS:
        assert models[name]["versions"] == ["1"], models[name]
        assert models[name]["ready"] is True, models[name]


def test_model_metadata():
    srv = main_server()
    want_inputs = {"digits": ("input", "FP32", [-1, 64]), "cnn": ("input", "FP32", [-1, 1, 8, 8]),
                   "text": ("text", "BYTES", [-1]), "reg": ("input", "FP32", [-1, 2])}
    classes = {"digits": 10, "cnn": 10, "text": 6}
    for name in MODELS:
        for path in ("/v2/models/%s" % name, "/v2/models/%s/versions/1" % name):
            meta, _ = ok(srv, "GET", path)
            assert meta["name"] == name, meta
            assert meta["versions"] == ["1"], meta
            (inp,) = meta["inputs"]
            assert (inp["name"], inp["datatype"], inp["shape"]) == want_inputs[name], meta
            outs = {o["name"]: o for o in meta["outputs"]}
            if name in classes:
                assert set(outs) == {"probabilities", "label"}, meta
                assert outs["probabilities"]["datatype"] == "FP32"
                assert outs["probabilities"]["shape"] == [-1, classes[name]], meta
                assert outs["label"]["datatype"] == "BYTES"
                assert outs["label"]["shape"] == [-1], meta
                assert meta["parameters"]["task"] == "classification"
                assert len(meta["parameters"]["labels"]) == classes[name]
            else:
                assert set(outs) == {"output"}, meta
                assert outs["output"]["datatype"] == "FP32"
                assert outs["output"]["shape"] == [-1, 1], meta
                assert meta["parameters"]["task"] == "regression"
            if "/versions/" in path:
                assert meta["version"] == "1", meta
    meta, _ = ok(srv, "GET", "/v2/models/digits")
    assert meta["parameters"]["labels"] == [str(i) for i in range(10)], meta


def test_model_ready():
    srv = main_server()
    for name in MODELS:
        out, _ = ok(srv, "GET", "/v2/models/%s/ready" % name)
        assert out == {"name": name, "ready": True}, out
    out, _ = ok(srv, "GET", "/v2/models/digits/versions/1/ready")
    assert out["ready"] is True
    expect_error(srv, "GET", "/v2/models/nope/ready", None, 404, "nope")
    expect_error(srv, "GET", "/v2/models/digits/versions/9/ready", None, 404, "9")


# ------------------------------------------------------------------------------------------
# Inference
# ------------------------------------------------------------------------------------------

def test_infer_each_model_matches_cli():
    srv = main_server()
    repo = trained_repo()
    rows = digits_rows(5)
    texts = [r["input"] for r in read_jsonl(os.path.join(EXAMPLES, "text", "test.jsonl"))[:4]]
    cases = {"digits": digits_request(rows), "cnn": cnn_request(rows),
             "text": text_request(texts), "reg": reg_request()}
    for name, req in cases.items():
        req = dict(req, id="cmp-" + name)
        got, _ = ok(srv, "POST", "/v2/models/%s/infer" % name, req)
        want = predict(os.path.join(repo, name), req)
        assert got["model_name"] == name, got
        assert got["model_version"] == "1", got
        assert got["id"] == "cmp-" + name, got
        assert_same_outputs(got, want)
        outs = outputs_by_name(got)
        if name == "reg":
            assert set(outs) == {"output"} and outs["output"]["shape"] == [2, 1], outs
        else:
            B = len(texts) if name == "text" else len(rows)
            C = 6 if name == "text" else 10
            assert outs["probabilities"]["shape"] == [B, C], outs
            assert outs["label"]["shape"] == [B], outs
            for r in range(B):
                assert abs(sum(outs["probabilities"]["data"][r * C:(r + 1) * C]) - 1) < 1e-5


def test_infer_request_id_body_and_header():
    srv = main_server()
    req = digits_request(digits_rows(1), id="my-request-7")
    out, hdrs = ok(srv, "POST", "/v2/models/digits/infer", req,
                   headers={"X-Request-Id": "abc-123"})
    assert out["id"] == "my-request-7", out
    assert hdrs["x-request-id"] == "abc-123", hdrs
    # No id in the body: none in the answer; no header: the server makes one up.
    out, hdrs = ok(srv, "POST", "/v2/models/digits/infer", digits_request(digits_rows(1)))
    assert "id" not in out, out
    assert GENERATED_ID.fullmatch(hdrs["x-request-id"]), hdrs
    # Errors carry the client's id too.
    _, hdrs = expect_error(srv, "POST", "/v2/models/nope/infer", req, 404,
                           headers={"X-Request-Id": "abc-123"})
    assert hdrs["x-request-id"] == "abc-123"
    # Invalid ids are replaced, never reflected.
    for bad in ("x" * 65, "a/b", "a b", "<script>"):
        _, _, hdrs = call(srv, "GET", "/v2/health/live", headers={"X-Request-Id": bad})
        assert GENERATED_ID.fullmatch(hdrs["x-request-id"]), (bad, hdrs)


def test_request_id_with_crlf_is_replaced():
    """http.client will not send these; a raw socket does."""
    srv = main_server()
    for header in (b"X-Request-Id: bad id\r\n", b"X-Request-Id: bad\r\n id\r\n",
                   b"X-Request-Id: bad\rid\r\n"):
        res = raw_http(srv.port, b"GET /v2/health/live HTTP/1.1\r\nHost: t\r\n"
                       b"Connection: close\r\n" + header + b"\r\n")
        assert res is not None, header
        status, hdrs, body = res
        assert status in (200, 400), (header, status, body)
        assert GENERATED_ID.fullmatch(hdrs.get("x-request-id", "")), (header, hdrs)
        # Nothing of the client's value reaches the answer's header section.
        assert set(hdrs) <= {"date", "connection", "content-type", "x-request-id",
                             "content-length"}, hdrs
    assert ok(srv, "GET", "/v2/health/live")[0] == {"live": True}


def test_infer_versioned_route():
    srv = main_server()
    req = digits_request(digits_rows(3))
    plain, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
    v1, _ = ok(srv, "POST", "/v2/models/digits/versions/1/infer", req)
    assert v1["model_version"] == "1" and v1["model_name"] == "digits", v1
    assert v1["outputs"] == plain["outputs"]


def test_infer_top_k():
    srv = main_server()
    rows = digits_rows(4)
    out, _ = ok(srv, "POST", "/v2/models/digits/infer",
                digits_request(rows, parameters={"top_k": 3}))
    outs = outputs_by_name(out)
    assert set(outs) == {"probabilities", "label", "top_k_labels", "top_k_probabilities"}
    assert outs["top_k_labels"]["datatype"] == "BYTES"
    assert outs["top_k_labels"]["shape"] == [4, 3], outs["top_k_labels"]
    assert outs["top_k_probabilities"]["datatype"] == "FP32"
    assert outs["top_k_probabilities"]["shape"] == [4, 3]
    probs = outs["probabilities"]["data"]
    for r in range(4):
        row = probs[r * 10:(r + 1) * 10]
        order = sorted(range(10), key=lambda j: (-row[j], j))[:3]
        assert outs["top_k_labels"]["data"][r * 3:(r + 1) * 3] == [str(j) for j in order]
        assert_close(outs["top_k_probabilities"]["data"][r * 3:(r + 1) * 3],
                     [row[j] for j in order])
        assert outs["top_k_labels"]["data"][r * 3] == outs["label"]["data"][r]
    # top_k 10 (all classes) is the upper bound.
    out, _ = ok(srv, "POST", "/v2/models/digits/infer",
                digits_request(rows[:1], parameters={"top_k": 10}))
    assert outputs_by_name(out)["top_k_labels"]["shape"] == [1, 10]


def test_infer_outputs_selection():
    srv = main_server()
    rows = digits_rows(2)
    full, _ = ok(srv, "POST", "/v2/models/digits/infer", digits_request(rows))
    for names in (["label"], ["probabilities"], ["label", "probabilities"]):
        out, _ = ok(srv, "POST", "/v2/models/digits/infer",
                    digits_request(rows, outputs=[{"name": n} for n in names]))
        got = outputs_by_name(out)
        assert set(got) == set(names), (names, list(got))
        for n in names:
            assert got[n] == outputs_by_name(full)[n]
    out, _ = ok(srv, "POST", "/v2/models/reg/infer", dict(reg_request(),
                                                           outputs=[{"name": "output"}]))
    assert [o["name"] for o in out["outputs"]] == ["output"]


def test_infer_outputs_selects_top_k_tensors_separately():
    """Asking for top_k_labels only must not return top_k_probabilities as well (OIP: the
    outputs listed are the outputs returned)."""
    out, _ = ok(main_server(), "POST", "/v2/models/digits/infer",
                digits_request(digits_rows(2), parameters={"top_k": 2},
                               outputs=[{"name": "top_k_labels"}]))
    assert [o["name"] for o in out["outputs"]] == ["top_k_labels"], \
        [o["name"] for o in out["outputs"]]


def test_infer_nested_and_flat_data_agree():
    srv = main_server()
    rows = digits_rows(3)
    nested = digits_request(rows)
    flat = digits_request(rows)
    flat["inputs"][0]["data"] = [v for r in rows for v in r["input"]]
    a, _ = ok(srv, "POST", "/v2/models/digits/infer", nested)
    b, _ = ok(srv, "POST", "/v2/models/digits/infer", flat)
    assert a["outputs"] == b["outputs"]
    # cnn: fully nested [B][1][8][8] vs flat.
    cflat = cnn_request(rows)
    cnested = cnn_request(rows)
    cnested["inputs"][0]["data"] = [[[r["input"][y * 8:(y + 1) * 8] for y in range(8)]]
                                    for r in rows]
    a, _ = ok(srv, "POST", "/v2/models/cnn/infer", cflat)
    b, _ = ok(srv, "POST", "/v2/models/cnn/infer", cnested)
    assert a["outputs"] == b["outputs"]
    # text: [[t1], [t2]] with shape [B, 1] vs [t1, t2] with shape [B].
    t1 = text_request(["the computer crashed", "bake the bread"])
    t2 = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2, 1],
                      "data": [["the computer crashed"], ["bake the bread"]]}]}
    a, _ = ok(srv, "POST", "/v2/models/text/infer", t1)
    b, _ = ok(srv, "POST", "/v2/models/text/infer", t2)
    assert a["outputs"] == b["outputs"]


def test_infer_numeric_datatypes_converted():
    srv = main_server()
    rows = digits_rows(3)
    base, _ = ok(srv, "POST", "/v2/models/digits/infer", digits_request(rows))
    for dt in ("FP64", "INT32", "UINT8", "INT64", "FP16"):
        req = digits_request(rows)
        req["inputs"][0]["datatype"] = dt
        if dt == "FP64":
            req["inputs"][0]["data"] = [[float(v) for v in r["input"]] for r in rows]
        out, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
        assert_same_outputs(out, base)
    req = digits_request(rows)
    req["inputs"][0]["datatype"] = "UINT8"
    req["inputs"][0]["data"][1][5] = 256
    expect_error(srv, "POST", "/v2/models/digits/infer", req, 400, "inputs[0].data[69]")
    req["inputs"][0]["data"][1][5] = -1
    expect_error(srv, "POST", "/v2/models/digits/infer", req, 400, "UINT8")
    req = digits_request(rows)
    req["inputs"][0]["datatype"] = "INT32"
    req["inputs"][0]["data"][0][0] = 1.5
    expect_error(srv, "POST", "/v2/models/digits/infer", req, 400, "INT32")
    req["inputs"][0]["datatype"] = "STRING"
    expect_error(srv, "POST", "/v2/models/digits/infer", req, 400, "inputs[0].datatype")


def test_infer_batch_of_32_matches_cli():
    srv = main_server()
    rows = digits_rows(32)
    req = digits_request(rows, id="batch-32")
    got, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
    assert got["id"] == "batch-32"
    outs = outputs_by_name(got)
    assert outs["probabilities"]["shape"] == [32, 10]
    assert outs["label"]["shape"] == [32] and len(outs["label"]["data"]) == 32
    assert_same_outputs(got, predict(os.path.join(trained_repo(), "digits"), req))
    # The same rows sent one by one give the same rows back (batching changes nothing).
    one, _ = ok(srv, "POST", "/v2/models/digits/infer", digits_request(rows[7:8]))
    assert_close(outputs_by_name(one)["probabilities"]["data"],
                 outs["probabilities"]["data"][70:80])


# ------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------

def test_not_found():
    srv = main_server()
    req = digits_request(digits_rows(1))
    expect_error(srv, "POST", "/v2/models/nope/infer", req, 404, 'no model named "nope"')
    expect_error(srv, "GET", "/v2/models/nope", None, 404, "nope")
    expect_error(srv, "POST", "/v2/models/digits/versions/9/infer", req, 404, "version 9")
    expect_error(srv, "GET", "/v2/models/digits/versions/9", None, 404, "version 9")
    expect_error(srv, "POST", "/v2/models/digits/versions/0/infer", req, 400, "version")
    expect_error(srv, "POST", "/v2/models/digits/versions/x/infer", req, 400, "version")
    for path in ("/v2/nope", "/v3", "/", "/v2/models/digits/infer/extra"):
        expect_error(srv, "GET", path, None, 404, "no route")
    # Under /v1/ errors take OpenAI's shape, which its SDKs parse.
    st, out, _ = call(srv, "GET", "/v1/models")
    assert st == 404 and "no route" in out["error"]["message"], out
    assert out["error"]["type"] == "invalid_request_error" and out["error"]["code"] == "not_found"
    expect_error(srv, "POST", "/v2/models/digits/predict", req, 404, "no route")


def test_method_not_allowed_has_allow_header():
    srv = main_server()
    cases = [("DELETE", "/v2/models", "GET"), ("GET", "/v2/models/digits/infer", "POST"),
             ("PUT", "/v2/health/live", "GET"), ("POST", "/v2/models/digits", "GET"),
             ("GET", "/v2/repository/index", "POST"), ("POST", "/metrics", "GET"),
             ("GET", "/v2/models/digits/versions/1/explain", "POST"),
             ("DELETE", "/v2/repository/models/digits/unload", "POST")]
    for method, path, allow in cases:
        msg, hdrs = expect_error(srv, method, path, None, 405, method)
        assert hdrs.get("allow") == allow, (method, path, hdrs)


def test_unsupported_media_type():
    srv = main_server()
    body = json.dumps(digits_request(digits_rows(1)))
    for ct in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        expect_error(srv, "POST", "/v2/models/digits/infer", body, 415, "Content-Type",
                     headers={"Content-Type": ct})
    expect_error(srv, "POST", "/v2/repository/index", "{}", 415, "Content-Type",
                 headers={"Content-Type": "text/plain"})
    # JSON with parameters is fine, and so is no Content-Type at all.
    ok(srv, "POST", "/v2/models/digits/infer", body,
       headers={"Content-Type": "application/json; charset=utf-8"})
    ok(srv, "POST", "/v2/models/digits/infer", body.encode(),
       headers={"Content-Type": "Application/JSON"})


def test_body_over_limit_413_content_length():
    srv = limited_server()
    for _ in range(2):
        msg, hdrs = expect_error(srv, "POST", "/v2/models/digits/infer", b"x" * 5000, 413,
                                 "2048")
        assert hdrs.get("connection", "").lower() == "close", hdrs
        assert ok(srv, "GET", "/v2/health/ready")[0] == {"ready": True}
    # The limit is inclusive: a valid request of exactly 2048 bytes passes, 2049 does not.
    body = json.dumps(digits_request(digits_rows(1)))
    assert len(body) < 2048
    ok(srv, "POST", "/v2/models/digits/infer", body + " " * (2048 - len(body)))
    expect_error(srv, "POST", "/v2/models/digits/infer", body + " " * (2049 - len(body)), 413)
    ok(srv, "POST", "/v2/models/digits/infer", body)


def test_body_over_limit_413_chunked():
    srv = limited_server()
    head = (b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\n" + srv.auth_line() +
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
    res = raw_http(srv.port, head + chunked(b"y" * 5000))
    assert res is not None, "no answer to a chunked body over the limit"
    status, hdrs, body = res
    assert status == 413, (status, body)
    assert hdrs.get("content-type") == "application/json"
    err = json.loads(body)["error"]
    assert "2048" in err, err
    # A chunked body within the limit is served.
    req = json.dumps(digits_request(digits_rows(1))).encode()
    status, hdrs, body = raw_http(srv.port, head.replace(b"Host: t\r\n",
                                                         b"Host: t\r\nConnection: close\r\n")
                                  + chunked(req, 100))
    assert status == 200, (status, body)
    assert json.loads(body)["model_name"] == "digits"
    assert ok(srv, "GET", "/v2/health/live")[0] == {"live": True}


def bad_infer_requests():
    """(model, body, needle) for requests that must answer 400."""
    row = digits_rows(1)[0]["input"]

    def d(**inp):
        base = {"name": "input", "datatype": "FP32", "shape": [1, 64], "data": [row]}
        base.update(inp)
        return json.dumps({"inputs": [base]})

    good = d()
    deep = '{"inputs": ' + "[" * 5000 + "]" * 5000 + "}"
    return [
        ("digits", '{"inputs": [', "invalid JSON"),
        ("digits", "", "invalid JSON"),
        ("digits", "[]", "JSON object"),
        ("digits", json.dumps([json.loads(good)]), "JSON object"),
        ("digits", "{}", "inputs"),
        ("digits", d(name="pixels"), "inputs[0].name"),
        ("digits", d(shape=[1, 63]), "inputs[0].shape"),
        ("digits", d(shape=[64]), "inputs[0].shape"),
        ("digits", d(shape=[1, 8, 8]), "inputs[0].shape"),
        ("digits", d(shape=[1, -64]), "inputs[0].shape[1]"),
        ("digits", d(shape=[1, "64"]), "inputs[0].shape[1]"),
        ("digits", d(data=[row[:63]]), "inputs[0].data"),
        ("digits", d(data=row[:63]), "inputs[0].data"),
        ("digits", d(data=row + [0]), "inputs[0].data"),
        ("digits", d(shape=[2, 64], data=row * 2 + [1]), "inputs[0].data"),
        ("digits", d(data=[row[:5] + ["7"] + row[6:]]), "inputs[0].data[5]"),
        ("digits", d(data=[row[:5] + [None] + row[6:]]), "inputs[0].data[5]"),
        ("digits", d(data="abc"), "inputs[0].data"),
        ("digits", good.replace(str(row[-1]) + "]]", "NaN]]"), "NaN"),
        ("digits", good.replace(str(row[-1]) + "]]", "Infinity]]"), "Infinity"),
        ("digits", good.replace(str(row[-1]) + "]]", "-Infinity]]"), "Infinity"),
        ("digits", good.replace(str(row[-1]) + "]]", "1e400]]"), "inputs[0].data[63]"),
        ("digits", good[:-1] + ', "inputs": []}', "duplicate"),
        ("digits", good.replace('"name": "input"', '"name": "input", "name": "input"'),
         "duplicate"),
        ("digits", deep, "depth"),
        ("digits", d(shape=[0, 64], data=[]), "inputs[0].shape[0]"),
        ("digits", d(datatype=7), "inputs[0]"),
        ("digits", json.dumps({"inputs": [json.loads(good)["inputs"][0]] * 2}), "inputs"),
        ("digits", good[:-1] + ', "parameters": {"top_k": 0}}', "parameters.top_k"),
        ("digits", good[:-1] + ', "parameters": {"top_k": 11}}', "parameters.top_k"),
        ("digits", good[:-1] + ', "parameters": {"top_k": "3"}}', "parameters.top_k"),
        ("digits", good[:-1] + ', "parameters": 5}', "parameters"),
        ("digits", good[:-1] + ', "outputs": [{"name": "logits"}]}', "outputs[0].name"),
        ("digits", good[:-1] + ', "outputs": [{"name": "top_k_labels"}]}', "outputs[0].name"),
        ("digits", good[:-1] + ', "outputs": []}', "outputs"),
        ("digits", good[:-1] + ', "id": 5}', "id"),
        ("reg", good[:-1] + ', "parameters": {"top_k": 1}}', "parameters.top_k"),
        ("reg", good[:-1] + ', "outputs": [{"name": "probabilities"}]}', "outputs[0].name"),
        ("text", json.dumps({"inputs": [{"name": "text", "datatype": "FP32", "shape": [1],
                                         "data": ["hi"]}]}), "inputs[0].datatype"),
        ("text", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1],
                                         "data": [5]}]}), "inputs[0].data[0]"),
        ("text", json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                                         "data": ["one"]}]}), "inputs[0].data"),
    ]


def test_bad_requests_400_then_server_still_serves():
    srv = main_server()
    route = "/v2/models/{m}/infer"
    before = request_count(srv, route, "POST", "400")
    sent = 0
    for model, body, needle in bad_infer_requests():
        expect_error(srv, "POST", "/v2/models/%s/infer" % model, body, 400, needle)
        sent += 1
    # Invalid UTF-8 inside a JSON string (raw bytes, not an escape).
    good = json.dumps(digits_request(digits_rows(1))).encode()
    expect_error(srv, "POST", "/v2/models/digits/infer",
                 good[:-1] + b', "id": "\xff\xfe"}', 400, "invalid JSON")
    expect_error(srv, "POST", "/v2/models/digits/infer",
                 good.replace(b'"name": "input"', b'"name": "in\xc3"'), 400, "invalid JSON")
    sent += 2
    # A normal inference still works after all that, and the metrics counted every 400.
    out, _ = ok(srv, "POST", "/v2/models/digits/infer", good)
    assert outputs_by_name(out)["probabilities"]["shape"] == [1, 10]
    after = wait_count(srv, route, "POST", "400", before + sent)
    assert after == before + sent, (before, after, sent)


def test_batch_over_the_limit_is_400():
    """The request limit is 1024 rows: 1025 is a bad request (a limit on rows, not on the
    body size)."""
    srv = main_server()
    row = digits_rows(1)[0]["input"]
    req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1025, 64],
                       "data": [row] * 1025}]}
    expect_error(srv, "POST", "/v2/models/digits/infer", req, 400, "inputs[0].shape[0]")
    req["inputs"][0]["shape"] = [1024, 64]
    req["inputs"][0]["data"] = [row] * 1024
    out, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
    assert outputs_by_name(out)["label"]["shape"] == [1024]


def test_invalid_model_names_and_traversal_never_5xx():
    srv = main_server()
    body = digits_request(digits_rows(1))
    names = ["a%20b", "..", "%2e%2e", ".", ".hidden", "a" * 200, "a" * 129, "a%2fb", "a;b",
             "a%ff"]
    for name in names:
        for method, suffix, b in (("POST", "/infer", body), ("GET", "", None),
                                  ("GET", "/ready", None), ("POST", "/explain", body)):
            path = "/v2/models/%s%s" % (name, suffix)
            status, out, _ = call(srv, method, path, b)
            assert status in (400, 404), (path, status, out)
            assert isinstance(out, dict) and out.get("error"), (path, out)
        for action in ("load", "unload"):
            path = "/v2/repository/models/%s/%s" % (name, action)
            status, out, _ = call(srv, "POST", path, "")
            assert status in (400, 404), (path, status, out)
    for path in ("/v2/models/..%2f..%2fetc%2fpasswd/infer", "/v2/models/../../etc/passwd/infer",
                 "/v2/models/%2e%2e%2f%2e%2e%2fetc/infer",
                 "/v2/repository/models/..%2f..%2ftmp/load"):
        status, out, _ = call(srv, "POST", path, json.dumps(body))
        assert 400 <= status < 500, (path, status, out)
    # The valid models are unaffected.
    assert ok(srv, "GET", "/v2/models")[0]["models"]


def test_percent_encoded_nul_does_not_truncate_the_path():
    """%00 decodes to a NUL byte; the route must not be matched on the part before it
    ("/v2/models/digits%00junk" is not "/v2/models/digits")."""
    srv = main_server()
    problems = []
    for method, path, body in (("GET", "/v2/models/digits%00junk", None),
                               ("GET", "/metrics%00x", None),
                               ("GET", "/v2/health/live%00/x", None),
                               ("GET", "/v2/models/%00", None),
                               ("POST", "/v2/models/digits/infer%00x",
                                digits_request(digits_rows(1)))):
        status, out, _ = call(srv, method, path, body)
        if status not in (400, 404) or not (isinstance(out, dict) and out.get("error")):
            problems.append("%s %s -> %d %s" % (method, path, status, str(out)[:80]))
    assert not problems, "\n".join(problems)


def test_error_messages_echoing_non_utf8_client_text_are_4xx():
    """Errors that quote the client (the URL, a name cut at 64 bytes in the middle of a
    UTF-8 character, a Content-Type with non-ASCII bytes) must still answer 4xx with a JSON
    error, not 503 "out of memory"."""
    srv = main_server()
    row = digits_rows(1)[0]["input"]
    e_acute = "\u00e9"
    cases = [  # (method, path, body, status, needle)
        ("GET", "/v2/%ff", None, 404, "no route"),
        ("GET", "/v2/models/digits/%c3", None, 404, "no route"),
        # 81 UTF-8 bytes: "%.64s" cuts an e-acute in half
        ("POST", "/v2/models/digits/infer",
         {"inputs": [{"name": "x" + e_acute * 40, "datatype": "FP32", "shape": [1, 64],
                      "data": row}]}, 400, "inputs[0].name"),
        ("POST", "/v2/models/digits/infer",
         {"inputs": [{"name": "input", "datatype": "F" + e_acute * 40, "shape": [1, 64],
                      "data": row}]}, 400, "inputs[0].datatype"),
        ("POST", "/v2/models/text/infer",
         {"inputs": [{"name": "text", "datatype": "F" + e_acute * 40, "shape": [1],
                      "data": ["hi"]}]}, 400, "inputs[0].datatype"),
        ("POST", "/v2/models/digits/infer",
         {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}],
          "outputs": [{"name": "p" + e_acute * 40}]}, 400, "outputs[0].name"),
    ]
    problems = []
    for method, path, body, status, needle in cases:
        got, out, _ = call(srv, method, path, body)
        if got != status or not isinstance(out, dict) or needle not in out.get("error", ""):
            problems.append("%s %s -> %d %r (expected %d naming %s)"
                            % (method, path, got, out, status, needle))
    res = raw_http(srv.port, b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: t\r\n" +
                   srv.auth_line() +
                   b"Connection: close\r\nContent-Type: text/\xc3\xa9\xff\r\n"
                   b"Content-Length: 2\r\n\r\n{}")
    if res is None or res[0] != 415:
        problems.append("Content-Type text/<non-UTF-8> -> %r (expected 415)"
                        % (res and (res[0], res[2]),))
    assert not problems, "\n".join(problems)


# ------------------------------------------------------------------------------------------
# Explain
# ------------------------------------------------------------------------------------------

def explain(srv, model, req, **params):
    if params:
        req = dict(req, parameters=params)
    out, _ = ok(srv, "POST", "/v2/models/%s/explain" % model, req)
    return out


def attributions(res):
    (out,) = res["outputs"]
    assert out["name"] == "attributions" and out["datatype"] == "FP32", out
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in out["data"])
    return out


def test_explain_saliency_default_digits():
    srv = main_server()
    rows = digits_rows(3)
    res = explain(srv, "digits", digits_request(rows, id="ex-1"))
    assert res["model_name"] == "digits" and res["model_version"] == "1", res
    assert res["id"] == "ex-1"
    assert res["method"] == "saliency", res
    att = attributions(res)
    assert att["shape"] == [3, 64], att["shape"]
    assert len(att["data"]) == 3 * 64
    assert any(v != 0 for v in att["data"])
    infer, _ = ok(srv, "POST", "/v2/models/digits/infer", digits_request(rows))
    assert res["targets"] == outputs_by_name(infer)["label"]["data"], res["targets"]
    # The versioned route answers the same.
    res1 = explain(srv, "digits", digits_request(rows, id="ex-1"))
    out, _ = ok(srv, "POST", "/v2/models/digits/versions/1/explain", digits_request(rows))
    assert out["outputs"] == res1["outputs"]


def test_explain_methods_and_targets():
    srv = main_server()
    rows = digits_rows(2)
    req = digits_request(rows)
    sal = attributions(explain(srv, "digits", req))["data"]
    gxi = explain(srv, "digits", req, method="gradient_x_input")
    assert gxi["method"] == "gradient_x_input"
    assert attributions(gxi)["shape"] == [2, 64]
    ig = explain(srv, "digits", req, method="integrated_gradients", steps=32, baseline=0)
    assert ig["method"] == "integrated_gradients"
    ig_att = attributions(ig)
    assert ig_att["shape"] == [2, 64]
    assert ig_att["data"] != sal, "integrated_gradients equals saliency"
    # Pixels that are 0 (= the baseline) get no attribution from gradient_x_input or IG.
    flat = [v for r in rows for v in r["input"]]
    for data in (attributions(gxi)["data"], ig_att["data"]):
        assert all(abs(a) < 1e-6 for a, x in zip(data, flat) if x == 0)
    # A target given as a label and as an index is the same target.
    by_label = explain(srv, "digits", req, target="3")
    by_index = explain(srv, "digits", req, target=3)
    assert by_label["targets"] == ["3", "3"] == by_index["targets"], by_label["targets"]
    assert by_label["outputs"] == by_index["outputs"]
    # The cnn answers in its input's shape.
    cnn = explain(srv, "cnn", cnn_request(rows), method="gradient_x_input")
    assert attributions(cnn)["shape"] == [2, 1, 8, 8]
    # Bad parameters.
    for params, needle in (({"method": "lime"}, "parameters.method"),
                           ({"method": 3}, "parameters.method"),
                           ({"target": "x"}, "parameters.target"),
                           ({"target": 10}, "parameters.target"),
                           ({"target": -1}, "parameters.target"),
                           ({"method": "integrated_gradients", "steps": 0}, "parameters.steps"),
                           ({"method": "integrated_gradients", "baseline": [1, 2]},
                            "parameters.baseline")):
        expect_error(srv, "POST", "/v2/models/digits/explain", dict(req, parameters=params),
                     400, needle)
    expect_error(srv, "POST", "/v2/models/digits/explain", "{", 400, "invalid JSON")
    expect_error(srv, "POST", "/v2/models/nope/explain", req, 404, "nope")


def test_explain_text_tokens():
    srv = main_server()
    res = explain(srv, "text", text_request(["Hello World", "Bake the BREAD"], ), target="food")
    assert res["targets"] == ["food", "food"], res["targets"]
    att = attributions(res)
    assert att["shape"] == [2], att
    tokens = res["tokens"]
    assert [t["token"] for t in tokens[0]] == ["hello", "world"], tokens[0]
    assert [t["token"] for t in tokens[1]] == ["bake", "the", "bread"], tokens[1]
    for r in range(2):
        assert all(math.isfinite(t["score"]) for t in tokens[r])
        assert abs(sum(t["score"] for t in tokens[r]) - att["data"][r]) < 1e-4
    default = explain(srv, "text", text_request(["Hello World"]))
    infer, _ = ok(srv, "POST", "/v2/models/text/infer", text_request(["Hello World"]))
    assert default["targets"] == outputs_by_name(infer)["label"]["data"]


# ------------------------------------------------------------------------------------------
# Repository extension
# ------------------------------------------------------------------------------------------

def index_of(srv):
    out, _ = ok(srv, "POST", "/v2/repository/index")
    assert isinstance(out, list), out
    return {(e["name"], e["version"]): e for e in out}


def test_repository_index_and_broken_model():
    srv = repo_server()
    idx = index_of(srv)
    for name in MODELS:
        e = idx[(name, "1")]
        assert e["state"] == "READY" and e["reason"] == "", e
    broken = idx[("broken", "1")]
    assert broken["state"] == "UNAVAILABLE", broken
    assert "task" in broken["reason"], broken
    msg, _ = expect_error(srv, "GET", "/v2/models/broken", None, 400, "failed to load")
    assert "task" in msg, msg
    expect_error(srv, "POST", "/v2/models/broken/infer", digits_request(digits_rows(1)), 400,
                 "failed to load")
    listed = {m["name"] for m in ok(srv, "GET", "/v2/models")[0]["models"]}
    assert set(MODELS) <= listed and "broken" not in listed, listed
    for name in MODELS:
        ok(srv, "GET", "/v2/models/%s/ready" % name)
    ok(srv, "POST", "/v2/models/digits/infer", digits_request(digits_rows(1)))
    metrics = metric_samples(srv.request("GET", "/metrics")[1])
    assert metrics.get("infera_models_failed") == 1, metrics.get("infera_models_failed")
    # An empty JSON object is a fine body for the index too.
    assert isinstance(ok(srv, "POST", "/v2/repository/index", "{}")[0], list)


def test_repository_unload_and_load_from_store():
    srv = repo_server()
    req = digits_request(digits_rows(2))
    before, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
    out, _ = ok(srv, "POST", "/v2/repository/models/digits/unload")
    assert out == {"name": "digits"}, out
    status, out, _ = call(srv, "POST", "/v2/models/digits/infer", req)
    assert status in (400, 404), (status, out)
    assert "digits" in out["error"] and "not loaded" in out["error"], out
    expect_error(srv, "GET", "/v2/models/digits/ready", None, 404)
    assert index_of(srv)[("digits", "1")]["state"] == "UNLOADED"
    listed = {m["name"] for m in ok(srv, "GET", "/v2/models")[0]["models"]}
    assert "digits" not in listed and "cnn" in listed, listed
    ok(srv, "POST", "/v2/models/cnn/infer", cnn_request(digits_rows(1)))  # others still serve
    out, _ = ok(srv, "POST", "/v2/repository/models/digits/load")
    assert out["name"] == "digits", out
    assert index_of(srv)[("digits", "1")]["state"] == "READY"
    after, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
    assert after["outputs"] == before["outputs"]
    # Unknown models.
    expect_error(srv, "POST", "/v2/repository/models/nope/unload", "", 404, "nope")
    expect_error(srv, "POST", "/v2/repository/models/nope/load", "", 404, "nope")
    expect_error(srv, "POST", "/v2/repository/models/digits/load", "[1]", 400, "JSON")


def test_repository_load_triton_form():
    srv = repo_server()
    src = os.path.join(trained_repo(), "digits")
    with open(os.path.join(src, "model.json")) as f:
        config = f.read()
    with open(os.path.join(src, "weights.safetensors"), "rb") as f:
        weights = base64.b64encode(f.read()).decode()
    body = {"parameters": {"config": config, "file:weights.safetensors": weights}}
    out, _ = ok(srv, "POST", "/v2/repository/models/digits2/load", body)
    assert out == {"name": "digits2", "version": "1"}, out
    meta, _ = ok(srv, "GET", "/v2/models/digits2")
    assert meta["name"] == "digits2" and meta["versions"] == ["1"], meta
    assert meta["inputs"][0]["shape"] == [-1, 64]
    req = digits_request(digits_rows(3))
    want, _ = ok(srv, "POST", "/v2/models/digits/infer", req)
    got, _ = ok(srv, "POST", "/v2/models/digits2/infer", req)
    assert got["model_name"] == "digits2" and got["model_version"] == "1", got
    assert got["outputs"] == want["outputs"]
    # Loading again makes version 2, and the unversioned route serves the newest.
    out, _ = ok(srv, "POST", "/v2/repository/models/digits2/load", body)
    assert out == {"name": "digits2", "version": "2"}, out
    assert ok(srv, "GET", "/v2/models/digits2")[0]["versions"] == ["1", "2"]
    got, _ = ok(srv, "POST", "/v2/models/digits2/infer", req)
    assert got["model_version"] == "2" and got["outputs"] == want["outputs"], got
    got, _ = ok(srv, "POST", "/v2/models/digits2/versions/1/infer", req)
    assert got["model_version"] == "1"
    idx = index_of(srv)
    assert idx[("digits2", "1")]["state"] == idx[("digits2", "2")]["state"] == "READY"
    # Errors: the message names the field; nothing is created.
    bad = json.loads(config)
    bad["task"] = "x"
    expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                 {"parameters": {"config": json.dumps(bad), "file:weights.safetensors": weights}},
                 400, "task")
    bad = json.loads(config)
    bad["layers"][0]["in_features"] = 63
    expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                 {"parameters": {"config": json.dumps(bad), "file:weights.safetensors": weights}},
                 400, "layers[0].in_features")
    expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                 {"parameters": {"config": "{", "file:weights.safetensors": weights}}, 400,
                 "model.json")
    for b64 in ("!!!!not-base64", weights[:-1], "@@@@"):
        expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                     {"parameters": {"config": config, "file:weights.safetensors": b64}}, 400,
                     "file:weights.safetensors")
    expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                 {"parameters": {"config": config, "file:weights.safetensors": weights[:-8]}},
                 400, "weights")
    expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                 {"parameters": {"config": {"task": "classification"}}}, 400,
                 "parameters.config")
    expect_error(srv, "POST", "/v2/repository/models/digits3/load",
                 {"parameters": {"config": config, "file:weights.safetensors": 12}}, 400,
                 "file:weights.safetensors")
    expect_error(srv, "GET", "/v2/models/digits3", None, 404, "digits3")
    assert ("digits3", "1") not in index_of(srv)
    assert ok(srv, "GET", "/v2/models/digits2")[0]["versions"] == ["1", "2"]


# ------------------------------------------------------------------------------------------
# Metrics
# ------------------------------------------------------------------------------------------

def test_metrics_exposition():
    srv = main_server()
    ok(srv, "POST", "/v2/models/digits/infer", digits_request(digits_rows(2)))
    status, text, hdrs = srv.request("GET", "/metrics")
    assert status == 200
    assert hdrs["content-type"].startswith("text/plain; version=0.0.4"), hdrs
    for family, kind in (("infera_http_requests_total", "counter"),
                         ("infera_http_request_duration_seconds", "histogram"),
                         ("infera_inference_batch_size", "histogram"),
                         ("infera_batcher_queue_depth", "gauge"),
                         ("infera_models_loaded", "gauge"),
                         ("process_resident_memory_bytes", "gauge"),
                         ("infera_build_info", "gauge")):
        assert "# TYPE %s %s\n" % (family, kind) in text, family
    samples = metric_samples(text)
    names = {k.split("{")[0] for k in samples}
    for name in ("infera_http_requests_total", "infera_http_request_duration_seconds_bucket",
                 "infera_inference_batch_size_bucket", "infera_batcher_queue_depth",
                 "infera_models_loaded", "process_resident_memory_bytes", "infera_build_info"):
        assert name in names, name
    assert samples['infera_http_requests_total{route="/v2/models/{m}/infer",method="POST",'
                   'code="200"}'] >= 1
    assert samples["infera_models_loaded"] == 4, samples["infera_models_loaded"]
    assert samples["process_resident_memory_bytes"] > 0
    assert any(k.startswith("infera_build_info{version=") and v == 1
               for k, v in samples.items())
    inf = [k for k in samples if k.startswith("infera_http_request_duration_seconds_bucket")
           and 'le="+Inf"' in k]
    assert inf, "no +Inf bucket"


if __name__ == "__main__":
    try:
        main(globals())
    finally:
        close_servers()
