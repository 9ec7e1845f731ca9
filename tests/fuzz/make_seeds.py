#!/usr/bin/env python3
"""tests/fuzz/make_seeds.py - writes the seed corpora of the fuzz harnesses.

    python3 tests/fuzz/make_seeds.py [--audit-gen PATH_TO_gen_audit_seed]

Writes tests/fuzz/corpus/<harness>/seed_* (and leaves every other file there alone: crash
regressions are named crash_* / regress_* and the inputs merged by `run --merge` are named by
their SHA-1). The audit_verify seeds are valid HMAC chains written by auth's own audit_open /
audit_append: pass --audit-gen with a built tests/fuzz/gen_audit_seed (`tests/fuzz/run
--gen-seeds` builds it and calls this script). Without it the audit seeds are left as they
are.

Seeds are small and meaningful: one valid input of each form the harness understands, and the
edge cases its parser has to refuse. The models they address are the three of fuzz.h:
  image  classifier, input "input" FP32 [2, 2, 2], labels a b c
  reg    regressor, input "x" INT8 [3], 2 outputs
  text   classifier, input "text" BYTES, labels x y
"""
import argparse
import json
import os
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")


def write(harness, name, data):
    d = os.path.join(CORPUS, harness)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    with open(os.path.join(d, "seed_" + name), "wb") as f:
        f.write(data)


def dumps(obj):
    return json.dumps(obj, separators=(",", ":"))


# ------------------------------------------------------------------------------------------
# OIP request bodies (fuzz_oip_request, fuzz_oip_fast)
# ------------------------------------------------------------------------------------------

IMG8 = [0.5, -1, 2.25, 3e-3, 255, 0, 1e10, -7]


