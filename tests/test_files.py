import os
import threading
import time

import pytest

from tf_volpose import _files


def test_two_writers_of_one_file_at_once_both_succeed(tmp_path, monkeypatch):
    """A second writer runs to the end between the first's write and its rename: the
    interleaving of two processes writing the same file at once. With one temporary
    name for both, the first rename found its file moved away by the second."""
    path = tmp_path / "bone_lengths.json"
    path.write_text("old")
    replace = os.replace

    def interleaved(src, dst):
        monkeypatch.setattr(os, "replace", replace)
        _files.write_text_atomically(str(path), "second")  # the other writer, entire
        assert path.read_text() == "second"
        replace(src, dst)

    monkeypatch.setattr(os, "replace", interleaved)
    assert _files.write_text_atomically(str(path), "first") == str(path)
    assert path.read_text() == "first"  # the last rename wins; neither is cut
    assert os.listdir(tmp_path) == ["bone_lengths.json"]  # no temporary file is left


def test_a_failed_write_keeps_the_old_file_and_leaves_nothing(tmp_path, monkeypatch):
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(TypeError):
        _files.write_text_atomically(str(path), b"bytes are not text")
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]
    # a relative path lands where it names
    monkeypatch.chdir(tmp_path)
    _files.write_text_atomically("report.md", "# report\n")
    assert (tmp_path / "report.md").read_text() == "# report\n"


def test_exclusive_lock_waits_for_the_holder(tmp_path):
    path = str(tmp_path / "sub" / ".render.lock")
    held, order = threading.Event(), []

    def holder():
        with _files.exclusive_lock(path):
            held.set()
            time.sleep(0.5)
            order.append("holder done")

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait()
    with _files.exclusive_lock(path, on_wait=lambda: order.append("waiting")):
        order.append("acquired")
    thread.join()
    assert order == ["waiting", "holder done", "acquired"]
    with _files.exclusive_lock(path, on_wait=lambda: order.append("waited again")):
        pass  # free now: no wait
    assert order[-1] == "acquired"
