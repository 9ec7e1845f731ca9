#!/usr/bin/env python3
"""README.md cannot rot: every command in it runs here, against a real server.

The rule, also stated in the README's Tests section:
  - every ```sh block of README.md runs, in file order, each with `bash` under
    `set -euo pipefail`; shell variables and functions a block defines (KEY, icurl, JOB, ...)
    carry over to the next block, as they would in one terminal;
  - a block right after `<!-- not run: reason -->` is skipped: at most MAX_NOT_RUN of them, and
    each must give a reason;
  - a block right after `<!-- run if: command -->` runs only when `command` succeeds (the
    PyTorch export needs torch; it is reported as skipped otherwise).

The blocks run in a fresh directory laid out as `.ci/start` leaves the repository: `models/`
(the four demo models, trained by examples/make_models, three of them first with fewer
epochs), `data/` (the server's data dir), `build/infera` (the binary under test), `examples/`
(the repository's). The server runs on a free port; `127.0.0.1:8080` in the blocks is rewritten to it (and `127.0.0.1:8443`, the TLS
example's, to another free port). Each block must exit 0; CHECKS below says what the output of
the important ones must contain, and every stdout line that starts with `{` or `[` must be JSON.

The configuration table must list exactly the flags `infera serve --help` prints, with their
INFERA_* variables, and the endpoint table exactly the routes of server/http.c's route table.
"""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
from harness import BIN, EXAMPLES, ROOT, infera, main  # noqa: E402
from serverlib import SLOW, Server  # noqa: E402

README = os.path.join(ROOT, "README.md")
HTTP_C = os.path.join(ROOT, "server", "http.c")
MAX_NOT_RUN = 5
MIN_RUN = 10  # fewer means the block parser broke, or the tour shrank

# (text that picks exactly one block, regexes its stdout must match, each with re.M)
CHECKS = [
    ("export KEY=$(cat data/admin.key)",
     [r'^\{"ready":true\}$', r'"extensions"', r'"name":"digits-cnn"', r'"labels":\["0"']),
    ("/v2/models/digits-cnn/infer",
     [r'"model_name":"digits","model_version":"1","id":"digits-1".*"name":"label","datatype":"BYTES","shape":\[2\],"data":\["3","0"\]',
      r'"model_name":"digits-cnn".*"name":"label","datatype":"BYTES","shape":\[1\],"data":\["3"\]',
      r'"model_name":"text".*"top_k_labels"',
      r'"model_name":"regression".*"name":"output","datatype":"FP32","shape":\[2,1\]']),
    ("/v2/models/digits/explain",
     [r'"model_name":"digits".*"method":"integrated_gradients".*"attributions"',
      r'"model_name":"text".*"tokens":\[\[\{"token":"the"']),
    ("/v2/repository/index", [r'"name":"digits","version":"1","state":"READY"', r'^\{"name":"digits"\}$']),
    ('"name": "web-frontend"',
     [r'"object":"api_key","name":"web-frontend","scopes":\["infer"\].*"key":"ifr_',
      r'"model_name":"regression"', r'^403$', r'^401$', r'"deleted":true', r'web-frontend\s+infer\s+revoked',
      r'^ifr_[0-9A-Za-z]{8}_[0-9A-Za-z]+$', r'batch-jobs\s+infer,train\s+active']),
    ("/v1/fine_tuning/jobs/$JOB/checkpoints",
     [r'"object":"file".*"purpose":"fine-tune"', r'^succeeded$(?![\s\S]*^(queued|running)$)',
      r'"type":"metrics"', r'"object":"fine_tuning.job.checkpoint"',
      r'^ft:digits:mine:ftjob-\w+$', r'"model_name":"ft:digits:mine:ftjob-\w+".*"outputs"']),
    ("infera audit verify",
     [r'^infera_http_requests_total\{route="/v2/models/\{m\}/infer",method="POST",code="200"\} \d+$',
      r'^infera_auth_failures_total\{reason="scope"\} 1$',
      r'^infera_auth_failures_total\{reason="revoked"\} 1$', r'^infera_audit_healthy 1$',
      r'"object":"list","data":\[\{', r'audit log .* verifies: \d+ segments, \d+ records']),
    ("--tls-cert tls.crt", [r'^\{"ready":true\}$', r'^plain HTTP refused$']),
    ("ls data data/audit", [r'^master\.key$', r'^audit-000001\.jsonl$', r'^ckpt-step-\d+\.sealed$']),
    ("--out mydigits", [r'"accuracy": 0\.9', r'"model_name":"mydigits".*"outputs"']),
    ("import json, struct, torch",
     [r'"model_name":"mymodel".*"name":"label","datatype":"BYTES","shape":\[2\],"data":\["3","0"\]',
      r'"accuracy": 0\.9']),
]

