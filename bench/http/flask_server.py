"""The HTTP benchmark's baseline: the same model served by Flask + PyTorch, the way a small
team would write it. bench/http/run starts it as

    INFERA_BENCH_MODEL=REPO/mlp784 gunicorn -w 2 -b 127.0.0.1:0 flask_server:app

(sync workers, one request at a time each). It loads model.json and weights.safetensors from
INFERA_BENCH_MODEL - the same files infera serves - and answers the Open Inference Protocol
v2 infer call with the response infera gives: probabilities (softmax) and label.

    POST /v2/models/<name>/infer   {"inputs": [{"name", "shape": [B, 784], "datatype": "FP32",
                                                "data": [...]}]}
    GET  /v2/health/ready

Each worker computes with one thread: torch.set_num_threads(1), and OpenBLAS (which Debian's
torch calls for float matmuls, with its own thread pool) set to one thread as well, so two
workers use the two cores the way infera's two inference workers do.
"""
import ctypes
import ctypes.util
import json
import os
import struct

import torch
import torch.nn as nn
from flask import Flask, jsonify, request


def one_thread():
    torch.set_num_threads(1)
    for name in ("libopenblas.so.0", ctypes.util.find_library("openblas")):
        if not name:
            continue
        try:
            ctypes.CDLL(name).openblas_set_num_threads(1)
            return
        except (OSError, AttributeError):
            continue


def read_safetensors(path):
    """{name: float32 tensor} from a safetensors file of F32 tensors."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    data = blob[8 + n:]
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        if t["dtype"] != "F32":
            raise ValueError(f"{name}: dtype {t['dtype']}, only F32 is read")
        a, b = t["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(
            t["shape"])
    return out


def load_model(mdir):
    with open(os.path.join(mdir, "model.json")) as f:
        cfg = json.load(f)
    layers = []
    for spec in cfg["layers"]:
        if spec["type"] == "Linear":
            layers.append(nn.Linear(spec["in_features"], spec["out_features"]))
        elif spec["type"] == "ReLU":
            layers.append(nn.ReLU())
        else:
            raise ValueError(f"layer type {spec['type']} is not supported here")
    model = nn.Sequential(*layers)
    model.load_state_dict(read_safetensors(os.path.join(mdir, "weights.safetensors")))
    return model.eval(), cfg


one_thread()
MODEL_DIR = os.environ["INFERA_BENCH_MODEL"]
MODEL_NAME = os.path.basename(os.path.normpath(MODEL_DIR))
model, config = load_model(MODEL_DIR)
LABELS = config["labels"]
FEATURES = config["input"]["shape"][0]

app = Flask(__name__)


def error(status, msg):
    return jsonify({"error": msg}), status


@app.get("/v2/health/ready")
def ready():
    return jsonify({"ready": True})


@app.post("/v2/models/<name>/infer")
def infer(name):
    if name != MODEL_NAME:
        return error(404, f"model {name} not found")
    body = request.get_json(silent=True)
    try:
        inp = body["inputs"][0]
        data = inp["data"]
        shape = inp["shape"]
    except (TypeError, KeyError, IndexError):
        return error(400, "expected {\"inputs\": [{\"name\", \"shape\", \"datatype\", \"data\"}]}")
    if inp.get("datatype") != "FP32" or len(shape) != 2 or shape[1] != FEATURES:
        return error(400, f"inputs[0]: expected FP32 of shape [B, {FEATURES}]")
    try:
        x = torch.tensor(data, dtype=torch.float32).reshape(shape)
    except (TypeError, ValueError, RuntimeError) as exc:
        return error(400, f"inputs[0].data: {exc}")
    with torch.inference_mode():
        p = torch.softmax(model(x), dim=1)
    B = int(shape[0])
    return jsonify({
        "model_name": MODEL_NAME,
        "model_version": "1",
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [B, len(LABELS)],
             "data": p.flatten().tolist()},
            {"name": "label", "datatype": "BYTES", "shape": [B],
             "data": [LABELS[i] for i in p.argmax(dim=1).tolist()]},
        ],
    })
