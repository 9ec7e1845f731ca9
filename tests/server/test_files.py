"""Integration tests of the files API (DESIGN.md section 5 "Fine-tuning", section 6) against
real servers on 127.0.0.1.

What a user relies on: POST /v1/files takes training JSONL as multipart/form-data the way curl
-F and the OpenAI SDKs send it and answers OpenAI's file object; bad files are refused at upload
with the line and the problem, and over-size ones with 413; GET lists (OpenAI's pagination:
limit, after, order, purpose, has_more, first_id, last_id), GET one, GET content (byte-exact),
DELETE (gone from disk); the content is encrypted at rest and a file altered on disk is an
error, never garbage; a key sees only its own files (another key's are 404 and never listed),
admin sees all; every upload and deletion is an audit event with the filename masked.

Run: cd tests && INFERA_BIN=../build/infera python3 server/test_files.py
"""
import glob
import http.client
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from harness import infera, main  # noqa: E402
from serverlib import SLOW, Server  # noqa: E402

FILE_ID = re.compile(r"file-[0-9A-Za-z]{24}")

TRAIN = (b'{"input": [1, 2, 3], "label": "cat"}\n'
         b'{"input": [4, 5, 6], "label": "dog"}\n'
         b'{"input": [7, 8, 9], "label": 0}\n')


def multipart(fields, boundary="----formdata-undici-012345678901"):
    """A multipart/form-data body as Node's fetch (undici) builds it for the OpenAI SDK:
    fields are (name, bytes, filename or None, content type or None). Returns (body, ctype)."""
    out = b""
    for name, value, filename, ctype in fields:
        out += b"--" + boundary.encode() + b"\r\n"
        disp = 'Content-Disposition: form-data; name="%s"' % name
        if filename is not None:
            disp += '; filename="%s"' % filename
        out += disp.encode() + b"\r\n"
        if ctype is not None:
            out += b"Content-Type: " + ctype.encode() + b"\r\n"
        out += b"\r\n" + value + b"\r\n"
    out += b"--" + boundary.encode() + b"--\r\n"
    return out, "multipart/form-data; boundary=" + boundary