FENCE_OPEN = re.compile(r"^```sh\s*$")
FENCE_CLOSE = re.compile(r"^```\s*$")
MARKER = re.compile(r"^<!--\s*(not run|run if):\s*(.*?)\s*-->\s*$")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def sh_blocks():
    """[(line number, marker kind or None, marker text, block text)] of every ```sh block."""
    lines = read(README).split("\n")
    out, i, prev = [], 0, ""
    while i < len(lines):
        if FENCE_OPEN.match(lines[i]):
            start = i + 1
            j = start
            while j < len(lines) and not FENCE_CLOSE.match(lines[j]):
                j += 1
            assert j < len(lines), "README.md:%d: ```sh block never closed" % (start)
            m = MARKER.match(prev)
            out.append((start, m.group(1) if m else None, m.group(2) if m else "",
                        "\n".join(lines[start:j]) + "\n"))
            i, prev = j + 1, ""
            continue
        if lines[i].strip():
            prev = lines[i].strip()
        i += 1
    return out


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The wrapper around each block: restore the previous blocks' variables and functions, run
# the block, save them again (what the block added: compgen -v minus what bash itself set).
PROLOGUE = """set -euo pipefail
__base=$(compgen -v)
if [ -f "$README_STATE" ]; then source "$README_STATE"; fi
"""
EPILOGUE = """
__vars=$(compgen -v | grep -vxF -e "$__base" | grep -Ev '^(__|BASH|FUNCNAME$|PIPESTATUS$|GROUPS$|LINENO$|RANDOM$|SECONDS$|SRANDOM$|EPOCH)' || true)
{ if [ -n "$__vars" ]; then declare -p $__vars; fi; declare -f; } > "$README_STATE.new"
mv "$README_STATE.new" "$README_STATE"
"""


def python_with_torch():
    """A directory to put first on PATH so that `python3` has torch (Debian's /usr/bin/python3
    when the python3 on PATH, e.g. a pyenv one, lacks it), or None."""
    def has_torch(py):
        try:
            return subprocess.run([py, "-c", "import torch"], capture_output=True,
                                  timeout=120).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False
    if has_torch("python3") or not os.path.exists("/usr/bin/python3"):
        return None
    if not has_torch("/usr/bin/python3"):
        return None
    d = tempfile.mkdtemp(prefix="infera-readme-py-")
    os.symlink("/usr/bin/python3", os.path.join(d, "python3"))
    return d


