"""Corrupt persisted state: one damaged object per case, on a copy of a data dir built once.

For each kind (a job's job.json: garbage, truncated, valid JSON of wrong types; keys.json;
a model's model.json or weights; an audit segment in the middle or its torn tail; a sealed
file's content; a file's metadata) the server starts on the damaged data dir, names the damaged
object in its log, moves it aside where it owns it (jobs: jobs/<id>.corrupt-<ts>/; files:
files/<id>[.json].corrupt-<ts>), serves everything else, and starts again (twice: no crash
loop). What the code guarantees for the rest, asserted here:
  - keys.json garbage: the server refuses to start (exit 1, the file and place named) and
    leaves the file alone; damaged while running, every key is refused (fail closed) until the
    file is restored, which needs no restart.
  - models: the repository is the operator's: a model that fails to load is reported (log and
    /v2/repository/index) and skipped, never moved.
  - audit: a start verifies the last segment only; a flipped byte in an earlier segment is found
    by `infera audit verify` (exit non-zero, the segment named), not at start. A torn last line
    is cut at start with an audit.tail_truncated record, and verify passes afterwards.
  - a sealed file's content with a flipped byte: the file stays listed; reading its content is an
    error (never garbage); the other files read byte-exact.
"""
import json
import os
import re
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import BIN, EXAMPLES  # noqa: E402
from harness import infera, recorded, report_write, run_tests  # noqa: E402
from serverlib import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from test_files import upload  # noqa: E402

_state = {}
# For the INFERA_REPORT_DIR report: every corruption made ({"test", "what"}), server starts on
# damaged state, offline `infera audit verify` runs.
STATS = {"injected": [], "starts": 0, "verifies": 0, "current": None}
TRAIN_LINES = []
with open(os.path.join(EXAMPLES, "digits", "train.jsonl")) as _f:
    for _, _line in zip(range(30), _f):
        TRAIN_LINES.append(_line)
TRAIN = "".join(TRAIN_LINES).encode()
TRAIN2 = "".join(TRAIN_LINES[:12]).encode()


def digits_request():
    with open(os.path.join(EXAMPLES, "digits", "request.json")) as f:
        return json.load(f)


def pristine():
    """(repo, data dir, facts) built once: models digits and reg, two files, two queued jobs,
    several audit segments."""
    if "data" in _state:
        return _state["repo"], _state["data"], _state["facts"]
    root = tempfile.mkdtemp(prefix="infera-corrupt-")
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    # The models are trained here (a clean checkout has no ./models): briefly, they only
    # have to load and answer.
    for name, src, epochs in (("digits", os.path.join("digits", "mlp"), "2"),
                              ("reg", "regression", "2")):
        data_file = os.path.join(EXAMPLES, src.split(os.sep)[0], "train.jsonl")
        infera("train", "--model", os.path.join(EXAMPLES, src), "--data", data_file, "--out",
               os.path.join(repo, name), "--epochs", epochs, "--quiet", check=0)
    data = os.path.join(root, "data")
    facts = {}
    srv = Server(models=repo, data_dir=data,
                 args=["--train-workers", "0", "--audit-segment-bytes", "4096"])
    srv.start()
    try:
        ids = []
        for body in (TRAIN, TRAIN2):
            st, out, _ = upload(srv, body)
            assert st == 200, out
            ids.append(out["id"])
        facts["files"] = ids
        jobs = []
        for fid in ids:
            st, out = srv.post("/v1/fine_tuning/jobs", {"model": "digits", "training_file": fid})
            assert st == 200, out
            jobs.append(out["id"])
        facts["jobs"] = jobs
        for _ in range(30):  # audit records: several 4 KiB segments
            assert srv.get("/v2/models/digits")[0] == 200
        facts["token"] = srv.token
    finally:
        srv.stop()
    _state.update(repo=repo, data=data, facts=facts, root=root)
    return repo, data, facts


def injected(what):
    """Records one corruption made to persisted state (the report's faults_injected)."""
    STATS["injected"].append({"test": STATS["current"], "what": what})


def verify(data):
    STATS["verifies"] += 1
    return infera("audit", "verify", "--data-dir", data)


def damaged_copy(name):
    repo, data, facts = pristine()
    d = os.path.join(_state["root"], "case-" + name)
    shutil.rmtree(d, ignore_errors=True)
    shutil.copytree(data, d)
    return repo, d, facts


