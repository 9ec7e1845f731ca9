#!/usr/bin/env python3
"""bench/jobs/jobs_bench.py - the driver of bench/jobs/run (which builds infera, makes the work
directory and passes both here; settings come from the environment, see run's header).

Part 1, throughput: `infera train` against a fine-tuning job on a running server, same data,
hyperparameters and seed, interleaved. Part 2, latency: wrk -c4 against the digits model on the
same server, idle against while a long job trains, interleaved. See bench/jobs/README.md.

Timing of a job without asking the server: the driver follows <data-dir>/jobs/<id>/events.jsonl
(appended and fdatasynced by the worker) with inotify and stamps each new line with its own
monotonic clock when the kernel wakes it, so following costs the server nothing (GET
/v1/fine_tuning/jobs/{id} would add an audited, fsynced request per poll) and the figures are
not limited to the events' whole-second created_at. (An earlier version read the file every 5
ms: on 2 CPUs those wake-ups landed on the training worker's CPU, which SCHED_IDLE marks as
idle to the scheduler, and cost the job up to 10% of its speed.)
"""
import ctypes
import ctypes.util
import http.client
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid

INFERA, WORK = sys.argv[1], sys.argv[2]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = os.environ
ROUNDS = int(ENV.get("ROUNDS", "3"))
PARTS = ENV.get("PARTS", "throughput latency").split()
MODELS = ENV.get("MODELS", "digits text").split()
LINES = int(ENV.get("LINES", "20000"))
EPOCHS = int(ENV.get("EPOCHS", "5"))
TRAIN_CONFIGS = ENV.get("TRAIN_CONFIGS", "train train-nice10 job job-nice0").split()
DURATION = ENV.get("DURATION", "10s")
WARMUP = ENV.get("WARMUP", "2s")
CONNS = int(ENV.get("CONNS", "4"))
BUSY = ENV.get("BUSY", "mlp cnn").split()
BUSY_EPOCHS = 1000  # the API's limit: far longer than one wrk run; cancelled after it
BATCH = 32
SEED = 0
HZ = os.sysconf("SC_CLK_TCK")
NCPU = os.cpu_count() or 1
LUA = os.path.join(ROOT, "bench", "http", "infer.lua")

# name -> (model directory in examples/, served name, training file source)
MODEL_SRC = {
    "digits": ("examples/digits/mlp", "digits", "examples/digits/train.jsonl"),
    "text": ("examples/text", "text", "examples/text/train.jsonl"),
}
BUSY_MODEL = {"mlp": "digits", "cnn": "digits-cnn"}
try:
    LIBC = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    LIBC.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
except (OSError, AttributeError):
    LIBC = None


def log(msg):
    print("bench/jobs/run: " + msg, file=sys.stderr, flush=True)


def die(msg):
    log(msg)
    sys.exit(1)


# --- Machine load ----------------------------------------------------------------------------

def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def procs_running():
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith("procs_running"):
                return int(line.split()[1])
    return 0


class LoadSampler(threading.Thread):
    """Samples /proc/stat procs_running (runnable threads, machine-wide, ours included) every
    100 ms; mean(t0, t1) is the mean over an interval of monotonic time."""

    def __init__(self):
        super().__init__(daemon=True)
        self.samples = []
        self.stop = False

    def run(self):
        while not self.stop:
            self.samples.append((time.monotonic(), procs_running()))
            time.sleep(0.1)

    def mean(self, t0, t1):
        xs = [n for t, n in list(self.samples) if t0 <= t <= t1]
        return sum(xs) / len(xs) if xs else float("nan")


SAMPLER = LoadSampler()


# --- Processes and threads -------------------------------------------------------------------

def stat_fields(path):
    """Fields of a /proc/.../stat after the command name: [0] is state (field 3)."""
    with open(path) as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()


def cpu_s(path):
    try:
        f = stat_fields(path)
    except OSError:
        return 0.0
    return (int(f[11]) + int(f[12])) / HZ