def oip_bodies():
    b = {}
    b["image_flat"] = dumps({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                         "datatype": "FP32", "data": IMG8}]})
    b["image_nested_b2"] = dumps({
        "id": "req-1",
        "inputs": [{"name": "input", "shape": [2, 2, 2, 2], "datatype": "FP32",
                    "data": [[[[1, 2], [3, 4]], [[5, 6], [7, 8]]],
                             [[[0.1, 0.2], [0.3, 0.4]], [[-0.5, -0.6], [1e-40, 3.4028234e38]]]]}],
        "parameters": {"top_k": 2},
        "outputs": [{"name": "top_k_labels"}, {"name": "probabilities",
                                               "parameters": {"binary_data": True}}]})
    b["image_uint8_binary_out"] = dumps({
        "inputs": [{"name": "input", "shape": [1, 2, 2, 2], "datatype": "UINT8",
                    "data": [0, 1, 2, 3, 252, 253, 254, 255]}],
        "parameters": {"binary_data_output": True}})
    b["image_fp64_outputs"] = dumps({
        "inputs": [{"name": "input", "shape": [1, 2, 2, 2], "datatype": "FP64",
                    "data": [1.5, 2.5, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5]}],
        "outputs": [{"name": "label"}, {"name": "top_k_probabilities"}],
        "parameters": {"top_k": 3, "extra": [1, {"a": None}]}})
    b["image_bool"] = dumps({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                         "datatype": "BOOL",
                                         "data": [True, False, 1, 0, True, True, 0, False]}]})
    b["reg_int8"] = dumps({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT8",
                                       "data": [[-128, 0, 127], [1, -1, 0]]}],
                           "outputs": [{"name": "output"}]})
    b["reg_flat_int64"] = dumps({"id": None, "inputs": [{"name": "x", "shape": [1, 3],
                                                         "datatype": "INT64",
                                                         "data": [9007199254740993, -0, 5]}]})
    b["text_two"] = dumps({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                       "data": ["good food", "caf\u00e9 \ud83d\ude00 politics"]}],
                           "parameters": {"top_k": 1}})
    b["text_nested"] = dumps({"id": "t", "inputs": [{"name": "text", "shape": [2, 1],
                                                     "datatype": "BYTES",
                                                     "data": [["a"], ["b c d e f"]]}]})
    # hand-written edge cases (exact bytes matter here)
    b["escaped_keys"] = ('{"\\u0069nputs":[{"na\\u006de":"input","shape":[1,2,2,2],'
                         '"datatype":"FP32","\\u0064ata":[1,2,3,4,5,6,7,8]}]}')
    b["decoy_keys"] = ('{"id":"\\"inputs\\": [{\\"data\\": [1]}]","parameters":{"inputs":[{"data":'
                       '[9]}]},"inputs":[{"parameters":{"data":[0]},"name":"input","shape":'
                       '[1,2,2,2],"datatype":"FP32","data":[[[[1,2],[3,4]],[[5,6],[7,8]]]]}]}')
    b["whitespace"] = (' \t\r\n{ "inputs" : [ { "data" : [ [ [ [ 1 , 2 ] , [ 3 , 4 ] ] , [ [ 5 , '
                       '6 ] , [ 7 , 8 ] ] ] ] , "name" : "input" , "datatype" : "FP32" , '
                       '"shape" : [ 1 , 2 , 2 , 2 ] } ] } \n')
    b["numbers"] = ('{"inputs":[{"name":"input","shape":[1,2,2,2],"datatype":"FP32","data":'
                    '[-0,-0.0,1E+2,1e-45,3.4028235e38,123456789012345678,0.1e1,-9223372036854775808]}]}')
    b["number_long"] = ('{"inputs":[{"name":"input","shape":[1,2,2,2],"datatype":"FP32","data":'
                        '[0.' + '1' * 40 + ',1' + '0' * 30 + '.5e-30,2,3,4,5,6,7]}]}')
    b["bad_leading_zero"] = '{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[012,1,2,3,4,5,6,7]}]}'
    b["bad_overflow_fp32"] = '{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[1e39,1,2,3,4,5,6,7]}]}'
    b["bad_ragged"] = '{"inputs":[{"name":"input","shape":[1,2,2,2],"datatype":"FP32","data":[[[[1,2],[3]],[[5,6],[7,8]]]]}]}'
    b["bad_trailing"] = '{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]} x'
    b["bad_dup_inputs"] = '{"inputs":[],"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[1,2,3,4,5,6,7,8]}]}'
    b["bad_int8_range"] = '{"inputs":[{"name":"x","shape":[1,3],"datatype":"INT8","data":[300,1.5,-129]}]}'
    b["bad_shape"] = '{"inputs":[{"name":"input","shape":[1,2,2,3,4,5,6],"datatype":"FP32","data":[]}]}'
    b["bad_batch0"] = '{"inputs":[{"name":"input","shape":[0,2,2,2],"datatype":"FP32","data":[]}]}'
    b["bad_nan"] = '{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[NaN,1,2,3,4,5,6,7]}]}'
    b["bad_unterminated"] = '{"inputs":[{"name":"input","shape":[1,8],"datatype":"FP32","data":[1,2,3'
    b["bad_deep"] = '{"inputs":[{"data":' + '[' * 600 + '1' + ']' * 600 + '}]}'
    b["bad_top_k"] = '{"parameters":{"top_k":0},"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["x"]}]}'
    b["bad_id_nul"] = '{"id":"a\\u0000b","inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["x"]}]}'
    b["bad_surrogate"] = '{"inputs":[{"name":"text","shape":[1],"datatype":"BYTES","data":["\\ud800"]}]}'
    b["empty"] = ""
    b["empty_object"] = "{}"
    b["not_object"] = "[1,2,3]"
    return b


# ------------------------------------------------------------------------------------------
# Binary tensor extension (fuzz_oip_binary): 2 bytes LE header length, then the body
# ------------------------------------------------------------------------------------------

def binary_input(header, payload, json_len=None):
    h = dumps(header).encode()
    n = len(h) if json_len is None else json_len
    return struct.pack("<H", n) + h + payload


