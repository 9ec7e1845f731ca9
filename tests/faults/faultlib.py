"""Shared helpers for the fault-injection tests (tests/faults/): the failmalloc shim, skips.

The shim (tests/faults/failmalloc.c) comes from INFERA_FAILMALLOC (a built .so, set by meson)
or is compiled here with cc into a temporary directory. LD_PRELOAD shims cannot run in front of
an AddressSanitizer binary (ASan's allocator must come first): those tests exit 77 (skipped)
there.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, os.path.join(HERE, "..", "server"))
from harness import BIN, EXAMPLES, WRAPPER  # noqa: E402,F401

SKIP = 77

# jansson 2.14 (Debian 12) and upstream master: lex_save() ignores a failed strbuffer growth,
# so a string token loses characters and lex_scan_string() then hits assert(0) (load.c).
# Not infera's code: tolerated, counted and reported; the rest of the sweep must be clean.
JANSSON_LEX_ABORT = re.compile(r"load\.c:\d+: lex_\w+: Assertion")


def failed_in_jansson_parser(stderr):
    """True if the failing allocation (FAILMALLOC_BT=1 backtrace) was made inside jansson's
    json_load*: the same upstream lex_save bug, when it overruns the token buffer instead of
    reaching the assertion (glibc then aborts with "double free or corruption")."""
    i = stderr.find("failmalloc: failing allocation")
    if i < 0:
        return False
    frames = stderr[i:].splitlines()[1:]
    for f in frames:
        if "failmalloc" in f:
            continue
        if "libjansson" not in f:
            return False  # the first frame outside jansson came first
        if re.search(r"\(json_load[sbf]\w*\+", f):
            return True
    return False


def skip(msg):
    print("SKIP: " + msg)
    sys.exit(SKIP)


def is_asan(binary=BIN):
    try:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True).stdout
    except OSError:
        return False
    # A sanitizer runtime owns the allocator: an LD_PRELOAD allocator shim cannot sit in front
    # of it (under TSan the shim crashes the binary at start).
    return "libasan" in out or "libubsan" in out or "libtsan" in out


_shim = {}


def shim():
    """Path of the failmalloc shared object (built once per process)."""
    if "so" in _shim:
        return _shim["so"]
    so = os.environ.get("INFERA_FAILMALLOC")
    if not so or not os.path.exists(so):
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if cc is None:
            skip("no C compiler to build the failmalloc shim")
        d = tempfile.mkdtemp(prefix="infera-failmalloc-")
        so = os.path.join(d, "failmalloc.so")
        subprocess.run([cc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra",
                        # a soname: valgrind replaces malloc in objects without one ("NONE")
                        "-Wl,-soname,libfailmalloc.so", "-o", so,
                        os.path.join(HERE, "failmalloc.c"), "-ldl"], check=True)
    _shim["so"] = so
    return so


def shim_env(n, arm="main", extra=None):
    env = dict(os.environ, LD_PRELOAD=shim(), FAILMALLOC_N=str(n), FAILMALLOC_ARM=arm,
               FAILMALLOC_ONLY=os.path.basename(BIN))
    env.update(extra or {})
    return env


def read_report(path):
    """(counted, failed) from a FAILMALLOC_REPORT file."""
    with open(path) as f:
        m = re.match(r"counted (-?\d+) failed (\d+)", f.read())
    return int(m.group(1)), int(m.group(2))


def sweep_points(k, full, head=64, stride=1):
    """N = 1..k+1 when full; else 1..head, then every stride-th, then the last few."""
    if full or stride <= 1:
        return list(range(1, k + 2))
    pts = set(range(1, min(head, k) + 1)) | set(range(head, k + 1, stride))
    pts |= set(range(max(1, k - 8), k + 2))
    return sorted(pts)
