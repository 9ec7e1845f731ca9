"""Crash test: kill -9 at random moments under load and during training, ROUNDS times over one
data dir; after every restart nothing acknowledged may be missing, corrupt or stuck.

One data dir (one master key, one audit log, one file store, one job queue) serves all rounds.
Each round starts the real server (`infera serve` on 127.0.0.1, a free port, --train-workers 1,
--max-jobs-per-key 2 so the queue stays short, 64 KiB audit segments so rotations happen) and
runs, at once:
  - 2 inference clients: POST /v2/models/<m>/infer (the base digits model; now and then a
    fine-tuned one), each request with its own X-Request-Id, paced at 10-30 ms;
  - an uploader: POST /v1/files (purpose fine-tune), a valid digits JSONL file of 24-40 lines;
  - a job client: POST /v1/fine_tuning/jobs on an uploaded file (30-60 epochs of 3-5 steps
    of batch 8: a job lasts a round or a few, so one is nearly always training at the kill;
    a second one in a round only if none is left), and GET /v1/fine_tuning/jobs/{id} polls of
    the unfinished ones.
Every 2xx a client received is recorded (request id and status; file id and the bytes sent;
job id). After a random delay (seeded RNG, the seed printed; 0.2-1.5 s) the server gets
SIGKILL, and the job.json files on disk say which job was running and from which checkpoint
step it has to resume.

After each restart (the next round's start), every failure counted as a loss:
  - `infera audit verify` passes (start-up cuts a torn tail; the verify runs beside the other
    checks, and one that races with an append and sees a torn last line or a segment not yet
    begun runs again; what stays fails);
  - every request acknowledged in the killed round has an http.request audit record with the
    status the client got (every round's again at the end);
  - every acknowledged file is listed by GET /v1/files; GET /v1/files/{id}/content is
    byte-identical to the upload;
  - every acknowledged job is listed by GET /v1/fine_tuning/jobs and answers
    GET /v1/fine_tuning/jobs/{id}; none is failed or cancelled; at most --train-workers are
    "running"; the job running at the kill has an "interrupted" event and makes progress (a
    checkpoint past the step it resumed from, or success) within a bound;
  - models load: /v2/models/digits/ready is 200 and an inference answers; every succeeded
    job's fine-tuned model is READY in /v2/repository/index.
The per-object reads (a file's content, GET of one job, a fine-tuned model's /ready and an
inference) run for the objects new since the last check plus the ROTATE checked longest ago,
so each comes round again every few rounds; all of them at the end. (Each read is an audit
record, and verify reads the whole log after every restart: reading every object every round
made the checks grow with the square of the rounds.) At the end the last jobs run to success,
the server stops on SIGTERM (exit 0) and the log verifies offline.

Rounds: 50 (plain and AddressSanitizer builds); 4 under INFERA_TEST_WRAPPER (valgrind: starts
and requests ~20x slower; the kill delay x5). INFERA_CRASH_SEED=N replays a seed's kill times
and job parameters (thread timing still differs); INFERA_CRASH_ROUNDS=N sets the count. The
data dir is kept when the test fails (its path is in the message).

With INFERA_REPORT_DIR set, writes crash.json (bench/reliability/run): cases = rounds,
faults_injected = kill -9s, executions = requests acknowledged, losses = acknowledged things
missing or corrupt, stuck jobs, hangs (a failed run counts at least 1).

Run: cd tests && INFERA_BIN=../build/infera python3 faults/test_crash.py
"""
import glob
import http.client
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import BIN, EXAMPLES, WRAPPER  # noqa: E402
from harness import infera, report_write, run_tests  # noqa: E402
from serverlib import SLOW, Server  # noqa: E402

ROUNDS = int(os.environ.get("INFERA_CRASH_ROUNDS") or (4 if WRAPPER else 50))
SEED = int(os.environ.get("INFERA_CRASH_SEED") or random.SystemRandom().randrange(1 << 31))
ASAN = faultlib.is_asan()
# Bounds for waits on the server (never the pace of the test): valgrind 20x, ASan ~3x.
SLACK = SLOW * (3 if ASAN else 1)
# Seconds of load before the kill (under valgrind longer, or no job would be training yet).
KILL_AFTER = tuple(x * (5 if WRAPPER else 1) for x in (0.2, 1.5))
MAX_JOBS = 2  # --max-jobs-per-key
WORKERS = 1  # --train-workers
STUCK_S = 60 * SLACK  # an interrupted job must progress within this
FINISH_S = 180 * SLACK  # the last jobs must end within this
CHECK_THREADS = 6  # requests at once in the checks
ROTATE = 3  # older files, jobs, models whose per-object check runs again each round
TERMINAL = ("succeeded", "failed", "cancelled")
JOB_ID = re.compile(r"ftjob-[0-9A-Za-z]{24}")