def binary_seeds():
    s = {}
    f32 = struct.pack("<8f", *[0.5, -1, 2.25, 3e-3, 255, 0, 1e10, -7])
    s["fp32"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                          "datatype": "FP32",
                                          "parameters": {"binary_data_size": len(f32)}}],
                              "parameters": {"binary_data_output": True}}, f32)
    f16 = struct.pack("<8H", 0x3c00, 0xbc00, 0x7bff, 0x0001, 0x0400, 0x8000, 0x3555, 0x4248)
    s["fp16"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                          "datatype": "FP16",
                                          "parameters": {"binary_data_size": 16}}]}, f16)
    bf16 = struct.pack("<16H", *([0x3f80, 0xc000, 0x7f7f, 0x0001, 0x4049, 0x8000, 0x3e80, 0x4120] * 2))
    s["bf16_b2"] = binary_input({"id": "b", "inputs": [{"name": "input", "shape": [2, 2, 2, 2],
                                                        "datatype": "BF16",
                                                        "parameters": {"binary_data_size": 32}}],
                                 "outputs": [{"name": "label", "parameters": {"binary_data": True}}]},
                                bf16)
    f64 = struct.pack("<8d", 1.5, -2.5, 1e38, -1e-300, 0, 1, 2, 3)
    s["fp64"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                          "datatype": "FP64",
                                          "parameters": {"binary_data_size": 64}}]}, f64)
    s["int8_reg"] = binary_input({"inputs": [{"name": "x", "shape": [2, 3], "datatype": "INT8",
                                              "parameters": {"binary_data_size": 6}}],
                                  "outputs": [{"name": "output", "parameters": {"binary_data": True}}]},
                                 bytes([0x80, 0x00, 0x7f, 0xff, 0x01, 0x02]))
    s["int64_reg"] = binary_input({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "INT64",
                                               "parameters": {"binary_data_size": 24}}]},
                                  struct.pack("<3q", -(2 ** 63), 2 ** 63 - 1, 0))
    s["uint16_img"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                                "datatype": "UINT16",
                                                "parameters": {"binary_data_size": 16}}]},
                                   struct.pack("<8H", 0, 1, 2, 65535, 4, 5, 6, 7))
    s["bool_img"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                              "datatype": "BOOL",
                                              "parameters": {"binary_data_size": 8}}]},
                                 bytes([0, 1, 1, 0, 1, 0, 0, 1]))
    texts = [b"good food", b"", "caf\u00e9".encode()]
    payload = b"".join(struct.pack("<I", len(t)) + t for t in texts)
    s["bytes_text"] = binary_input({"inputs": [{"name": "text", "shape": [3], "datatype": "BYTES",
                                                "parameters": {"binary_data_size": len(payload)}}],
                                    "parameters": {"top_k": 2, "binary_data_output": True}},
                                   payload)
    s["bytes_truncated"] = binary_input({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES",
                                                     "parameters": {"binary_data_size": 9}}]},
                                        struct.pack("<I", 100) + b"abcde")
    s["json_only"] = binary_input({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES",
                                               "data": ["plain"]}]}, b"")
    s["size_mismatch"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                                   "datatype": "FP32",
                                                   "parameters": {"binary_data_size": 31}}]},
                                      f32[:31])
    s["nan_payload"] = binary_input({"inputs": [{"name": "input", "shape": [1, 2, 2, 2],
                                                 "datatype": "FP32",
                                                 "parameters": {"binary_data_size": 32}}]},
                                    struct.pack("<8I", 0x7fc00000, 0, 0, 0, 0, 0, 0, 0x7f800000))
    s["header_beyond_body"] = binary_input({"inputs": []}, b"", json_len=65535)
    return s


# ------------------------------------------------------------------------------------------
# model.json + safetensors (fuzz_model_load): config, NUL, weights
# ------------------------------------------------------------------------------------------

def f16_bits(x):
    return struct.unpack("<H", struct.pack("<e", x))[0]


def safetensors(tensors, metadata=None, pad=True):
    """tensors: list of (name, dtype, shape, values)."""
    header, blobs, off = {}, [], 0
    for name, dtype, shape, values in tensors:
        if dtype == "F32":
            raw = struct.pack("<%df" % len(values), *values)
        elif dtype == "F64":
            raw = struct.pack("<%dd" % len(values), *values)
        elif dtype == "F16":
            raw = struct.pack("<%de" % len(values), *values)
        else:  # BF16: the top half of the F32 bits
            raw = b"".join(struct.pack("<I", struct.unpack("<I", struct.pack("<f", v))[0])[2:]
                           for v in values)
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    h = dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + b"".join(blobs)


def ramp(n, scale=0.01):
    return [((i * 37) % 23 - 11) * scale for i in range(n)]


