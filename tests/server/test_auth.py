"""Integration tests of access control, TLS and the audit log (DESIGN.md section 6, issue 4)
against real servers on 127.0.0.1.

What a user relies on: protected routes refuse requests without a valid key (401 with
WWW-Authenticate: Bearer), with a key lacking the scope (403) or over its limits (429 with
Retry-After); keys made or revoked over HTTP or by the offline CLI take effect at once; the
secret is shown once and never stored; every protected request leaves one durable audit record
before its answer, the chain verifies, `infera audit verify` catches tampering, a crash never
breaks the chain nor loses the record of an answered request; an unwritable audit log closes
protected routes (503) until it is writable again; TLS serves 1.2 and 1.3 only.

Run: cd tests && INFERA_BIN=../build/infera python3 server/test_auth.py
"""
import glob
import hashlib
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import BIN, EXAMPLES, WRAPPER, infera, main  # noqa: E402
from serverlib import SLOW, Server  # noqa: E402

TOKEN = re.compile(r"ifr_[0-9A-Za-z]{8}_[0-9A-Za-z]{43}")

_repo = {}


def repo():
    """A model repository with one small regression model, trained once per run."""
    if "dir" not in _repo:
        d = tempfile.mkdtemp(prefix="infera-auth-repo-")
        infera("train", "--model", os.path.join(EXAMPLES, "regression"), "--data",
               os.path.join(EXAMPLES, "regression", "train.jsonl"), "--out",
               os.path.join(d, "reg"), "--epochs", "3", "--quiet", check=0)
        _repo["dir"] = d
    return _repo["dir"]


def reg_request():
    with open(os.path.join(EXAMPLES, "regression", "request.json")) as f:
        return json.load(f)


def audit_records(data_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "audit", "audit-*.jsonl"))):
        with open(path, "rb") as f:
            for line in f:
                out.append(json.loads(line))
    return out


def audit_bytes(data_dir):
    data = b""
    for path in sorted(glob.glob(os.path.join(data_dir, "audit", "audit-*.jsonl"))):
        with open(path, "rb") as f:
            data += f.read()
    return data


def data_dir_keep():
    """A data directory outside the Server's scratch dir, so it outlives the server."""
    return os.path.join(tempfile.mkdtemp(prefix="infera-auth-data-"), "data")


def verify(data_dir, check=0):
    return infera("audit", "verify", "--data-dir", data_dir, check=check)


def verify_fails(data_dir):
    return infera("audit", "verify", "--data-dir", data_dir)


def make_key(srv, scopes, **extra):
    body = dict({"name": "k-" + "-".join(scopes), "scopes": scopes}, **extra)
    st, out, _ = srv.request("POST", "/v1/keys", body)
    assert st == 201, (st, out)
    assert TOKEN.fullmatch(out["key"]), out
    return out


# ------------------------------------------------------------------------------------------
# Keys, scopes, statuses
# ------------------------------------------------------------------------------------------

def test_first_start_makes_master_and_admin_key_0600():
    with Server(models=repo()) as s:
        for name in ("master.key", "admin.key", "keys.json"):
            mode = stat.S_IMODE(os.stat(os.path.join(s.data_dir, name)).st_mode)
            assert mode == 0o600, (name, oct(mode))
        assert os.path.getsize(os.path.join(s.data_dir, "master.key")) == 32
        assert TOKEN.fullmatch(s.token), s.token
        with open(os.path.join(s.data_dir, "keys.json")) as f:
            stored = f.read()
        secret = s.token.split("_")[2]
        assert secret not in stored and s.token not in stored
        assert s.read_log().count(s.token) == 1, "the admin key is logged exactly once"
        st, _ = s.get("/v2/models")
        assert st == 200


