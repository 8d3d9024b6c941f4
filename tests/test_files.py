import errno
import os
import re
import signal
import threading
import time

import pytest
import tensorflow as tf

from tf_volpose import _files, training
from tests.conftest import file_size_limit


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
    with pytest.raises(TypeError):  # raised by the write, into the temporary file
        _files.write_bytes_atomically(str(path), "text is not bytes")
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


def test_text_on_a_tensorflow_file_system(tmp_path):
    """URLs (gs://, s3://, ram:// here) go through tf.io.gfile, local paths through os."""
    assert _files.is_url("gs://bucket/run") and _files.is_url(f"ram://{tmp_path.name}/x")
    assert not _files.is_url(str(tmp_path)) and not _files.is_url(tmp_path / "a:b")
    url = f"ram://{tmp_path.name}/run/metrics.json"
    assert _files.write_text_atomically(url, "first") == url
    _files.write_text_atomically(url, "second")
    assert _files.read_text(url) == "second"
    assert tf.io.gfile.listdir(f"ram://{tmp_path.name}/run") == ["metrics.json"]  # no tmp left
    assert _files.glob_files(f"ram://{tmp_path.name}/run/*.json") == [url]
    with pytest.raises(OSError, match=f"ram://{tmp_path.name}/nothing.json"):
        _files.read_text(f"ram://{tmp_path.name}/nothing.json")
    with pytest.raises(OSError, match="nothing.json"):
        _files.read_text(str(tmp_path / "nothing.json"))
    with pytest.raises(ValueError, match="export_base 'gs://b/x' must be a local path"):
        _files.require_local("gs://b/x", "export_base")
    assert _files.require_local(str(tmp_path), "export_base") == str(tmp_path)
    # a file system that cannot be asked (here no such scheme) is an OSError naming the path
    with pytest.raises(OSError, match=r"cannot list 'nofs://b/x-\*': File system scheme 'nofs'"):
        _files.glob_files("nofs://b/x-*")
    with pytest.raises(OSError, match=r"model_dir 'nofs://b/run' cannot be reached"):
        _files.exists("nofs://b/run", "model_dir")
    assert _files.exists(url) and not _files.exists(str(tmp_path / "nothing"))


def test_local_globs_leave_out_half_written_dot_files(tmp_path):
    (tmp_path / "train-00000.tfrecord").write_bytes(b"")
    (tmp_path / ".train-00001.tmp").write_bytes(b"")  # a shard being written
    assert _files.glob_files(str(tmp_path / "*")) == [str(tmp_path / "train-00000.tfrecord")]


def test_error_message_drops_the_eager_op_wrapping(tmp_path):
    missing = str(tmp_path / "nothing")
    with pytest.raises(tf.errors.NotFoundError) as raised:
        tf.io.read_file(missing)
    assert "{{function_node" in raised.value.message and "[Op:ReadFile]" in raised.value.message
    assert _files.error_message(raised.value) == f"{missing}; No such file or directory"
    assert _files.error_message(OSError("plain")) == "plain"


def test_os_errors_read_as_file_then_reason(tmp_path):
    """Python words a failed open "[Errno 2] No such file or directory: '<file>'"; the tools
    print "<file>: <reason>", and messages that name the file already add the reason alone."""
    missing = str(tmp_path / "nothing.json")
    with pytest.raises(FileNotFoundError) as raised:
        open(missing)
    assert str(raised.value) == f"[Errno 2] No such file or directory: {missing!r}"
    assert _files.error_message(raised.value) == f"{missing}: No such file or directory"
    assert _files.error_reason(raised.value) == "No such file or directory"
    renamed = OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b")
    assert _files.error_message(renamed) == "a -> b: Invalid cross-device link"
    assert _files.error_message(OSError(errno.ENOSPC, "No space left")) == "No space left"
    assert _files.error_reason(ValueError("not JSON")) == "not JSON"


def test_read_text_names_the_file_once(tmp_path):
    """Before: "<file>: <file>; No such file or directory" (gfile's message inside ours), and
    a plain OSError where a local read raises FileNotFoundError."""
    missing = str(tmp_path / "config.json")
    with pytest.raises(FileNotFoundError) as raised:
        _files.read_text(missing)
    assert raised.value.filename == missing
    assert _files.error_message(raised.value) == f"{missing}: No such file or directory"
    with pytest.raises(OSError) as raised:
        _files.read_text(str(tmp_path))
    assert _files.error_message(raised.value) == f"{tmp_path}: Is a directory"
    with pytest.raises(ValueError, match=r"^cannot read the training config "
                       rf"{re.escape(missing)}: No such file or directory$"):
        training.load_config(str(tmp_path))
    # TensorFlow's in-process file system gives no message: the reason is still said
    with pytest.raises(FileNotFoundError) as raised:
        _files.read_text("ram://nothing/config.json")
    assert _files.error_message(raised.value) == ("ram://nothing/config.json: No such file or "
                                                  "directory")


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_write_that_fails_names_the_file_and_keeps_the_old_one(tmp_path):
    """A full disk (EFBIG by a file size limit here) failed with "[Errno 28] No space
    left on device", naming no file."""
    path = tmp_path / "metrics.json"
    path.write_text("old")
    with pytest.raises(OSError, match=f"File too large: '{path}'"):
        with file_size_limit(10):
            _files.write_text_atomically(str(path), "x" * 100)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["metrics.json"]


def test_check_directory_names_a_file_in_the_way(tmp_path):
    """Before: "[Errno 17] File exists: 'afile/config.json'" once the model was built, a
    FailedPreconditionError traceback after an evaluation's predictions were made."""
    (tmp_path / "afile").write_text("")
    for path in (tmp_path / "new", tmp_path / "new" / "deeper", tmp_path, "relative/new"):
        assert _files.check_directory(path, "model_dir") == path  # may be made, or is one
    with pytest.raises(ValueError, match=f"output_dir '{tmp_path}/afile' is a file, not a "
                                         f"directory"):
        _files.check_directory(str(tmp_path / "afile"), "output_dir")
    with pytest.raises(ValueError, match=f"model_dir '{tmp_path}/afile/run/x' cannot be made: "
                                         f"{tmp_path}/afile is a file"):
        _files.check_directory(str(tmp_path / "afile" / "run" / "x"), "model_dir")
    bucket = f"ram://{tmp_path.name}"
    assert _files.check_directory(f"{bucket}/runs/new", "model_dir") == f"{bucket}/runs/new"
    with tf.io.gfile.GFile(f"{bucket}/object", "w") as f:
        f.write("x")
    with pytest.raises(ValueError, match="is a file, not a directory"):
        _files.check_directory(f"{bucket}/object", "model_dir")
    with pytest.raises(OSError, match="model_dir 'nofs://bucket/run' cannot be reached"):
        _files.check_directory("nofs://bucket/run", "model_dir")
