"""Serving under real conditions: concurrent clients with dynamic batching get their own
answers, models are replaced under load without losing a request, a full queue answers 503
with Retry-After, SIGHUP reloads the store, SIGTERM drains in-flight requests and exits 0."""
import base64
import json
import os
import re
import shutil
import http.client
import signal
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serverlib import (SLOW, Server, digits_request, digits_rows, infera,  # noqa: E402
                       trained_repo)
from harness import main, tmpdir  # noqa: E402


def probs(body):
    return next(o for o in body["outputs"] if o["name"] == "probabilities")["data"]


def close(a, b, tol=1e-5):
    return len(a) == len(b) and all(abs(x - y) <= tol for x, y in zip(a, b))


def test_concurrent_clients_get_their_own_answers():
    rows = digits_rows(40)
    with Server(models=trained_repo(), args=["--max-batch-delay-us", "2000"]) as s:
        # The answer for every row alone, sequentially.
        expected = []
        for r in rows:
            st, body = s.post("/v2/models/digits/infer", digits_request([r]))
            assert st == 200, body
            expected.append(probs(body))
        errors = []

        def client(k):
            for i in range(25 // SLOW + 1):
                a = (k * 7 + i) % len(rows)
                n = 1 + (k + i) % 3  # batches of 1 to 3 rows
                sel = [rows[(a + j) % len(rows)] for j in range(n)]
                req = digits_request(sel, id="c%d-%d" % (k, i))
                st, body = s.post("/v2/models/digits/infer", req)
                if st != 200 or body.get("id") != req["id"]:
                    errors.append((st, body))
                    continue
                got = probs(body)
                want = [v for j in range(n) for v in expected[(a + j) % len(rows)]]
                if not close(got, want):
                    errors.append(("mixed", req["id"]))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[:5]
        _, metrics = s.get("/metrics")
        # Batching happened: some forward passes carried more than one row.
        counts = {}
        for m in re.finditer(r'infera_inference_batch_size_bucket\{model="digits",le="([^"]+)"\} '
                             r'(\d+)', metrics):
            counts[m.group(1)] = int(m.group(2))
        assert counts and counts["+Inf"] > counts["1"], counts


def safetensors_f32(tensors):
    """The safetensors bytes of {name: (shape, [floats])}, F32, in the given order."""
    header, data = {}, b""
    for name, (shape, values) in tensors.items():
        raw = struct.pack("<%df" % len(values), *values)
        header[name] = {"dtype": "F32", "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data


def test_non_finite_model_output_is_a_500_that_says_so():
    """A model whose weights make NaN or infinity (JSON has neither) answers 500 naming the
    model and the output, not 503 "out of memory"; the server goes on serving."""
    config = json.dumps({"task": "regression", "input": {"shape": [2]},
                         "layers": [{"type": "Linear", "in_features": 2, "out_features": 2}]})
    for bad in (float("nan"), float("inf")):
        weights = safetensors_f32({"0.weight": ([2, 2], [1.0, 0.0, 0.0, 1.0]),
                                   "0.bias": ([2], [0.0, bad])})
        with Server(models=trained_repo()) as s:
            load = {"parameters": {"config": config, "file:weights.safetensors":
                                   base64.b64encode(weights).decode()}}
            st, body = s.post("/v2/repository/models/bad/load", load)
            assert st == 200, body
            req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2],
                               "data": [1.0, 2.0]}]}
            st, body = s.post("/v2/models/bad/infer", req)
            assert st == 500 and "non-finite output" in body["error"], (st, body)
            assert "row 0, output 1" in body["error"], body
            st, body = s.post("/v2/models/digits/infer", digits_request(digits_rows(1)))
            assert st == 200, body


def test_replace_under_load_loses_no_request():
    repo = trained_repo()
    with open(os.path.join(repo, "digits", "model.json")) as f:
        config = f.read()
    with open(os.path.join(repo, "digits", "weights.safetensors"), "rb") as f:
        weights = base64.b64encode(f.read()).decode()
    rows = digits_rows(8)
    with Server(models=repo) as s:
        load = {"parameters": {"config": config, "file:weights.safetensors": weights}}
        st, body = s.post("/v2/repository/models/hot/load", load)
        assert st == 200 and body["version"] == "1", body
        st, base = s.post("/v2/models/hot/infer", digits_request(rows))
        assert st == 200
        stop = threading.Event()
        failures, done = [], [0]

        def client():
            while not stop.is_set():
                st, body = s.post("/v2/models/hot/infer", digits_request(rows))
                if st != 200 or not close(probs(body), probs(base)):
                    failures.append((st, body))
                done[0] += 1

        threads = [threading.Thread(target=client) for _ in range(6)]
        for t in threads:
            t.start()
        versions = []
        for _ in range(6):
            st, body = s.post("/v2/repository/models/hot/load", load)
            assert st == 200, body
            versions.append(body["version"])
            time.sleep(0.05)
        stop.set()
        for t in threads:
            t.join()
        assert versions == ["2", "3", "4", "5", "6", "7"], versions
        assert not failures, failures[:3]
        assert done[0] > 10, done
        st, meta = s.get("/v2/models/hot")
        assert meta["versions"] == ["1", "2", "3", "4", "5", "6", "7"]


