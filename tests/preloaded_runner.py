"""Runs scripts many times, each run a fork of this process after TensorFlow loaded.

    python tests/preloaded_runner.py < runs.json > results.json

``runs.json`` is a list of ``[script, [args...]]``; ``results.json`` a list of
``{"returncode", "stdout", "stderr"}``, one per run, as ``subprocess.run``
gives them. Each run is the script executed as ``__main__`` (``sys.path[0]``
its directory, as ``python SCRIPT ARGS`` has it) in a child forked from this
process, which loaded TensorFlow, gRPC and OpenCV once, before any of them ran
an op. A fresh ``python SCRIPT`` spends ~3 s loading TensorFlow; a fork, a
few milliseconds: the tests of the tools' bad-input messages, 39 runs, took
~160 s of the suite that way, and ~25 s now. What a fork cannot check
(whatever a tool does before TensorFlow loads, such as quieting its logs)
keeps a real ``python SCRIPT`` (tests/test_tools.py).
"""

import json
import os
import runpy
import signal
import sys
import tempfile
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import cv2  # noqa: E402,F401  (loaded once, before the forks)
import grpc  # noqa: E402,F401
import tensorflow  # noqa: E402,F401

SECONDS_PER_RUN = 120  # a run that hangs is killed (SIGALRM), not the suite


def _exit_code(exit):
    """The status ``SystemExit`` ends a Python process with, as the interpreter sets it."""
    if exit.code is None:
        return 0
    if isinstance(exit.code, int):
        return exit.code
    print(exit.code, file=sys.stderr)
    return 1


def _child(script, args, out_path, err_path):
    """Runs in the forked child; never returns."""
    for path, fd in ((out_path, 1), (err_path, 2)):
        os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    signal.alarm(SECONDS_PER_RUN)
    sys.argv = [script, *args]
    sys.path[0] = os.path.dirname(os.path.abspath(script))
    try:
        runpy.run_path(script, run_name="__main__")
        code = 0
    except SystemExit as exit:
        code = _exit_code(exit)
    except BaseException:  # what the interpreter prints for an uncaught exception
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run_all(runs):
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, (script, args) in enumerate(runs):
            out_path, err_path = (os.path.join(tmp, f"{index}.{n}") for n in ("out", "err"))
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(script, args, out_path, err_path)
            _, status = os.waitpid(pid, 0)
            with open(out_path) as out, open(err_path) as err:
                results.append({"returncode": os.waitstatus_to_exitcode(status),
                                "stdout": out.read(), "stderr": err.read()})
    return results


if __name__ == "__main__":
    json.dump(run_all(json.load(sys.stdin)), sys.stdout)
