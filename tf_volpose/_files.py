"""Writing files so that readers and other writers never see half of one."""

import contextlib
import os
import uuid


def write_text_atomically(path, text):
    """Writes ``text`` to ``path`` through a temporary sibling renamed at the end.

    The temporary name is this process's own (pid and a random part): with a
    fixed name, two processes writing the same file at once (two exports
    that both compute the bone lengths beside the records) shared the
    temporary file, and the second rename failed on the file the first had
    moved. A reader sees the old file or the new one, never a part; the last
    rename wins.
    """
    directory, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(directory, f".{name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "x") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


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