with open(os.path.join(EXAMPLES, "digits", "train.jsonl"), "rb") as _f:
    TRAIN_LINES = _f.read().splitlines(keepends=True)
with open(os.path.join(EXAMPLES, "digits", "request.json")) as _f:
    INFER_BODY = json.dumps(json.load(_f)).encode()

# For the report and the messages: what was done and what went missing.
STATS = {"rounds": 0, "kills": 0, "kills_during_training": 0, "restarts": 0, "requests": 0,
         "inferences": 0, "files": 0, "jobs": 0, "jobs_succeeded": 0, "resumes_checked": 0,
         "audit_verifies": 0, "audit_segments": 0, "audit_records": 0, "unanswered": 0,
         "refused_429": 0, "kill_points": []}
PHASES = {}  # seconds spent per phase of the rounds (start, load, verify, files, ...)
LOSSES = []  # one line per acknowledged thing missing or corrupt, or invariant broken
_loss_keys = set()
_loss_lock = threading.Lock()


def loss(key, msg):
    """Records a loss once per key (the same missing file is not counted every round)."""
    with _loss_lock:
        if key in _loss_keys:
            return
        _loss_keys.add(key)
        LOSSES.append(msg)
    print("     LOSS: " + msg, flush=True)


@contextmanager
def phase(name):
    t0 = time.time()
    try:
        yield
    finally:
        PHASES[name] = PHASES.get(name, 0.0) + time.time() - t0


# ------------------------------------------------------------------------------------------
# HTTP
# ------------------------------------------------------------------------------------------

def call(srv, method, path, body=None, headers=None, timeout=None):
    """(status, body bytes, headers) with the admin key; raises OSError and http.client
    errors when the server is gone."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=timeout or 30 * SLACK)
    try:
        hdrs = dict(headers or {})
        hdrs["Authorization"] = "Bearer " + srv.token
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            hdrs.setdefault("Content-Type", "application/json")
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}
    finally:
        conn.close()


def call_json(srv, method, path, body=None):
    st, data, _ = call(srv, method, path, body)
    try:
        return st, json.loads(data)
    except ValueError:
        return st, data


def multipart(purpose, data, filename):
    b = "----infera-crash-" + uuid.uuid4().hex
    body = ("--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\n%s\r\n"
            "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
            "Content-Type: application/jsonl\r\n\r\n" % (b, purpose, b, filename)).encode()
    return body + data + ("\r\n--%s--\r\n" % b).encode(), "multipart/form-data; boundary=" + b


def infer_ok(data):
    """True if an inference answer is a well-formed OIP answer for the 2-row request."""
    try:
        out = json.loads(data)
        label = next(o for o in out["outputs"] if o["name"] == "label")
        return len(label["data"]) == 2
    except (ValueError, KeyError, TypeError, StopIteration):
        return False


# ------------------------------------------------------------------------------------------
# What the clients were told (the ledger)
# ------------------------------------------------------------------------------------------

class Ledger:
    """Everything acknowledged, over all rounds. One lock; the clients append, the checks
    read between rounds (no client runs then)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []  # (request id, status, round)
        self.files = {}  # file id -> bytes uploaded
        self.file_round = {}
        self.jobs = {}  # job id -> {"round", "status" (last seen), "file", "epochs"}
        self.models = []  # fine-tuned models that answered in a check (inference targets)
        self.deep = {}  # (kind, id) -> when its per-object check last ran (see pick())
        self.tick = 0

    def ack(self, rid, status, rnd, inference=False):
        with self.lock:
            self.requests.append((rid, status, rnd))
            STATS["inferences"] += inference

    def active_jobs(self):
        with self.lock:
            return [j for j, v in self.jobs.items() if v["status"] not in TERMINAL]