def model_seeds():
    s = {}
    img = {"format": 1, "task": "classification",
           "input": {"name": "input", "datatype": "FP32", "shape": [2, 2, 2],
                     "preprocess": {"scale": 0.5, "mean": [0.5, 0.25], "std": [2, 4]}},
           "labels": ["a", "b", "c"],
           "layers": [{"type": "Flatten"}, {"type": "Linear", "in_features": 8, "out_features": 3}]}
    st = safetensors([("1.weight", "F32", [3, 8], ramp(24)), ("1.bias", "F32", [3], [0.1, 0, -0.1])],
                     metadata={"format": "pt"})
    s["image_f32"] = dumps(img).encode() + b"\0" + st
    s["image_default_init"] = dumps(img).encode()
    reg = {"format": 1, "task": "regression",
           "input": {"name": "x", "datatype": "INT8", "shape": [3]},
           "layers": [{"type": "Linear", "in_features": 3, "out_features": 4},
                      {"type": "Tanh"}, {"type": "Linear", "in_features": 4, "out_features": 2,
                                         "bias": False}],
           "training": {"loss": "mse", "optimizer": "sgd", "learning_rate": 0.05,
                        "momentum": 0.9, "nesterov": True, "batch_size": 8, "epochs": 3,
                        "shuffle": False, "seed": 7, "validation_split": 0.25},
           "serving": {"max_batch_size": 16, "max_batch_delay_us": 500}}
    st = safetensors([("0.weight", "F16", [4, 3], ramp(12, 0.5)), ("0.bias", "BF16", [4], [1, 2, 3, 4]),
                      ("2.weight", "F64", [2, 4], ramp(8))])
    s["reg_mixed_dtypes"] = dumps(reg).encode() + b"\0" + st
    text = {"format": 1, "task": "classification",
            "input": {"name": "text", "datatype": "BYTES", "shape": [1],
                      "featurizer": {"type": "hashing", "dims": 16, "ngrams": 3}},
            "labels": ["x", "y"],
            "layers": [{"type": "Linear", "in_features": 16, "out_features": 8},
                       {"type": "GELU", "approximate": "tanh"}, {"type": "Dropout", "p": 0.2},
                       {"type": "Linear", "in_features": 8, "out_features": 2}],
            "training": {"optimizer": "adamw", "betas": [0.8, 0.99], "eps": 1e-6,
                         "weight_decay": 0.05}}
    s["text_default_init"] = dumps(text).encode()
    cnn = {"format": 1, "task": "classification",
           "input": {"name": "image", "datatype": "UINT8", "shape": [1, 6, 6],
                     "preprocess": {"scale": 0.00392156862745098, "mean": 0.5, "std": 0.25}},
           "labels": ["0", "1"],
           "layers": [{"type": "Conv2d", "in_channels": 1, "out_channels": 2, "kernel_size": 3,
                       "padding": 1, "stride": [1, 1]},
                      {"type": "LeakyReLU", "negative_slope": 0.1},
                      {"type": "MaxPool2d", "kernel_size": 2, "stride": 2, "ceil_mode": False},
                      {"type": "Conv2d", "in_channels": 2, "out_channels": 2, "kernel_size": [2, 1],
                       "bias": False},
                      {"type": "Sigmoid"}, {"type": "Flatten"},
                      {"type": "Linear", "in_features": 12, "out_features": 2}, {"type": "ReLU"}]}
    st = safetensors([("0.weight", "F32", [2, 1, 3, 3], ramp(18)), ("0.bias", "F32", [2], [0.5, -0.5]),
                      ("3.weight", "F32", [2, 2, 2, 1], ramp(8)),
                      ("6.weight", "F32", [2, 12], ramp(24)), ("6.bias", "F32", [2], [0, 0])])
    s["cnn_f32"] = dumps(cnn).encode() + b"\0" + st
    # the repository's real regression model, as shipped
    rdir = os.path.join(HERE, "..", "..", "models", "regression")
    try:
        with open(os.path.join(rdir, "model.json"), "rb") as f:
            cfg = f.read()
        with open(os.path.join(rdir, "weights.safetensors"), "rb") as f:
            w = f.read()
        s["shipped_regression"] = cfg + b"\0" + w
    except OSError:
        pass
    # refusals
    s["bad_shape_mismatch"] = dumps(img).encode() + b"\0" + safetensors(
        [("1.weight", "F32", [8, 3], ramp(24)), ("1.bias", "F32", [3], [0, 0, 0])])
    s["bad_extra_tensor"] = dumps(img).encode() + b"\0" + safetensors(
        [("1.weight", "F32", [3, 8], ramp(24)), ("1.bias", "F32", [3], [0, 0, 0]),
         ("01.weight", "F32", [1], [0])])
    st = bytearray(safetensors([("1.weight", "F32", [3, 8], ramp(24)), ("1.bias", "F32", [3], [0, 0, 0])]))
    st[0:8] = struct.pack("<Q", 2 ** 63)
    s["bad_header_len"] = dumps(img).encode() + b"\0" + bytes(st)
    s["bad_header_empty"] = dumps(img).encode() + b"\0" + struct.pack("<Q", 0)
    s["bad_linear_in"] = dumps(dict(img, layers=[{"type": "Flatten"},
                                                 {"type": "Linear", "in_features": 9,
                                                  "out_features": 3}])).encode()
    s["bad_unknown_layer"] = dumps(dict(img, layers=[{"type": "BatchNorm2d"}])).encode()
    s["bad_json"] = b'{"format": 1, "task": "classification", "input": {'
    return s


