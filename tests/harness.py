"""Shared helpers for infera's integration tests (Python standard library only).

The binary under test comes from INFERA_BIN (set by meson). INFERA_TEST_WRAPPER, if set
(e.g. "valgrind --error-exitcode=99 --leak-check=full"), prefixes every run so the same tests
check memory errors. Each test is a function; run_tests() runs them all, prints one line per
test and a closing "N passed, M failed" line, and returns the exit code.
"""
import json
import os
import shlex
import subprocess
import sys
import tempfile
import traceback

BIN = os.environ.get("INFERA_BIN", os.path.join(os.path.dirname(__file__), "..", "build", "infera"))
SRC = os.environ.get("INFERA_TEST_SRC", os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.abspath(os.path.join(SRC, ".."))
EXAMPLES = os.path.join(ROOT, "examples")
WRAPPER = shlex.split(os.environ.get("INFERA_TEST_WRAPPER", ""))


def infera(*args, stdin=None, timeout=600, check=None):
    """Runs infera with args; returns CompletedProcess (text). check=int asserts the code."""
    cmd = WRAPPER + [BIN] + [str(a) for a in args]
    if WRAPPER:
        timeout *= 20
    p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if WRAPPER and p.returncode == 99:
        raise AssertionError("memory checker reported errors:\n" + p.stderr[-4000:])
    if check is not None and p.returncode != check:
        raise AssertionError("infera %s exited %d, expected %d\nstdout: %s\nstderr: %s"
                             % (" ".join(map(str, args)), p.returncode, check, p.stdout[-2000:],
                                p.stderr[-2000:]))
    return p


def predict(model_dir, request, check=0):
    """Runs `infera predict` on a request dict; returns the parsed JSON answer."""
    p = infera("predict", "--model", model_dir, stdin=json.dumps(request), check=check)
    return json.loads(p.stdout)


def tmpdir():
    return tempfile.mkdtemp(prefix="infera-test-")


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]



def report_write(part, doc):
    """Writes doc to $INFERA_REPORT_DIR/<part>.json (atomically: a temporary file renamed) when
    the variable is set: one part of bench/reliability/run's summary ({"name", "cases",
    "executions", "faults_injected", "losses", "details"}). Nothing when it is not set."""
    d = os.environ.get("INFERA_REPORT_DIR")
    if not d:
        return
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, ".%s.json.%d" % (part, os.getpid()))
    with open(tmp, "w") as f:
        json.dump(doc, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, os.path.join(d, part + ".json"))


def recorded(test, outcomes, before=None):
    """test wrapped so that outcomes[name] says whether it passed (for report_write); before
    (optional) is called with the name first."""
    def run():
        if before is not None:
            before(test.__name__)
        outcomes[test.__name__] = False
        test()
        outcomes[test.__name__] = True
    run.__name__ = test.__name__
    return run

def run_tests(tests):
    passed = failed = 0
    for t in tests:
        try:
            t()
            passed += 1
            print("ok   " + t.__name__, flush=True)
        except Exception:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print("FAIL " + t.__name__, flush=True)
            traceback.print_exc()
    print("%d passed, %d failed" % (passed, failed))
    return 0 if failed == 0 and passed > 0 else 1


def main(module_globals):
    tests = [v for k, v in sorted(module_globals.items()) if k.startswith("test_") and callable(v)]
    sys.exit(run_tests(tests))
