"""One ``tf.train.Example`` schema for every dataset, and crash-safe sharded writing.

Feature keys (one record = one person in one frame):

============================  =======  ==================================================
key                           type     meaning
============================  =======  ==================================================
``image/encoded``             bytes    JPEG of the full frame, or of a generous crop with
                                       box and intrinsics adjusted accordingly; empty in
                                       a pose-only record (MoCap, :mod:`.mocap`), which
                                       only the lifting network (``model=lifting``) reads
``image/height``, ``/width``  int64    size of the encoded image, px
``joints/2d``                 float    J*2, px in the encoded image (with lens distortion)
``joints/3d``                 float    J*3, camera frame, mm; empty for 2D-only data
``joints/visible``            int64    J, 1 = annotated
``box/center``                float    2, px in the encoded image
``box/scale``                 float    1, box side = 200 * scale px
``camera/f``, ``camera/c``    float    2 each, px, for the encoded image
``meta/dataset``              bytes    e.g. ``h36m``, ``synthetic``
``meta/subject``              bytes    e.g. ``S9``
``meta/action``               bytes    e.g. ``Directions 1``
``meta/camera``               bytes    camera id
``meta/frame``                int64    0-based frame index in the source video
============================  =======  ==================================================

:class:`ShardedWriter` writes ``<prefix>-<index:05d>.tfrecord`` shards, each
first under a temporary name and renamed when complete, so a crash never
leaves a truncated shard under a final name; :func:`check_complete` finds the
truncated files other tools leave (an interrupted copy or download).
"""

import concurrent.futures
import contextlib
import glob
import os
import re
import struct

import numpy as np
import tensorflow as tf

from tf_volpose import _checks, _files

FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/height": tf.io.FixedLenFeature([], tf.int64),
    "image/width": tf.io.FixedLenFeature([], tf.int64),
    "joints/2d": tf.io.VarLenFeature(tf.float32),
    "joints/3d": tf.io.VarLenFeature(tf.float32),
    "joints/visible": tf.io.VarLenFeature(tf.int64),
    "box/center": tf.io.FixedLenFeature([2], tf.float32),
    "box/scale": tf.io.FixedLenFeature([], tf.float32),
    "camera/f": tf.io.FixedLenFeature([2], tf.float32),
    "camera/c": tf.io.FixedLenFeature([2], tf.float32),
    "meta/dataset": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "meta/subject": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "meta/action": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "meta/camera": tf.io.FixedLenFeature([], tf.string, default_value=""),
    "meta/frame": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}


def _floats(values):
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(values).tolist()))


def _ints(values):
    return tf.train.Feature(int64_list=tf.train.Int64List(value=np.ravel(values).astype(np.int64).tolist()))


def _bytes(value):
    if isinstance(value, str):
        value = value.encode()
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def make_example(image_encoded, height, width, joints_2d, center, scale, f, c, joints_3d=None,
                 visible=None, dataset="", subject="", action="", camera="", frame=-1):
    """Builds one record; checks shapes and values and names what is wrong.

    Args:
      image_encoded: JPEG (or PNG) bytes; ``None`` for a pose-only record (MoCap: the
        joints as a camera sees them, no image). height, width: the image's size, px
        (of a pose-only record: the camera's frame).
      joints_2d: (J, 2) px in the encoded image.
      center: (2,) px. scale: box side / 200 px (positive).
      f, c: (2,) intrinsics of the encoded image, px.
      joints_3d: (J, 3) camera frame mm, or ``None`` for 2D-only data.
      visible: (J,) 0/1; default all 1.

    Returns:
      ``tf.train.Example``.
    """
    if image_encoded is not None and not image_encoded:
        raise ValueError("image_encoded is empty (None makes a pose-only record)")
    joints_2d = _checks.as_array("joints_2d", joints_2d, shape=(None, 2))
    num_joints = len(joints_2d)
    _checks.as_array("center", center, shape=(2,))
    _checks.positive("scale", scale)
    _checks.positive("f", _checks.as_array("f", f, shape=(2,)))
    _checks.as_array("c", c, shape=(2,))
    feature = {
        "image/encoded": _bytes(image_encoded or b""),
        "image/height": _ints([height]),
        "image/width": _ints([width]),
        "joints/2d": _floats(joints_2d),
        "joints/visible": _ints(np.ones(num_joints) if visible is None else visible),
        "box/center": _floats(center),
        "box/scale": _floats([scale]),
        "camera/f": _floats(f),
        "camera/c": _floats(c),
        "meta/dataset": _bytes(dataset),
        "meta/subject": _bytes(subject),
        "meta/action": _bytes(action),
        "meta/camera": _bytes(str(camera)),
        "meta/frame": _ints([frame]),
    }
    if joints_3d is not None:
        joints_3d = _checks.as_array("joints_3d", joints_3d, shape=(num_joints, 3))
        feature["joints/3d"] = _floats(joints_3d)
    else:
        feature["joints/3d"] = _floats([])
    return tf.train.Example(features=tf.train.Features(feature=feature))