def client_infer(srv, led, rnd, n, stop, rng):
    i = 0
    while not stop.is_set():
        rid = "cr%d-i%d-%d" % (rnd, n, i)
        i += 1
        model = "digits"
        with led.lock:
            if led.models and rng.random() < 0.2:
                model = rng.choice(led.models)
        try:
            st, data, _ = call(srv, "POST", "/v2/models/%s/infer" % model, INFER_BODY,
                               {"X-Request-Id": rid, "Content-Type": "application/json"},
                               timeout=10 * SLACK)
        except (OSError, http.client.HTTPException):
            STATS["unanswered"] += 1
            time.sleep(0.01)
            continue
        if 200 <= st < 300:
            led.ack(rid, st, rnd, inference=True)
            if not infer_ok(data):
                loss(("answer", rid), "round %d: inference %s on %s answered %d with %r"
                     % (rnd, rid, model, st, data[:200]))
        else:
            loss(("status", rid), "round %d: inference %s on %s answered %d: %r"
                 % (rnd, rid, model, st, data[:300]))
        # Paced: every request is an audit record, and `infera audit verify` after each
        # restart reads the whole log; unpaced clients made it the longest part of a round.
        stop.wait(rng.uniform(0.01, 0.03))


def training_file(rng):
    n = rng.randint(24, 40)
    a = rng.randrange(0, len(TRAIN_LINES) - n)
    return b"".join(TRAIN_LINES[a:a + n])


def client_upload(srv, led, rnd, stop, rng):
    i = 0
    while not stop.is_set():
        rid = "cr%d-u-%d" % (rnd, i)
        i += 1
        data = training_file(rng)
        body, ctype = multipart("fine-tune", data, "crash-%d-%d.jsonl" % (rnd, i))
        try:
            st, out, _ = call(srv, "POST", "/v1/files", body,
                              {"X-Request-Id": rid, "Content-Type": ctype}, timeout=10 * SLACK)
        except (OSError, http.client.HTTPException):
            STATS["unanswered"] += 1
            time.sleep(0.01)
            continue
        if 200 <= st < 300:
            led.ack(rid, st, rnd)
            fid = json.loads(out)["id"]
            with led.lock:
                led.files[fid] = data
                led.file_round[fid] = rnd
        else:
            loss(("status", rid), "round %d: upload %s answered %d: %r" % (rnd, rid, st, out))
        stop.wait(rng.uniform(0.15, 0.45))


def client_jobs(srv, led, rnd, stop, rng):
    i = 0
    # A second job in a round only when none is left: every job is a fine-tuned model that
    # each start loads, and one training is all the kill needs.
    made = False
    while not stop.is_set():
        active = led.active_jobs()
        with led.lock:
            files = list(led.files)
        if files and (not active or (len(active) < MAX_JOBS and not made)):
            rid = "cr%d-j-%d" % (rnd, i)
            i += 1
            fid = rng.choice(files)
            epochs = rng.randint(30, 60)
            body = {"model": "digits", "training_file": fid, "suffix": "crash",
                    "hyperparameters": {"n_epochs": epochs, "batch_size": 8},
                    "seed": rng.randrange(1000)}
            try:
                st, out, _ = call(srv, "POST", "/v1/fine_tuning/jobs", body,
                                  {"X-Request-Id": rid}, timeout=10 * SLACK)
            except (OSError, http.client.HTTPException):
                STATS["unanswered"] += 1
                time.sleep(0.01)
                continue
            if 200 <= st < 300:
                made = True
                led.ack(rid, st, rnd)
                j = json.loads(out)
                with led.lock:
                    led.jobs[j["id"]] = {"round": rnd, "status": j["status"], "file": fid,
                                         "epochs": epochs}
            elif st == 429:  # a job made but not acknowledged still counts against the key
                STATS["refused_429"] += 1
            else:
                loss(("status", rid), "round %d: job create %s answered %d: %r"
                     % (rnd, rid, st, out[:300]))
        for jid in active:
            if stop.is_set():
                break
            rid = "cr%d-p-%d" % (rnd, i)
            i += 1
            try:
                st, out, _ = call(srv, "GET", "/v1/fine_tuning/jobs/" + jid, None,
                                  {"X-Request-Id": rid}, timeout=10 * SLACK)
            except (OSError, http.client.HTTPException):
                STATS["unanswered"] += 1
                break
            if 200 <= st < 300:
                led.ack(rid, st, rnd)
                with led.lock:
                    led.jobs[jid]["status"] = json.loads(out)["status"]
            else:
                loss(("job", jid), "round %d: poll of acknowledged job %s answered %d: %r"
                     % (rnd, jid, st, out[:300]))
        stop.wait(rng.uniform(0.05, 0.15))