def test_open_and_protected_routes_without_key():
    with Server(models=repo()) as s:
        for path in ("/v2/health/live", "/v2/health/ready"):
            st, _, _ = s.request("GET", path, key=False)
            assert st == 200, path
        protected = [("GET", "/v2"), ("GET", "/v2/models"), ("GET", "/v2/models/reg"),
                     ("GET", "/v2/models/reg/ready"), ("POST", "/v2/models/reg/infer"),
                     ("POST", "/v2/models/reg/versions/1/infer"),
                     ("POST", "/v2/models/reg/explain"), ("POST", "/v2/repository/index"),
                     ("POST", "/v2/repository/models/reg/load"),
                     ("POST", "/v2/repository/models/reg/unload"), ("GET", "/metrics"),
                     ("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/abcdefgh")]
        for method, path in protected:
            st, out, hdrs = s.request(method, path, body={} if method == "POST" else None,
                                      key=False)
            assert st == 401, (method, path, st, out)
            assert hdrs.get("www-authenticate", "").startswith("Bearer"), hdrs
            if path.startswith("/v1/"):
                assert out["error"]["type"] == "authentication_error", out
                assert out["error"]["code"] == "invalid_api_key", out
                assert "message" in out["error"] and "param" in out["error"], out
            else:
                assert set(out) == {"error"} and "API key" in out["error"], out
        # The model still answers once the key is there: nothing was half-done.
        st, out = s.post("/v2/models/reg/infer", reg_request())
        assert st == 200, out


def test_malformed_unknown_and_key_in_url():
    with Server(models=repo()) as s:
        good = s.token
        key_id = good.split("_")[1]
        bad = ["Basic " + good, "Bearer", "Bearer ", "Bearer  " + good,
               "Bearer " + good + " x", "Bearer " + good[:-1] + "!", "Bearer xyz_" + good[4:],
               "Bearer " + good + "A", "Bearer " + good.replace(key_id, "zzzzzzzz"),
               "Bearer " + good[:-4] + "AAAA", "Token " + good, "Bearer ifr__"]
        for value in bad:
            st, out, hdrs = s.request("GET", "/v2/models", headers={"Authorization": value})
            assert st == 401, (value, st, out)
            assert 'error="invalid_token"' in hdrs["www-authenticate"], hdrs
        st, _, _ = s.request("GET", "/v2/models", headers={"Authorization": "bearer " + good})
        assert st == 200, "the scheme is case-insensitive (RFC 7235)"
        st, _, hdrs = s.request("GET", "/v2/models", headers={"Authorization": None})
        assert st == 401 and "invalid_token" not in hdrs["www-authenticate"], hdrs
        # Unknown id and wrong secret answer alike: nothing tells an attacker which ids exist.
        _, a, _ = s.request("GET", "/v2/models",
                            headers={"Authorization": "Bearer " + good[:-4] + "AAAA"})
        _, b, _ = s.request("GET", "/v2/models", headers={
            "Authorization": "Bearer " + good.replace(key_id, "zzzzzzzz")})
        assert a == b, (a, b)
        # A key in the URL is refused even with a good header.
        for q in ("?api_key=" + good, "?key=x", "?token=" + good, "?x=" + good):
            st, out, _ = s.request("GET", "/v2/models" + q)
            assert st == 401 and "Authorization header" in out["error"], (q, st, out)


def test_scopes_per_route_and_method():
    with Server(models=repo()) as s:
        infer = make_key(s, ["infer"])["key"]
        train = make_key(s, ["train"])["key"]
        both = make_key(s, ["infer", "train"])["key"]
        admin = make_key(s, ["admin"])["key"]
        req = reg_request()
        # (method, path, body, needed scope, success status)
        routes = [("GET", "/v2", None, "infer", 200), ("GET", "/v2/models", None, "infer", 200),
                  ("GET", "/v2/models/reg", None, "infer", 200),
                  ("GET", "/v2/models/reg/versions/1", None, "infer", 200),
                  ("GET", "/v2/models/reg/ready", None, "infer", 200),
                  ("POST", "/v2/models/reg/infer", req, "infer", 200),
                  ("POST", "/v2/models/reg/explain", req, "infer", 200),
                  ("POST", "/v2/repository/index", {}, "admin", 200),
                  ("GET", "/metrics", None, "admin", 200),
                  ("GET", "/v1/keys", None, "admin", 200)]
        keys = {"infer": infer, "train": train, "both": both, "admin": admin}
        allowed = {"infer": {"infer"}, "train": set(), "both": {"infer"},
                   "admin": {"infer", "admin"}}
        problems = []
        for method, path, body, need, ok_status in routes:
            for who, key in keys.items():
                st, out, _ = s.request(method, path, body, key=key)
                want = ok_status if need in allowed[who] else 403
                if st != want:
                    problems.append("%s key: %s %s -> %d %r (want %d)"
                                    % (who, method, path, st, out, want))
                if want == 403 and need not in str(out):
                    problems.append("403 without the scope's name: %r" % (out,))
        assert not problems, "\n".join(problems)
        # Admin-only writes: an infer key cannot load, unload or make keys.
        for method, path, body in (("POST", "/v2/repository/models/reg/unload", {}),
                                   ("POST", "/v2/repository/models/reg/load", {}),
                                   ("POST", "/v1/keys", {"name": "x", "scopes": ["admin"]}),
                                   ("DELETE", "/v1/keys/" + admin.split("_")[1], None)):
            st, _, _ = s.request(method, path, body, key=infer)
            assert st == 403, (method, path, st)
        st, _, _ = s.request("GET", "/v2/models", key=admin)
        assert st == 200


