#!/usr/bin/python3
"""
tests/model/gen_reference.py - PyTorch reference values for tests/model/test_reference.c.

Run with Debian's torch (python3-torch 1.13) and numpy:

    /usr/bin/python3 tests/model/gen_reference.py

It (re)writes tests/model/ref/<case>/ for every case below and tests/model/ref/index.json. The
output is committed as test data, so the C suite never needs torch. Each case directory is a
servable model directory (DESIGN.md §4): model.json plus weights.safetensors holding the
torch.nn.Sequential's state_dict under its own names ("<i>.weight", "<i>.bias"), and:

  forward cases   io.safetensors       x (B, R) raw input as a client sends it (one flattened
                                       sample per row), y (B, O) the Sequential's raw output
                                       (logits for classifiers) on the preprocessed input.
  training cases  train.safetensors    x (N, R) raw input and labels (N) F32 class indices or
                                       targets (N, O)
                  expected.safetensors the state_dict after training and y (N, O), the outputs
                                       on x after training.

Training is torch's plain loop with shuffle off (batches in file order, last partial batch
kept, as DataLoader(drop_last=False)):

    for epoch in range(E):
        for each batch:
            out = seq(preprocess(x_b)); loss = F.cross_entropy(out, labels_b)  # or F.mse_loss
            opt.zero_grad(); loss.backward(); opt.step()

Tolerance: 1e-4 absolute, for outputs and for trained weights. Why that holds:
  * Every tensor here is O(1) (inputs ~N(0,1) after preprocess, default-init weights, at most a
    few hundred terms per dot product), so float32 rounding error in one forward pass is a few
    ulps of O(1) values times sqrt(terms): ~1e-6. A different but correct float32 evaluation
    order (OpenBLAS sgemm blocking, im2col, fused ReLU, x*a+b instead of (x*s-m)/d) moves
    results by the same order.
  * Training runs at most 5 epochs x 4 batches = 20 optimizer steps with moderate learning
    rates; each step can amplify earlier differences only by (1 + lr * curvature), a small factor
    here, and Adam's m / (sqrt(v) + eps) is scale invariant, so the relative float32 error of a
    gradient (~1e-6) becomes a relative error of the step, not an absolute one.
  * That argument is checked, not assumed: every case is also computed in float64 from the same
    float32 starting point (check_conditioning below) and the script refuses to write a case
    whose float32 result is further than TOL / 10 from the float64 one. The engine, a different
    correct float32 implementation, is then expected within about twice torch's own float32
    error of the truth: far inside TOL, while any semantic mistake (a wrong default, dampening
    on the first step, weight decay in the wrong place, a bias-correction slip, a padded maxpool
    reading zeros) moves results by 1e-3 or more. Training cases also assert that the weights
    moved by at least 100 * TOL, so a trainer that does nothing cannot pass.
"""

import json
import os
import shutil
import struct
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

TOL = 1e-4
HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "ref")

torch.set_num_threads(1)


# ------------------------------------------------------------------------------------------
# safetensors writer (there is no safetensors package here)
# ------------------------------------------------------------------------------------------

DTYPES = {
    "F32": (torch.float32, None),
    "F64": (torch.float64, None),
    "F16": (torch.float16, None),
    "BF16": (torch.bfloat16, torch.int16),  # numpy has no bfloat16: write the raw bits
}


def tensor_bytes(t, dtype):
    tdtype, view = DTYPES[dtype]
    t = t.detach().to(tdtype).contiguous()
    if view is not None:
        t = t.view(view)
    a = t.numpy()
    return a.astype(a.dtype.newbyteorder("<"), copy=False).tobytes()


def write_safetensors(path, tensors, dtype="F32"):
    """tensors: list of (name, torch tensor), written contiguously in this order."""
    header, blobs, off = {}, [], 0
    for name, t in tensors:
        b = tensor_bytes(t, dtype)
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


# ------------------------------------------------------------------------------------------
# model.json <-> torch.nn.Sequential
# ------------------------------------------------------------------------------------------

