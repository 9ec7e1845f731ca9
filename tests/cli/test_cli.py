"""Integration tests of the offline CLI: `infera predict`, `infera train`, `infera eval`.

They run the real binary on the shipped examples and on files they write, and check what a
user relies on: the response shape of an OIP v2 answer, errors that name the problem, training
that writes a servable model, and exact resume through a checkpoint file.
"""
import json
import math
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import EXAMPLES, infera, main, predict, read_jsonl, tmpdir  # noqa: E402

REG = os.path.join(EXAMPLES, "regression")
MLP = os.path.join(EXAMPLES, "digits", "mlp")
TEXT = os.path.join(EXAMPLES, "text")
DIGITS_TEST = os.path.join(EXAMPLES, "digits", "test.jsonl")


def digits_request(rows, **extra):
    req = {"id": "req-7", "inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 64],
                                      "data": [r["input"] for r in rows]}]}
    req.update(extra)
    return req


def test_predict_regression_example():
    with open(os.path.join(REG, "request.json")) as f:
        req = json.load(f)
    res = predict(REG, req)
    assert res["model_name"] == "regression"
    assert res["id"] == "example-1"
    (out,) = res["outputs"]
    assert out["name"] == "output" and out["datatype"] == "FP32" and out["shape"] == [2, 1]
    assert all(math.isfinite(v) for v in out["data"])


def test_predict_classifier_outputs():
    rows = read_jsonl(DIGITS_TEST)[:5]
    res = predict(MLP, digits_request(rows, parameters={"top_k": 3}))
    assert res["id"] == "req-7"
    outs = {o["name"]: o for o in res["outputs"]}
    assert set(outs) == {"probabilities", "label", "top_k_labels", "top_k_probabilities"}
    probs = outs["probabilities"]
    assert probs["shape"] == [5, 10]
    for r in range(5):
        row = probs["data"][r * 10:(r + 1) * 10]
        assert abs(sum(row) - 1.0) < 1e-5, row
        best = max(range(10), key=lambda j: row[j])
        assert outs["label"]["data"][r] == str(best)
        top = outs["top_k_probabilities"]["data"][r * 3:(r + 1) * 3]
        assert top == sorted(top, reverse=True)
        assert abs(top[0] - row[best]) < 1e-6
        assert outs["top_k_labels"]["data"][r * 3] == str(best)
    # Nested data gives the same answer as flat data.
    flat = digits_request(rows)
    flat["inputs"][0]["data"] = [v for r in rows for v in r["input"]]
    assert predict(MLP, flat)["outputs"][0]["data"] == probs["data"]
    # outputs selects what comes back.
    only = predict(MLP, digits_request(rows, outputs=[{"name": "label"}]))
    assert [o["name"] for o in only["outputs"]] == ["label"]


def test_predict_text_model():
    req = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [2],
                       "data": ["The computer crashed again", "Bake the bread for an hour"]}]}
    res = predict(TEXT, req)
    outs = {o["name"]: o for o in res["outputs"]}
    assert outs["probabilities"]["shape"] == [2, 6]
    assert len(outs["label"]["data"]) == 2


def check_error(model_dir, body, needle):
    p = infera("predict", "--model", model_dir, stdin=body, check=1)
    err = json.loads(p.stdout)["error"]
    assert needle in err, (needle, err)


def test_predict_rejects_bad_requests():
    row = read_jsonl(DIGITS_TEST)[0]["input"]
    good = digits_request([{"input": row}])
    check_error(MLP, "{not json", "invalid JSON")
    check_error(MLP, "[]", "JSON object")
    check_error(MLP, '{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], '
                     '"data": [NaN]}]}', "NaN")
    bad = json.loads(json.dumps(good))
    bad["inputs"][0]["shape"] = [1, 63]
    check_error(MLP, json.dumps(bad), "inputs[0].shape")
    bad = json.loads(json.dumps(good))
    bad["inputs"][0]["name"] = "pixels"
    check_error(MLP, json.dumps(bad), "inputs[0].name")
    bad = json.loads(json.dumps(good))
    bad["inputs"][0]["datatype"] = "UINT8"
    bad["inputs"][0]["data"][0][0] = 300
    check_error(MLP, json.dumps(bad), "not a valid UINT8")
    bad = json.loads(json.dumps(good))
    bad["inputs"][0]["data"][0] = bad["inputs"][0]["data"][0][:60]
    check_error(MLP, json.dumps(bad), "inputs[0].data")
    bad = json.loads(json.dumps(good))
    bad["inputs"][0]["data"][0][5] = "7"
    check_error(MLP, json.dumps(bad), "expected a number")
    check_error(MLP, json.dumps(good).replace('"id"', '"id": 1, "id"', 1), "duplicate")
    check_error(MLP, "[" * 5000 + "]" * 5000, "invalid JSON")
    bad = digits_request([{"input": row}], parameters={"top_k": 11})
    check_error(MLP, json.dumps(bad), "top_k")
    bad = digits_request([{"input": row}], outputs=[{"name": "logits"}])
    check_error(MLP, json.dumps(bad), "outputs[0].name")
    check_error(os.path.join(EXAMPLES, "no-such-model"), json.dumps(good), "no such file")