def start(repo, data, token=None):
    STATS["starts"] += 1
    srv = Server(models=repo, data_dir=data, args=["--train-workers", "0"])
    srv.start()
    if token:
        srv.token = token
    return srv


def close(srv):
    srv.stop()
    shutil.rmtree(srv.tmp, ignore_errors=True)


def serves_everything_else(srv, facts, bad_job=None, bad_file=None):
    st, out = srv.post("/v2/models/digits/infer", digits_request())
    assert st == 200, out
    for j in facts["jobs"]:
        st, out = srv.get("/v1/fine_tuning/jobs/" + j)
        assert st == (404 if j == bad_job else 200), (j, st, out)
    for fid, body in zip(facts["files"], (TRAIN, TRAIN2)):
        if fid == bad_file:
            continue
        st, out, _ = srv.request("GET", "/v1/files/%s/content" % fid, raw=True)
        assert st == 200 and out.encode() == body, (fid, st)


def restart_twice(repo, data, facts, **kw):
    """No crash loop: two more starts serve the same way."""
    for _ in range(2):
        srv = start(repo, data, facts["token"])
        try:
            serves_everything_else(srv, facts, **kw)
        finally:
            close(srv)


# ------------------------------------------------------------------------------------------
# Jobs
# ------------------------------------------------------------------------------------------

def job_case(name, damage):
    repo, data, facts = damaged_copy(name)
    bad = facts["jobs"][0]
    path = os.path.join(data, "jobs", bad, "job.json")
    with open(path, "rb") as f:
        orig = f.read()
    with open(path, "wb") as f:
        f.write(damage(orig))
    injected("jobs/<id>/job.json: " + name)
    srv = start(repo, data, facts["token"])
    try:
        log = srv.read_log()
        assert re.search(r"job %s: .*(not a job|quarantined)" % bad, log), log[-3000:]
        serves_everything_else(srv, facts, bad_job=bad)
        st, out = srv.get("/v1/fine_tuning/jobs")
        assert st == 200 and [j["id"] for j in out["data"]] == [facts["jobs"][1]], out
    finally:
        close(srv)
    moved = [n for n in os.listdir(os.path.join(data, "jobs")) if n.startswith(bad + ".corrupt-")]
    assert len(moved) == 1 and not os.path.exists(os.path.join(data, "jobs", bad)), \
        os.listdir(os.path.join(data, "jobs"))
    with open(os.path.join(data, "jobs", moved[0], "job.json"), "rb") as f:
        assert f.read() == damage(orig), "the quarantined job.json must be kept as it was"
    restart_twice(repo, data, facts, bad_job=bad)


def test_job_json_garbage():
    job_case("job-garbage", lambda b: b"\x00\xffnot json at all{{{")