def parse_example(serialized):
    """Parses one serialized record into a dict of dense tensors (graph-friendly).

    ``joints/2d`` becomes (J, 2), ``joints/3d`` (J, 3) or (0, 3) for 2D-only
    data, ``joints/visible`` (J,).
    """
    parsed = tf.io.parse_single_example(serialized, FEATURES)
    for key in ("joints/2d", "joints/3d", "joints/visible"):
        parsed[key] = tf.sparse.to_dense(parsed[key])
    parsed["joints/2d"] = tf.reshape(parsed["joints/2d"], [-1, 2])
    parsed["joints/3d"] = tf.reshape(parsed["joints/3d"], [-1, 3])
    return parsed


# A record: uint64 length, uint32 masked CRC-32C of the length, the data, uint32
# masked CRC-32C of the data.
_HEADER_BYTES, _FOOTER_BYTES = 12, 4


def _crc32c_table():
    table = np.zeros(256, np.uint32)
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)  # Castagnoli, reflected
        table[byte] = crc
    return table


_CRC32C_TABLE = _crc32c_table()


def masked_crc32c(rows):
    """CRC-32C, masked as TFRecord framing stores it, of each row of ``rows``
    (uint8 ``(N, L)``; or of one ``bytes``, giving an int). Vectorised over the
    rows, for the many 8-byte length fields of a file; Python has no CRC-32C."""
    single = isinstance(rows, (bytes, bytearray))
    rows = np.frombuffer(bytes(rows), np.uint8)[None] if single else np.asarray(rows, np.uint8)
    crc = np.full(rows.shape[0], 0xFFFFFFFF, np.uint32)
    for column in range(rows.shape[1]):
        crc = _CRC32C_TABLE[(crc ^ rows[:, column]) & 0xFF] ^ (crc >> 8)
    crc ^= np.uint32(0xFFFFFFFF)
    masked = ((crc >> 15) | (crc << 17)) + np.uint32(0xA282EAD8)  # uint32 arithmetic wraps
    return int(masked[0]) if single else masked


def _first_bad_header(headers):
    """Index of the first 12-byte header whose length fails its checksum, or None."""
    if not headers:
        return None
    table = np.frombuffer(b"".join(headers), np.uint8).reshape(-1, _HEADER_BYTES)
    stored = table[:, 8:].copy().view("<u4").ravel()
    bad = np.flatnonzero(masked_crc32c(table[:, :8]) != stored)
    return int(bad[0]) if bad.size else None