def test_metrics_public_flag():
    with Server(models=repo(), args=["--metrics-public", "1"]) as s:
        st, text, _ = s.request("GET", "/metrics", key=False)
        assert st == 200 and "infera_http_requests_total" in text
        st, _, _ = s.request("GET", "/v2/models", key=False)
        assert st == 401


def test_keys_api_create_list_get_revoke():
    with Server(models=repo()) as s:
        out = make_key(s, ["infer"], rate_limit=50, burst=10, max_concurrent=4)
        assert out["object"] == "api_key" and out["scopes"] == ["infer"], out
        assert out["rate_limit"] == 50 and out["burst"] == 10 and out["max_concurrent"] == 4
        key, kid = out["key"], out["id"]
        assert key.split("_")[1] == kid
        st, listing, _ = s.request("GET", "/v1/keys")
        assert st == 200 and listing["object"] == "list", listing
        text = json.dumps(listing)
        assert key not in text and key.split("_")[2] not in text, "list shows a secret"
        assert all("key" not in k and "hash" not in k for k in listing["data"]), listing
        assert kid in [k["id"] for k in listing["data"]]
        st, one, _ = s.request("GET", "/v1/keys/" + kid)
        assert st == 200 and one["id"] == kid and "key" not in one, one
        st, _, _ = s.request("GET", "/v2/models", key=key)
        assert st == 200
        st, gone, _ = s.request("DELETE", "/v1/keys/" + kid)
        assert st == 200 and gone["deleted"] is True, gone
        st, out2, _ = s.request("GET", "/v2/models", key=key)
        assert st == 401 and "revoked" in out2["error"], out2
        st, err, _ = s.request("DELETE", "/v1/keys/nosuchid")
        assert st == 404 and err["error"]["code"] == "not_found", err
        for bad in ({"name": "x"}, {"scopes": ["infer"]}, {"name": "x", "scopes": []},
                    {"name": "x", "scopes": ["root"]}, {"name": "x", "scopes": "infer"},
                    {"name": "x", "scopes": ["infer"], "rate_limit": -1},
                    {"name": "x", "scopes": ["infer"], "colour": "red"}, [1], "nope"):
            st, err, _ = s.request("POST", "/v1/keys", bad)
            assert st == 400 and err["error"]["type"] == "invalid_request_error", (bad, err)


def test_cli_keys_take_effect_on_running_server():
    with Server(models=repo()) as s:
        p = infera("keys", "create", "--name", "from-cli", "--scopes", "infer", "--data-dir",
                   s.data_dir, check=0)
        key = p.stdout.strip()
        assert TOKEN.fullmatch(key), p.stdout
        st, _, _ = s.request("GET", "/v2/models", key=key)
        assert st == 200
        listing = infera("keys", "list", "--data-dir", s.data_dir, check=0).stdout
        assert "from-cli" in listing and key.split("_")[2] not in listing, listing
        infera("keys", "revoke", key.split("_")[1], "--data-dir", s.data_dir, check=0)
        st, out, _ = s.request("GET", "/v2/models", key=key)
        assert st == 401 and "revoked" in out["error"], out
        p = infera("keys", "revoke", "nosuchid", "--data-dir", s.data_dir)
        assert p.returncode == 1 and "nosuchid" in p.stderr, p.stderr
        p = infera("keys", "create", "--name", "x", "--scopes", "root", "--data-dir", s.data_dir)
        assert p.returncode == 2, p.stderr


