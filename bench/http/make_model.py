"""Writes the HTTP benchmark's model and request (bench/http/run calls this).

    make_model.py REPO

REPO/mlp784/model.json          the 784->512->512->10 classifier (ReLU between Linears)
REPO/mlp784/weights.safetensors its weights, from PyTorch's default init with seed 0, under
                                the state_dict names of nn.Sequential ("0.weight", "0.bias",
                                "2.weight", ...), so infera and the Flask server (which loads
                                this same file) compute the same function
REPO/request.json               one batch-1 Open Inference Protocol v2 request: 784 digit-like
                                pixel values in [0, 1] with 3 decimals, printed by json.dumps
                                as a Python client would send them
REPO/expected.json              PyTorch's probabilities and label for that request, to check
                                every server's answer before it is timed

Only the speed of serving is measured, so the weights are untrained; what matters is that
both sides serve the same ones.
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn as nn

NAME = "mlp784"
SIZES = [784, 512, 512, 10]


def build_model():
    torch.manual_seed(0)
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append(nn.Linear(SIZES[i], SIZES[i + 1]))
        if i + 2 < len(SIZES):
            layers.append(nn.ReLU())
    return nn.Sequential(*layers).eval()


def write_safetensors(path, tensors):
    """The safetensors layout: u64 LE header length, a JSON header {name: {dtype, shape,
    data_offsets}} padded with spaces to a multiple of 8, then the raw little-endian data."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        b = t.detach().contiguous().to(torch.float32).numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def digit_pixels():
    """A 28x28 hand-drawn-looking "3": two arcs of a soft pen stroke, values in [0, 1] rounded
    to 3 decimals, about 80% exact zeros like an MNIST digit."""
    px = []
    for y in range(28):
        for x in range(28):
            v = 0.0
            for cy in (9.0, 18.5):  # upper and lower bowl of the 3
                r = math.hypot((x - 13.5) * 1.1, (y - cy) * 1.25)
                ang = math.atan2(y - cy, x - 13.5)
                if ang > -2.3 and not (cy > 10 and ang < -1.9):  # open on the left
                    v = max(v, math.exp(-((r - 5.5) ** 2) / 2.2))
            v = 0.0 if v < 0.08 else min(1.0, v * (0.9 + 0.1 * math.sin(x * 0.7 + y)))
            px.append(round(v, 3))
    return px


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_model.py REPO")
    repo = sys.argv[1]
    mdir = os.path.join(repo, NAME)
    os.makedirs(mdir, exist_ok=True)
    model = build_model()
    layers = []
    for i in range(len(SIZES) - 1):
        layers.append({"type": "Linear", "in_features": SIZES[i], "out_features": SIZES[i + 1]})
        if i + 2 < len(SIZES):
            layers.append({"type": "ReLU"})
    config = {
        "format": 1,
        "task": "classification",
        "description": "bench/http: 784-512-512-10 MLP, untrained (PyTorch default init, seed 0)",
        "input": {"name": "input", "datatype": "FP32", "shape": [SIZES[0]]},
        "labels": [str(i) for i in range(SIZES[-1])],
        "layers": layers,
    }
    with open(os.path.join(mdir, "model.json"), "w") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    write_safetensors(os.path.join(mdir, "weights.safetensors"), model.state_dict())

    px = digit_pixels()
    req = {"inputs": [{"name": "input", "shape": [1, SIZES[0]], "datatype": "FP32", "data": px}]}
    with open(os.path.join(repo, "request.json"), "w") as f:
        json.dump(req, f)  # json.dumps defaults, as `requests.post(json=...)` sends
    with torch.inference_mode():
        p = torch.softmax(model(torch.tensor([px], dtype=torch.float32)), dim=1)[0]
    with open(os.path.join(repo, "expected.json"), "w") as f:
        json.dump({"probabilities": p.tolist(), "label": str(int(p.argmax()))}, f)


if __name__ == "__main__":
    main()
