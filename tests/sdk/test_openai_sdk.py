"""The official `openai` Node SDK against a real infera server (DESIGN.md section 5): the
OpenAI-compatible files and fine-tuning jobs API must work with the SDK unchanged.

This runner trains two small base models (reg: the regression example, 2 epochs; cnn: the
digits CNN, 1 epoch), starts a server on them, makes a key with the train and infer scopes,
makes sure tests/sdk/node_modules holds the pinned SDK (`npm ci` when it is missing or stale)
and runs openai_sdk.test.mjs, which prints one line per check.

Run: cd tests && INFERA_BIN=../build/infera python3 sdk/test_openai_sdk.py
Needs node (>= 20) and npm; `npm ci` needs the npm registry unless node_modules is in place
(.ci/install-deps installs it).
"""
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
from harness import EXAMPLES, infera, main  # noqa: E402
from serverlib import SLOW, Server  # noqa: E402

CHECKS = 18  # checks openai_sdk.test.mjs runs


def _pinned_version():
    with open(os.path.join(HERE, "package.json")) as f:
        return json.load(f)["dependencies"]["openai"]


def _installed_version():
    try:
        with open(os.path.join(HERE, "node_modules", "openai", "package.json")) as f:
            return json.load(f)["version"]
    except (OSError, ValueError, KeyError):
        return None


def ensure_node_modules():
    """Runs `npm ci` in tests/sdk unless node_modules already holds the pinned openai (and is
    no older than package-lock.json). A lock keeps two runs from installing at once."""
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            raise AssertionError("%s is not installed (.ci/install-deps installs it)" % tool)
    v = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    m = re.match(r"v(\d+)\.", v)
    if not m or int(m.group(1)) < 20:
        raise AssertionError("openai %s needs Node.js 20 or newer; node --version says %r"
                             % (_pinned_version(), v))
    lock_path = os.path.join(tempfile.gettempdir(), "infera-sdk-npm.lock")
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        stamp = os.path.join(HERE, "node_modules", ".package-lock.json")
        lock_file = os.path.join(HERE, "package-lock.json")
        fresh = (_installed_version() == _pinned_version() and os.path.exists(stamp) and
                 os.path.getmtime(stamp) >= os.path.getmtime(lock_file))
        if not fresh:
            p = subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE,
                               capture_output=True, text=True, timeout=600)
            if p.returncode != 0:
                raise AssertionError("npm ci failed (%d):\n%s\n%s" % (p.returncode,
                                                                     p.stdout[-3000:],
                                                                     p.stderr[-3000:]))
        got = _installed_version()
        if got != _pinned_version():
            raise AssertionError("node_modules has openai %s, package.json pins %s"
                                 % (got, _pinned_version()))


def base_repo():
    repo = tempfile.mkdtemp(prefix="infera-sdk-repo-")
    infera("train", "--model", os.path.join(EXAMPLES, "regression"), "--data",
           os.path.join(EXAMPLES, "regression", "train.jsonl"), "--out",
           os.path.join(repo, "reg"), "--epochs", "2", "--quiet", check=0)
    infera("train", "--model", os.path.join(EXAMPLES, "digits", "cnn"), "--data",
           os.path.join(EXAMPLES, "digits", "train.jsonl"), "--out",
           os.path.join(repo, "cnn"), "--epochs", "1", "--quiet", check=0)
    return repo


def test_openai_node_sdk_drives_files_and_fine_tuning():
    ensure_node_modules()
    repo = base_repo()
    work = tempfile.mkdtemp(prefix="infera-sdk-")
    try:
        train = os.path.join(work, "train.jsonl")
        with open(os.path.join(EXAMPLES, "regression", "train.jsonl")) as src, \
                open(train, "w") as dst:
            for _, line in zip(range(200), src):
                dst.write(line)
        with Server(models=repo) as s:
            st, key = s.post("/v1/keys", {"name": "openai-sdk", "scopes": ["train", "infer"]})
            assert st == 201, (st, key)
            env = dict(os.environ,
                       INFERA_BASE_URL="http://127.0.0.1:%d/v1" % s.port,
                       INFERA_API_KEY=key["key"],
                       INFERA_TRAIN_FILE=train,
                       INFERA_MODEL="reg",
                       INFERA_CANCEL_MODEL="cnn",
                       INFERA_CANCEL_FILE=os.path.join(EXAMPLES, "digits", "train.jsonl"),
                       INFERA_TIMEOUT_S=str(120 * SLOW))
            t0 = time.time()
            p = subprocess.run(["node", "openai_sdk.test.mjs"], cwd=HERE, env=env,
                               capture_output=True, text=True, timeout=600 * SLOW)
            out = p.stdout
            print("".join("  node: " + line + "\n" for line in out.splitlines()), end="")
            print("  node: took %.1f s" % (time.time() - t0))
            if p.returncode != 0:
                raise AssertionError("openai_sdk.test.mjs exited %d\nstderr:\n%s\nserver log "
                                     "(tail):\n%s" % (p.returncode, p.stderr[-4000:],
                                                      s.read_log()[-4000:]))
            assert "FAIL" not in out, out
            last = out.rstrip().splitlines()[-1] if out.strip() else ""
            m = re.fullmatch(r"(\d+) passed, 0 failed", last)
            assert m and int(m.group(1)) >= CHECKS, "expected %d checks, got: %r" % (CHECKS, last)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(repo, ignore_errors=True)


if __name__ == "__main__":
    main(globals())
