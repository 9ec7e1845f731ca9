"""Disk full: the data dir on a small tmpfs (root and mount(2) needed; exit 77 otherwise).

With the file system filled to the last few KiB: an upload fails with a clear error (507
Insufficient Storage or 503, OpenAI's error shape, never 200 or a dropped connection); a
protected route answers 503 once the audit log cannot write, and readiness turns false; files
already stored read back byte-exact; the server does not die. Removing the filler: readiness
200 again, an upload works, `infera audit verify` passes.
"""
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib  # noqa: E402
from faultlib import EXAMPLES  # noqa: E402
from harness import infera, main  # noqa: E402
from serverlib import Server  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "server"))
from test_files import upload  # noqa: E402

if os.geteuid() != 0:
    faultlib.skip("needs root to mount a tmpfs")

with open(os.path.join(EXAMPLES, "digits", "train.jsonl"), "rb") as _f:
    TRAIN = b"".join(_f.readlines()[:40])


# server/files_api.c maps every storage failure (INF_EIO) to 500 "the file could not be stored
# (I/O error)"; ENOSPC deserves 507 Insufficient Storage and a message that says so (files.c's
# message has strerror(ENOSPC), but common/ has no status for it). Tolerated until then.
KNOWN_500_ON_ENOSPC = False


def fill(path):
    """Writes zeros to path until the file system is full (unbuffered: nothing left to flush)."""
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


def test_disk_full_then_recovers():
    mnt = tempfile.mkdtemp(prefix="infera-tmpfs-")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m,mode=0700", "tmpfs", mnt],
                      capture_output=True).returncode != 0:
        os.rmdir(mnt)
        faultlib.skip("mount -t tmpfs failed (no CAP_SYS_ADMIN?)")
    srv = None
    try:
        data = os.path.join(mnt, "data")
        # No model is needed: uploads and the audit log are what fills the disk.
        srv = Server(data_dir=data, args=["--train-workers", "0"])
        srv.start()
        st, before, _ = upload(srv, TRAIN)
        assert st == 200, before
        filler = os.path.join(mnt, "filler")
        fill(filler)

        # An upload cannot be stored: a clear error, in OpenAI's shape.
        st, out, _ = upload(srv, TRAIN)
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
        p = infera("audit", "verify", "--data-dir", data)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        if srv is not None:
            srv.stop(check=False)
            shutil.rmtree(srv.tmp, ignore_errors=True)
        subprocess.run(["umount", "-l", mnt])
        os.rmdir(mnt)


if __name__ == "__main__":
    main(globals())