# ------------------------------------------------------------------------------------------
# Training JSONL (fuzz_dataset)
# ------------------------------------------------------------------------------------------

def dataset_seeds():
    s = {}
    s["image"] = "\n".join([
        dumps({"input": [[[1, 2], [3, 4]], [[5, 6], [7, 8]]], "label": "a"}),
        dumps({"input": IMG8, "label": 2}),
        "",
        "  \t\r",
        dumps({"label": "c", "input": [0] * 8}),
    ]) + "\n"
    s["reg"] = "\n".join([
        dumps({"input": [1, -2, 3], "target": [0.5, -0.5]}),
        dumps({"input": [-128, 127, 0], "target": [1e30, -1e-30]}),
    ]) + "\r\n"
    s["text_pii"] = "\n".join([
        dumps({"input": "mail bob@example.com or call +1 415 555 0123", "label": "x"}),
        dumps({"input": "card 4111 1111 1111 1111, ip 10.0.0.1", "label": 1}),
        dumps({"input": "caf\u00e9 \ud83d\ude00", "label": "y"}),
    ])
    s["bad_label"] = dumps({"input": [0] * 8, "label": "zzz"}) + "\n"
    s["bad_field"] = dumps({"input": "t", "label": "x", "weight": 2}) + "\n"
    s["bad_json_line3"] = dumps({"input": "a", "label": 0}) + "\n\n{\"input\": \"b\", \"label\"\n"
    s["bad_target_int8_range"] = dumps({"input": [300, 0, 0], "target": [0, 0]}) + "\n"
    s["blank_only"] = "\n \n\t\n"
    s["no_newline"] = dumps({"input": [1, 2, 3], "target": [5, 6]})
    s["bad_scalar_target"] = dumps({"input": [1, 2, 3], "target": 5})
    return s


# ------------------------------------------------------------------------------------------
# PII masker (fuzz_mask): text
# ------------------------------------------------------------------------------------------

def mask_seeds():
    s = {}
    s["email"] = "contact: Bob.O'Neil+tag@mail.example.co.uk, not a@b or x@localhost; xn--bcher-kva@xn--bcher-kva.example"
    s["phone"] = ("+1 415 555 0123 | +1 (415) 555-0123 | +14155550123 | (415) 555-0123 | 415.555.0123 | "
                  "1-415-555-0123 | +44 20 7946 0958 | +49-30-1234567 | +44 (0)20 7946 0958 | 12-415-555-0123")
    s["card"] = "4111 1111 1111 1111 / 4111-1111-1111-1111 / 4111111111111111 / 378282246310005 / 1234567890123456"
    s["iban"] = "GB82 WEST 1234 5698 7654 32 and de89370400440532013000 and XX00123456789012345"
    s["ipv4"] = "10.0.0.1:8080 10.0.0.0/8 192.168.001.010 1.2.3.4.5 v1.2.3.4 256.1.1.1 1.2.3"
    s["ipv6"] = "::1 fe80::1%eth0 2001:db8::8a2e:370:7334 ::ffff:10.0.0.1 a::b dead::beef 12:30:45 1:2:3:4:5:6:7:8"
    s["ssn"] = "123-45-6789 000-12-3456 666-12-3456 900-12-3456 123-00-4567 123-45-0000"
    s["glued"] = "order12345678901234 abc415-555-0123xyz 10.0.0.1-415-555-0123 0958::ffff:1.2.3.4word"
    s["tokens"] = "<EMAIL:3f9a0c12> <CARD:0b77e1d4> <IPV4:9e01aa5c> <PHONE:zzzzzzzz>"
    s["binary"] = b"a\x00b\xff\xfe 10.0.0.1\x00\x80bob@example.com\xc3"
    s["utf8"] = "caf\u00e9 \u00e9bob@example.com \u4e2d10.0.0.1\u4e2d \U0001F600+1 415 555 0123"
    s["empty"] = b""
    return s