# ------------------------------------------------------------------------------------------
# Disk and audit log
# ------------------------------------------------------------------------------------------

def running_on_disk(data_dir):
    """{job id: newest checkpoint step listed} of the jobs whose job.json says "running"."""
    out = {}
    jdir = os.path.join(data_dir, "jobs")
    for name in os.listdir(jdir) if os.path.isdir(jdir) else []:
        if not JOB_ID.fullmatch(name):
            continue
        try:
            with open(os.path.join(jdir, name, "job.json")) as f:
                doc = json.load(f)
        except (OSError, ValueError):
            continue  # no job.json: a create that never answered (acknowledged ones: checked)
        if doc.get("status") == "running":
            cks = doc.get("_checkpoints") or []
            out[name] = cks[-1]["step_number"] if cks else 0
    return out


class AuditIndex:
    """request id -> HTTP statuses of its http.request records, over every segment. A segment
    is parsed again only when its size or mtime changed (the last one, mostly)."""

    def __init__(self, data_dir):
        self.dir = os.path.join(data_dir, "audit")
        self.cache = {}

    def statuses(self):
        segs = {}
        for path in sorted(glob.glob(os.path.join(self.dir, "audit-*.jsonl"))):
            st = os.stat(path)
            key = (st.st_size, st.st_mtime_ns)
            hit = self.cache.get(path)
            if hit is None or hit[0] != key:
                with open(path, "rb") as f:
                    lines = f.read().split(b"\n")
                idx = {}
                for line in lines[:-1]:  # the last piece: "" or a line being written
                    try:
                        r = json.loads(line)
                    except ValueError:
                        continue  # bad lines are audit verify's business
                    if r.get("event") == "http.request" and "request_id" in r:
                        idx.setdefault(r["request_id"], []).append(r.get("status"))
                hit = (key, idx)
                self.cache[path] = hit
            segs[path] = hit[1]
        return segs

    def missing(self, acked):
        """The (rid, status, round) of acked with no record of that status."""
        segs = list(self.statuses().values())
        out = []
        for rid, status, rnd in acked:
            if not any(status in s.get(rid, ()) for s in segs):
                out.append((rid, status, rnd))
        return out