def worker_tids(pid):
    """The training workers: threads of pid under SCHED_IDLE (what infera's workers set on
    themselves; nice 10 where that is refused). Nothing else in the server changes its
    scheduling."""
    out = []
    for t in os.listdir("/proc/%d/task" % pid):
        try:
            f = stat_fields("/proc/%d/task/%s/stat" % (pid, t))
            if int(f[38]) == os.SCHED_IDLE or int(f[16]) == 10:
                out.append(int(t))
        except (OSError, ValueError, IndexError):
            pass
    return out


# --- The server ------------------------------------------------------------------------------

class Server:
    def __init__(self, repo, data):
        self.data = data
        self.logf = open(os.path.join(WORK, "server.log"), "w")
        self.proc = subprocess.Popen(
            [INFERA, "serve", "--listen", "127.0.0.1:0", "--models", repo, "--data-dir", data,
             "--access-log", "0", "--drain-delay", "0"],
            stdout=self.logf, stderr=subprocess.STDOUT)
        self.port = None
        deadline = time.time() + 60
        while self.port is None:
            if self.proc.poll() is not None:
                die("the server exited:\n" + open(self.logf.name).read())
            if time.time() > deadline:
                die("the server did not listen in 60 s:\n" + open(self.logf.name).read())
            m = re.search(r"\(port (\d+)", open(self.logf.name).read())
            if m:
                self.port = int(m.group(1))
            time.sleep(0.05)
        self.admin = open(os.path.join(data, "admin.key")).readline().strip()
        r = subprocess.run([INFERA, "keys", "create", "--data-dir", data, "--name", "bench",
                            "--scopes", "infer", "--rate", "1e6", "--burst", "1e6",
                            "--max-concurrent", "100000"], capture_output=True, text=True)
        if r.returncode != 0:
            die("infera keys create failed: " + r.stderr)
        self.infer_key = r.stdout.strip().splitlines()[0]
        deadline = time.time() + 60
        while True:
            st, _ = self.request("GET", "/v2/health/ready", key=None)
            if st == 200:
                break
            if time.time() > deadline:
                die("the server was not ready in 60 s")
            time.sleep(0.1)
        deadline = time.time() + 10
        while True:
            self.workers = worker_tids(self.proc.pid)
            if self.workers or time.time() > deadline:
                break
            time.sleep(0.05)

    def request(self, method, path, body=None, key="admin", headers=None, timeout=120):
        h = dict(headers or {})
        if key is not None:
            h["Authorization"] = "Bearer " + (self.admin if key == "admin" else key)
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request(method, path, body, h)
        r = c.getresponse()
        data = r.read()
        c.close()
        try:
            return r.status, json.loads(data)
        except ValueError:
            return r.status, data

    def upload(self, path):
        b = "----infera" + uuid.uuid4().hex
        with open(path, "rb") as f:
            data = f.read()
        body = ("--%s\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n"
                "--%s\r\nContent-Disposition: form-data; name=\"file\"; filename=\"%s\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n" % (b, b, os.path.basename(path))).encode()
        body += data + ("\r\n--%s--\r\n" % b).encode()
        t0 = time.monotonic()
        st, out = self.request("POST", "/v1/files", body,
                               headers={"Content-Type": "multipart/form-data; boundary=" + b})
        if st not in (200, 201):
            die("upload of %s: HTTP %s %s" % (path, st, out))
        return out["id"], time.monotonic() - t0

    def cpu(self):
        return cpu_s("/proc/%d/stat" % self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class EventWatch:
    """Follows a job's events.jsonl; each line is stamped with the monotonic time it was seen."""

    def __init__(self, data, job_id):
        self.path = os.path.join(data, "jobs", job_id, "events.jsonl")
        self.off = 0
        self.buf = b""
        self.events = []  # (t, event)
        self.fd = -1  # inotify on the file: wake only when it changes (no polling)
        fd = LIBC.inotify_init1(os.O_CLOEXEC | os.O_NONBLOCK) if LIBC else -1
        if fd >= 0:
            IN_MODIFY = 0x2
            if LIBC.inotify_add_watch(fd, self.path.encode(), IN_MODIFY) >= 0:
                self.fd = fd
            else:
                os.close(fd)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def sleep(self, seconds):
        """Until the file changes (inotify) or seconds pass; 5 ms polling without inotify."""
        if self.fd < 0:
            time.sleep(min(seconds, 0.005))
            return
        r, _, _ = select.select([self.fd], [], [], max(seconds, 0))
        if r:
            try:
                while os.read(self.fd, 65536):
                    pass
            except BlockingIOError:
                pass

    def poll(self):
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                chunk = f.read()
        except FileNotFoundError:
            return
        if not chunk:
            return
        t = time.monotonic()
        self.off += len(chunk)
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            if line.strip():
                self.events.append((t, json.loads(line)))

    def first(self, pred):
        for t, ev in self.events:
            if pred(ev):
                return t, ev
        return None

    def wait(self, pred, timeout, what):
        deadline = time.monotonic() + timeout
        while True:
            self.poll()
            hit = self.first(pred)
            if hit:
                return hit
            if self.first(lambda e: e.get("level") == "error"):
                die("job failed: %s" % self.first(lambda e: e.get("level") == "error")[1])
            if time.monotonic() > deadline:
                die("no '%s' event in %.0f s (events: %s)" %
                    (what, timeout, [e["message"] for _, e in self.events]))
            self.sleep(min(1.0, deadline - time.monotonic()))


STARTED = lambda e: e.get("message", "").startswith("Fine-tuning job started")  # noqa: E731
DONE = lambda e: e.get("message", "") == "The job has successfully completed"  # noqa: E731
METRICS = lambda e: e.get("type") == "metrics"  # noqa: E731


def create_job(srv, model, file_id, epochs, suffix):
    body = {"model": model, "training_file": file_id, "seed": SEED, "suffix": suffix,
            "hyperparameters": {"n_epochs": epochs, "batch_size": BATCH,
                                "learning_rate_multiplier": 1}}
    st, out = srv.request("POST", "/v1/fine_tuning/jobs", body)
    if st != 200:
        die("create job: HTTP %s %s" % (st, out))
    return out


def job_status(srv, jid):
    st, out = srv.request("GET", "/v1/fine_tuning/jobs/" + jid)
    if st != 200:
        die("GET job %s: HTTP %s %s" % (jid, st, out))
    return out


def wait_status(srv, jid, statuses, timeout=120):
    deadline = time.monotonic() + timeout
    while True:
        j = job_status(srv, jid)
        if j["status"] in statuses:
            return j
        if time.monotonic() > deadline:
            die("job %s still %s after %.0f s" % (jid, j["status"], timeout))
        time.sleep(0.05)


# --- Part 1: throughput ----------------------------------------------------------------------

EPOCH_RE = re.compile(r"^epoch (\d+)/\d+ .* (\d+) samples/s$")


def run_train(model, data, out, nice):
    src = MODEL_SRC[model][0]
    cmd = [INFERA, "train", "--model", src, "--data", data, "--out", out, "--epochs", str(EPOCHS),
           "--batch-size", str(BATCH), "--seed", str(SEED)]
    if nice:
        cmd = ["nice", "-n", "10"] + cmd
    shutil.rmtree(out, ignore_errors=True)
    errf = open(out + ".stderr", "w+")
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=errf)
    _, status, ru = os.wait4(p.pid, 0)
    t1 = time.monotonic()
    p.returncode = os.waitstatus_to_exitcode(status)
    errf.seek(0)
    text = errf.read()
    if p.returncode != 0:
        die("%s failed (%d): %s" % (" ".join(cmd), p.returncode, text))
    sps = [int(m.group(2)) for m in map(EPOCH_RE.match, text.splitlines()) if m]
    if len(sps) != EPOCHS:
        die("infera train printed %d epoch lines, expected %d:\n%s" % (len(sps), EPOCHS, text))
    return {"wall_s": t1 - t0, "epoch_s": sum(LINES / s for s in sps),
            "cpu_s": ru.ru_utime + ru.ru_stime, "load": SAMPLER.mean(t0, t1),
            "weights": os.path.join(out, "weights.safetensors")}


