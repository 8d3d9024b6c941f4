"""Paths on any file system TensorFlow reads, and writing files whole.

Records, model directories, bone lengths and reports may live on a file
system that ``tf.io.gfile`` knows (``gs://``, ``s3://`` with tensorflow-io,
``hdfs://``, the in-process ``ram://``) as well as on a local disk; a path
with a ``scheme://`` prefix is such a URL. Work that needs a local disk (the
synthetic rendering, exports, locks) says so when given a URL.
"""

import contextlib
import errno
import glob
import os
import re
import uuid

import tensorflow as tf


def error_message(error):
    """The message of an error on one line: a TensorFlow ``OpError``'s without the op
    wrapping an eager call adds (``{{function_node __wrapped__SaveV2...}} ...
    [Op:SaveV2]``); an ``OSError``'s as ``<file>: <reason>`` instead of Python's
    ``[Errno 2] No such file or directory: '<file>'``."""
    if isinstance(error, OSError) and error.strerror:
        names = [os.fspath(n) for n in (error.filename, error.filename2) if n is not None]
        if not names:
            return error.strerror
        return f"{' -> '.join(names)}: {error.strerror}"  # a rename names both files
    message = getattr(error, "message", None) or str(error)
    message = " ".join(line.strip() for line in message.splitlines() if line.strip())
    return re.sub(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\](\s*name:\s*\S*)?$", "",
                  message)


def error_reason(error):
    """What went wrong, for a message that already names the file: an ``OSError``'s
    reason alone (``No such file or directory``), otherwise :func:`error_message`."""
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return error_message(error)


def is_url(path):
    """Whether ``path`` names a file on a non-local file system (``gs://b/x``)."""
    return "://" in os.fspath(path)


def glob_files(pattern):
    """The paths ``pattern`` matches, unsorted: Python's glob for local paths
    (which leaves dot-files such as half-written ``.train-00003.tmp`` out of
    ``*``), ``tf.io.gfile.glob`` for URLs."""
    if not is_url(pattern):
        return glob.glob(pattern)
    try:
        return tf.io.gfile.glob(pattern)
    except tf.errors.OpError as e:  # an unknown scheme, no network, no access
        raise OSError(f"cannot list {pattern!r}: {error_message(e)}") from e


def exists(path, what="path"):
    """``tf.io.gfile.exists(path)``; an OSError naming ``what`` and ``path`` when
    its file system cannot be asked (an unknown scheme, no network, no access)."""
    try:
        return tf.io.gfile.exists(path)
    except tf.errors.OpError as e:
        raise OSError(f"{what} {os.fspath(path)!r} cannot be reached: {error_message(e)}") from e


def check_directory(path, what):
    """Raises a ValueError when the directory ``path`` (``what`` names it) cannot be
    one because it, or a directory above it, is a file; checked before any work whose
    results would go there is done. ``path`` need not exist yet."""
    try:
        ancestor = os.fspath(path)
        while ancestor and not tf.io.gfile.exists(ancestor):
            parent = os.path.dirname(ancestor.rstrip("/"))
            if parent == ancestor or (is_url(ancestor) and "://" not in parent):
                return path  # nothing of it exists yet
            ancestor = parent
        if ancestor and not tf.io.gfile.isdir(ancestor):
            if ancestor == os.fspath(path):
                raise ValueError(f"{what} {ancestor!r} is a file, not a directory")
            raise ValueError(f"{what} {os.fspath(path)!r} cannot be made: {ancestor} is a file")
    except tf.errors.OpError as e:
        raise OSError(f"{what} {os.fspath(path)!r} cannot be reached: {error_message(e)}") from e
    return path


def require_local(path, what):
    """Raises a ValueError when ``path`` is a URL: ``what`` needs a local directory."""
    if is_url(path):
        raise ValueError(f"{what} {os.fspath(path)!r} must be a local path: it is written "
                         f"with local renames and locks (write it locally, then copy it)")
    return path


def write_text_atomically(path, text):
    """Writes ``text`` to ``path`` (its directory made if missing) through a
    temporary sibling renamed at the end: :func:`write_bytes_atomically`."""
    return write_bytes_atomically(path, text.encode("utf-8"))


def write_bytes_atomically(path, data):
    """Writes ``data`` to ``path`` (its directory made if missing) through a
    temporary sibling renamed at the end; returns ``path``.

    The temporary name is this process's own (pid and a random part): with a
    fixed name, two processes writing the same file at once (two exports
    that both compute the bone lengths beside the records) shared the
    temporary file, and the second rename failed on the file the first had
    moved. A reader sees the old file or the new one, never a part; the last
    rename wins. On an object store (a URL) the rename is the store's copy,
    and an object appears only when it is whole, so no reader sees a part
    there either.
    """
    if is_url(path):
        directory, name = path.rsplit("/", 1)
        tmp = f"{directory}/.{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        try:
            tf.io.gfile.makedirs(directory)
            with tf.io.gfile.GFile(tmp, "wb") as f:
                f.write(data)
            tf.io.gfile.rename(tmp, path, overwrite=True)
        except tf.errors.OpError as e:
            raise OSError(f"cannot write {path}: {error_message(e)}") from e
        finally:
            if tf.io.gfile.exists(tmp):
                tf.io.gfile.remove(tmp)
        return path
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError as e:  # a failed write's error names no file ("No space left on device")
        raise type(e)(e.errno, e.strerror, path) from e
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_text(path):
    """The text of a local file or a URL (OSError when it cannot be read)."""
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            return f.read()
    except tf.errors.OpError as e:  # gfile's errors, as the OSError local reads give
        raise _os_error(e, path) from e


# the errno of Python's own failed reads for gfile's errors (OSError(errno, ...) then
# is FileNotFoundError, PermissionError, as callers of a local read expect)
_ERRNOS = {tf.errors.NotFoundError: errno.ENOENT, tf.errors.PermissionDeniedError: errno.EACCES}


def _os_error(op_error, path):
    """An ``OSError`` naming ``path`` with the reason ``op_error`` gives, which gfile
    writes as ``<path>; <reason>`` (the path said once, not three times)."""
    reason = error_message(op_error)
    for prefix in (f"{path}; ", f"{path}: "):
        if reason.startswith(prefix):
            reason = reason[len(prefix):]
    code = _ERRNOS.get(type(op_error), errno.EIO)
    if not reason:  # some file systems give none (ram://: NotFoundError with no message)
        reason = os.strerror(code) if type(op_error) in _ERRNOS else type(op_error).__name__
    return OSError(code, reason, path)


@contextlib.contextmanager
def exclusive_lock(path, on_wait=None):
    """Holds an exclusive advisory lock on the file ``path`` (created if missing).

    For work two processes must not do at once in one place (two training runs
    rendering the synthetic set into one directory). ``on_wait()`` is called
    once if another process holds the lock, before waiting for it. POSIX
    ``flock``; where there is none (Windows) nothing is locked.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX
        yield
        return
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
