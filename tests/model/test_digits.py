"""Real data: scikit-learn's digits (shipped in examples/digits with its license). Trains the
MLP and the CNN of examples/digits with `infera train` and checks at least 95% accuracy on the
held-out 20%, measured twice: by `infera eval` and by `infera predict` over the whole test set
(the two paths must agree)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import EXAMPLES, infera, main, predict, read_jsonl, tmpdir  # noqa: E402

DIGITS = os.path.join(EXAMPLES, "digits")


def train_and_score(arch, image):
    out = os.path.join(tmpdir(), arch)
    infera("train", "--model", os.path.join(DIGITS, arch), "--data",
           os.path.join(DIGITS, "train.jsonl"), "--out", out, "--quiet", check=0)
    ev = json.loads(infera("eval", "--model", out, "--data", os.path.join(DIGITS, "test.jsonl"),
                           check=0).stdout)
    rows = read_jsonl(os.path.join(DIGITS, "test.jsonl"))
    assert ev["samples"] == len(rows) == 360
    shape = [len(rows), 1, 8, 8] if image else [len(rows), 64]
    data = [v for r in rows for v in r["input"]]
    res = predict(out, {"inputs": [{"name": "input", "datatype": "FP32", "shape": shape,
                                    "data": data}], "outputs": [{"name": "label"}]})
    labels = res["outputs"][0]["data"]
    acc = sum(lab == r["label"] for lab, r in zip(labels, rows)) / len(rows)
    print("%s: eval accuracy %.4f, predict accuracy %.4f" % (arch, ev["accuracy"], acc))
    assert abs(acc - ev["accuracy"]) < 1e-9
    assert acc >= 0.95, acc


def test_mlp_reaches_95_percent():
    train_and_score("mlp", image=False)


def test_cnn_reaches_95_percent():
    train_and_score("cnn", image=True)


if __name__ == "__main__":
    main(globals())