def run_job(srv, model, file_id, nice0, suffix):
    tid = srv.workers[0]
    if nice0:  # the worker as an ordinary thread: SCHED_OTHER, nice 0
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        os.setpriority(os.PRIO_PROCESS, tid, 0)
    else:
        os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    c0, w0 = srv.cpu(), cpu_s("/proc/%d/task/%d/stat" % (srv.proc.pid, tid))
    t_create = time.monotonic()
    j = create_job(srv, MODEL_SRC[model][1], file_id, EPOCHS, suffix)
    w = EventWatch(srv.data, j["id"])
    t_start, _ = w.wait(STARTED, 120, "started")
    t_done, _ = w.wait(DONE, 3600, "completed")
    w.close()
    done = wait_status(srv, j["id"], ("succeeded",))
    c1, w1 = srv.cpu(), cpu_s("/proc/%d/task/%d/stat" % (srv.proc.pid, tid))
    sps = [e["data"]["samples_per_s"] for _, e in w.events if METRICS(e)]
    if len(sps) != EPOCHS:
        die("job %s has %d metrics events, expected %d" % (j["id"], len(sps), EPOCHS))
    wdir = os.path.join(srv.data, "models", done["fine_tuned_model"], "1")
    # Per-epoch persistence from the kernel's clock: the kept checkpoints' (the newest 3) mtimes
    # are one epoch apart; a gap less that epoch's training seconds is what the job spends per
    # epoch outside the training loop (checkpoint seal + fsync + rename + directory fsync, the
    # metrics event's fdatasync, job.json written atomically).
    ckdir = os.path.join(srv.data, "jobs", j["id"], "checkpoints")
    per_epoch = (LINES + BATCH - 1) // BATCH
    ck = sorted((int(re.match(r"ckpt-step-(\d+)", f).group(1)) // per_epoch,
                 os.stat(os.path.join(ckdir, f)).st_mtime_ns / 1e9)
                for f in os.listdir(ckdir) if f.startswith("ckpt-step-"))
    gaps = [(t1 - t0) - LINES / sps[e1 - 1] for (e0, t0), (e1, t1) in zip(ck, ck[1:])
            if e1 == e0 + 1]
    return {"wall_s": t_done - t_start, "client_s": t_done - t_create,
            "persist_ms": sum(gaps) / len(gaps) * 1e3 if gaps else None,
            "epoch_s": sum(LINES / s for s in sps), "cpu_s": c1 - c0, "worker_cpu_s": w1 - w0,
            "load": SAMPLER.mean(t_start, t_done),
            "weights": os.path.join(wdir, "weights.safetensors")}


