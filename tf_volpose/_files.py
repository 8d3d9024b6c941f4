"""Writing files so that readers and other writers never see half of one."""

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