def build_layer(spec):
    t = spec["type"]
    if t == "Linear":
        return nn.Linear(spec["in_features"], spec["out_features"], bias=spec.get("bias", True))
    if t == "ReLU":
        return nn.ReLU()
    if t == "LeakyReLU":
        return nn.LeakyReLU(spec.get("negative_slope", 0.01))
    if t == "Sigmoid":
        return nn.Sigmoid()
    if t == "Tanh":
        return nn.Tanh()
    if t == "GELU":
        return nn.GELU(approximate=spec.get("approximate", "none"))
    if t == "Dropout":
        return nn.Dropout(spec.get("p", 0.5))
    if t == "Flatten":
        return nn.Flatten()
    if t == "Conv2d":
        return nn.Conv2d(spec["in_channels"], spec["out_channels"], spec["kernel_size"],
                         stride=spec.get("stride", 1), padding=spec.get("padding", 0),
                         bias=spec.get("bias", True))
    if t == "MaxPool2d":
        return nn.MaxPool2d(spec["kernel_size"], stride=spec.get("stride"),
                            padding=spec.get("padding", 0))
    raise ValueError(t)


def build_seq(layers):
    return nn.Sequential(*[build_layer(s) for s in layers])


def preprocess(x, shape, pre, dtype):
    """x (B, R) raw -> (B, *shape) features as the model sees them: (x * scale - mean) / std."""
    x = x.to(dtype).reshape(x.shape[0], *shape)
    if pre is None:
        return x

    def expand(v):
        if isinstance(v, list):
            v = torch.tensor(v, dtype=dtype)
            if len(shape) == 3:  # per channel
                v = v.reshape(-1, 1, 1)
            return v
        return v

    x = x * pre.get("scale", 1.0)
    x = x - expand(pre.get("mean", 0.0))
    x = x / expand(pre.get("std", 1.0))
    return x


def model_json(task, shape, layers, pre=None, labels=None, training=None):
    inp = {"name": "input", "datatype": "FP32", "shape": shape}
    if pre is not None:
        inp["preprocess"] = pre
    doc = {"format": 1, "task": task, "input": inp}
    if labels is not None:
        doc["labels"] = labels
    doc["layers"] = layers
    if training is None:
        training = {"loss": "cross_entropy" if task == "classification" else "mse",
                    "optimizer": "adam", "learning_rate": 0.001, "batch_size": 32,
                    "epochs": 1, "shuffle": False, "seed": 0}
    doc["training"] = training
    return doc


def state_items(seq):
    return [(k, v.detach().clone()) for k, v in seq.state_dict().items()]


# ------------------------------------------------------------------------------------------
# Cases
# ------------------------------------------------------------------------------------------

INDEX = []


def case_dir(name):
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    return d


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")


def check_conditioning(name, what, a32, a64):
    d = (a32.double() - a64).abs().max().item()
    if not d <= TOL / 10:
        sys.exit("%s: %s float32 vs float64 differ by %.3g > TOL/10: badly conditioned case"
                 % (name, what, d))
    return d


def forward_case(name, seed, shape, layers, B=5, task="regression", pre=None, labels=None,
                 wdtype="F32", make_x=None):
    torch.manual_seed(seed)
    seq = build_seq(layers).eval()
    R = int(np.prod(shape))
    x = make_x(B, R) if make_x is not None else torch.randn(B, R)
    if pre is not None and make_x is None:
        x = x * 2.0 + 1.0

    if wdtype == "F64":
        # Make the doubles differ from their float32 neighbours, so the file really needs
        # rounding to nearest (what torch's .float() does) rather than a reinterpretation.
        with torch.no_grad():
            sd64 = [(k, v.double() + torch.randn(v.shape, dtype=torch.float64) * 1e-9)
                    for k, v in seq.state_dict().items()]
    else:
        sd64 = None
    # The weights as the engine sees them after load: rounded through wdtype, back to float32.
    if wdtype == "F32":
        rounded = state_items(seq)
    elif wdtype == "F64":
        rounded = [(k, v.float()) for k, v in sd64]
    else:
        rounded = [(k, v.to(DTYPES[wdtype][0]).float()) for k, v in state_items(seq)]
    seq.load_state_dict(dict(rounded))

    with torch.no_grad():
        y = seq(preprocess(x, shape, pre, torch.float32)).reshape(B, -1)
        seq64 = build_seq(layers).double().eval()
        seq64.load_state_dict({k: v.double() for k, v in rounded})
        y64 = seq64(preprocess(x, shape, pre, torch.float64)).reshape(B, -1)
    d = check_conditioning(name, "y", y, y64)

    doc = model_json(task, shape, layers, pre, labels)
    dd = case_dir(name)
    write_json(os.path.join(dd, "model.json"), doc)
    write_safetensors(os.path.join(dd, "weights.safetensors"),
                      sd64 if wdtype == "F64" else state_items(seq) if wdtype == "F32"
                      else rounded, wdtype)
    write_safetensors(os.path.join(dd, "io.safetensors"), [("x", x), ("y", y)])
    INDEX.append({"name": name, "kind": "forward", "epochs": 0, "batch": B, "tolerance": TOL})
    print("%-28s forward B=%d O=%d  |f32 - f64| = %.2e" % (name, B, y.shape[1], d))