def same_file(a, b):
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False


def throughput(srv, files):
    configs = [c for c in TRAIN_CONFIGS]
    if not srv.workers:
        log("WARNING: no training worker thread at nice 10 found (setpriority failed?): "
            "job-nice0 is skipped and the worker CPU column is empty")
        configs = [c for c in configs if c != "job-nice0"]
    runs = []
    n = len(configs)
    for r in range(1, ROUNDS + 1):
        for model in MODELS:
            for k in range(n):
                c = configs[(k + r - 1) % n]
                log("throughput round %d/%d: %s, %s, %d lines x %d epochs" %
                    (r, ROUNDS, model, c, LINES, EPOCHS))
                if c.startswith("train"):
                    res = run_train(model, files[model][0],
                                    os.path.join(WORK, "out-%s-%s-%d" % (model, c, r)),
                                    c == "train-nice10")
                else:
                    res = run_job(srv, model, files[model][1], c == "job-nice0",
                                  "%s%d" % (c.replace("-", ""), r))
                res.update(model=model, conf=c, round=r)
                runs.append(res)
    # the worker back at its own nice 10 for the latency part
    if srv.workers:
        os.sched_setscheduler(srv.workers[0], os.SCHED_IDLE, os.sched_param(0))
    return runs


def report_throughput(runs, files):
    print("== Training throughput: job API vs `infera train` ==")
    print("%d lines (the example train.jsonl repeated), %d epochs, batch %d, seed %d, the "
          "model's optimizer and learning rate;\nbest of %d rounds (interleaved, order rotated)."
          " samples/s = lines x epochs / wall." % (LINES, EPOCHS, BATCH, SEED, ROUNDS))
    print("wall: train = the process (load, parse, train, save); job = its 'started' event to "
          "its 'completed'\nevent (read + decrypt the file, parse, train, checkpoint per epoch, "
          "save, register, result file).")
    print()
    hdr = ("%-7s %-13s %9s %7s %8s %8s %9s %8s %8s %7s %8s %6s" %
           ("model", "configuration", "samples/s", "vs train", "wall s", "epochs s", "overhd s",
            "client s", "cpu s", "wrk cpu", "ms/epoch", "load"))
    print(hdr)
    print("-" * len(hdr))
    best = {}
    for r in runs:
        k = (r["model"], r["conf"])
        if k not in best or r["wall_s"] < best[k]["wall_s"]:
            best[k] = r
    status_lines = []
    for model in MODELS:
        base = best.get((model, "train"))
        for c in TRAIN_CONFIGS:
            r = best.get((model, c))
            if r is None:
                continue
            sps = LINES * EPOCHS / r["wall_s"]
            ratio = "%.3f" % (base["wall_s"] / r["wall_s"]) if base else "-"
            print("%-7s %-13s %9.0f %7s %8.2f %8.2f %9.2f %8s %8.2f %7s %8s %6.2f" % (
                model, c, sps, ratio, r["wall_s"], r["epoch_s"], r["wall_s"] - r["epoch_s"],
                "%.2f" % r["client_s"] if "client_s" in r else "-", r["cpu_s"],
                "%.2f" % r["worker_cpu_s"] if "worker_cpu_s" in r else "-",
                "%.1f" % r["persist_ms"] if r.get("persist_ms") is not None else "-", r["load"]))
        print()
    print("vs train: samples/s over `infera train`'s (best rounds). epochs s: the engine's own "
          "seconds in the\ntraining loop (sum over epochs of lines / samples_per_s, from "
          "train's progress lines or the job's\nmetrics events). overhd s: wall - epochs s "
          "(load, parse, per-epoch checkpoint + fsyncs, save).\nclient s: job only, from "
          "sending POST /v1/fine_tuning/jobs (validation, queue) to 'completed'.\ncpu s: CPU "
          "of the train process / of the whole server over the job (all threads);\nwrk cpu: "
          "the training worker thread's CPU. ms/epoch: job only, per-epoch persistence (checkpoint\n"
          "sealed + fsynced, metrics event fdatasynced, job.json rewritten): consecutive "
          "checkpoints' mtimes\nless that epoch's training seconds, mean over the kept "
          "checkpoints' gaps. load: mean runnable\nthreads on the machine (/proc/stat "
          "procs_running, ours included; %d CPUs) during the run." % NCPU)
    print()
    print("all rounds (wall s; load):")
    for model in MODELS:
        for c in TRAIN_CONFIGS:
            cells = ["%.2f (%.1f)" % (r["wall_s"], r["load"]) for r in runs
                     if r["model"] == model and r["conf"] == c]
            if cells:
                print("  %-7s %-13s %s" % (model, c, "  ".join(cells)))
    print()
    # Same work: the job's fine-tuned weights against infera train's, byte for byte.
    for model in MODELS:
        t = [r for r in runs if r["model"] == model and r["conf"] == "train"]
        j = [r for r in runs if r["model"] == model and r["conf"].startswith("job")]
        if t and j:
            same = all(same_file(t[0]["weights"], x["weights"]) for x in j)
            print("  %s: every job's weights.safetensors %s infera train's (same start, data, "
                  "seed)" % (model, "is byte-identical to" if same else "DIFFERS from"))
    print()
    print("target (issue): training throughput through the job API within 10% of `infera train`"
          " (ratio >= 0.90)")
    for model in MODELS:
        base, job = best.get((model, "train")), best.get((model, "job"))
        if not (base and job):
            continue
        ratio = base["wall_s"] / job["wall_s"]
        print("  %-7s job/train %.3f  >= 0.90   %s" %
              (model, ratio, "PASS" if ratio >= 0.90 else "*** BELOW ***"))
        paired = sorted(
            a["wall_s"] / b["wall_s"] for a in runs for b in runs
            if a["model"] == b["model"] == model and a["round"] == b["round"]
            and a["conf"] == "train" and b["conf"] == "job")
        if paired:
            print("          per round: %s (sorted), median %.3f" %
                  (", ".join("%.3f" % x for x in paired), paired[len(paired) // 2]))
        for num, den, what in (("train-nice10", "job", "job/train-nice10 (same priority)"),
                               ("train", "job-nice0", "job-nice0/train (worker not niced)")):
            a, b = best.get((model, num)), best.get((model, den))
            if a and b:
                print("          for reference: %s %.3f" % (what, a["wall_s"] / b["wall_s"]))
        cj = best[(model, "job")]["cpu_s"]
        print("          CPU: job (whole server) / train process %.3f; training worker thread / "
              "train process %.3f" % (cj / base["cpu_s"], best[(model, "job")]["worker_cpu_s"]
                                      / base["cpu_s"] if "worker_cpu_s" in best[(model, "job")]
                                      else float("nan")))
    print()


# --- Part 2: inference latency ---------------------------------------------------------------

def run_wrk(srv, body, duration):
    cmd = ["wrk", "-t1", "-c%d" % CONNS, "-d" + duration, "--latency", "--timeout", "10s",
           "-s", LUA, "-H", "Authorization: Bearer " + srv.infer_key,
           "http://127.0.0.1:%d/v2/models/digits/infer" % srv.port, "--", body]
    c0 = srv.cpu()
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True)
    t1 = time.monotonic()
    c1 = srv.cpu()
    m = re.search(r"^RESULT (.*)$", out.stdout, re.M)
    if not m:
        die("wrk printed no RESULT line:\n" + out.stdout + out.stderr)
    res = json.loads(m.group(1))
    res.update(server_cpu_s=c1 - c0, load=SAMPLER.mean(t0, t1), t0=t0, t1=t1)
    return res


def latency(srv, files):
    body = os.path.join(WORK, "request.json")
    r = json.load(open(os.path.join(ROOT, "examples/digits/request.json")))
    row = r["inputs"][0]["data"][0]
    json.dump({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 64], "data": row}]},
              open(body, "w"))
    st, out = srv.request("POST", "/v2/models/digits/infer", open(body, "rb").read(),
                          key=srv.infer_key, headers={"Content-Type": "application/json"})
    if st != 200:
        die("infer with the bench key: HTTP %s %s" % (st, out))
    st, _ = srv.request("POST", "/v2/models/digits/infer", open(body, "rb").read(), key=None,
                        headers={"Content-Type": "application/json"})
    if st != 401:
        die("infer without a key answered %s, not 401" % st)
    configs = ["idle"] + ["busy-" + b for b in BUSY]
    log("latency warm-up: %d connections, %s" % (CONNS, WARMUP))
    run_wrk(srv, body, WARMUP)
    runs = []
    n = len(configs)
    for r in range(1, ROUNDS + 1):
        for k in range(n):
            c = configs[(k + r - 1) % n]
            log("latency round %d/%d: %s, %d connections, %s" % (r, ROUNDS, c, CONNS, DURATION))
            running = [j for j in srv.request("GET", "/v1/fine_tuning/jobs?limit=100")[1]["data"]
                       if j["status"] in ("queued", "running")]
            if running:
                die("jobs still running before a latency run: %s" % [j["id"] for j in running])
            if c == "idle":
                res = run_wrk(srv, body, DURATION)
                res.update(epochs=None, worker_cpu_s=None, job_running=None)
            else:
                model = BUSY_MODEL[c.split("-", 1)[1]]
                j = create_job(srv, model, files["digits"][1], BUSY_EPOCHS, "busy%d" % r)
                w = EventWatch(srv.data, j["id"])
                # steady state: the file is parsed and the first epoch is done
                w.wait(METRICS, 600, "first epoch")
                tid = srv.workers[0] if srv.workers else None
                wc0 = cpu_s("/proc/%d/task/%d/stat" % (srv.proc.pid, tid)) if tid else 0
                w.poll()
                e0 = sum(1 for _, e in w.events if METRICS(e))
                res = run_wrk(srv, body, DURATION)
                w.poll()
                e1 = sum(1 for _, e in w.events if METRICS(e))
                w.close()
                wc1 = cpu_s("/proc/%d/task/%d/stat" % (srv.proc.pid, tid)) if tid else 0
                still = job_status(srv, j["id"])["status"] == "running"
                st, out = srv.request("POST", "/v1/fine_tuning/jobs/%s/cancel" % j["id"])
                if st != 200:
                    die("cancel %s: HTTP %s %s" % (j["id"], st, out))
                wait_status(srv, j["id"], ("cancelled",))
                res.update(epochs=e1 - e0, worker_cpu_s=(wc1 - wc0) if tid else None,
                           job_running=still)
            res.update(conf=c, round=r)
            runs.append(res)
    return runs