def test_usage_errors():
    assert infera().returncode == 2
    assert infera("frobnicate").returncode == 2
    assert infera("train", "--model", MLP).returncode == 2
    assert infera("predict", "--modle", MLP).returncode == 2
    p = infera("train", "--help", check=0)
    assert "--validation-split" in p.stdout
    assert infera("version", check=0).stdout.startswith("infera ")


def test_train_regression_and_predict():
    out = os.path.join(tmpdir(), "reg")
    p = infera("train", "--model", REG, "--data", os.path.join(REG, "train.jsonl"), "--out", out,
               "--epochs", "300", check=0)
    assert "epoch 300/300" in p.stderr
    assert os.path.exists(os.path.join(out, "weights.safetensors"))
    saved = json.load(open(os.path.join(out, "model.json")))
    assert saved["training"]["epochs"] == 300 and saved["layers"][0]["type"] == "Linear"
    ev = json.loads(infera("eval", "--model", out, "--data", os.path.join(REG, "train.jsonl"),
                           check=0).stdout)
    assert ev["samples"] == 1000 and ev["accuracy"] is None
    # The target's variance is about 0.2: a trained net must do far better than the mean.
    assert ev["loss"] < 0.02, ev
    with open(os.path.join(REG, "request.json")) as f:
        res = predict(out, json.load(f))
    assert res["outputs"][0]["shape"] == [2, 1]


def test_train_rejects_bad_lines():
    d = tmpdir()
    path = os.path.join(d, "bad.jsonl")
    lines = ['{"input": [0.1, 0.2], "target": [1.0]}', "", '{"input": [0.1], "target": [1.0]}']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    p = infera("train", "--model", REG, "--data", path, "--out", os.path.join(d, "o"), check=1)
    assert "line 3" in p.stderr, p.stderr
    with open(path, "w") as f:
        f.write('{"input": [0.1, 0.2], "label": "a"}\n')
    p = infera("train", "--model", REG, "--data", path, "--out", os.path.join(d, "o"), check=1)
    assert "line 1" in p.stderr and "target" in p.stderr, p.stderr
    with open(path, "w") as f:
        f.write('{"input": [' + ",".join(["1"] * 64) + '], "label": "ten"}\n')
    p = infera("train", "--model", MLP, "--data", path, "--out", os.path.join(d, "o"), check=1)
    assert "line 1" in p.stderr and "ten" in p.stderr, p.stderr
    with open(path, "w") as f:
        f.write("{oops\n")
    p = infera("train", "--model", MLP, "--data", path, "--out", os.path.join(d, "o"), check=1)
    assert "line 1" in p.stderr and "invalid JSON" in p.stderr, p.stderr
    assert not os.path.exists(os.path.join(d, "o"))
    p = infera("train", "--model", MLP, "--data", path, "--out", os.path.join(d, "o"),
               "--epochs", "0", check=2)


def test_resume_through_checkpoint_is_exact():
    d = tmpdir()
    data = os.path.join(EXAMPLES, "digits", "train.jsonl")
    common = ["--model", MLP, "--data", data, "--batch-size", "64", "--quiet"]
    infera("train", *common, "--epochs", "4", "--out", os.path.join(d, "full"), check=0)
    ck = os.path.join(d, "ck.safetensors")
    infera("train", *common, "--epochs", "2", "--checkpoint", ck, "--out", os.path.join(d, "a"),
           check=0)
    infera("train", *common, "--epochs", "4", "--resume", ck, "--out", os.path.join(d, "b"),
           check=0)
    w_full = open(os.path.join(d, "full", "weights.safetensors"), "rb").read()
    w_b = open(os.path.join(d, "b", "weights.safetensors"), "rb").read()
    w_a = open(os.path.join(d, "a", "weights.safetensors"), "rb").read()
    assert w_full == w_b, "resumed weights differ from an uninterrupted run"
    assert w_full != w_a


def test_validation_split_reports_accuracy():
    d = tmpdir()
    p = infera("train", "--model", MLP, "--data", os.path.join(EXAMPLES, "digits", "train.jsonl"),
               "--out", os.path.join(d, "m"), "--epochs", "3", "--validation-split", "0.2",
               check=0)
    assert "(287 held out)" in p.stderr, p.stderr
    assert p.stderr.count("valid_accuracy") == 3


if __name__ == "__main__":
    main(globals())