def make_optimizer(params, tr):
    opt = tr["optimizer"]
    lr = tr["learning_rate"]
    if opt == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=tr.get("momentum", 0.0),
                               dampening=tr.get("dampening", 0.0),
                               nesterov=tr.get("nesterov", False),
                               weight_decay=tr.get("weight_decay", 0.0))
    betas = tuple(tr.get("betas", (0.9, 0.999)))
    eps = tr.get("eps", 1e-8)
    if opt == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=eps,
                                weight_decay=tr.get("weight_decay", 0.0))
    if opt == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, eps=eps,
                                 weight_decay=tr.get("weight_decay", 0.01))
    raise ValueError(opt)


def train(seq, x, y, shape, pre, tr, dtype):
    opt = make_optimizer(seq.parameters(), tr)
    n, bs = x.shape[0], tr["batch_size"]
    seq.train()
    for _ in range(tr["epochs"]):
        for s in range(0, n, bs):
            out = seq(preprocess(x[s:s + bs], shape, pre, dtype)).reshape(min(bs, n - s), -1)
            if tr["loss"] == "cross_entropy":
                loss = F.cross_entropy(out, y[s:s + bs])
            else:
                loss = F.mse_loss(out, y[s:s + bs].to(dtype))
            opt.zero_grad()
            loss.backward()
            opt.step()
    seq.eval()
    with torch.no_grad():
        return seq(preprocess(x, shape, pre, dtype)).reshape(n, -1)


def train_case(name, seed, shape, layers, training, N=50, task="classification", pre=None,
               labels=None):
    torch.manual_seed(seed)
    seq = build_seq(layers)
    R = int(np.prod(shape))
    x = torch.randn(N, R)
    if pre is not None:
        x = x * 2.0 + 1.0
    # Targets from a hidden rule plus noise, so there is something to learn.
    with torch.no_grad():
        xf = preprocess(x, shape, pre, torch.float32).reshape(N, -1)
        if task == "classification":
            C = len(labels)
            proj = torch.randn(xf.shape[1], C)
            y = (xf @ proj + 0.5 * torch.randn(N, C)).argmax(dim=1)
            y_file = ("labels", y.float())
        else:
            O = layers[-1]["out_features"]
            proj = torch.randn(xf.shape[1], O)
            y = torch.sin(xf @ proj) + 0.1 * torch.randn(N, O)
            y_file = ("targets", y)

    init = state_items(seq)
    tr = dict(training)
    if tr["optimizer"] == "adamw" and "weight_decay" not in tr:
        pass  # the default (0.01, as torch) is part of what this case checks
    full_tr = {"loss": "cross_entropy" if task == "classification" else "mse",
               "shuffle": False, "seed": 0}
    full_tr.update(tr)

    y32 = train(seq, x, y, shape, pre, full_tr, torch.float32)
    seq64 = build_seq(layers).double()
    seq64.load_state_dict({k: v.double() for k, v in init})
    y64 = train(seq64, x, y, shape, pre, full_tr, torch.float64)

    dmax = check_conditioning(name, "y", y32, y64)
    sd64 = seq64.state_dict()
    moved = 0.0
    for (k, v0) in init:
        v = seq.state_dict()[k]
        dmax = max(dmax, check_conditioning(name, k, v, sd64[k]))
        moved = max(moved, (v - v0).abs().max().item())
    if moved < 100 * TOL:
        sys.exit("%s: weights moved only %.3g: raise the learning rate" % (name, moved))

    doc = model_json(task, shape, layers, pre, labels, full_tr)
    dd = case_dir(name)
    write_json(os.path.join(dd, "model.json"), doc)
    write_safetensors(os.path.join(dd, "weights.safetensors"), init)
    write_safetensors(os.path.join(dd, "train.safetensors"), [("x", x), y_file])
    write_safetensors(os.path.join(dd, "expected.safetensors"), state_items(seq) + [("y", y32)])
    INDEX.append({"name": name, "kind": "train", "epochs": full_tr["epochs"], "batch": N,
                  "tolerance": TOL})
    print("%-28s train N=%d bs=%d E=%d  moved %.3f  |f32 - f64| = %.2e"
          % (name, N, full_tr["batch_size"], full_tr["epochs"], moved, dmax))


def lin(i, o, bias=True):
    d = {"type": "Linear", "in_features": i, "out_features": o}
    if not bias:
        d["bias"] = False
    return d


