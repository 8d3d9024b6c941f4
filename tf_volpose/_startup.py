"""Loading TensorFlow in a command-line entry point without its start-up noise.

For the tools and the serving scripts only (``tools/_cli.py``,
``serving/*.py``), which call :func:`import_tensorflow_quietly` before anything
imports TensorFlow; the library never calls it.

TensorFlow reads ``TF_CPP_MIN_LOG_LEVEL`` when it loads, and the entry points
default it to 1 (no C++ INFO records). TensorFlow 2.21 still writes a few INFO
records while it loads, before its logging honours the level: twice each,
absl's banner ``All log messages before absl::InitializeLog() is called are written
to STDERR``, ``oneDNN custom operations are on`` and, on a machine without a GPU,
``Could not find cuda drivers``: six lines before every tool's first word of
output. (Errors are not INFO: CUDA's ``failed call to cuInit`` on a machine without
a GPU comes later, when the first operation runs, and shows as before.)
:func:`import_tensorflow_quietly` holds back what the import writes to file
descriptor 2 and then writes it out without the records below the level, so
``TF_CPP_MIN_LOG_LEVEL`` means for them what it means for the rest (``0`` shows
everything, as before).
"""

import importlib
import os
import re
import sys
import tempfile

# absl's record prefix: severity, MMDD, time, thread id, file:line]
_RECORD = re.compile(r"^([IWEF])\d{4} \d+:\d+:\d+\.\d+ +\d+ [^\s\]]+:\d+\] ")
_BANNER = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}


def min_log_level():
    """``TF_CPP_MIN_LOG_LEVEL`` as an integer; 0 (nothing filtered) when it is unset or
    not an integer."""
    try:
        return int(os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def without_records_below(text, level):
    """``text`` (what TensorFlow wrote to stderr while loading) without absl's
    records whose severity is below ``level`` (0 INFO, 1 WARNING, 2 ERROR, 3
    FATAL: ``TF_CPP_MIN_LOG_LEVEL``'s scale) and, at ``level >= 1``, absl's
    banner. Every other line is kept as it was, in order, including lines that
    follow a dropped record: they may be Python's (a warning), and none of the
    records TensorFlow 2.21 writes this early spans lines (its one that does, the
    CPU feature notice, honours the level)."""
    kept = []
    for line in text.splitlines(keepends=True):
        record = _RECORD.match(line)
        if record and _SEVERITY[record.group(1)] < level:
            continue
        if level >= 1 and line.rstrip("\r\n") == _BANNER:
            continue
        kept.append(line)
    return "".join(kept)


def import_tensorflow_quietly():
    """Imports TensorFlow, ``TF_CPP_MIN_LOG_LEVEL`` defaulting to 1, holding back
    what it writes to stderr meanwhile and then writing that out without the
    records below the level (:func:`without_records_below`).

    If TensorFlow is loaded already, nothing is done. If the import fails,
    everything it wrote is written out unfiltered before the error propagates.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    level = min_log_level()
    if "tensorflow" in sys.modules or level <= 0:
        importlib.import_module("tensorflow")
        return
    sys.stderr.flush()
    saved = os.dup(2)
    failed = True
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)  # the C++ runtime writes to the descriptor, not sys.stderr
        try:
            importlib.import_module("tensorflow")
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            sys.stderr.write(text if failed else without_records_below(text, level))
            sys.stderr.flush()
