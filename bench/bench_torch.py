#!/usr/bin/python3
"""bench/bench_torch.py - the PyTorch side of the benchmark (bench/README.md).

The same workloads as bench/bench_engine.c, with the same shapes, data sizes, batch order (file
order, last partial batch kept), optimizer settings and thread count (one), written as the
plain training loop a PyTorch user would write. Prints one JSON object per workload on stdout,
with the same keys as the C side.

Usage: /usr/bin/python3 bench/bench_torch.py [--only a,b,c,d] [--quick]
"""
import argparse
import ctypes
import ctypes.util
import json
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def one_thread():
    """One intra-op thread, and one OpenBLAS thread: torch.set_num_threads() sets OpenMP's
    count but Debian's torch calls the pthread OpenBLAS for sgemm, whose pool is sized apart.
    The engine calls openblas_set_num_threads(1); do the same here, in-process, rather than
    through OPENBLAS_* variables. Returns the OpenBLAS thread count after the call, or None if
    libopenblas could not be found."""
    torch.set_num_threads(1)
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        lib.openblas_set_num_threads(1)
        return lib.openblas_get_num_threads()
    return None


# (name, layer sizes, activation, task, N, batch, optimizer, lr, epochs)
WORKLOADS = {
    "a": dict(sizes=[2, 10, 1], act=nn.Tanh, task="regression", n=1000, batch=1000,
              optim="sgd", lr=0.01, epochs=1000),
    "b": dict(sizes=[1000, 100, 10], act=nn.ReLU, task="classification", n=10000, batch=64,
              optim="sgd", lr=0.01, epochs=5),
    "c": dict(sizes=[784, 512, 512, 10], act=nn.ReLU, task="classification", n=20000,
              batch=128, optim="adam", lr=1e-3, epochs=3),
}


def make_model(sizes, act):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers.append(act())
    return nn.Sequential(*layers)


def make_data(w, seed=42):
    """Uniform inputs in [-1, 1) and a random teacher T (F, O), as bench_engine.c: labels are
    argmax(x T), regression targets tanh(x T) + 0.5 x_0 x_{F-1}."""
    g = torch.Generator().manual_seed(seed)
    fin, fout = w["sizes"][0], w["sizes"][-1]
    x = torch.rand(w["n"], fin, generator=g) * 2 - 1
    t = torch.rand(fin, fout, generator=g) * 2 - 1
    z = x @ t
    if w["task"] == "classification":
        y = z.argmax(dim=1)
    else:
        y = torch.tanh(z) + 0.5 * x[:, :1] * x[:, -1:]
    return x.contiguous(), y.contiguous()


def train(w, x, y, n, epochs):
    """Trains a fresh model on rows [0, n) for `epochs` epochs in file order; returns (seconds
    of the loop alone, last epoch's mean loss)."""
    model = make_model(w["sizes"], w["act"])
    if w["optim"] == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=w["lr"])
    else:
        opt = torch.optim.Adam(model.parameters(), lr=w["lr"])
    loss_fn = F.cross_entropy if w["task"] == "classification" else F.mse_loss
    bs = w["batch"]
    batches = [(x[s:s + bs], y[s:s + bs]) for s in range(0, n, bs)]
    model.train()
    t0 = time.perf_counter()
    for _ in range(epochs):
        total = 0.0
        for xb, yb in batches:
            opt.zero_grad()
            loss = loss_fn(model(xb), yb)
            loss.backward()
            opt.step()
            total += loss.item() * xb.shape[0]  # as the engine: the epoch's mean loss
    secs = time.perf_counter() - t0
    return secs, total / n


def step_flops(sizes, b):
    f = 0.0
    for i in range(len(sizes) - 1):
        mnk = b * sizes[i] * sizes[i + 1]
        f += 2 * mnk + (2 if i == 0 else 4) * mnk
    return f


def bench_train(name, quick):
    w = WORKLOADS[name]
    x, y = make_data(w)
    epochs = w["epochs"] if not quick else max(1, w["epochs"] // 10)
    bs, n = w["batch"], w["n"]
    warm_n = min(20 * bs, n)
    train(w, x, y, warm_n, 20 if bs >= n else 1)
    secs, loss = train(w, x, y, n, epochs)
    full, rest = divmod(n, bs)
    steps = (full + (1 if rest else 0)) * epochs
    flops = (full * step_flops(w["sizes"], bs) + step_flops(w["sizes"], rest)) * epochs
    emit(workload=name, seconds=secs, samples_per_s=n * epochs / secs, epochs=epochs,
         steps=steps, us_per_step=secs / steps * 1e6, train_flops_per_s=flops / secs,
         final_loss=loss)


def bench_forward(quick):
    w = WORKLOADS["c"]
    model = make_model(w["sizes"], w["act"])
    model.eval()
    g = torch.Generator().manual_seed(7)
    x = torch.rand(64, w["sizes"][0], generator=g) * 2 - 1
    rows = [x[i:i + 1].clone() for i in range(64)]
    iters1, iters64 = (500, 100) if quick else (5000, 1000)
    lat = []
    with torch.inference_mode():
        for i in range(200):
            model(rows[i % 64])
        for i in range(iters1):
            xi = rows[i % 64]
            t0 = time.perf_counter()
            model(xi)
            lat.append(time.perf_counter() - t0)
        lat.sort()
        for _ in range(20):
            model(x)
        t0 = time.perf_counter()
        for _ in range(iters64):
            model(x)
        secs64 = time.perf_counter() - t0
    emit(workload="d1", median_us=statistics.median(lat) * 1e6,
         p90_us=lat[iters1 * 9 // 10] * 1e6, iterations=iters1)
    emit(workload="d64", seconds=secs64, samples_per_s=64 * iters64 / secs64,
         us_per_call=secs64 / iters64 * 1e6, iterations=iters64)


def emit(**kv):
    print(json.dumps(kv), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="a,b,c,d")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    blas_threads = one_thread()
    print(json.dumps({"workload": "env", "torch": torch.__version__,
                      "torch_threads": torch.get_num_threads(),
                      "openblas_threads": blas_threads}), flush=True)
    torch.manual_seed(0)
    only = args.only.split(",")
    for name in ("a", "b", "c"):
        if name in only:
            bench_train(name, args.quick)
    if "d" in only:
        bench_forward(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
