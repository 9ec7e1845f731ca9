"""A real infera server for tests: started on 127.0.0.1 with port 0 (the kernel picks a free
port; the server logs it), spoken to over HTTP with http.client, stopped with SIGTERM.

    with Server(models=repo) as s:
        status, body = s.post("/v2/models/m/infer", {...})

The models a test needs are trained or built by the test itself from the shipped examples
(tests never read ../shared). INFERA_TEST_WRAPPER (see tests/harness.py) puts valgrind in
front of the server too.
"""
import http.client
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import BIN, EXAMPLES, WRAPPER, infera  # noqa: E402,F401

SLOW = 20 if WRAPPER else 1  # valgrind makes everything slower


class Server:
    def __init__(self, models=None, data_dir=None, args=(), env=None):
        self.tmp = tempfile.mkdtemp(prefix="infera-srv-")
        self.models = models
        self.data_dir = data_dir or os.path.join(self.tmp, "data")
        self.args = list(args)
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.port = None
        self.log_path = os.path.join(self.tmp, "server.log")
        self.token = None  # the admin key made at first start (data/admin.key)

    def start(self, wait_ready=True):
        cmd = WRAPPER + [BIN, "serve", "--listen", "127.0.0.1:0", "--data-dir", self.data_dir,
                         "--drain-delay", "0.2"]
        cmd += ["--models", self.models] if self.models else ["--models", ""]
        cmd += self.args
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=self.env)
        deadline = time.time() + 30 * SLOW
        while time.time() < deadline:
            m = re.search(r"\(port (\d+)", self.read_log())
            if m:
                self.port = int(m.group(1))
                break
            if self.proc.poll() is not None:
                raise AssertionError("server exited %d:\n%s" % (self.proc.returncode,
                                                               self.read_log()))
            time.sleep(0.02)
        else:
            raise AssertionError("server did not start:\n" + self.read_log())
        key_file = os.path.join(self.data_dir, "admin.key")
        if os.path.exists(key_file):
            with open(key_file) as f:
                self.token = f.read().strip()
        if wait_ready:
            while time.time() < deadline:
                if self.get("/v2/health/ready")[0] == 200:
                    return self
                time.sleep(0.02)
            raise AssertionError("server never became ready:\n" + self.read_log())
        return self

    def read_log(self):
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def auth_line(self):
        """The admin key as a raw header line, for hand-made requests."""
        return b"Authorization: Bearer %s\r\n" % self.token.encode() if self.token else b""

    def request(self, method, path, body=None, headers=None, timeout=60 * SLOW, raw=False,
                key=True):
        """Returns (status, parsed JSON or text, headers dict). Sends the admin key unless
        key is False, another key is given (key="ifr_..."), or headers hold Authorization
        (None there: send none)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        hdrs = dict(headers or {})
        if "Authorization" not in hdrs:
            tok = key if isinstance(key, str) else (self.token if key else None)
            if tok:
                hdrs["Authorization"] = "Bearer " + tok
        elif hdrs["Authorization"] is None:
            del hdrs["Authorization"]
        if body is not None and not isinstance(body, (bytes, str)):
            body = json.dumps(body)
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        conn.close()
        out = data.decode("utf-8", "replace")
        if not raw and resp.getheader("Content-Type", "").startswith("application/json"):
            out = json.loads(out)
        return resp.status, out, {k.lower(): v for k, v in resp.getheaders()}

    def get(self, path, **kw):
        s, b, _ = self.request("GET", path, **kw)
        return s, b

    def post(self, path, body=None, **kw):
        s, b, _ = self.request("POST", path, body=body, **kw)
        return s, b

    def signal(self, sig):
        self.proc.send_signal(sig)

    def stop(self, check=True):
        """SIGTERM; the server must drain and exit 0."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60 * SLOW)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError("server did not exit after SIGTERM")
        finally:
            self.log.close()
        if check and code != 0:
            raise AssertionError("server exited %d after SIGTERM:\n%s" % (code, self.read_log()))

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        try:
            self.stop(check=exc[0] is None)
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


_trained = {}


def trained_repo():
    """A model repository with the shipped examples trained briefly (cached per process):
    digits (MLP), cnn (digits CNN), text (fortunes), reg (2->10->1)."""
    if "repo" in _trained:
        return _trained["repo"]
    repo = tempfile.mkdtemp(prefix="infera-repo-")
    jobs = [("digits", os.path.join(EXAMPLES, "digits", "mlp"), "digits/train.jsonl", "10"),
            ("cnn", os.path.join(EXAMPLES, "digits", "cnn"), "digits/train.jsonl", "3"),
            ("text", os.path.join(EXAMPLES, "text"), "text/train.jsonl", "10"),
            ("reg", os.path.join(EXAMPLES, "regression"), "regression/train.jsonl", "50")]
    for name, model, data, epochs in jobs:
        infera("train", "--model", model, "--data", os.path.join(EXAMPLES, data), "--out",
               os.path.join(repo, name), "--epochs", epochs, "--quiet", check=0)
    _trained["repo"] = repo
    return repo


def digits_rows(n=4):
    with open(os.path.join(EXAMPLES, "digits", "test.jsonl")) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def digits_request(rows, **extra):
    req = {"inputs": [{"name": "input", "datatype": "FP32", "shape": [len(rows), 64],
                       "data": [r["input"] for r in rows]}]}
    req.update(extra)
    return req