def test_rate_limit_429_retry_after_and_recovery():
    with Server(models=repo()) as s:
        key = make_key(s, ["infer"], rate_limit=2, burst=3)["key"]
        statuses = []
        hdrs = None
        for _ in range(6):
            st, out, h = s.request("GET", "/v2/models", key=key)
            statuses.append(st)
            if st == 429:
                hdrs, body = h, out
        assert statuses[:3] == [200, 200, 200], statuses
        assert 429 in statuses, statuses
        retry = int(hdrs["retry-after"])
        assert 1 <= retry <= 2, hdrs
        assert "rate limit" in body["error"], body
        # Other keys are not throttled by this one.
        st, _, _ = s.request("GET", "/v2/models")
        assert st == 200
        time.sleep(retry + 0.1)
        st, _, _ = s.request("GET", "/v2/models", key=key)
        assert st == 200


def test_concurrency_cap():
    with Server(models=repo()) as s:
        key = make_key(s, ["infer"], max_concurrent=1)["key"]
        req = json.dumps(reg_request()).encode()

        def hold():
            """One request held open: headers sent, body not finished."""
            c = socket.create_connection(("127.0.0.1", s.port), timeout=30 * SLOW)
            c.sendall(b"POST /v2/models/reg/infer HTTP/1.1\r\nHost: t\r\n"
                      b"Authorization: Bearer " + key.encode() + b"\r\n"
                      b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
                      % len(req) + req[:5])
            return c

        held = hold()
        deadline = time.time() + 10 * SLOW
        st = None
        while time.time() < deadline:
            st, out, hdrs = s.request("GET", "/v2/models", key=key)
            if st == 429:
                break
            # Under load the held request's checks can run while a probe holds the one slot:
            # then the held request is the one refused (429). Hold a new one and go on.
            if select.select([held], [], [], 0)[0]:
                answer = held.recv(65536)
                assert b" 429 " in answer.split(b"\r\n")[0], answer[:200]
                held.close()
                held = hold()
            time.sleep(0.05)
        assert st == 429 and "in flight" in out["error"] and hdrs["retry-after"] == "1", out
        held.sendall(req[5:])
        assert b" 200 " in held.recv(65536).split(b"\r\n")[0]
        held.close()
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline:
            st, _, _ = s.request("GET", "/v2/models", key=key)
            if st == 200:
                break
            time.sleep(0.05)
        assert st == 200


# ------------------------------------------------------------------------------------------
# Audit log
# ------------------------------------------------------------------------------------------