def test_full_queue_answers_503_with_retry_after():
    rows = digits_rows(1)
    args = ["--queue-size", "1", "--infer-workers", "1", "--max-batch-delay-us",
            str(400000 * SLOW)]
    with Server(models=trained_repo(), args=args) as s:
        results = []

        def slow():  # leads a batch that waits 0.4 s to fill
            results.append(s.request("POST", "/v2/models/digits/infer", digits_request(rows)))

        t = threading.Thread(target=slow)
        t.start()
        time.sleep(0.15 * SLOW)
        st, body, headers = s.request("POST", "/v2/models/digits/infer", digits_request(rows))
        t.join()
        assert st == 503, (st, body)
        assert headers.get("retry-after") == "1"
        assert "queue" in body["error"]
        assert results[0][0] == 200
        _, metrics = s.get("/metrics")
        assert 'infera_rejections_total{reason="queue_full"} 1' in metrics


def test_sighup_reloads_the_store():
    repo = tmpdir()
    src = trained_repo()
    shutil.copytree(os.path.join(src, "digits"), os.path.join(repo, "digits"))
    with Server(models=repo) as s:
        assert s.get("/v2/models/reg")[0] == 404
        os.makedirs(os.path.join(repo, "reg", "2"))
        for f in ("model.json", "weights.safetensors"):
            shutil.copy(os.path.join(src, "reg", f), os.path.join(repo, "reg", "2", f))
        shutil.rmtree(os.path.join(repo, "digits"))
        s.signal(signal.SIGHUP)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline and s.get("/v2/models/reg")[0] != 200:
            time.sleep(0.05)
        st, meta = s.get("/v2/models/reg")
        assert st == 200 and meta["versions"] == ["2"], meta
        assert s.get("/v2/models/digits")[0] == 404
        req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 2],
                           "data": [0.5, -0.5]}]}
        st, body = s.post("/v2/models/reg/versions/2/infer", req)
        assert st == 200 and body["model_version"] == "2"


def test_sigterm_drains_in_flight_requests():
    rows = digits_rows(1)
    args = ["--max-batch-delay-us", str(min(700000 * SLOW, 10000000)), "--drain-delay", str(0.3 * SLOW)]
    s = Server(models=trained_repo(), args=args).start()
    try:
        results = []
        t = threading.Thread(target=lambda: results.append(
            s.post("/v2/models/digits/infer", digits_request(rows))))
        t.start()
        time.sleep(0.2 * SLOW)
        s.signal(signal.SIGTERM)  # the request above is still waiting for its batch
        time.sleep(0.1 * SLOW)
        assert s.get("/v2/health/ready")[0] == 503  # readiness turns at once
        assert s.get("/v2/health/live")[0] == 200
        t.join()
        assert results and results[0][0] == 200, results
        assert s.proc.wait(timeout=30 * SLOW) == 0
        log = s.read_log()
        assert "SIGTERM received" in log and "stopped" in log
    finally:
        s.stop(check=False)


def test_serve_matches_cli_predict_for_every_model():
    repo = trained_repo()
    requests = {
        "digits": digits_request(digits_rows(3), parameters={"top_k": 2}),
        "cnn": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 1, 8, 8],
                            "data": [v for r in digits_rows(2) for v in r["input"]]}]},
        "text": {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                             "data": ["Bugs in the kernel", "Ünïcödé wörds ✓"]}]},
        "reg": {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 2],
                            "data": [[0.1, 0.2], [-1.5, 1.0]]}]},
    }
    with Server(models=repo) as s:
        for name, req in requests.items():
            st, body = s.post("/v2/models/%s/infer" % name, req)
            assert st == 200, (name, body)
            cli = json.loads(infera("predict", "--model", os.path.join(repo, name),
                                    stdin=json.dumps(req), check=0).stdout)
            for a, b in zip(body["outputs"], cli["outputs"]):
                assert a["name"] == b["name"] and a["shape"] == b["shape"]
                if a["datatype"] == "FP32":
                    assert close(a["data"], b["data"], 1e-6), name
                else:
                    assert a["data"] == b["data"], name