def count_records(path):
    """Records in the TFRecord file ``path``, counted from its framing alone.

    Reads the 12-byte record headers (the length and its checksum), each with
    one positioned read (``pread``), and none of the records' data, so it is
    cheap enough to run on every file before training: 0.3-0.4 s for 60,000
    records of 30 KB (1.8 GB, four files) in the page cache, 2.2-2.3 s from a
    cold cache on this machine's disk (the reads pull in ~14% of the file, a page
    per record; the checksums, vectorised, add ~0.1 s to the warm case).
    It finds what an interrupted copy, download or write leaves: a last record
    that runs past the end of the file, or a header that is not one (a download
    preallocated with zeros and cut short, another kind of file), which
    TensorFlow's reader would take for the end of the file. Damage inside a
    record's data (a flipped bit) fails its data checksum, which is left to
    TensorFlow's reader (:func:`pipeline.make_dataset` names the file).

    Raises:
      ValueError: naming the file, the record, its byte offset and how many
        complete records precede it, when a record runs past the end of the file
        or its length fails its checksum (a truncated or damaged file, or one
        that is not a TFRecord file).
      OSError: the file cannot be read.
    """
    size = os.path.getsize(path)
    headers, offsets, offset = [], [], 0

    def damaged(count=None, offset=None, problem=None):
        # a header that fails its checksum comes first: its length framed what follows
        bad = _first_bad_header(headers)
        if bad is not None:
            count, offset = bad, offsets[bad]
            problem = ("has a header that fails its checksum: the file is damaged from here "
                       "(a download cut short? copy it again) or not a TFRecord file")
        return ValueError(f"{path}: record {count} at byte {offset} {problem}; {count} complete "
                          f"records precede it")

    fd = os.open(path, os.O_RDONLY)
    try:
        while offset < size:
            header = os.pread(fd, _HEADER_BYTES, offset)
            if len(header) < _HEADER_BYTES:
                raise damaged(len(headers), offset, (
                    f"needs a 12-byte header, but the file ends {size - offset} bytes after "
                    f"it: the file is truncated (an interrupted copy or download? copy it "
                    f"again) or not a TFRecord file"))
            headers.append(header)
            offsets.append(offset)
            end = offset + _HEADER_BYTES + struct.unpack("<Q", header[:8])[0] + _FOOTER_BYTES
            if end > size:
                raise damaged(len(headers) - 1, offset, (
                    f"needs {end - offset} bytes, but the file ends {size - offset} bytes after "
                    f"it: the file is truncated (an interrupted copy or download? copy it "
                    f"again) or not a TFRecord file"))
            offset = end
    finally:
        os.close(fd)
    if _first_bad_header(headers) is not None:
        raise damaged()  # the framing held, a header's checksum did not
    return len(headers)


def check_complete(paths, workers=8):
    """:func:`count_records` of each file: ``{path: records}``.

    The files are read in ``workers`` threads (the reads wait on the disk, not
    on Python). Raises the error of the first truncated file in ``paths`` order.
    """
    paths = list(paths)
    if not paths:
        return {}
    with concurrent.futures.ThreadPoolExecutor(min(workers, len(paths))) as pool:
        counts = list(pool.map(count_records, paths))
    return dict(zip(paths, counts))


@contextlib.contextmanager
def _naming_write_errors(shard):
    """TensorFlow's write errors (a full disk: ResourceExhaustedError) as an OSError
    naming the shard, which the tools print as one line."""
    try:
        yield
    except tf.errors.OpError as e:
        raise OSError(f"cannot write {shard}: {_files.error_message(e)}") from e


def shard_name(output_dir, prefix, index):
    return os.path.join(output_dir, f"{prefix}-{index:05d}.tfrecord")


def splits_in(directory):
    """The sorted prefixes (``train``, ``val``, ...) of the shards :func:`shard_name`
    names in the local ``directory``."""
    return sorted({name.rsplit("-", 1)[0] for name in os.listdir(directory)
                   if re.fullmatch(r".+-\d{5}\.tfrecord", name)})