def test_job_json_truncated():
    job_case("job-truncated", lambda b: b[:len(b) // 2])


def test_job_json_wrong_types():
    def damage(b):
        doc = json.loads(b)
        doc["_seq"] = "seven"
        doc["status"] = 3
        doc["hyperparameters"] = "lots"
        return json.dumps(doc).encode()
    job_case("job-types", damage)


def test_job_json_wrong_types_in_optional_fields():
    """Required fields intact, every other field of the wrong type: the job must load or be
    quarantined, never crash the server (it would crash-loop)."""
    repo, data, facts = damaged_copy("job-optional")
    bad = facts["jobs"][0]
    path = os.path.join(data, "jobs", bad, "job.json")
    with open(path) as f:
        doc = json.load(f)
    keep = {"id", "status", "_owner", "_seq", "model", "training_file"}
    for k in list(doc):
        if k not in keep:
            doc[k] = [{"x": 1}] if not isinstance(doc[k], list) else "str"
    with open(path, "w") as f:
        json.dump(doc, f)
    injected("jobs/<id>/job.json: optional fields of the wrong types")
    for _ in range(3):
        srv = start(repo, data, facts["token"])
        try:
            st, out = srv.post("/v2/models/digits/infer", digits_request())
            assert st == 200, out
            st, out = srv.get("/v1/fine_tuning/jobs/" + bad)
            assert st in (200, 404), (st, out)
            st, out = srv.get("/v1/fine_tuning/jobs")
            assert st == 200, out
            st, out = srv.get("/v1/fine_tuning/jobs/%s/events" % bad)
            assert st in (200, 404), (st, out)
        finally:
            close(srv)


# ------------------------------------------------------------------------------------------
# Keys, models
# ------------------------------------------------------------------------------------------

def test_keys_json_garbage_refuses_to_start():
    """keys.json is security state: a damaged one is never moved aside (the next start could
    then mint a fresh admin key). The server refuses to start, naming the file and the place,
    exits 1 (not a signal), and leaves the file as it was; restored, it starts and the keys
    work. (A keys.json damaged while the server runs fails closed instead: every key 401.)"""
    repo, data, facts = damaged_copy("keys")
    path = os.path.join(data, "keys.json")
    with open(path, "rb") as f:
        orig = f.read()
    bad = b'{"version": 1, "keys": [garbage'
    with open(path, "wb") as f:
        f.write(bad)
    injected("keys.json: garbage before start")
    for _ in range(2):
        STATS["starts"] += 1
        srv = Server(models=repo, data_dir=data, args=["--train-workers", "0"])
        try:
            srv.start()
            raise AssertionError("started on a damaged keys.json")
        except AssertionError as ex:
            assert "server exited 1" in str(ex) and "keys.json: line 1 column" in str(ex), ex
        finally:
            shutil.rmtree(srv.tmp, ignore_errors=True)
        with open(path, "rb") as f:
            assert f.read() == bad
    with open(path, "wb") as f:
        f.write(orig)
    srv = start(repo, data, facts["token"])
    try:
        serves_everything_else(srv, facts)
        # Damaged while running: fail closed, and back when fixed, without a restart.
        with open(path + ".new", "wb") as f:
            f.write(bad)
        os.rename(path + ".new", path)
        injected("keys.json: garbage while running")
        assert srv.get("/v2/models")[0] == 401
        assert "refusing every key" in srv.read_log()
        with open(path + ".new", "wb") as f:
            f.write(orig)
        os.chmod(path + ".new", 0o600)
        os.rename(path + ".new", path)
        assert srv.get("/v2/models")[0] == 200
    finally:
        close(srv)


def model_case(name, which, damage):
    repo0, data, facts = damaged_copy(name)
    repo = os.path.join(_state["root"], "repo-" + name)
    shutil.rmtree(repo, ignore_errors=True)
    shutil.copytree(repo0, repo)
    path = os.path.join(repo, "reg", which)
    with open(path, "rb") as f:
        orig = f.read()
    with open(path, "wb") as f:
        f.write(damage(orig))
    injected("models/reg/" + which + ": " + name)
    for _ in range(3):
        srv = start(repo, data, facts["token"])
        try:
            assert re.search(r"model reg version 1 failed to load: .*%s" % re.escape(which),
                             srv.read_log()), srv.read_log()[-3000:]
            assert srv.get("/v2/models/reg/ready")[0] != 200
            st, out = srv.post("/v2/repository/index", {})
            assert st == 200, out
            reg = [m for m in out if m["name"] == "reg"]
            assert reg and reg[0].get("state") != "READY" and reg[0].get("reason"), out
            serves_everything_else(srv, facts)
        finally:
            close(srv)


def test_model_json_truncated():
    model_case("model-json", "model.json", lambda b: b[:len(b) // 2])


def test_model_weights_truncated():
    model_case("model-weights", "weights.safetensors", lambda b: b[:len(b) - 7])


# ------------------------------------------------------------------------------------------
# Audit
# ------------------------------------------------------------------------------------------

def segments(data):
    d = os.path.join(data, "audit")
    return sorted(os.path.join(d, n) for n in os.listdir(d) if re.match(r"audit-\d+\.jsonl$", n))


def test_audit_middle_segment_flipped_byte():
    repo, data, facts = damaged_copy("audit-mid")
    segs = segments(data)
    assert len(segs) >= 3, segs
    mid = segs[len(segs) // 2]
    with open(mid, "r+b") as f:
        f.seek(200)
        c = f.read(1)
        f.seek(200)
        f.write(bytes([c[0] ^ 0x01]))
    injected("audit: a flipped byte in a middle segment")
    p = verify(data)
    assert p.returncode != 0 and os.path.basename(mid) in (p.stdout + p.stderr), p
    # Documented: a start checks the last segment only, so the server starts and serves.
    srv = start(repo, data, facts["token"])
    try:
        serves_everything_else(srv, facts)
    finally:
        close(srv)
    p = verify(data)
    assert p.returncode != 0 and os.path.basename(mid) in (p.stdout + p.stderr), p


def test_audit_torn_tail():
    repo, data, facts = damaged_copy("audit-tail")
    last = segments(data)[-1]
    with open(last, "rb") as f:
        body = f.read()
    with open(last, "wb") as f:
        f.write(body + b'{"event":"torn mid-wri')
    injected("audit: a torn last line")
    for _ in range(2):
        srv = start(repo, data, facts["token"])
        try:
            serves_everything_else(srv, facts)
        finally:
            close(srv)
    text = "".join(open(s).read() for s in segments(data))
    assert "audit.tail_truncated" in text
    p = verify(data)
    assert p.returncode == 0, p.stdout + p.stderr


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------

def test_file_content_flipped_byte():
    repo, data, facts = damaged_copy("file-content")
    bad = facts["files"][0]
    path = os.path.join(data, "files", bad)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        c = f.read(1)
        f.seek(size // 2)
        f.write(bytes([c[0] ^ 0x40]))
    injected("files/<id>: a flipped byte in the sealed content")
    for _ in range(2):
        srv = start(repo, data, facts["token"])
        try:
            serves_everything_else(srv, facts, bad_file=bad)
            st, out, _ = srv.request("GET", "/v1/files/%s/content" % bad, raw=True)
            assert st >= 500 and TRAIN.decode()[:40] not in out, (st, out[:200])
            assert bad in srv.read_log(), srv.read_log()[-2000:]
            st, out = srv.get("/v1/files")
            assert st == 200 and bad in [x["id"] for x in out["data"]], out
        finally:
            close(srv)


def test_file_metadata_garbage():
    repo, data, facts = damaged_copy("file-meta")
    bad = facts["files"][0]
    path = os.path.join(data, "files", bad + ".json")
    with open(path, "wb") as f:
        f.write(b'{"id": 12, "bytes": "many"')
    injected("files/<id>.json: garbage metadata")
    srv = start(repo, data, facts["token"])
    try:
        log = srv.read_log()
        assert re.search(r"files: skipped %s\.json: .*damaged: quarantined" % bad, log), log[-3000:]
        serves_everything_else(srv, facts, bad_file=bad)
        assert srv.get("/v1/files/" + bad)[0] == 404
        st, out = srv.get("/v1/files")
        assert st == 200 and [x["id"] for x in out["data"]] == [facts["files"][1]], out
    finally:
        close(srv)
    names = os.listdir(os.path.join(data, "files"))
    assert not os.path.exists(path) and not os.path.exists(os.path.join(data, "files", bad))
    assert any(n.startswith(bad + ".json.corrupt-") for n in names), names
    assert any(n.startswith(bad + ".corrupt-") for n in names), names
    restart_twice(repo, data, facts, bad_file=bad)


# ------------------------------------------------------------------------------------------
# Report (bench/reliability/run): with INFERA_REPORT_DIR set, corrupt.json
# ------------------------------------------------------------------------------------------

def write_report(outcomes, seconds):
    """Writes $INFERA_REPORT_DIR/corrupt.json when the variable is set. cases: the tests (one
    kind of damage each); faults_injected: corruptions made; executions: server starts on
    damaged state plus offline audit verifications; losses: failed tests (a crash, a crash
    loop, damage not contained, data that read back wrong)."""
    d = os.environ.get("INFERA_REPORT_DIR")
    if not d:
        return
    doc = {"name": "corrupt persisted state (tests/faults/test_corrupt.py)",
           "cases": len(outcomes), "executions": STATS["starts"] + STATS["verifies"],
           "faults_injected": len(STATS["injected"]),
           "losses": sum(1 for ok in outcomes.values() if not ok),
           "details": {"tests": outcomes, "corruptions": STATS["injected"],
                       "server_starts": STATS["starts"], "audit_verifies": STATS["verifies"],
                       "failed_tests": sorted(n for n, ok in outcomes.items() if not ok),
                       "seconds": round(seconds, 1)}}
    report_write("corrupt", doc)


if __name__ == "__main__":
    t0 = time.time()
    outcomes = {}
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    try:
        code = run_tests([recorded(t, outcomes, lambda name: STATS.__setitem__("current", name)) for t in tests])
    finally:
        if "root" in _state:
            shutil.rmtree(_state["root"], ignore_errors=True)
        write_report(outcomes, time.time() - t0)
    sys.exit(code)