def binary_post(s, path, header, payload):
    """Triton's binary tensor extension: JSON header, then raw bytes."""
    hdr = json.dumps(header).encode()
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=60 * SLOW)
    conn.request("POST", path, hdr + payload, {"Inference-Header-Content-Length": str(len(hdr)),
                                               "Content-Type": "application/octet-stream",
                                               "Authorization": "Bearer " + s.token})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    jl = int(r.getheader("Inference-Header-Content-Length") or len(data))
    return r.status, json.loads(data[:jl]), data[jl:]


def test_binary_tensor_extension():
    rows = digits_rows(2)
    pixels = [v for r in rows for v in r["input"]]
    with Server(models=trained_repo()) as s:
        st, ref = s.post("/v2/models/digits/infer", digits_request(rows))
        want = probs(ref)
        # FP32 in, probabilities out as binary, label as JSON.
        head = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                            "parameters": {"binary_data_size": 2 * 64 * 4}}],
                "outputs": [{"name": "probabilities", "parameters": {"binary_data": True}},
                            {"name": "label"}]}
        st, body, tail = binary_post(s, "/v2/models/digits/infer", head,
                                     struct.pack("<128f", *pixels))
        assert st == 200, body
        out = {o["name"]: o for o in body["outputs"]}
        assert out["probabilities"]["parameters"]["binary_data_size"] == 80
        assert "data" not in out["probabilities"]
        assert close(list(struct.unpack("<20f", tail)), want, 1e-6)
        assert out["label"]["data"] == next(o for o in ref["outputs"]
                                            if o["name"] == "label")["data"]
        # UINT8 and FP16 inputs give the same answer (pixels are small integers).
        for dt, fmt, size in (("UINT8", "<128B", 1), ("FP16", "<128e", 2), ("INT64", "<128q", 8)):
            head["inputs"][0].update(datatype=dt, parameters={"binary_data_size": 128 * size})
            head["outputs"] = [{"name": "probabilities"}]
            st, body, tail = binary_post(s, "/v2/models/digits/infer", head,
                                         struct.pack(fmt, *[int(p) for p in pixels]))
            assert st == 200 and close(probs(body), want, 1e-5), (dt, body)
        # All outputs binary, text input as BYTES elements.
        texts = [b"kernel panic", "caf\u00e9".encode()]
        payload = b"".join(struct.pack("<I", len(t)) + t for t in texts)
        head = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                            "parameters": {"binary_data_size": len(payload)}}],
                "parameters": {"binary_data_output": True}}
        st, body, tail = binary_post(s, "/v2/models/text/infer", head, payload)
        assert st == 200, body
        sizes = [o["parameters"]["binary_data_size"] for o in body["outputs"]]
        assert sum(sizes) == len(tail) and sizes[0] == 2 * 6 * 4
        st, jref = s.post("/v2/models/text/infer", {"inputs": [{
            "name": "text", "datatype": "BYTES", "shape": [2], "data": ["kernel panic",
                                                                         "caf\u00e9"]}]})
        assert close(list(struct.unpack("<12f", tail[:48])), probs(jref), 1e-6)
        # Sizes that do not add up, and a header length beyond the body, are 400s.
        head = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 64],
                            "parameters": {"binary_data_size": 100}}]}
        st, body, _ = binary_post(s, "/v2/models/digits/infer", head, b"\0" * 100)
        assert st == 400 and "binary" in body["error"], body
        st, body, _ = binary_post(s, "/v2/models/digits/infer", {"inputs": []}, b"\0" * 8)
        assert st == 400, body
        nan = struct.pack("<f", float("nan")) * 128
        head["inputs"][0]["parameters"]["binary_data_size"] = 512
        st, body, _ = binary_post(s, "/v2/models/digits/infer", head, nan)
        assert st == 400 and "finite" in body["error"], body
        st, body, hd = s.request("POST", "/v2/models/digits/infer", b"{}",
                                 headers={"Inference-Header-Content-Length": "99",
                                          "Content-Type": "application/json"})
        assert st == 400 and "Inference-Header-Content-Length" in body["error"]


if __name__ == "__main__":
    main(globals())