class AuditVerify:
    """`infera audit verify` on data_dir, started now (it runs while the checks make their
    requests). With a server running (live), a torn last line or a segment just created and
    still empty may be an append in progress: verified again a few times; what stays fails."""

    def __init__(self, data_dir, live):
        self.data_dir, self.live = data_dir, live
        self.proc = self._start()

    def _start(self):
        STATS["audit_verifies"] += 1
        return subprocess.Popen(WRAPPER + [BIN, "audit", "verify", "--data-dir", self.data_dir],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def result(self):
        """None if the log verifies, else why not."""
        for attempt in range(5):
            out, err = self.proc.communicate(timeout=120 * SLACK)
            code = self.proc.returncode
            if code == 0:
                m = re.search(r"(\d+) segments, (\d+) records", out)
                if m:
                    STATS["audit_segments"] = int(m.group(1))
                    STATS["audit_records"] = int(m.group(2))
                return None
            if WRAPPER and code == 99:
                return "the memory checker found errors in audit verify:\n" + err[-3000:]
            if not (self.live and ("torn tail" in err or "empty segment" in err)):
                break
            time.sleep(0.05 * (attempt + 1))
            self.proc = self._start()
        return "exit %d: %s" % (code, err.strip()[-600:])


# ------------------------------------------------------------------------------------------
# The checks after a restart
# ------------------------------------------------------------------------------------------

def pick(led, kind, ids, final):
    """Which objects get the per-object checks this time: those never checked yet, plus the
    ROTATE checked longest ago (every object comes round again every few rounds); final: all.
    The cheap whole-set checks (the listings) cover every object every time."""
    ids = sorted(ids)
    if final:
        chosen = ids
    else:
        new = [i for i in ids if (kind, i) not in led.deep]
        old = sorted((i for i in ids if (kind, i) in led.deep),
                     key=lambda i: led.deep[(kind, i)])
        chosen = new + old[:ROTATE]
    for i in chosen:
        led.deep[(kind, i)] = led.tick
        led.tick += 1
    return chosen


def check_after_restart(s, led, rnd, interrupted, audit, final=False):
    """Everything acknowledged before this start is there; rnd is the round that was killed.
    Whole sets every time (the audit records of the round's acknowledged requests, the file,
    job and model listings); object by object (a file's content, GET of a job, a fine-tuned
    model's ready and an inference) for the new ones and a rotating few, all at the end. The
    per-object requests run on a few threads: each waits for its audit record's fdatasync,
    and concurrent ones share a group commit."""
    where = "after round %d's kill" % rnd
    verify = AuditVerify(s.data_dir, live=True)
    # Acknowledged requests: this round's (all of them again at the end).
    acked = [a for a in led.requests if final or a[2] == rnd]
    with phase("audit"):
        missing = audit.missing(acked)
    for rid, status, r in missing:
        loss(("audit", rid), "%s: request %s (round %d) answered %d has no audit record with "
             "that status" % (where, rid, r, status))
    # Files: every one listed; content byte-identical.
    st, out = call_json(s, "GET", "/v1/files?limit=10000")
    listed = {f["id"] for f in out["data"]} if st == 200 else set()
    if st != 200:
        loss(("list", rnd), "%s: GET /v1/files answered %d: %r" % (where, st, out))
    for fid in sorted(set(led.files) - listed):
        loss(("file", fid), "%s: file %s (acknowledged in round %d) is not listed"
             % (where, fid, led.file_round[fid]))

    def check_file(fid):
        data = led.files[fid]
        st, got, _ = call(s, "GET", "/v1/files/%s/content" % fid)
        if st != 200 or got != data:
            loss(("file", fid), "%s: file %s (round %d): content answered %d, %d bytes, %s"
                 % (where, fid, led.file_round[fid], st, len(got),
                    "identical" if got == data else "different from the %d uploaded"
                    % len(data)))

    # Jobs: every one listed, none failed, no more running than workers.
    jobs = {j["id"]: j for j in list_jobs(s)}
    running = [j for j, v in jobs.items() if v["status"] == "running"]
    if len(running) > WORKERS:
        loss(("running", rnd), "%s: %d jobs running with %d worker(s): %s"
             % (where, len(running), WORKERS, running))
    for jid, info in sorted(led.jobs.items()):
        j = jobs.get(jid)
        if j is None:
            loss(("job", jid), "%s: job %s (acknowledged in round %d) is not listed"
                 % (where, jid, info["round"]))
            info["status"] = "lost"
            continue
        note_job(led, j, where)

    def check_job(jid):
        st, j = call_json(s, "GET", "/v1/fine_tuning/jobs/" + jid)
        if st != 200 or j.get("id") != jid:
            loss(("job", jid), "%s: job %s (acknowledged in round %d) answered %d: %r"
                 % (where, jid, led.jobs[jid]["round"], st, j))
            led.jobs[jid]["status"] = "lost"
            return
        note_job(led, j, where)

    with ThreadPoolExecutor(CHECK_THREADS) as ex:
        with phase("files"):
            list(ex.map(check_file, pick(led, "file", set(led.files) & listed, final)))
        with phase("jobs"):
            list(ex.map(check_job, pick(led, "job", set(led.jobs) & set(jobs), final)))
    # The job that was running at the kill: interrupted, requeued, and it moves on.
    for jid, step in sorted(interrupted.items()):
        STATS["resumes_checked"] += 1
        st, evs = call_json(s, "GET", "/v1/fine_tuning/jobs/%s/events?limit=100" % jid)
        if st != 200 or not any("interrupted" in e["message"] for e in evs["data"]):
            loss(("interrupted", jid), "%s: job %s was running at the kill but has no "
                 "'interrupted' event (%d)" % (where, jid, st))
        with phase("resume"):
            progress = wait_progress(s, jid, step)
        if progress is not None:
            loss(("stuck", jid), "%s: job %s (running at the kill, checkpoint step %d) %s"
                 % (where, jid, step, progress))
        elif jid in led.jobs:
            check_job(jid)
    with phase("models"):
        check_models(s, led, where, final)
    with phase("verify"):
        why = verify.result()
    if why:
        loss(("verify", rnd), "%s: audit verify failed: %s" % (where, why))


def note_job(led, j, where):
    """Takes a job object the server showed: its status, its model; failed is a loss."""
    info = led.jobs.get(j["id"])
    if info is None:
        return
    info["status"] = j["status"]
    if j["status"] == "succeeded" and j.get("fine_tuned_model"):
        info["fine_tuned_model"] = j["fine_tuned_model"]
    if j["status"] in ("failed", "cancelled"):
        loss(("job", j["id"]), "%s: job %s ended %s: %r" % (where, j["id"], j["status"],
                                                              j.get("error")))


def list_jobs(s):
    """Every job (GET /v1/fine_tuning/jobs, all pages), newest first."""
    out, after = [], None
    while True:
        st, page = call_json(s, "GET", "/v1/fine_tuning/jobs?limit=100" +
                             ("&after=" + after if after else ""))
        assert st == 200, (st, page)
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def wait_progress(s, jid, step):
    """None once the job has a checkpoint past step or has ended; else why it is stuck."""
    deadline = time.time() + STUCK_S
    last = None
    while True:
        st, j = call_json(s, "GET", "/v1/fine_tuning/jobs/" + jid)
        if st != 200:
            return "answers %d: %r" % (st, j)
        if j["status"] in TERMINAL:
            return None if j["status"] == "succeeded" else "ended %s: %r" % (j["status"],
                                                                             j.get("error"))
        if j["status"] not in ("queued", "running"):
            return "is %r" % j["status"]
        st, cks = call_json(s, "GET", "/v1/fine_tuning/jobs/%s/checkpoints?limit=1" % jid)
        newest = cks["data"][0]["step_number"] if st == 200 and cks["data"] else 0
        if newest > step:
            return None
        last = (j["status"], newest)
        if time.time() > deadline:
            return "made no progress in %d s (status %s, newest checkpoint step %d)" % (
                STUCK_S, last[0], last[1])
        time.sleep(0.05)


def check_models(s, led, where, final=False):
    """Models load: the base model is ready and answers; every succeeded job's model is READY
    in the repository index; new ones and a rotating few (all at the end) answer
    /v2/models/<m>/ready and an inference."""
    want = {v["fine_tuned_model"] for v in led.jobs.values()
            if v["status"] == "succeeded" and "fine_tuned_model" in v}
    st, index = call_json(s, "POST", "/v2/repository/index", {})
    ready = {m["name"] for m in index if m.get("state") == "READY"} if st == 200 else set()
    if st != 200:
        loss(("index", where), "%s: /v2/repository/index answered %d: %r" % (where, st, index))
    for m in sorted(want - ready):
        loss(("model", m), "%s: fine-tuned model %s is not READY in the repository index: %r"
             % (where, m, [x for x in index if x.get("name") == m] if st == 200 else index))

    def check(m):
        st, data, _ = call(s, "GET", "/v2/models/%s/ready" % m)
        if st != 200:
            loss(("model", m), "%s: model %s not ready (%d): %r" % (where, m, st, data[:200]))
            return
        st, data, _ = call(s, "POST", "/v2/models/%s/infer" % m, INFER_BODY,
                           {"Content-Type": "application/json"})
        if st != 200 or not infer_ok(data):
            loss(("model", m), "%s: model %s answered %d: %r" % (where, m, st, data[:200]))
            return
        if m != "digits":
            with led.lock:
                if m not in led.models:
                    led.models.append(m)

    with ThreadPoolExecutor(CHECK_THREADS) as ex:
        list(ex.map(check, ["digits"] + pick(led, "model", want & ready, final)))


# ------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------

_state = {}


def base_repo():
    """The digits MLP trained 2 epochs (a weak base to fine-tune), in a fresh repository."""
    d = tempfile.mkdtemp(prefix="infera-kill9-repo-")
    infera("train", "--model", os.path.join(EXAMPLES, "digits", "mlp"), "--data",
           os.path.join(EXAMPLES, "digits", "train.jsonl"), "--out", os.path.join(d, "digits"),
           "--epochs", "2", "--quiet", check=0)
    return d


def start(repo, data, token):
    s = Server(models=repo, data_dir=data,
               args=["--max-jobs-per-key", str(MAX_JOBS), "--train-workers", str(WORKERS),
                     # small segments: rotations happen and kills land in them; and the
                     # start-up check of the last segment stays short
                     "--audit-segment-bytes", "65536"])
    _state["server"] = s
    s.start()
    s.token = token or s.token
    return s


def kill9(s):
    s.proc.send_signal(signal.SIGKILL)
    s.proc.wait()
    s.log.close()
    log = s.read_log()
    shutil.rmtree(s.tmp, ignore_errors=True)
    _state["server"] = None
    return log


def finish_jobs(s, led):
    """Waits for every job (acknowledged or not) to end; each must have succeeded."""
    deadline = time.time() + FINISH_S
    with phase("finish"):
        while True:
            jobs = list_jobs(s)
            left = [j["id"] for j in jobs if j["status"] not in TERMINAL]
            if not left:
                break
            if time.time() > deadline:
                loss(("end", "stuck"), "jobs not finished %d s after the last restart: %s"
                     % (FINISH_S, left))
                break
            time.sleep(0.05)
    for j in jobs:
        note_job(led, j, "at the end")
        if j["status"] != "succeeded":
            loss(("job", j["id"]), "at the end: job %s is %s: %r" % (
                j["id"], j["status"], j.get("error")))


def client(fn, *args):
    """A started client thread; an exception in it (say a 2xx whose body is not what the API
    promises) is a loss, not a silently dead thread."""
    def run():
        try:
            fn(*args)
        except Exception:  # noqa: BLE001 - reported as a loss
            loss(("client", fn.__name__, args[2]), "round %d: %s failed: %s" % (
                args[2], fn.__name__, traceback.format_exc(limit=4)[-1500:]))
    t = threading.Thread(target=run)
    t.start()
    return t


def hung(s, where, e):
    """A check got no answer (or a dropped connection) from a server that should be up."""
    alive = s.proc.poll() is None
    loss(("hang", where), "%s: the server %s (%s: %s)" % (
        where, "stopped answering" if alive else "died (exit %s)" % s.proc.returncode,
        type(e).__name__, e))
    raise AssertionError("%s\nserver log (tail):\n%s" % (LOSSES[-1], s.read_log()[-4000:]))


def test_kill9_loop_under_load_and_training():
    print("     seed %d (INFERA_CRASH_SEED=%d replays it), %d rounds%s" % (
        SEED, SEED, ROUNDS, ", ASan" if ASAN else ""), flush=True)
    rng = random.Random(SEED)
    root = tempfile.mkdtemp(prefix="infera-kill9-")
    _state["root"] = root
    repo = base_repo()
    _state["repo"] = repo
    data = os.path.join(root, "data")
    led = Ledger()
    _state["ledger"] = led
    audit = AuditIndex(data)
    token = None
    interrupted = {}
    logs = []  # the last servers' logs, for the messages
    for rnd in range(ROUNDS + 1):
        t0 = time.time()
        with phase("start"):
            try:
                s = start(repo, data, token)
            except AssertionError as e:
                loss(("start", rnd), "round %d: the server did not start on the data dir: %s"
                     % (rnd, str(e)[-3000:]))
                raise
        token = s.token
        if rnd > 0:
            STATS["restarts"] += 1
            n_loss = len(LOSSES)
            try:
                check_after_restart(s, led, rnd - 1, interrupted, audit, final=rnd == ROUNDS)
            except (OSError, http.client.HTTPException) as e:
                hung(s, "after round %d's kill" % (rnd - 1), e)
            if len(LOSSES) > n_loss:
                print("     server log of round %d (tail):\n%s" % (rnd - 1, logs[-1][-3000:]))
        if rnd == ROUNDS:
            break
        t_check = time.time() - t0
        # Load, then the kill.
        stop = threading.Event()
        threads = [client(client_infer, s, led, rnd, n, stop, random.Random(rng.random()))
                   for n in range(2)]
        threads.append(client(client_upload, s, led, rnd, stop, random.Random(rng.random())))
        threads.append(client(client_jobs, s, led, rnd, stop, random.Random(rng.random())))
        n_acked = len(led.requests)
        delay = rng.uniform(*KILL_AFTER)
        with phase("load"):
            time.sleep(delay)
        with phase("kill"):
            logs = (logs + [kill9(s)])[-2:]
            stop.set()
            for t in threads:
                t.join()
        STATS["kills"] += 1
        STATS["rounds"] += 1
        interrupted = running_on_disk(data)
        if interrupted:
            STATS["kills_during_training"] += 1
        STATS["kill_points"].append({"round": rnd, "after_s": round(delay, 3),
                                     "training": sorted(interrupted.items())})
        print("     round %2d: killed after %.2f s%s; %d acknowledged (start+checks %.2f s)" % (
            rnd, delay, "" if not interrupted else ", job %s at step %d" % next(
                iter(interrupted.items())), len(led.requests) - n_acked, t_check), flush=True)
    # The last start is running (s): let every job end, then a clean stop.
    try:
        finish_jobs(s, led)
        check_models(s, led, "at the end", final=True)
    except (OSError, http.client.HTTPException) as e:
        hung(s, "at the end", e)
    STATS["jobs_succeeded"] = sum(1 for v in led.jobs.values() if v["status"] == "succeeded")
    s.stop()
    shutil.rmtree(s.tmp, ignore_errors=True)
    _state["server"] = None
    with phase("verify"):
        why = AuditVerify(data, live=False).result()
    if why:
        loss(("verify", "end"), "after the clean stop: audit verify failed: %s" % why)
    for rid, status, r in audit.missing(led.requests):
        loss(("audit", rid), "at the end: request %s (round %d) answered %d has no audit "
             "record with that status" % (rid, r, status))
    STATS["requests"] = len(led.requests)
    STATS["files"] = len(led.files)
    STATS["jobs"] = len(led.jobs)
    print("     %d kills (%d during training), %d requests acknowledged (%d inferences), "
          "%d files, %d jobs (%d succeeded), %d resumes checked, %d losses" % (
              STATS["kills"], STATS["kills_during_training"], STATS["requests"],
              STATS["inferences"], STATS["files"], STATS["jobs"], STATS["jobs_succeeded"],
              STATS["resumes_checked"], len(LOSSES)), flush=True)
    print("     seconds: " + ", ".join("%s %.1f" % kv for kv in PHASES.items()), flush=True)
    assert STATS["inferences"] > 0 and STATS["files"] > 0 and STATS["jobs"] > 0, STATS
    # The test is about kills during training: most rounds must have had a job running.
    assert STATS["kills_during_training"] >= ROUNDS // 2, (
        "only %d of %d kills came while a job was training" % (
            STATS["kills_during_training"], ROUNDS))
    assert not LOSSES, "%d losses (seed %d; data dir kept: %s):\n  %s" % (
        len(LOSSES), SEED, data, "\n  ".join(LOSSES))
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(repo, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Report (bench/reliability/run): with INFERA_REPORT_DIR set, crash.json
# ------------------------------------------------------------------------------------------

def write_report(ok, seconds, failure=None):
    """Writes $INFERA_REPORT_DIR/crash.json when the variable is set (see the top)."""
    d = os.environ.get("INFERA_REPORT_DIR")
    if not d:
        return
    details = {k: v for k, v in STATS.items() if k != "kill_points"}
    details.update({"seed": SEED, "asan": ASAN, "seconds": round(seconds, 1),
                    "phases_s": {k: round(v, 1) for k, v in PHASES.items()},
                    "lost": LOSSES[:50], "kill_points": STATS["kill_points"]})
    if failure:
        details["failure"] = failure
    doc = {"name": "crash (kill -9 loop)", "cases": STATS["rounds"],
           "faults_injected": STATS["kills"], "executions": STATS["requests"],
           "losses": len(LOSSES) + (0 if ok or LOSSES else 1), "details": details}
    report_write("crash", doc)


if __name__ == "__main__":
    t0 = time.time()
    failure = []

    def run():
        try:
            test_kill9_loop_under_load_and_training()
        except Exception:
            failure.append(traceback.format_exc(limit=3)[-2000:])
            raise
        finally:
            s = _state.get("server")
            if s is not None and s.proc is not None and s.proc.poll() is None:
                s.proc.kill()  # never leave a server behind
                s.proc.wait()
    run.__name__ = "test_kill9_loop_under_load_and_training"
    code = 1
    try:
        code = run_tests([run])
    finally:
        if "ledger" in _state:
            STATS["requests"] = len(_state["ledger"].requests)
        write_report(code == 0, time.time() - t0, failure[0] if failure else None)
    sys.exit(code)