def conv(ic, oc, k, stride=1, padding=0, bias=True):
    return {"type": "Conv2d", "in_channels": ic, "out_channels": oc, "kernel_size": k,
            "stride": stride, "padding": padding, "bias": bias}


RELU = {"type": "ReLU"}
FLAT = {"type": "Flatten"}


def forward_cases():
    fc = forward_case
    # Single layers and small stacks. An activation sits both first (reading the caller's
    # input, which must not be overwritten) and after a Linear (where it may be fused).
    fc("linear", 1, [6], [lin(6, 4)])
    fc("linear_nobias", 2, [6], [lin(6, 4, bias=False)])
    fc("linear_b1", 3, [6], [lin(6, 4)], B=1)
    fc("relu", 4, [6], [lin(6, 8), RELU, lin(8, 3)])
    fc("relu_first", 5, [6], [RELU, lin(6, 3)])
    fc("leaky_relu", 6, [6], [lin(6, 8), {"type": "LeakyReLU", "negative_slope": 0.2},
                              lin(8, 3)])
    fc("leaky_relu_first", 7, [6], [{"type": "LeakyReLU", "negative_slope": 0.2}, lin(6, 3)])
    fc("sigmoid", 8, [6], [lin(6, 8), {"type": "Sigmoid"}, lin(8, 3)])
    fc("tanh", 9, [6], [lin(6, 8), {"type": "Tanh"}, lin(8, 3)])
    fc("gelu", 10, [6], [lin(6, 8), {"type": "GELU", "approximate": "none"}, lin(8, 3)],
       make_x=lambda B, R: torch.randn(B, R) * 3.0)
    fc("gelu_tanh", 11, [6], [lin(6, 8), {"type": "GELU", "approximate": "tanh"}, lin(8, 3)],
       make_x=lambda B, R: torch.randn(B, R) * 3.0)
    fc("dropout", 12, [6], [lin(6, 8), RELU, {"type": "Dropout", "p": 0.5}, lin(8, 3)])
    fc("dropout_first", 13, [6], [{"type": "Dropout", "p": 0.5}, lin(6, 3)])
    fc("flatten", 14, [2, 3, 3], [FLAT, lin(18, 4)],
       pre={"scale": 1.0, "mean": [0.5, -0.25], "std": [2.0, 0.5]})
    # Convolutions and pooling (Flatten before the end: the output is (B, O) either way). Every
    # model has parameters, so pooling feeds a Linear.
    fc("conv2d", 15, [2, 5, 5], [conv(2, 3, 3, 1, 1), FLAT])
    fc("conv2d_rect", 16, [2, 7, 6], [conv(2, 3, [3, 2], [2, 1], [1, 0]), FLAT])
    fc("conv2d_nobias", 17, [2, 5, 4], [conv(2, 3, 3, 1, 1, bias=False), FLAT])
    fc("conv2d_relu", 18, [1, 6, 6], [conv(1, 2, 3), RELU, FLAT, lin(32, 3)])
    # kernel 2, stride and padding left to their defaults (stride = kernel_size, padding 0);
    # 7x6 input: the odd row is dropped (floor).
    fc("maxpool2d", 19, [2, 7, 6], [{"type": "MaxPool2d", "kernel_size": 2}, FLAT, lin(18, 4)])
    # Padding is -inf, not 0: all-negative inputs make reading zeros visible.
    fc("maxpool2d_k3s2p1", 20, [2, 7, 7],
       [{"type": "MaxPool2d", "kernel_size": 3, "stride": 2, "padding": 1}, FLAT, lin(32, 4)],
       make_x=lambda B, R: -torch.rand(B, R) - 0.5)
    cnn = [conv(3, 4, 3, 1, 1), RELU, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2,
                                       "padding": 0},
           conv(4, 6, 3, 1, 1), RELU, FLAT, lin(96, 16), RELU, lin(16, 5)]
    cnn_pre = {"scale": 1.0 / 255.0, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    pixels = lambda B, R: torch.randint(0, 256, (B, R)).float()
    fc("cnn", 21, [3, 9, 9], cnn, task="classification", pre=cnn_pre,
       labels=["a", "b", "c", "d", "e"], make_x=pixels)
    fc("cnn_b1", 22, [3, 9, 9], cnn, B=1, task="classification", pre=cnn_pre, make_x=pixels)
    mlp = [lin(8, 16), RELU, lin(16, 4)]
    mlp_pre = {"scale": 0.5, "mean": [0.1 * i for i in range(8)],
               "std": [0.5 + 0.25 * i for i in range(8)]}
    fc("mlp_preprocess", 23, [8], mlp, task="classification", pre=mlp_pre,
       labels=["w", "x", "y", "z"])
    fc("mlp_preprocess_b1", 24, [8], mlp, B=1, task="classification", pre=mlp_pre)
    fc("mlp_scalar_preprocess", 25, [8], mlp, task="classification",
       pre={"scale": 0.25, "mean": 0.5, "std": 2.0})
    fc("regression", 26, [2], [lin(2, 10), {"type": "Tanh"}, lin(10, 1)])
    fc("regression_b1", 27, [2], [lin(2, 10), {"type": "Tanh"}, lin(10, 1)], B=1)
    # Weight dtypes converted on load.
    dt = [lin(6, 10), RELU, lin(10, 3)]
    fc("weights_f16", 28, [6], dt, task="classification", wdtype="F16")
    fc("weights_bf16", 29, [6], dt, task="classification", wdtype="BF16")
    fc("weights_f64", 30, [6], dt, task="classification", wdtype="F64")
    fc("conv_weights_f16", 31, [1, 6, 6], [conv(1, 2, 3), RELU, FLAT, lin(32, 3)],
       wdtype="F16")


def training_cases():
    mlp = [lin(6, 12), RELU, lin(12, 3)]
    labels = ["a", "b", "c"]
    base = {"batch_size": 16, "epochs": 4}

    def tc(name, seed, opt, layers=mlp, **kw):
        tr = dict(base)
        tr.update(opt)
        train_case(name, seed, kw.pop("shape", [6]), layers, tr,
                   labels=kw.pop("labels", labels), **kw)

    tc("train_sgd", 101, {"optimizer": "sgd", "learning_rate": 0.2, "momentum": 0.0,
                          "dampening": 0.0, "nesterov": False, "weight_decay": 0.0},
       pre={"scale": 0.5, "mean": 0.5, "std": 1.0})
    tc("train_sgd_momentum", 102, {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9,
                                   "dampening": 0.0, "nesterov": False, "weight_decay": 0.0})
    tc("train_sgd_nesterov_wd", 103, {"optimizer": "sgd", "learning_rate": 0.05,
                                      "momentum": 0.9, "dampening": 0.0, "nesterov": True,
                                      "weight_decay": 0.01})
    tc("train_sgd_dampening", 104, {"optimizer": "sgd", "learning_rate": 0.05,
                                    "momentum": 0.9, "dampening": 0.1, "nesterov": False,
                                    "weight_decay": 0.0})
    tc("train_adam", 105, {"optimizer": "adam", "learning_rate": 0.01, "weight_decay": 0.0,
                           "betas": [0.9, 0.999], "eps": 1e-8})
    tc("train_adam_wd", 106, {"optimizer": "adam", "learning_rate": 0.01,
                              "weight_decay": 0.01, "betas": [0.9, 0.999], "eps": 1e-8})
    # weight_decay left out: torch's AdamW default 0.01 must be the engine's too.
    tc("train_adamw", 107, {"optimizer": "adamw", "learning_rate": 0.01})
    tc("train_adamw_betas", 108, {"optimizer": "adamw", "learning_rate": 0.01,
                                  "weight_decay": 0.01, "betas": [0.8, 0.99], "eps": 1e-6})
    tc("train_mse_sgd_momentum", 109,
       {"optimizer": "sgd", "learning_rate": 0.05, "momentum": 0.9, "dampening": 0.0,
        "nesterov": False, "weight_decay": 0.0, "epochs": 5, "batch_size": 8},
       layers=[lin(4, 10), {"type": "Tanh"}, lin(10, 2)], shape=[4], task="regression",
       labels=None, N=44)
    tc("train_conv_adam", 110, {"optimizer": "adam", "learning_rate": 0.01,
                                "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
                                "epochs": 3},
       layers=[conv(1, 4, 3, 1, 1), RELU, {"type": "MaxPool2d", "kernel_size": 2},
               FLAT, lin(36, 3)], shape=[1, 6, 6], N=40)


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    forward_cases()
    training_cases()
    write_json(os.path.join(OUT, "index.json"), {
        "generator": "tests/model/gen_reference.py (torch %s)" % torch.__version__,
        "note": "tolerance is absolute, on outputs and trained weights; see the generator",
        "cases": INDEX})
    total = 0
    for root, _, files in os.walk(OUT):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print("%d cases, %d bytes in %s" % (len(INDEX), total, OUT))


if __name__ == "__main__":
    main()