def raw(srv, method, path, body=None, headers=None, key=True):
    """(status, body bytes, headers) without any decoding; key as in Server.request."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60 * SLOW)
    hdrs = dict(headers or {})
    tok = key if isinstance(key, str) else (srv.token if key else None)
    if tok:
        hdrs["Authorization"] = "Bearer " + tok
    conn.request(method, path, body=body, headers=hdrs)
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, {k.lower(): v for k, v in resp.getheaders()}


def chunked(srv, body, ctype, key=True):
    """POST /v1/files with Transfer-Encoding: chunked, as the Node SDK 5+ (fetch) sends it."""
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60 * SLOW)
    hdrs = {"Content-Type": ctype, "Authorization": "Bearer " + srv.token}
    pieces = [body[i:i + 7000] for i in range(0, len(body), 7000)]
    conn.request("POST", "/v1/files", body=iter(pieces), headers=hdrs, encode_chunked=True)
    resp = conn.getresponse()
    out = json.loads(resp.read())
    conn.close()
    return resp.status, out


def upload(srv, data, filename="train.jsonl", purpose="fine-tune", key=True, extra=()):
    fields = []
    if purpose is not None:
        fields.append(("purpose", purpose.encode(), None, None))
    if data is not None:
        fields.append(("file", data, filename, "application/octet-stream"))
    fields += list(extra)
    body, ctype = multipart(fields)
    return srv.request("POST", "/v1/files", body=body, headers={"Content-Type": ctype}, key=key)


def upload_ok(srv, data=TRAIN, **kw):
    st, out, _ = upload(srv, data, **kw)
    assert st == 200, (st, out)
    return out


def make_key(srv, scopes):
    st, out, _ = srv.request("POST", "/v1/keys", {"name": "k-" + "-".join(scopes),
                                                  "scopes": scopes})
    assert st == 201, (st, out)
    return out["key"]


def error_of(out):
    """The message of an OpenAI-shaped error answer (and checks the shape)."""
    assert isinstance(out, dict) and set(out) == {"error"}, out
    err = out["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    return err["message"]


def files_dir(srv):
    return os.path.join(srv.data_dir, "files")


def audit_records(data_dir):
    out = []
    for path in sorted(glob.glob(os.path.join(data_dir, "audit", "audit-*.jsonl"))):
        with open(path, "rb") as f:
            out += [json.loads(line) for line in f]
    return out


def list_ids(srv, query="", key=True):
    st, out, _ = srv.request("GET", "/v1/files" + query, key=key)
    assert st == 200, (st, out)
    return [f["id"] for f in out["data"]], out


# ------------------------------------------------------------------------------------------
# Upload, the file object, retrieve, content
# ------------------------------------------------------------------------------------------

def test_upload_with_curl_and_file_object():
    with Server() as s:
        d = tempfile.mkdtemp(prefix="infera-files-")
        path = os.path.join(d, "my train.jsonl")
        with open(path, "wb") as f:
            f.write(TRAIN)
        before = int(time.time())
        p = subprocess.run(["curl", "-sS", "-H", "Authorization: Bearer " + s.token,
                            "-F", "purpose=fine-tune", "-F", "file=@" + path,
                            "http://127.0.0.1:%d/v1/files" % s.port],
                           capture_output=True, timeout=60 * SLOW)
        shutil.rmtree(d)
        assert p.returncode == 0, p.stderr
        obj = json.loads(p.stdout)
        assert FILE_ID.fullmatch(obj["id"]), obj
        assert obj["object"] == "file" and obj["bytes"] == len(TRAIN), obj
        assert before <= obj["created_at"] <= int(time.time()), obj
        assert obj["filename"] == "my train.jsonl" and obj["purpose"] == "fine-tune", obj
        assert obj["status"] == "processed", obj
        st, got, _ = s.request("GET", "/v1/files/" + obj["id"])
        assert st == 200 and got == obj, (st, got)
        st, data, hdrs = raw(s, "GET", "/v1/files/%s/content" % obj["id"])
        assert st == 200 and data == TRAIN, (st, data)
        assert hdrs["content-type"] == "application/octet-stream", hdrs
        # curl the way users do to get it back, too
        p = subprocess.run(["curl", "-sS", "-f", "-H", "Authorization: Bearer " + s.token,
                            "http://127.0.0.1:%d/v1/files/%s/content" % (s.port, obj["id"])],
                           capture_output=True, timeout=60 * SLOW)
        assert p.returncode == 0 and p.stdout == TRAIN, p


def test_hand_built_body_and_byte_exact_content():
    # CRLF line ends, UTF-8 text, a line that ends the file without a newline, blank lines,
    # and bytes that look like the boundary: all must come back exactly.
    data = ('{"input": "caf\u00e9 \u65e5\u672c", "label": "x"}\r\n'
            '\r\n'
            '{"input": "----formdata-undici-01234567890 \\r\\n--", "label": "y"}\r\n'
            '   \n'
            '{"input": "last", "label": "x", "weight": 2, "id": "r3", "metadata": {"a": 1}}'
            ).encode()
    with Server() as s:
        obj = upload_ok(s, data, filename="caf\u00e9.jsonl")
        assert obj["bytes"] == len(data) and obj["filename"] == "caf\u00e9.jsonl", obj
        st, got, _ = raw(s, "GET", "/v1/files/%s/content" % obj["id"])
        assert st == 200 and got == data, (st, got)
        # a file part without a filename (curl -F 'file=<data.jsonl') is taken too
        body, ctype = multipart([("file", TRAIN, None, None),
                                 ("purpose", b"fine-tune", None, None)])
        st, out, _ = s.request("POST", "/v1/files", body=body, headers={"Content-Type": ctype})
        assert st == 200 and out["filename"] == "file" and out["bytes"] == len(TRAIN), out
        # unknown extra fields (newer SDKs send expires_after) are ignored
        st, out, _ = upload(s, TRAIN, extra=[("expires_after[anchor]", b"created_at", None,
                                              None)])
        assert st == 200, out
        # chunked transfer encoding, as the Node SDK 5+ sends it (no Content-Length)
        body, ctype = multipart([("file", data, "chunked.jsonl", "application/octet-stream"),
                                 ("purpose", b"fine-tune", None, None)],
                                boundary="openai-sl440ekuli9")
        st, out = chunked(s, body, ctype)
        assert st == 200 and out["bytes"] == len(data), (st, out)
        assert raw(s, "GET", "/v1/files/%s/content" % out["id"])[1] == data
        # HEAD on content: headers only
        st, got, hdrs = raw(s, "HEAD", "/v1/files/%s/content" % obj["id"])
        assert st == 200 and got == b"", (st, got)


# ------------------------------------------------------------------------------------------
# Listing
# ------------------------------------------------------------------------------------------

def test_list_pagination_order_and_purpose():
    with Server() as s:
        ids, out = list_ids(s)
        assert ids == [] and out == {"object": "list", "data": [], "has_more": False,
                                     "first_id": None, "last_id": None}, out
        made = [upload_ok(s, TRAIN, filename="f%d.jsonl" % i)["id"] for i in range(5)]
        ids, out = list_ids(s)
        assert ids == made[::-1], (ids, made)  # newest first by default, same second or not
        assert out["has_more"] is False and out["first_id"] == made[4], out
        assert out["last_id"] == made[0], out
        assert list_ids(s, "?order=asc")[0] == made
        assert list_ids(s, "?order=desc")[0] == made[::-1]
        # pages of 2, both directions, via after = the last id of the page
        for order, want in (("asc", made), ("desc", made[::-1])):
            got, after, pages = [], None, 0
            while True:
                q = "?limit=2&order=" + order + ("&after=" + after if after else "")
                page, out = list_ids(s, q)
                pages += 1
                assert len(page) <= 2 and out["first_id"] == page[0], out
                assert out["last_id"] == page[-1], out
                got += page
                after = out["last_id"]
                if not out["has_more"]:
                    break
                assert len(page) == 2, out
            assert got == want and pages == 3, (order, got, want)
        page, out = list_ids(s, "?limit=5&order=asc")
        assert page == made and out["has_more"] is False, out
        page, out = list_ids(s, "?limit=4&order=asc")
        assert page == made[:4] and out["has_more"] is True, out
        page, out = list_ids(s, "?order=asc&after=" + made[4])
        assert page == [] and out["has_more"] is False and out["first_id"] is None, out
        # purpose filter
        assert list_ids(s, "?purpose=fine-tune")[0] == made[::-1]
        page, out = list_ids(s, "?purpose=fine-tune-results")
        assert page == [] and out["first_id"] is None and out["last_id"] is None, out
        # bad arguments
        for q in ("?limit=0", "?limit=10001", "?limit=abc", "?limit=-1", "?limit=2x",
                  "?limit=99999999999999999999999", "?order=sideways"):
            st, out, _ = s.request("GET", "/v1/files" + q)
            assert st == 400, (q, st, out)
            assert re.search("limit|order", error_of(out)), out
        st, out, _ = s.request("GET", "/v1/files?after=file-AAAAAAAAAAAAAAAAAAAAAAAA")
        assert st == 404 and "after" in error_of(out), out
        # the file objects in the list are the same as GET's
        ids, out = list_ids(s, "?limit=1")
        st, one, _ = s.request("GET", "/v1/files/" + ids[0])
        assert out["data"][0] == one, (out, one)


def test_concurrent_uploads_and_deletes():
    with Server(args=["--http-threads", "4"]) as s:
        ids, errors = [], []

        def worker(i):
            try:
                data = b'{"input": [%d], "label": "a"}\n' % i
                fid = upload_ok(s, data, filename="c%d.jsonl" % i)["id"]
                st, got, _ = raw(s, "GET", "/v1/files/%s/content" % fid)
                assert st == 200 and got == data, (st, got)
                ids.append(fid)
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        listed = list_ids(s, "?order=asc")[0]
        assert sorted(listed) == sorted(ids) and len(set(ids)) == 12, (listed, ids)
        assert list_ids(s)[0] == listed[::-1]
        threads = [threading.Thread(target=lambda f=f: s.request("DELETE", "/v1/files/" + f))
                   for f in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert list_ids(s)[0] == [] and os.listdir(files_dir(s)) == []


# ------------------------------------------------------------------------------------------
# Delete, storage at rest
# ------------------------------------------------------------------------------------------

def test_delete_removes_it_from_disk():
    with Server() as s:
        keep = upload_ok(s)["id"]
        fid = upload_ok(s)["id"]
        names = os.listdir(files_dir(s))
        assert fid in names and fid + ".json" in names, names
        st, out, _ = s.request("DELETE", "/v1/files/" + fid)
        assert st == 200 and out == {"id": fid, "object": "file", "deleted": True}, out
        for method, path in (("GET", "/v1/files/" + fid), ("GET", "/v1/files/%s/content" % fid),
                             ("DELETE", "/v1/files/" + fid)):
            st, out, _ = s.request(method, path)
            assert st == 404 and out["error"]["code"] == "not_found", (method, path, st, out)
            assert out["error"]["type"] == "invalid_request_error", out
            assert fid in error_of(out), out
        assert not [n for n in os.listdir(files_dir(s)) if fid in n], os.listdir(files_dir(s))
        assert list_ids(s)[0] == [keep]
        st, data, _ = raw(s, "GET", "/v1/files/%s/content" % keep)
        assert st == 200 and data == TRAIN
        # ids that are not file ids at all are 404 too, not 400 or 500
        for bad in ("nope", "file-", "file-" + "A" * 23, "..%2F..%2Fmaster.key", "file-%00"):
            st, out, _ = s.request("GET", "/v1/files/" + bad)
            assert st == 404, (bad, st, out)


def test_encrypted_at_rest_0600():
    marker = b"ZEBRA-PLAINTEXT-MARKER-7f3a"
    data = b'{"input": "%s", "label": "x"}\n' % marker
    with Server() as s:
        fid = upload_ok(s, data, filename="secret.jsonl")["id"]
        content = os.path.join(files_dir(s), fid)
        meta = content + ".json"
        with open(content, "rb") as f:
            sealed = f.read()
        assert sealed.startswith(b"IFRSEAL\0") and marker not in sealed, sealed[:64]
        assert len(sealed) > len(data), len(sealed)
        for p in (content, meta):
            assert stat.S_IMODE(os.stat(p).st_mode) == 0o600, (p, oct(os.stat(p).st_mode))
        assert stat.S_IMODE(os.stat(files_dir(s)).st_mode) == 0o700
        with open(meta) as f:
            m = json.load(f)
        assert m["id"] == fid and m["bytes"] == len(data) and m["filename"] == "secret.jsonl", m
        # the plaintext is nowhere in the data dir (audit log included) nor in the server log
        for root, _, files in os.walk(s.data_dir):
            for name in files:
                with open(os.path.join(root, name), "rb") as f:
                    assert marker not in f.read(), os.path.join(root, name)
        assert marker.decode() not in s.read_log()


def test_tampered_file_is_an_error_never_garbage():
    with Server() as s:
        a = upload_ok(s, TRAIN)["id"]
        b = upload_ok(s, TRAIN.replace(b"cat", b"platypus"))["id"]
        c = upload_ok(s, TRAIN)["id"]
        path = os.path.join(files_dir(s), a)
        with open(path, "r+b") as f:
            f.seek(os.path.getsize(path) - 30)
            byte = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([byte[0] ^ 0x01]))
        # b's sealed content under c's name: sealed for another id, so it does not open
        shutil.copyfile(os.path.join(files_dir(s), b), os.path.join(files_dir(s), c))
        for fid in (a, c):
            st, out, hdrs = s.request("GET", "/v1/files/%s/content" % fid)
            assert st == 500, (st, out)
            assert hdrs["content-type"].startswith("application/json"), hdrs
            msg = error_of(out)
            assert "authentication" in msg and fid in msg, msg
            assert out["error"]["type"] == "server_error", out
            assert "platypus" not in msg and '"cat"' not in msg and s.data_dir not in msg, msg
            st, obj, _ = s.request("GET", "/v1/files/" + fid)  # the metadata is fine
            assert st == 200 and obj["id"] == fid, obj
        # truncated: also an error
        with open(os.path.join(files_dir(s), b), "r+b") as f:
            f.truncate(os.path.getsize(os.path.join(files_dir(s), b)) - 16)
        st, out, _ = s.request("GET", "/v1/files/%s/content" % b)
        assert st == 500, (st, out)
        # and a file whose content vanished is a 500 that says so, then deletes cleanly
        os.unlink(os.path.join(files_dir(s), a))
        st, out, _ = s.request("GET", "/v1/files/%s/content" % a)
        assert st == 500 and "missing" in error_of(out), (st, out)
        st, out, _ = s.request("DELETE", "/v1/files/" + a)
        assert st == 200, (st, out)


def test_restart_keeps_files_order_and_removes_orphans():
    d = os.path.join(tempfile.mkdtemp(prefix="infera-files-data-"), "data")
    try:
        with Server(data_dir=d) as s:
            made = [upload_ok(s, TRAIN, filename="r%d.jsonl" % i)["id"] for i in range(3)]
            broken = upload_ok(s)["id"]
        fdir = os.path.join(d, "files")
        with open(os.path.join(fdir, broken + ".json"), "w") as f:
            f.write("{not json")  # unreadable metadata: not loaded, but nothing is removed
        orphan = "file-" + "Z" * 24  # content without metadata: a crash between the writes
        with open(os.path.join(fdir, orphan), "wb") as f:
            f.write(b"IFRSEAL\0junk")
        for tmp in (made[0] + ".tmp.Ab12Cd", made[1] + ".json.tmp.4242"):
            with open(os.path.join(fdir, tmp), "wb") as f:
                f.write(b"partial")
        with open(os.path.join(fdir, "README"), "w") as f:
            f.write("not ours: left alone")
        with Server(data_dir=d) as s:
            assert list_ids(s, "?order=asc")[0] == made
            st, data, _ = raw(s, "GET", "/v1/files/%s/content" % made[2])
            assert st == 200 and data == TRAIN, (st, data)
            names = sorted(os.listdir(fdir))
            # The file with damaged metadata is quarantined (renamed aside, bytes kept), not
            # deleted: <id>.corrupt-<ts> and <id>.json.corrupt-<ts>.
            quarantined = sorted(n for n in names if n.startswith(broken))
            assert [q.split(".corrupt-")[0] for q in quarantined] == [broken, broken + ".json"], \
                quarantined
            want = sorted(made + [m + ".json" for m in made] + ["README"] + quarantined)
            assert names == want, names
            assert "skipped %s.json" % broken in s.read_log(), s.read_log()
            assert s.request("GET", "/v1/files/" + broken)[0] == 404
            newer = upload_ok(s)["id"]  # ordered after the old ones
            assert list_ids(s, "?order=asc")[0] == made + [newer]
    finally:
        shutil.rmtree(os.path.dirname(d), ignore_errors=True)


# ------------------------------------------------------------------------------------------
# Validation and limits
# ------------------------------------------------------------------------------------------

def test_validation_errors_name_the_line():
    cases = [
        (b'{"input": [1], "label": "a"}\n{"input": [2], "label": "b"}\n{"input": [3], "lab\n',
         "line 3: invalid JSON"),
        (b'{"input": [1], "label": "a"}\n{"input": [2]}\n', 'line 2: missing "label"'),
        (b'{"input": [1], "label": "a"}\n\n{"input": [2], "target": 0.5}\n',
         'line 3: has "target" but line 1 has "label"'),
        (b'{"input": [1], "label": "a", "target": 1}\n', 'line 1: has both'),
        (b'{"label": "a"}\n', 'line 1: missing "input"'),
        (b'{"input": [1], "label": "a", "colour": "red"}\n', 'line 1: unknown field "colour"'),
        (b'{"input": [1], "label": "a"}\n[1, 2]\n', "line 2: expected a JSON object"),
        (b'{"input": {"x": 1}, "label": "a"}\n', "line 1: input: expected a string"),
        (b'{"input": [1, "two"], "label": "a"}\n', "line 1: input: expected numbers"),
        (b'{"input": [[1, 2], [3]], "label": "a"}\n', "rectangular"),
        (b'{"input": [], "label": "a"}\n', "empty array"),
        (b'{"input": [1], "label": -1}\n', "line 1: label"),
        (b'{"input": [1], "label": true}\n', "line 1: label"),
        (b'{"input": [1, 2], "label": "a"}\n{"input": [1, 2, 3], "label": "a"}\n',
         "line 2: input has 3 values but on line 1 it has 2"),
        (b'{"input": "text", "label": "a"}\n{"input": [1], "label": "a"}\n',
         "line 2: input is a tensor but on line 1 it is text"),
        (b'{"input": [1], "target": [1, 2]}\n{"input": [1], "target": 3}\n',
         "line 2: target has 1 values but on line 1 it has 2"),
        (b'{"input": [1], "target": "high"}\n', "line 1: target"),
        (b'{"input": [1], "label": "a", "label": "b"}\n', "line 1: invalid JSON"),
        (b'{"input": [1], "label": "\xff"}\n', "line 1: invalid JSON"),
        (b'\xef\xbb\xbf{"input": [1], "label": "a"}\n', "byte order mark"),
        (b"", "empty"),
        (b"\n  \n\r\n", "no examples"),
    ]
    with Server() as s:
        for data, want in cases:
            st, out, _ = upload(s, data)
            assert st == 400, (data, st, out)
            msg = error_of(out)
            assert want in msg, (data, msg)
            assert msg.startswith("invalid training file: "), msg
        assert list_ids(s)[0] == [] and os.listdir(files_dir(s)) == []


def test_limits_413():
    with Server(args=["--max-file-lines", "3", "--max-file-bytes", str(2 << 20)]) as s:
        three = TRAIN
        assert upload_ok(s, three + b"\n\n")["bytes"] == len(three) + 2  # blank lines are free
        st, out, _ = upload(s, three + b'{"input": [1, 1, 1], "label": "a"}\n')
        assert st == 413 and "line 4: more than 3 examples" in error_of(out), (st, out)
        # one line over the per-line cap (1 MiB)
        big = b'{"input": "' + b"a" * (1 << 20) + b'", "label": "a"}\n'
        st, out, _ = upload(s, big)
        assert st == 413 and "line 1:" in error_of(out) and "per line" in error_of(out), out
        # a body over --max-file-bytes: 413 from its Content-Length, before it is read
        huge = b'{"input": [1], "label": "a"}\n' * ((2 << 20) // 29 + 10)
        st, out, hdrs = upload(s, huge)
        assert st == 413 and "over the limit" in error_of(out), (st, out)
        # the same without a Content-Length (chunked): 413 once the bytes go over
        body, ctype = multipart([("purpose", b"fine-tune", None, None),
                                 ("file", huge, "huge.jsonl", None)])
        st, out = chunked(s, body, ctype)
        assert st == 413 and "over the limit" in error_of(out), (st, out)
        assert len(list_ids(s)[0]) == 1


def test_content_type_and_form_errors():
    with Server() as s:
        st, out, _ = s.request("POST", "/v1/files", {"file": "x", "purpose": "fine-tune"})
        assert st == 415 and "multipart/form-data" in error_of(out), (st, out)
        st, out, _ = s.request("POST", "/v1/files", b"abc", headers={"Content-Type": "text/plain"})
        assert st == 415, (st, out)
        st, out, _ = upload(s, TRAIN, purpose=None)
        assert st == 400 and '"purpose" is required' in error_of(out), (st, out)
        for bad in ("assistants", "batch", "fine-tune-results", "Fine-Tune", "fine-tune "):
            st, out, _ = upload(s, TRAIN, purpose=bad)
            assert st == 400, (bad, st, out)
            assert '"fine-tune"' in error_of(out) and "not supported" in error_of(out), out
        st, out, _ = upload(s, None)
        assert st == 400 and '"file" is required' in error_of(out), (st, out)
        st, out, _ = upload(s, TRAIN, extra=[("file", TRAIN, "b.jsonl", None)])
        assert st == 400 and "one" in error_of(out), (st, out)
        # malformed multipart: cut short, bare LF, a boundary the body does not use
        body, ctype = multipart([("purpose", b"fine-tune", None, None),
                                 ("file", TRAIN, "t.jsonl", None)])
        for b, ct, want in ((body[:-30], ctype, "closing boundary"),
                            (body.replace(b"\r\n", b"\n"), ctype, "CRLF"),
                            (body, "multipart/form-data; boundary=other", "no delimiter"),
                            (body, "multipart/form-data", "no boundary")):
            st, out, _ = s.request("POST", "/v1/files", body=b, headers={"Content-Type": ct})
            assert st == 400 and want in error_of(out), (want, st, out)
            assert error_of(out).startswith("multipart: "), out
        assert list_ids(s)[0] == []


# ------------------------------------------------------------------------------------------
# Access control and audit
# ------------------------------------------------------------------------------------------

def test_ownership_between_keys():
    with Server() as s:
        ka, kb = make_key(s, ["train"]), make_key(s, ["train"])
        kinfer = make_key(s, ["infer"])
        fa = upload_ok(s, key=ka)["id"]
        fb = upload_ok(s, key=kb)["id"]
        fadmin = upload_ok(s)["id"]
        for method, path in (("GET", "/v1/files/" + fa), ("GET", "/v1/files/%s/content" % fa),
                             ("DELETE", "/v1/files/" + fa)):
            st, out, _ = s.request(method, path, key=kb)
            assert st == 404 and out["error"]["code"] == "not_found", (method, st, out)
        # exactly as a file that does not exist
        st, other, _ = s.request("GET", "/v1/files/file-" + "Q" * 24, key=kb)
        assert other["error"]["message"].replace("file-" + "Q" * 24, fa) == \
            s.request("GET", "/v1/files/" + fa, key=kb)[1]["error"]["message"]
        assert list_ids(s, key=kb)[0] == [fb]
        assert list_ids(s, key=ka)[0] == [fa]
        st, out, _ = s.request("GET", "/v1/files?after=" + fa, key=kb)  # not a cursor for B
        assert st == 404, (st, out)
        assert set(list_ids(s)[0]) == {fa, fb, fadmin}  # admin sees all
        st, out, _ = s.request("GET", "/v1/files/" + fa)
        assert st == 200 and out["id"] == fa
        st, data, _ = raw(s, "GET", "/v1/files/%s/content" % fb, key=ka)
        assert st == 404
        st, data, _ = raw(s, "GET", "/v1/files/%s/content" % fb)
        assert st == 200 and data == TRAIN
        # infer-only key: 403 on every files route; no key: 401
        for method, path in (("GET", "/v1/files"), ("GET", "/v1/files/" + fa),
                             ("GET", "/v1/files/%s/content" % fa),
                             ("DELETE", "/v1/files/" + fa)):
            assert s.request(method, path, key=kinfer)[0] == 403, (method, path)
            assert s.request(method, path, key=False)[0] == 401, (method, path)
        assert upload(s, TRAIN, key=kinfer)[0] == 403
        assert upload(s, TRAIN, key=False)[0] == 401
        # the owner deletes its own; admin deletes anyone's
        assert s.request("DELETE", "/v1/files/" + fa, key=ka)[0] == 200
        assert s.request("DELETE", "/v1/files/" + fb)[0] == 200
        assert list_ids(s, key=kb)[0] == [] and list_ids(s)[0] == [fadmin]


def test_auth_off_everyone_is_admin():
    with Server(args=["--auth", "0"]) as s:
        fid = upload_ok(s, key=False)["id"]
        assert list_ids(s, key=False)[0] == [fid]
        st, data, _ = raw(s, "GET", "/v1/files/%s/content" % fid, key=False)
        assert st == 200 and data == TRAIN
        assert s.request("DELETE", "/v1/files/" + fid, key=False)[0] == 200


def test_audit_events_flat_and_masked():
    email = "john.doe@example.com"
    with Server() as s:
        ka = make_key(s, ["train"])
        kid = ka.split("_")[1]
        fid = upload_ok(s, filename="%s train.jsonl" % email, key=ka)["id"]
        assert s.request("DELETE", "/v1/files/" + fid, key=ka)[0] == 200
        upload(s, b"bad\n", filename="x-%s.jsonl" % email, key=ka)  # refused: no event
        recs = audit_records(s.data_dir)
        ev = [r for r in recs if r.get("event", "").startswith("file.")]
        assert [r["event"] for r in ev] == ["file.uploaded", "file.deleted"], ev
        for r in ev:
            assert r["file_id"] == fid and r["bytes"] == len(TRAIN), r
            assert r["purpose"] == "fine-tune" and r["key_id"] == kid, r
            assert email not in r["filename"] and "<EMAIL:" in r["filename"], r
            assert r["filename"].startswith("<EMAIL:") and r["filename"].endswith(" train.jsonl"), r
            for k, v in r.items():
                assert v is None or isinstance(v, (str, int, float, bool)), (k, v)
        assert ev[0]["examples"] == 3, ev[0]
        reqs = [r for r in recs if r.get("event") == "http.request" and
                r.get("route", "").startswith("/v1/files")]
        assert len(reqs) == 3, reqs
        assert reqs[1]["object_id"] == fid, reqs[1]
        assert "line 1" in reqs[2].get("message", ""), reqs[2]
        raw_audit = b"".join(open(p, "rb").read()
                             for p in glob.glob(os.path.join(s.data_dir, "audit", "*.jsonl")))
        assert email.encode() not in raw_audit
        assert email not in s.read_log()


def test_audit_chain_verifies_after_file_events():
    d = os.path.join(tempfile.mkdtemp(prefix="infera-files-audit-"), "data")
    try:
        with Server(data_dir=d) as s:
            fid = upload_ok(s)["id"]
            assert s.request("DELETE", "/v1/files/" + fid)[0] == 200
        p = infera("audit", "verify", "--data-dir", d)
        assert p.returncode == 0, (p.stdout, p.stderr)
    finally:
        shutil.rmtree(os.path.dirname(d), ignore_errors=True)


if __name__ == "__main__":
    main(globals())