def test_audit_records_every_protected_request_and_verifies():
    with Server(models=repo(), data_dir=data_dir_keep()) as s:
        infer = make_key(s, ["infer"])
        secret_marker = "alice.secret@example.com"
        body = reg_request()
        body["id"] = secret_marker
        sent = []
        for i in range(5):
            st, out, h = s.request("POST", "/v2/models/reg/infer", body,
                                   key=infer["key"], headers={"X-Request-Id": "ok-%d" % i})
            assert st == 200, out
            sent.append(("ok-%d" % i, 200))
        st, _, _ = s.request("GET", "/v2/models", key=False, headers={"X-Request-Id": "noauth"})
        sent.append(("noauth", 401))
        st, _, _ = s.request("POST", "/v2/repository/index", {}, key=infer["key"],
                             headers={"X-Request-Id": "noscope"})
        sent.append(("noscope", 403))
        st, _, _ = s.request("POST", "/v2/models/john.doe@example.com/infer", body,
                             headers={"X-Request-Id": "pii"})
        assert st in (400, 404), st
        st, _, _ = s.request("GET", "/v2/health/live", key=False, headers={"X-Request-Id": "open"})
        st, _, _ = s.request("GET", "/v2/models", headers={"X-Request-Id": "10.20.30.40"})
        assert st == 200
        sent.append(("pii-ip", 200))
        # The latest records over HTTP: admin only, newest first, paged by before_seq.
        st, page, _ = s.request("GET", "/v1/audit?limit=3")
        assert st == 200 and len(page["data"]) == 3 and page["has_more"] is True, page
        seqs = [r["seq"] for r in page["data"]]
        assert seqs == sorted(seqs, reverse=True), seqs
        st, page2, _ = s.request("GET", "/v1/audit?limit=2&before_seq=%d" % seqs[-1])
        assert [r["seq"] for r in page2["data"]] == [seqs[-1] - 1, seqs[-1] - 2], page2
        assert s.request("GET", "/v1/audit", key=infer["key"])[0] == 403
        assert s.request("GET", "/v1/audit?limit=0")[0] == 400
        data_dir = s.data_dir
        log_text = s.read_log()
    recs = audit_records(data_dir)
    by_id = {r.get("request_id"): r for r in recs if r.get("event") == "http.request"}
    by_id["pii-ip"] = next(r for r in recs if r.get("request_id", "").startswith("<IPV4:"))
    for rid, status in sent:
        assert rid in by_id, (rid, sorted(by_id))
        assert by_id[rid]["status"] == status, by_id[rid]
    assert "open" not in by_id, "health probes are not audited"
    r = by_id["ok-0"]
    for field in ("ts", "seq", "mac", "request_id", "key_id", "client", "method", "route",
                  "status", "outcome", "latency_us", "bytes_in", "bytes_out", "body_sha256",
                  "model"):
        assert field in r, (field, r)
    assert r["key_id"] == infer["id"] and r["outcome"] == "ok" and r["client"] == "127.0.0.1"
    assert r["route"] == "/v2/models/{m}/infer" and r["model"] == "reg" and r["version"] == 1
    assert r["body_sha256"] == hashlib.sha256(json.dumps(body).encode()).hexdigest()
    assert by_id["noauth"]["outcome"] == "denied" and by_id["noauth"]["reason"] == "missing"
    assert by_id["noscope"]["reason"] == "scope" and by_id["noscope"]["key_id"] == infer["id"]
    assert by_id["pii"]["model"].startswith("<EMAIL:"), by_id["pii"]
    raw = audit_bytes(data_dir)
    assert b"john.doe@example.com" not in raw and secret_marker.encode() not in raw
    assert by_id["pii-ip"]["request_id"].startswith("<IPV4:"), by_id.keys()
    assert "10.20.30.40" not in log_text and "10.20.30.40" not in raw.decode()
    assert "<IPV4:" in log_text, "the access log masks client text"
    assert infer["key"].encode() not in raw and infer["key"].split("_")[2].encode() not in raw
    events = [r["event"] for r in recs]
    assert "key.created" in events and "server.started" in events, events
    # The same records over HTTP, newest first, admin only.
    seqs = [r["seq"] for r in recs]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), seqs
    p = verify(data_dir, check=0)
    assert "verifies" in p.stdout, p.stdout
    shutil.rmtree(os.path.dirname(data_dir), ignore_errors=True)


def test_audit_verify_catches_tampering():
    with Server(models=repo(), data_dir=data_dir_keep()) as s:
        for i in range(6):
            assert s.get("/v2/models")[0] == 200
        data_dir = s.data_dir
    seg = sorted(glob.glob(os.path.join(data_dir, "audit", "audit-*.jsonl")))[-1]
    with open(seg, "rb") as f:
        original = f.read()
    lines = original.splitlines(keepends=True)
    assert len(lines) >= 6, len(lines)

    def tampered(data, what):
        with open(seg, "wb") as f:
            f.write(data)
        p = verify(data_dir, check=None)
        with open(seg, "wb") as f:
            f.write(original)
        assert p.returncode == 1, (what, p.stdout, p.stderr)
        assert "FAILED" in p.stderr, (what, p.stderr)

    mid = lines[3]
    edited = mid.replace(b'"status":200', b'"status":201')
    assert edited != mid
    tampered(b"".join(lines[:3] + [edited] + lines[4:]), "edited status")
    tampered(b"".join(lines[:3] + lines[4:]), "deleted line")
    tampered(b"".join(lines[:3] + [lines[2]] + lines[3:]), "inserted copy")
    tampered(b"".join(lines[:2] + [lines[3], lines[2]] + lines[4:]), "swapped lines")
    tampered(b"".join(lines[:3] + [mid.replace(b",", b", ", 1)] + lines[4:]), "respaced")
    verify(data_dir, check=0)
    shutil.rmtree(os.path.dirname(data_dir), ignore_errors=True)


