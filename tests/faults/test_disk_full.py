"""Disk full: the data dir on a small tmpfs (root and mount(2) needed; exit 77 otherwise).

With the file system filled to the last few KiB: an upload fails with a clear error (507
Insufficient Storage or 503, OpenAI's error shape, never 200 or a dropped connection); a
protected route answers 503 once the audit log cannot write, and readiness turns false; files
already stored read back byte-exact; the server does not die. Removing the filler: readiness
200 again, an upload works, `infera audit verify` passes.

test_disk_full_while_a_job_trains: a running job's next checkpoint meets ENOSPC (the
checkpoints are written by a persister thread beside the training): the job fails with a
message that says so, the server stays up, and after a restart the job is still there.

test_disk_full_state_writes_audit_elsewhere: the audit log on another file system
(--audit-dir), so requests get past the audit guard and the state writes themselves meet
ENOSPC: creating a key (keys.json rewritten), uploading a file, creating a job. Each answers
an error (JSON, never a dropped connection) or succeeds; what was acknowledged survives a
restart, what was refused leaves nothing half-written, and the keys, files and jobs made
before the disk filled are intact after the restart.

With INFERA_REPORT_DIR set, writes disk_full.json (bench/reliability/run): cases = tests,
faults_injected = file systems filled (ENOSPC situations created), executions = requests and
CLI runs made, losses = failed tests.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import EXAMPLES  # noqa: E402
from harness import infera, recorded, report_write, run_tests  # noqa: E402
from serverlib import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from test_files import upload  # noqa: E402

# For the report: file systems filled, requests + CLI runs made, the ENOSPC answers seen.
STATS = {"fills": 0, "requests": 0, "cli": 0, "answers": []}


class CountingServer(Server):
    def request(self, *a, **kw):
        STATS["requests"] += 1
        return super().request(*a, **kw)


def write_report(outcomes, seconds, skipped=None):
    """Writes $INFERA_REPORT_DIR/disk_full.json when the variable is set (see the top)."""
    d = os.environ.get("INFERA_REPORT_DIR")
    if not d:
        return
    details = {"tests": outcomes, "answers_on_full_disk": STATS["answers"],
               "requests": STATS["requests"], "cli_runs": STATS["cli"],
               "failed_tests": sorted(n for n, ok in outcomes.items() if not ok),
               "seconds": round(seconds, 1)}
    if skipped:
        details["skipped"] = skipped
    doc = {"name": "disk full (tests/faults/test_disk_full.py)", "cases": len(outcomes),
           "executions": STATS["requests"] + STATS["cli"], "faults_injected": STATS["fills"],
           "losses": sum(1 for ok in outcomes.values() if not ok), "details": details}
    report_write("disk_full", doc)


def skip(msg):
    write_report({}, 0, skipped=msg)
    faultlib.skip(msg)


if os.geteuid() != 0:
    skip("needs root to mount a tmpfs")

with open(os.path.join(EXAMPLES, "digits", "train.jsonl"), "rb") as _f:
    TRAIN = b"".join(_f.readlines()[:40])


# server/files_api.c maps every storage failure (INF_EIO) to 500 "the file could not be stored
# (I/O error)"; ENOSPC deserves 507 Insufficient Storage and a message that says so (files.c's
# message has strerror(ENOSPC), but common/ has no status for it). Tolerated until then.
KNOWN_500_ON_ENOSPC = False


def fill(path):
    """Writes zeros to path until the file system is full (unbuffered: nothing left to flush)."""
    STATS["fills"] += 1
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 64 << 10, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


def mount_tmpfs(size):
    mnt = tempfile.mkdtemp(prefix="infera-tmpfs-")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s,mode=0700" % size, "tmpfs", mnt],
                      capture_output=True).returncode != 0:
        os.rmdir(mnt)
        skip("mount -t tmpfs failed (no CAP_SYS_ADMIN?)")
    return mnt


def stop_and_unmount(srv, mnt):
    """A test's cleanup: its server (if started) stopped and its files gone, the tmpfs off."""
    if srv is not None:
        srv.stop(check=False)
        shutil.rmtree(srv.tmp, ignore_errors=True)
    subprocess.run(["umount", "-l", mnt])
    os.rmdir(mnt)