class ShardedWriter:
    """Writes records into shards of ``examples_per_shard``, atomically per shard.

    Args:
      output_dir: directory (created if missing).
      prefix: file name prefix, e.g. ``"train"``.
      examples_per_shard: records per shard.
      resume: keep complete shards from an earlier run and skip the records
        that belong to them (conversion is deterministic, so they are the
        same); otherwise existing shards of this prefix are replaced. A shard
        counts as complete when its framing is intact and it holds
        ``examples_per_shard`` records: a truncated copy, or the short last
        shard of a run over less input, is written again.

    Use as a context manager; leaving with an exception discards the
    unfinished shard, never renaming it.
    """

    def __init__(self, output_dir, prefix, examples_per_shard=1000, resume=False):
        if examples_per_shard < 1:
            raise ValueError(f"examples_per_shard must be >= 1, got {examples_per_shard}")
        self.output_dir = output_dir
        self.prefix = prefix
        self.examples_per_shard = int(examples_per_shard)
        self.resume = resume
        self.count = 0  # records accepted (written or already present)
        self.skipped_existing = 0
        self.shards = []
        self._writer = None
        self._tmp = None
        self._kept = {}  # shard index -> whether resume keeps the existing shard
        # os.makedirs would make ./gs:/... of a URL, and "[Errno 17] File exists" of a file
        _files.check_directory(_files.require_local(output_dir, "output_dir"), "output_dir")
        os.makedirs(output_dir, exist_ok=True)
        for stale in glob.glob(os.path.join(output_dir, f".{prefix}-*.tmp")):
            os.remove(stale)  # partial shards of a crashed run
        if not resume:
            for old in glob.glob(os.path.join(output_dir, f"{prefix}-*.tfrecord")):
                os.remove(old)

    def _shard_index(self):
        return self.count // self.examples_per_shard

    def _keeps(self, index, final):
        if index not in self._kept:
            try:
                self._kept[index] = (os.path.exists(final)
                                     and count_records(final) == self.examples_per_shard)
            except ValueError:  # truncated
                self._kept[index] = False
        return self._kept[index]

    def write(self, example):
        """Adds one ``tf.train.Example`` (or serialized bytes)."""
        index = self._shard_index()
        final = shard_name(self.output_dir, self.prefix, index)
        if self._writer is None:
            if self.resume and self._keeps(index, final):
                self.count += 1
                self.skipped_existing += 1
                if final not in self.shards:
                    self.shards.append(final)
                return
            self._tmp = os.path.join(self.output_dir, f".{self.prefix}-{index:05d}.tmp")
            self._writer = tf.io.TFRecordWriter(self._tmp)
        # deterministic: map fields would otherwise serialise in a per-process order
        data = example if isinstance(example, bytes) else example.SerializeToString(deterministic=True)
        with _naming_write_errors(final):
            self._writer.write(data)
        self.count += 1
        if self.count % self.examples_per_shard == 0:
            self._finish_shard(final)

    def _finish_shard(self, final):
        with _naming_write_errors(final):
            self._writer.close()
        os.replace(self._tmp, final)
        self.shards.append(final)
        self._writer = None
        self._tmp = None

    def close(self):
        if self._writer is not None:
            index = (self.count - 1) // self.examples_per_shard
            self._finish_shard(shard_name(self.output_dir, self.prefix, index))

    def abort(self):
        if self._writer is not None:
            try:
                self._writer.close()
            except tf.errors.OpError:
                pass  # what failed the write (a full disk) may fail the close as well
            os.remove(self._tmp)
            self._writer = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class SplitWriters:
    """One :class:`ShardedWriter` per split, created on first use; a context manager that
    closes them all on success and aborts them all (no unfinished shard renamed) on error."""

    def __init__(self, output_dir, examples_per_shard=1000):
        self.output_dir = output_dir
        self.examples_per_shard = examples_per_shard
        self.writers = {}

    def __getitem__(self, split):
        if split not in self.writers:
            self.writers[split] = ShardedWriter(self.output_dir, split, self.examples_per_shard)
        return self.writers[split]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        for writer in self.writers.values():
            if exc_type is None:
                writer.close()
            else:
                writer.abort()
        return False