def report_latency(runs):
    print("== Inference latency at %d connections: idle vs one job training ==" % CONNS)
    print("wrk -t1 -c%d -d%s --latency (bench/http/infer.lua), POST /v2/models/digits/infer, "
          "batch-1 FP32 [1, 64],\nbench infer key (no effective limits), server defaults "
          "(auth + fdatasync'd audit on, --access-log 0);\nbest of %d rounds by p99 (interleaved, "
          "order rotated)." % (CONNS, DURATION, ROUNDS))
    print("busy-mlp: a job fine-tuning the digits MLP, busy-cnn: the digits CNN, on the %d-line "
          "digits file,\n%d epochs, started before the run (first epoch done) and cancelled "
          "after it." % (LINES, BUSY_EPOCHS))
    print()
    bad = lambda w: w["errors"] + w["non2xx"]  # noqa: E731
    best = {}
    for r in runs:
        if bad(r) or r.get("job_running") is False:
            continue
        if r["conf"] not in best or r["p99_us"] < best[r["conf"]]["p99_us"]:
            best[r["conf"]] = r
    hdr = ("%-9s %8s %7s %7s %7s %8s %8s %10s %8s %8s %6s" %
           ("server", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99/idle",
            "cpu us/req", "epochs/s", "wrk cpu", "load"))
    print(hdr)
    print("-" * len(hdr))
    idle = best.get("idle")
    configs = ["idle"] + ["busy-" + b for b in BUSY]
    for c in configs:
        r = best.get(c)
        if r is None:
            print("%-9s *** no clean run ***" % c)
            continue
        secs = r["duration_s"]
        print("%-9s %8.0f %7.2f %7.2f %7.2f %8.2f %8s %10.0f %8s %8s %6.2f" % (
            c, r["rps"], r["p50_us"] / 1e3, r["p90_us"] / 1e3, r["p99_us"] / 1e3,
            r["max_us"] / 1e3, "%.2f" % (r["p99_us"] / idle["p99_us"]) if idle else "-",
            r["server_cpu_s"] / r["requests"] * 1e6 if r["requests"] else float("nan"),
            "%.2f" % (r["epochs"] / secs) if r["epochs"] is not None else "-",
            "%.0f%%" % (r["worker_cpu_s"] / secs * 100) if r["worker_cpu_s"] is not None else "-",
            r["load"]))
    print()
    print("cpu us/req: server CPU (all threads, training included) per request. epochs/s: the "
          "job's epochs\ncompleted during the run; wrk cpu: the training worker's CPU over the "
          "run (100%% = one core).\nload: mean runnable threads (procs_running, ours included) "
          "on %d CPUs." % NCPU)
    print()
    print("all rounds (p99 ms / req/s; ! = errors, non-2xx or the job not running: not used):")
    for c in configs:
        cells = []
        for r in (r for r in runs if r["conf"] == c):
            flag = "!" if bad(r) or r.get("job_running") is False else ""
            cells.append("%.2f/%.0f%s" % (r["p99_us"] / 1e3, r["rps"], flag))
        print("  %-9s %s" % (c, "  ".join(cells)))
    print()
    print("target (issue): with one job running, p99 at %d connections within 2x of idle "
          "(ratio <= 2.0)" % CONNS)
    for c in configs[1:]:
        r = best.get(c)
        if not (r and idle):
            continue
        ratio = r["p99_us"] / idle["p99_us"]
        print("  %-9s p99 busy/idle %.2f  <= 2.0   %s" %
              (c, ratio, "PASS" if ratio <= 2.0 else "*** BELOW ***"))
        paired = sorted(a["p99_us"] / b["p99_us"] for a in runs for b in runs
                        if a["round"] == b["round"] and a["conf"] == c and b["conf"] == "idle"
                        and not bad(a) and not bad(b) and a.get("job_running") is not False)
        if paired:
            print("            per round: %s (sorted), median %.2f; p50 busy/idle %.2f, req/s "
                  "busy/idle %.2f" % (", ".join("%.2f" % x for x in paired),
                                      paired[len(paired) // 2], r["p50_us"] / idle["p50_us"],
                                      r["rps"] / idle["rps"]))
    print()


# --- Main ------------------------------------------------------------------------------------

def fsync_probe(n=20):
    """Median ms of what one epoch's persistence is made of, on the work dir's disk: writing a
    128 KiB file + fsync, and appending a 300-byte line + fdatasync."""
    out = []
    for size, sync in ((128 << 10, os.fsync), (300, os.fdatasync)):
        p = os.path.join(WORK, "fsync-probe")
        ts = []
        for _ in range(n):
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            t0 = time.monotonic()
            os.write(fd, os.urandom(size))
            sync(fd)
            ts.append((time.monotonic() - t0) * 1e3)
            os.close(fd)
        os.unlink(p)
        out.append(sorted(ts)[n // 2])
    return out


def replicate(src, dst, n):
    with open(os.path.join(ROOT, src)) as f:
        lines = [l for l in f.read().splitlines() if l.strip()]
    with open(dst, "w") as f:
        for i in range(n):
            f.write(lines[i % len(lines)] + "\n")


def main():
    SAMPLER.start()
    load0 = loadavg()
    t_begin = time.monotonic()
    fstype = subprocess.run(["df", "-T", WORK], capture_output=True, text=True).stdout
    fstype = fstype.splitlines()[1].split() if len(fstype.splitlines()) > 1 else ["?"] * 7
    log("work dir %s on %s (%s)" % (WORK, fstype[1], fstype[-1]))
    if fstype[1] in ("tmpfs", "ramfs"):
        log("WARNING: the work dir is on a RAM filesystem: fsync costs nothing there")
    fsync_ms = fsync_probe()
    repo = os.path.join(WORK, "repo")
    for name, src in (("digits", "examples/digits/mlp"), ("text", "examples/text"),
                      ("digits-cnn", "examples/digits/cnn")):
        os.makedirs(os.path.join(repo, name))
        shutil.copy(os.path.join(ROOT, src, "model.json"), os.path.join(repo, name))
    need = set(MODELS) | ({"digits"} if "latency" in PARTS else set())
    paths = {}
    for m in need:
        paths[m] = os.path.join(WORK, "%s-%d.jsonl" % (m, LINES))
        replicate(MODEL_SRC[m][2], paths[m], LINES)
    srv = Server(repo, os.path.join(WORK, "data"))
    log("server pid %d, port %d, training worker thread(s) %s" %
        (srv.proc.pid, srv.port, srv.workers or "not found at nice 10"))
    try:
        files = {}
        for m in sorted(need):
            fid, secs = srv.upload(paths[m])
            files[m] = (paths[m], fid)
            log("uploaded %s (%.1f MB) as %s in %.2f s" %
                (paths[m], os.path.getsize(paths[m]) / 1e6, fid, secs))
        truns = throughput(srv, files) if "throughput" in PARTS else None
        lruns = latency(srv, files) if "latency" in PARTS else None
    finally:
        srv.stop()
    load1 = loadavg()
    SAMPLER.stop = True
    allmean = SAMPLER.mean(t_begin, time.monotonic())
    ver = subprocess.run([INFERA, "version"], capture_output=True, text=True).stdout.strip()
    print("infera fine-tuning jobs benchmark (%s), %d CPUs, data dir on %s" %
          (ver or INFERA, NCPU, fstype[1]))
    print("disk (work dir): 128 KiB write + fsync %.2f ms, 300-byte append + fdatasync %.2f ms "
          "(medians of 20)" % tuple(fsync_ms))
    print("load average (1/5/15 min) at start %s, at end %s; mean runnable threads over the "
          "run %.2f" % ("/".join("%.2f" % x for x in load0), "/".join("%.2f" % x for x in load1),
                        allmean))
    print()
    if truns:
        report_throughput(truns, files)
    if lruns:
        report_latency(lruns)
    if max(load0[0], load1[0]) > NCPU - 0.5:
        print("WARNING: load average %.2f at start, %.2f at end on %d CPUs: other work was "
              "running; trust the\ninterleaved ratios (and the CPU columns) more than the "
              "absolute figures" % (load0[0], load1[0], NCPU))


if __name__ == "__main__":
    main()