def run_block(work, env, line, text, timeout):
    script = os.path.join(work, ".block-%d.sh" % line)
    with open(script, "w") as f:
        f.write(PROLOGUE + text + EPILOGUE)
    p = subprocess.Popen(["bash", script], cwd=work, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError("README.md:%d: block timed out after %d s\n%s\nstdout:\n%s\nstderr:\n%s"
                             % (line, timeout, text, out[-3000:], err[-3000:]))
    finally:
        try:  # anything the block left running in the background (it should leave nothing)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if p.returncode != 0:
        raise AssertionError("README.md:%d: block exited %d\n%s\nstdout:\n%s\nstderr:\n%s"
                             % (line, p.returncode, text, out[-3000:], err[-3000:]))
    return out, err


def check_output(line, text, out):
    for ln in out.splitlines():
        if ln.startswith("{") or ln.startswith("["):
            try:
                json.loads(ln)
            except ValueError:
                raise AssertionError("README.md:%d: a line of output is not JSON: %s"
                                     % (line, ln[:300]))
    for needle, patterns in CHECKS:
        if needle in text:
            for pat in patterns:
                if not re.search(pat, out, re.M):
                    raise AssertionError("README.md:%d: output does not match %r\nstdout:\n%s"
                                         % (line, pat, out[-4000:]))


def test_readme_blocks():
    blocks = sh_blocks()
    not_run = [(ln, why) for ln, kind, why, _ in blocks if kind == "not run"]
    assert len(not_run) <= MAX_NOT_RUN, "too many blocks not run: %s" % not_run
    for ln, why in not_run:
        assert why, "README.md:%d: <!-- not run: --> without a reason" % ln
    for needle, _ in CHECKS:
        hits = [ln for ln, kind, _, text in blocks if needle in text and kind != "not run"]
        assert len(hits) == 1, "CHECKS needle %r matches blocks at lines %s" % (needle, hits)
    assert read(README).count("http://127.0.0.1:8080/console") >= 1, "console URL gone"

    t0 = time.time()
    work = tempfile.mkdtemp(prefix="infera-readme-")
    shim = python_with_torch()
    try:
        # The layout `.ci/start` leaves: models/, data/, build/infera, examples/.
        os.symlink(EXAMPLES, os.path.join(work, "examples"))
        os.makedirs(os.path.join(work, "build"))
        os.symlink(os.path.abspath(BIN), os.path.join(work, "build", "infera"))
        # examples/make_models trains what is missing at the models' own epochs (20-30; a
        # third of this test's time under ASan): train three of them here first with fewer,
        # enough for the tour's answers, and let make_models do the rest (regression).
        models = os.path.join(work, "models")
        for name, model, data, epochs in [("digits", "digits/mlp", "digits", 10),
                                          ("digits-cnn", "digits/cnn", "digits", 3),
                                          ("text", "text", "text", 8)]:
            infera("train", "--model", os.path.join(EXAMPLES, model), "--data",
                   os.path.join(EXAMPLES, data, "train.jsonl"), "--out",
                   os.path.join(models, name), "--epochs", epochs, "--quiet", check=0)
        subprocess.run([os.path.join(EXAMPLES, "make_models"), os.path.abspath(BIN), models],
                       check=True, capture_output=True, timeout=600 * SLOW)
        print("# models trained in %.1f s" % (time.time() - t0), flush=True)
        env = dict(os.environ, README_STATE=os.path.join(work, ".state.sh"))
        if shim:
            env["PATH"] = shim + os.pathsep + env["PATH"]
        tls_port = free_port()
        ran = 0
        with Server(models=models,
                    data_dir=os.path.join(work, "data")) as s:
            assert s.token, "no admin key made at first start"
            for ln, kind, why, text in blocks:
                if kind == "not run":
                    print("# README.md:%d: not run (%s)" % (ln, why), flush=True)
                    continue
                if kind == "run if":
                    c = subprocess.run(["bash", "-c", why], cwd=work, env=env,
                                       capture_output=True, timeout=120)
                    if c.returncode != 0:
                        print("# README.md:%d: skipped: `%s` failed" % (ln, why), flush=True)
                        continue
                cmd = (text.replace("127.0.0.1:8080", "127.0.0.1:%d" % s.port)
                       .replace("127.0.0.1:8443", "127.0.0.1:%d" % tls_port))
                b0 = time.time()
                out, _ = run_block(work, env, ln, cmd, 300 * SLOW)
                check_output(ln, text, out)
                ran += 1
                print("# README.md:%d: ok in %.1f s" % (ln, time.time() - b0), flush=True)
            st, body = s.get("/console", key=False, raw=True)
            assert st == 200 and "<title>infera console</title>" in body, (st, body[:200])
        assert ran >= MIN_RUN, "only %d blocks ran" % ran
        print("# %d blocks ran, %d not run, in %.1f s" % (ran, len(not_run), time.time() - t0))
    finally:
        shutil.rmtree(work, ignore_errors=True)
        if shim:
            shutil.rmtree(shim, ignore_errors=True)


def section(title):
    """The text of the README section whose heading is exactly title, up to the next heading
    of the same or a higher level."""
    text = read(README)
    m = re.search(r"^(#+) %s\s*$" % re.escape(title), text, re.M)
    assert m, "README has no section %r" % title
    rest = text[m.end():]
    end = re.search(r"^#{1,%d} " % len(m.group(1)), rest, re.M)
    return rest[:end.start()] if end else rest


def table_rows(text):
    """Cells of the first markdown table in text, without the header and the rule."""
    rows = [ln for ln in text.splitlines() if ln.startswith("|")]
    assert len(rows) > 2, "no table"
    return [[c.strip() for c in re.split(r"(?<!\\)\|", r)[1:-1]] for r in rows[2:]]


def test_configuration_table():
    helped = set(re.findall(r"^\s+--([a-z0-9-]+)\s", infera("serve", "--help").stdout, re.M))
    assert len(helped) > 10, helped
    documented = {}
    for row in table_rows(section("Configuration")):
        flags = re.findall(r"`--([a-z0-9-]+)`", row[0])
        env = re.findall(r"`(INFERA_[A-Z0-9_]+)`", row[1])
        assert flags and len(flags) == len(env), "bad configuration row: %s" % row
        for f, v in zip(flags, env):
            assert v == "INFERA_" + f.upper().replace("-", "_"), "%s: variable %s" % (f, v)
            assert row[2], "--%s: no default" % f
            documented[f] = v
    assert set(documented) == helped, ("in --help, not in the README: %s; in the README, not "
                                       "in --help: %s" % (sorted(helped - set(documented)),
                                                          sorted(set(documented) - helped)))


def expand(path):
    """`/a[/{b}[/c]]` -> ['/a', '/a/{b}', '/a/{b}/c'] (optional parts in brackets)."""
    i = path.find("[")
    if i < 0:
        return [path]
    depth = 0
    for j in range(i, len(path)):
        depth += {"[": 1, "]": -1}.get(path[j], 0)
        if depth == 0:
            break
    return expand(path[:i] + path[j + 1:]) + expand(path[:i] + path[i + 1:j] + path[j + 1:])


def norm(path):
    return re.sub(r"\{[^}]*\}", "{}", path)


def test_endpoint_table():
    src = read(HTTP_C)
    table = src[src.index("routes[] = {"):]
    table = table[:table.index("};")]
    routes = {(m, norm(p)) for m, p in re.findall(r'\{"([A-Z]+)", "(/[^"]*)"', table)}
    assert len(routes) > 20, routes
    documented = set()
    for row in table_rows(section("Endpoints")):
        method = row[0]
        assert method in ("GET", "POST", "DELETE", "PUT"), "bad endpoint row: %s" % row
        paths = re.findall(r"`(/[^`]*)`", row[1])
        assert paths, "bad endpoint row: %s" % row
        for p in paths:
            for q in expand(p):
                documented.add((method, norm(q)))
    assert documented == routes, ("routes not in the README: %s; README rows that are no "
                                  "route: %s" % (sorted(routes - documented),
                                                 sorted(documented - routes)))


if __name__ == "__main__":
    main(globals())