def test_disk_full_then_recovers():
    mnt = mount_tmpfs("4m")
    srv = None
    try:
        data = os.path.join(mnt, "data")
        # No model is needed: uploads and the audit log are what fills the disk.
        srv = CountingServer(data_dir=data, args=["--train-workers", "0"])
        srv.start()
        st, before, _ = upload(srv, TRAIN)
        assert st == 200, before
        filler = os.path.join(mnt, "filler")
        fill(filler)

        # An upload cannot be stored: a clear error, in OpenAI's shape.
        st, out, _ = upload(srv, TRAIN)
        STATS["answers"].append({"op": "upload, audit on the full disk", "status": st})
        msg = out["error"]["message"]
        if KNOWN_500_ON_ENOSPC and st == 500:
            assert "could not be stored" in msg, msg
            print("  known: upload on a full disk answers 500 %r" % msg)
        else:
            assert st in (503, 507), (st, out)
            assert "space" in msg.lower() or "storage" in msg.lower() or "audit" in msg.lower(), \
                msg
        assert srv.get("/v1/files")[0] in (200, 503)

        # The audit log cannot write: protected routes 503, readiness false.
        deadline = time.time() + 10
        st = None
        while time.time() < deadline:
            st, out = srv.get("/v2/models")
            if st == 503:
                break
            time.sleep(0.05)
        assert st == 503 and "audit" in out["error"], (st, out)
        st, out = srv.get("/v2/health/ready")
        assert st == 503 and out["ready"] is False, (st, out)
        assert srv.get("/v2/health/live")[0] == 200
        assert srv.proc.poll() is None

        # What was stored stays intact.
        with open(os.path.join(data, "admin.key")) as f:
            assert f.read().strip() == srv.token

        # Space returns: the service recovers by itself.
        os.unlink(filler)
        deadline = time.time() + 15
        while time.time() < deadline and srv.get("/v2/health/ready")[0] != 200:
            time.sleep(0.05)
        assert srv.get("/v2/health/ready")[0] == 200, srv.read_log()[-3000:]
        st, out, _ = srv.request("GET", "/v1/files/%s/content" % before["id"], raw=True)
        assert st == 200 and out.encode() == TRAIN, st
        st, after, _ = upload(srv, TRAIN)
        assert st == 200, after
        st, out, _ = srv.request("GET", "/v1/files/%s/content" % after["id"], raw=True)
        assert st == 200 and out.encode() == TRAIN, st
        srv.stop()
        STATS["cli"] += 1
        p = infera("audit", "verify", "--data-dir", data)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        stop_and_unmount(srv, mnt)


def test_disk_full_while_a_job_trains():
    root = tempfile.mkdtemp(prefix="infera-diskfull-")
    repo = os.path.join(root, "repo")
    STATS["cli"] += 1
    infera("train", "--model", os.path.join(EXAMPLES, "digits", "mlp"), "--data",
           os.path.join(EXAMPLES, "digits", "train.jsonl"), "--out",
           os.path.join(repo, "digits"), "--epochs", "1", "--quiet", check=0)
    mnt = mount_tmpfs("8m")
    audit = os.path.join(root, "audit")
    data = os.path.join(mnt, "data")
    args = ["--audit-dir", audit]
    srv = None
    try:
        srv = CountingServer(models=repo, data_dir=data, args=args)
        srv.start()
        token = srv.token
        st, f, _ = upload(srv, TRAIN)
        assert st == 200, f
        st, job = srv.post("/v1/fine_tuning/jobs", {
            "model": "digits", "training_file": f["id"],
            "hyperparameters": {"n_epochs": 1000, "batch_size": 4}})
        assert st == 200, job
        deadline = time.time() + 60
        while True:  # a few checkpoints written
            st, cks = srv.get("/v1/fine_tuning/jobs/%s/checkpoints" % job["id"])
            assert st == 200, cks
            if len(cks["data"]) >= 2:
                break
            assert time.time() < deadline, "no checkpoints in 60 s"
            time.sleep(0.1)
        fill(os.path.join(mnt, "filler"))
        while True:
            st, out = srv.get("/v1/fine_tuning/jobs/" + job["id"])
            assert st == 200, out
            if out["status"] != "running":
                break
            assert time.time() < deadline + 60, "the job kept running on a full disk"
            time.sleep(0.1)
        assert out["status"] == "failed", out
        assert out["fine_tuned_model"] is None, out
        msg = out["error"]["message"]
        assert "not written" in msg and "No space left" in msg, out["error"]
        assert srv.get("/v2/health/live")[0] == 200
        assert srv.proc.poll() is None, srv.read_log()[-3000:]
        os.unlink(os.path.join(mnt, "filler"))
        srv.stop()
        # The job is not lost: failed (if that state reached the disk) or resumed from its
        # last checkpoint, which a cancel then stops.
        srv = CountingServer(models=repo, data_dir=data, args=args)
        srv.start()
        srv.token = token
        st, out = srv.get("/v1/fine_tuning/jobs/" + job["id"])
        assert st == 200, out
        if out["status"] != "failed":
            st, out = srv.post("/v1/fine_tuning/jobs/%s/cancel" % job["id"])
            assert st == 200 and out["status"] == "cancelled", (st, out)
        srv.stop()
    finally:
        stop_and_unmount(srv, mnt)
        shutil.rmtree(root, ignore_errors=True)