def test_unwritable_audit_log_fails_closed_and_recovers():
    with Server(models=repo(), data_dir=data_dir_keep()) as s:
        assert s.get("/v2/models")[0] == 200
        audit = os.path.join(s.data_dir, "audit")
        moved = audit + ".away"
        os.rename(audit, moved)
        with open(audit, "w") as f:
            f.write("not a directory")
        st, out = s.post("/v2/models/reg/infer", reg_request())
        assert st == 503, (st, out)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline and s.get("/v2/health/ready")[0] != 503:
            time.sleep(0.05)
        st, out = s.get("/v2/health/ready")
        assert st == 503 and "audit" in out.get("reason", ""), out
        st, out = s.get("/v2/models")
        assert st == 503, (st, out)
        assert s.get("/v2/health/live")[0] == 200
        os.unlink(audit)
        os.rename(moved, audit)
        deadline = time.time() + 10 * SLOW
        while time.time() < deadline and s.get("/v2/health/ready")[0] != 200:
            time.sleep(0.05)
        assert s.get("/v2/health/ready")[0] == 200
        st, out = s.post("/v2/models/reg/infer", reg_request())
        assert st == 200, out
        data_dir = s.data_dir
    verify(data_dir, check=0)
    shutil.rmtree(os.path.dirname(data_dir), ignore_errors=True)