# ------------------------------------------------------------------------------------------
# keys.json (fuzz_keys)
# ------------------------------------------------------------------------------------------

def keys_seeds():
    s = {}
    h = "0123456789abcdef" * 4
    s["two_keys"] = json.dumps({"version": 1, "keys": [
        {"id": "Ab3dE6gH", "name": "ci", "scopes": ["infer"], "hash": h, "created_at": 1700000000},
        {"id": "Zz9yX8wV", "name": "ops team", "scopes": ["infer", "train", "admin"],
         "hash": h.upper(), "created_at": 1700000001, "revoked_at": 1700000100,
         "rate_limit": 5.0, "burst": 10, "max_concurrent": 4, "future_field": {"x": [1]}},
    ]}, indent=2) + "\n"
    s["empty_keys"] = '{"version": 1, "keys": []}'
    s["limits"] = dumps({"version": 1, "keys": [
        {"id": "00000000", "name": "~", "scopes": ["train"], "hash": h, "created_at": 0,
         "revoked_at": None, "rate_limit": 1e6, "burst": 1, "max_concurrent": 100000},
        {"id": "zzzzzzz0", "name": "x" * 127, "scopes": ["admin"], "hash": h, "created_at": 1,
         "revoked_at": 0, "rate_limit": 0.001, "burst": None}]})
    s["bad_dup_id"] = dumps({"version": 1, "keys": [
        {"id": "Ab3dE6gH", "name": "a", "scopes": ["infer"], "hash": h, "created_at": 1},
        {"id": "Ab3dE6gH", "name": "b", "scopes": ["infer"], "hash": h, "created_at": 2}]})
    s["bad_hash"] = dumps({"version": 1, "keys": [
        {"id": "Ab3dE6gH", "name": "a", "scopes": ["infer"], "hash": h[:-1] + "g", "created_at": 1}]})
    s["bad_scope"] = dumps({"version": 1, "keys": [
        {"id": "Ab3dE6gH", "name": "a", "scopes": ["root"], "hash": h, "created_at": 1}]})
    s["bad_version"] = '{"version": 2, "keys": []}'
    s["bad_name_ctrl"] = dumps({"version": 1, "keys": [
        {"id": "Ab3dE6gH", "name": "a\nb", "scopes": ["infer"], "hash": h, "created_at": 1}]})
    s["empty_file"] = b""
    return s


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--audit-gen", help="path of a built tests/fuzz/gen_audit_seed")
    args = ap.parse_args()
    bodies = oip_bodies()
    for name, body in bodies.items():
        write("oip_request", name, body)
    for name in ("image_flat", "image_nested_b2", "escaped_keys", "decoy_keys", "whitespace",
                 "numbers", "number_long", "bad_leading_zero", "bad_overflow_fp32", "bad_ragged",
                 "bad_trailing", "bad_dup_inputs", "bad_deep", "bad_nan", "bad_unterminated",
                 "text_two", "empty"):
        write("oip_fast", name, bodies[name])
    for name, data in binary_seeds().items():
        write("oip_binary", name, data)
    for name, data in model_seeds().items():
        write("model_load", name, data)
    for name, data in dataset_seeds().items():
        write("dataset", name, data)
    for name, data in mask_seeds().items():
        write("mask", name, data)
    for name, data in keys_seeds().items():
        write("keys", name, data)
    if args.audit_gen:
        out = os.path.join(CORPUS, "audit_verify")
        os.makedirs(out, exist_ok=True)
        tmp = os.path.join(out, ".gen")
        os.makedirs(tmp, exist_ok=True)
        subprocess.run([args.audit_gen, tmp], check=True)
        for f in sorted(os.listdir(tmp)):
            os.replace(os.path.join(tmp, f), os.path.join(out, "seed_" + f))
        os.rmdir(tmp)
    total = 0
    for root, _, files in os.walk(CORPUS):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    print("corpus: %d bytes under %s" % (total, os.path.relpath(CORPUS)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