def test_disk_full_state_writes_audit_elsewhere():
    root = tempfile.mkdtemp(prefix="infera-diskfull-")
    repo = os.path.join(root, "repo")
    STATS["cli"] += 1
    infera("train", "--model", os.path.join(EXAMPLES, "regression"), "--data",
           os.path.join(EXAMPLES, "regression", "train.jsonl"), "--out",
           os.path.join(repo, "reg"), "--epochs", "2", "--quiet", check=0)
    mnt = mount_tmpfs("4m")
    audit = os.path.join(root, "audit")  # not on the tmpfs: the audit log keeps writing
    data = os.path.join(mnt, "data")
    args = ["--train-workers", "0", "--audit-dir", audit]
    srv = None
    try:
        srv = CountingServer(models=repo, data_dir=data, args=args)
        srv.start()
        token = srv.token
        st, key1 = srv.post("/v1/keys", {"name": "before", "scopes": ["train"]})
        assert st == 201, key1
        st, file1, _ = upload(srv, TRAIN)
        assert st == 200, file1
        st, job1 = srv.post("/v1/fine_tuning/jobs", {"model": "reg", "training_file": file1["id"]})
        assert st == 200, job1
        with open(os.path.join(data, "keys.json"), "rb") as f:
            keys_before = f.read()

        filler = os.path.join(mnt, "filler")
        fill(filler)
        acked, refused = {}, []

        def tally(op, kind, st, out, ok):
            """One answer on the full disk: ok (acknowledged, kept) or 507 with a JSON error
            (507: not the client's fault)."""
            STATS["answers"].append({"op": op, "status": st})
            assert st in (ok, 507), (st, out)
            assert isinstance(out, dict) and "error" in out or st == ok, (st, out)
            if st == ok:
                acked[kind + ":" + out["id"]] = out
            else:
                refused.append((kind, st))

        # Each state write meets ENOSPC; several times each (the last bytes may let one in).
        for i in range(3):
            st, out = srv.post("/v1/keys", {"name": "full-%d" % i, "scopes": ["infer"]})
            tally("create key", "key", st, out, 201)
            st, out, _ = upload(srv, TRAIN)
            tally("upload", "file", st, out, 200)
            st, out = srv.post("/v1/fine_tuning/jobs",
                               {"model": "reg", "training_file": file1["id"],
                                "suffix": "full%d" % i})
            tally("create job", "job", st, out, 200)
            assert srv.proc.poll() is None, srv.read_log()[-3000:]
        # keys.json is either as before or a complete newer version: never torn.
        with open(os.path.join(data, "keys.json"), "rb") as f:
            now = f.read()
        if now != keys_before:
            json.loads(now)
        assert srv.get("/v2/health/live")[0] == 200
        os.unlink(filler)
        srv.stop()

        # A restart on what the full disk left: it starts, and nothing acknowledged is lost.
        srv = CountingServer(models=repo, data_dir=data, args=args)
        srv.start()
        srv.token = token
        st, out = srv.get("/v1/keys")
        assert st == 200, out
        ids = {k["id"] for k in out["data"]}
        assert key1["id"] in ids, out
        st, out, _ = srv.request("GET", "/v1/files/%s/content" % file1["id"], raw=True)
        assert st == 200 and out.encode() == TRAIN, st
        st, out = srv.get("/v1/fine_tuning/jobs/" + job1["id"])
        assert st == 200, out
        for what in acked:
            kind, oid = what.split(":", 1)
            if kind == "key":
                assert oid in ids, ("an acknowledged key was lost", oid)
            elif kind == "file":
                st, out, _ = srv.request("GET", "/v1/files/%s/content" % oid, raw=True)
                assert st == 200 and out.encode() == TRAIN, ("an acknowledged file was lost",
                                                             oid, st)
            else:
                st, out = srv.get("/v1/fine_tuning/jobs/" + oid)
                assert st == 200, ("an acknowledged job was lost", oid, st, out)
        log = srv.read_log()
        assert "quarantined" not in log and "corrupt" not in log, log[-3000:]
        # Space is back: the writes work again.
        st, out = srv.post("/v1/keys", {"name": "after", "scopes": ["infer"]})
        assert st == 201, out
        st, out, _ = upload(srv, TRAIN)
        assert st == 200, out
        print("  on the full disk: %d refused (%s), %d acknowledged"
              % (len(refused), ", ".join("%s %d" % r for r in refused), len(acked)))
        srv.stop()
        STATS["cli"] += 1
        p = infera("audit", "verify", "--data-dir", data, "--audit-dir", audit)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        stop_and_unmount(srv, mnt)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    t0 = time.time()
    outcomes = {}
    tests = [v for k, v in sorted(globals().items()) if k.startswith("test_") and callable(v)]
    try:
        code = run_tests([recorded(t, outcomes) for t in tests])
    finally:
        write_report(outcomes, time.time() - t0)
    sys.exit(code)