def test_kill9_loop_keeps_chain_and_answered_records():
    """kill -9 at random moments while clients send requests: after each crash the log
    verifies (a torn tail is truncated at start-up and recorded) and holds a record for every
    2xx a client received."""
    data_dir = tempfile.mkdtemp(prefix="infera-crash-")
    answered = []
    rounds = 2 if WRAPPER else 6
    token = None
    for r in range(rounds):
        s = Server(models=repo(), data_dir=os.path.join(data_dir, "d"))
        s.start()
        token = token or s.token
        s.token = token
        stop = threading.Event()
        lock = threading.Lock()

        def client(n, rnd=r, srv=s):
            i = 0
            while not stop.is_set():
                rid = "c%d-%d-%d" % (rnd, n, i)
                i += 1
                try:
                    st, _, _ = srv.request("POST", "/v2/models/reg/infer", reg_request(),
                                           headers={"X-Request-Id": rid}, timeout=5 * SLOW)
                except Exception:  # noqa: BLE001 - the server dies under us on purpose
                    continue
                if 200 <= st < 300:
                    with lock:
                        answered.append(rid)

        threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        time.sleep(0.3 + 0.1 * r)
        s.proc.send_signal(signal.SIGKILL)
        s.proc.wait()
        stop.set()
        for t in threads:
            t.join()
        s.log.close()
        shutil.rmtree(s.tmp, ignore_errors=True)
    # One clean start truncates any torn tail; then everything verifies.
    with Server(models=repo(), data_dir=os.path.join(data_dir, "d")) as s:
        s.token = token
        assert s.get("/v2/models")[0] == 200
    verify(os.path.join(data_dir, "d"), check=0)
    recs = audit_records(os.path.join(data_dir, "d"))
    logged = {x.get("request_id") for x in recs if x.get("status") == 200}
    missing = [rid for rid in answered if rid not in logged]
    assert answered, "no request was answered"
    assert not missing, "answered but not in the audit log: %r" % missing[:10]
    shutil.rmtree(data_dir, ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Master key
# ------------------------------------------------------------------------------------------

def test_missing_or_wrong_master_key_refuses_to_start():
    with Server(models=repo(), data_dir=data_dir_keep()) as s:
        data_dir = s.data_dir
        assert s.get("/v2/models")[0] == 200
    os.rename(os.path.join(data_dir, "master.key"), os.path.join(data_dir, "master.key.bak"))
    p = infera("serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir, "--models", "",
               timeout=60)
    assert p.returncode != 0 and "master" in p.stderr and "INFERA_MASTER_KEY" in p.stderr, \
        p.stderr
    env = dict(os.environ, INFERA_MASTER_KEY="ab" * 32)
    p = subprocess.run(WRAPPER + [BIN, "serve", "--listen",
                                  "127.0.0.1:0", "--data-dir", data_dir, "--models", ""],
                       capture_output=True, text=True, timeout=60 * SLOW, env=env)
    assert p.returncode != 0 and "does not match" in p.stderr, p.stderr
    os.rename(os.path.join(data_dir, "master.key.bak"), os.path.join(data_dir, "master.key"))
    with Server(models=repo(), data_dir=data_dir) as s:
        with open(os.path.join(data_dir, "admin.key")) as f:
            s.token = f.read().strip()
        assert s.get("/v2/models")[0] == 200
    verify(data_dir, check=0)
    shutil.rmtree(os.path.dirname(data_dir), ignore_errors=True)


# ------------------------------------------------------------------------------------------
# TLS
# ------------------------------------------------------------------------------------------

def test_tls_12_13_only_and_no_plain_http():
    d = tempfile.mkdtemp(prefix="infera-tls-")
    cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", "/CN=localhost", "-addext",
                    "subjectAltName=IP:127.0.0.1,DNS:localhost"],
                   check=True, capture_output=True)
    s = Server(models=repo(), args=["--tls-cert", cert, "--tls-key", key])
    s.start(wait_ready=False)
    try:
        assert "https" in s.read_log()
        url = "https://127.0.0.1:%d" % s.port
        deadline = time.time() + 30 * SLOW
        while time.time() < deadline:
            p = subprocess.run(["curl", "-s", "--cacert", cert, url + "/v2/health/ready"],
                               capture_output=True, text=True)
            if '"ready":true' in p.stdout:
                break
            time.sleep(0.05)
        for v in ("--tlsv1.2", "--tlsv1.3"):
            flags = [v, "--tls-max", v[-3:]]
            p = subprocess.run(["curl", "-sS", "--cacert", cert] + flags +
                               ["-H", "Authorization: Bearer " + s.token, url + "/v2/models"],
                               capture_output=True, text=True, timeout=30 * SLOW)
            assert p.returncode == 0 and '"models"' in p.stdout, (v, p.stdout, p.stderr)
        # TLS 1.1: the server refuses the handshake (the client is told to allow it).
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.port,
                            "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                           input="", capture_output=True, text=True, timeout=30 * SLOW)
        assert p.returncode != 0, p.stdout
        assert "alert protocol version" in p.stderr or "no protocols available" in p.stderr \
            or "wrong version" in p.stderr or "unsupported protocol" in p.stderr \
            or "unexpected eof" in p.stderr, p.stderr
        assert "Cipher is (NONE)" in p.stdout, p.stdout  # no session was set up
        # The control: the same client with TLS 1.2 completes the handshake.
        p = subprocess.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % s.port,
                            "-tls1_2"], input="", capture_output=True, text=True,
                           timeout=30 * SLOW)
        assert "Protocol  : TLSv1.2" in p.stdout or "TLSv1.2" in p.stdout, p.stdout
        # Plain HTTP to the TLS port gets no HTTP answer.
        p = subprocess.run(["curl", "-sS", "-m", str(10 * SLOW),
                            "http://127.0.0.1:%d/v2/health/live" % s.port],
                           capture_output=True, text=True)
        assert p.returncode != 0 and '"live"' not in p.stdout, (p.returncode, p.stdout)
        # The server is still fine after all that.
        p = subprocess.run(["curl", "-sS", "--cacert", cert, url + "/v2/health/live"],
                           capture_output=True, text=True, timeout=30 * SLOW)
        assert '"live":true' in p.stdout, p.stdout
    finally:
        s.stop()
        s.log.close()
        shutil.rmtree(s.tmp, ignore_errors=True)
    bad = os.path.join(d, "other.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", bad,
                    "-out", os.path.join(d, "other.crt"), "-days", "2", "-subj", "/CN=x"],
                   check=True, capture_output=True)
    p = infera("serve", "--listen", "127.0.0.1:0", "--data-dir", os.path.join(d, "data"),
               "--models", "", "--tls-cert", cert, "--tls-key", bad, timeout=60)
    assert p.returncode != 0 and "certificate" in p.stderr, p.stderr
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    try:
        main(globals())
    finally:
        if "dir" in _repo:
            shutil.rmtree(_repo["dir"], ignore_errors=True)
