"""The tf.data input pipeline: records -> augmented crops + joint voxel coordinates.

``make_dataset`` yields ``(inputs, targets)``:

* ``inputs["image"]``: ``(B, S, S, 3)`` float32 in [0, 1]; or, with
  ``inputs="heatmaps"`` (network B trained alone, ``model=lifting``),
  ``inputs["heatmaps"]`` ``(B, S/4, S/4, J)``: the 2D heatmaps of the
  (augmented) joints, as network A would predict them (peak 1, ``sigma`` 2
  voxels, zero for joints not annotated), rendered from the joints alone, so
  records without images (:mod:`.mocap`) serve;
* ``targets["joints_voxel"]``: ``(B, J, 3)`` continuous coordinates on the fine
  grid (``xy_res`` x ``xy_res`` x ``depth``); each stack's target is this with z
  scaled by ``d / depth`` (``losses.stack_targets``) -- no dense volumes;
* ``targets["mask"]``: ``(B, J)`` 1 for annotated joints;
  ``targets["has_3d"]``: ``(B,)``;
* evaluation metadata: ``center`` ``(B, 2)`` and ``scale`` ``(B,)`` of the
  (augmented) crop box, ``focal``/``principal`` ``(B, 2)``, ``joints_3d``
  ``(B, J, 3)`` camera mm, ``root_depth`` ``(B,)`` mm, ``joints_2d`` ``(B, J, 2)``,
  ``action``, ``subject``, ``camera`` (strings), ``frame``.

Records with NaN/Inf joints, a non-positive scale or an image that is not a
JPEG/PNG are skipped with a warning on stderr naming the file and record index
(``strict=True`` raises instead); images that still fail to decode are dropped
by ``ignore_errors`` with TF's warning. A truncated record file (an interrupted
copy) is a ``ValueError`` naming it before anything is read
(:func:`records.check_complete`): TensorFlow's reader would otherwise end that
file early, with a warning that names no file, or in strict mode raise one. A
record whose data fails its checksum still ends its file early; each file's
yield is counted against its framing, and a file that ends short is named in a
warning (strict: an error).
Only the part of a JPEG that the crop needs is decoded (``decode_and_crop_jpeg``).
"""

import dataclasses
import os
import sys

import tensorflow as tf

from tf_volpose import _files, crop, losses, skeleton, volume
from tf_volpose.data import augment, records


@dataclasses.dataclass(frozen=True)
class PipelineOptions:
    input_size: int = 256
    xy_res: int = 64
    depth: int = 64
    z_range_mm: float = 1000.0
    joint_set: str = "h36m17"
    augmentation: augment.AugmentOptions = augment.AugmentOptions()
    shuffle_buffer: int = 1000
    seed: int = 0
    deterministic: bool = False
    strict: bool = False
    skip: int = 0  # records to skip (resume position), training only
    num_shards: int = 1  # input pipelines (workers) sharing the records
    shard_index: int = 0
    records_per_file: int = 0  # read only the first N of each file (0: all): a spread-out sample
    inputs: str = "image"  # or "heatmaps": 2D heatmaps of the joints, no image read
    sigma: float = 2.0  # of the rendered input heatmaps, voxels

    def __post_init__(self):
        if self.inputs not in INPUTS:
            raise ValueError(f"inputs must be one of {INPUTS}, got {self.inputs!r}")


INPUTS = ("image", "heatmaps")


def list_files(file_pattern):
    """The sorted files that ``file_pattern`` matches: globs, comma-separated
    (or a list), local or on any file system ``tf.io.gfile`` reads (``gs://...``).

    Raises:
      ValueError: no file matches.
    """
    patterns = file_pattern.split(",") if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(f for p in patterns for f in _files.glob_files(p.strip()))
    if not files:
        relative = [p.strip() for p in patterns
                    if not _files.is_url(p.strip()) and not os.path.isabs(p.strip())]
        # a run's config.json keeps patterns as given: a tool started elsewhere sees them
        # relative to its own directory
        where = f" (relative to {os.getcwd()})" if relative else ""
        raise ValueError(f"no files match file_pattern={file_pattern!r}{where}"
                         f"{_splits_beside(patterns)}")
    return files


def _splits_beside(patterns):
    """``; <dir> holds train-*, val-*``: the record splits in the local directories the
    patterns look in, for a pattern that matched nothing (``--split=test`` of a set that
    has none, a misspelt prefix); empty when they hold none."""
    notes = []
    for directory in sorted({os.path.dirname(p.strip()) or "." for p in patterns
                             if not _files.is_url(p.strip())}):
        if any(c in directory for c in "*?[") or not os.path.isdir(directory):
            continue
        splits = records.splits_in(directory)
        if splits:
            notes.append(f"{directory} holds {', '.join(s + '-*' for s in splits)}")
    return "".join(f"; {note}" for note in notes)


def record_counts(file_pattern):
    """``{path: records}`` of the files ``file_pattern`` matches, sorted by path,
    counted from their framing (:func:`records.count_records`), which finds a
    truncated file before anything reads it.

    Files on object stores (URLs) are not counted (their count is ``None``): a
    store shows an object only once it is whole, so an interrupted copy leaves
    none, and reading a header per record would cost a request per record.

    Raises:
      ValueError: no file matches, or one is truncated or damaged.
    """
    files = list_files(file_pattern)
    counts = records.check_complete([f for f in files if not _files.is_url(f)])
    return {f: counts.get(f) for f in files}


def record_files(file_pattern):
    """:func:`list_files`, having checked that none of the local ones is truncated
    (:func:`record_counts`)."""
    return list(record_counts(file_pattern))


def yields_an_example(file_pattern, **options):
    """Whether one pass over the records yields at least one usable example.

    The training stream repeats the records before it decodes them (each pass
    draws new augmentation), so when no record decodes it never ends: each
    element is dropped by ``ignore_errors``, with a warning, forever. This reads
    one pass in order, without augmentation, and stops at the first example
    that comes out (cheap when the first record is good).

    Args:
      file_pattern, **options: as for :func:`make_dataset`.
    """
    dataset = make_dataset(file_pattern, training=False, batch_size=1, **options)
    return any(True for _ in dataset.take(1))


def _is_image(data):
    jpeg = tf.strings.substr(data, 0, 2) == b"\xff\xd8"
    png = tf.strings.substr(data, 0, 8) == b"\x89PNG\r\n\x1a\n"
    return jpeg | png


def validate(example, num_joints, needs_image=True):
    """Boolean scalar: whether a parsed record can be used (with ``needs_image``, only
    if it holds a JPEG or PNG: a pose-only record has none)."""
    visible = example["joints/visible"] > 0
    joints_2d = example["joints/2d"]
    finite_2d = tf.reduce_all(tf.math.is_finite(tf.boolean_mask(joints_2d, visible)))
    finite_3d = tf.reduce_all(tf.math.is_finite(example["joints/3d"]))
    shapes = (tf.shape(joints_2d)[0] == num_joints) & (tf.size(visible) == num_joints) & (
        (tf.shape(example["joints/3d"])[0] == 0) | (tf.shape(example["joints/3d"])[0] == num_joints))
    ok = (shapes & finite_2d & finite_3d & (example["box/scale"] > 0)
          & tf.reduce_all(tf.math.is_finite(example["box/center"])))
    return ok & _is_image(example["image/encoded"]) if needs_image else ok


def decode_crop(data, height, width, A, input_size):
    """Decodes the region of the image the crop ``A`` needs and warps it.

    Returns ``(input_size, input_size, 3)`` float32 in [0, 1].
    """
    x0, y0, x1, y1 = crop.source_window_tf(A, input_size, height, width)
    window = tf.stack([y0, x0, y1 - y0, x1 - x0])

    def jpeg():
        return tf.io.decode_and_crop_jpeg(data, window, channels=3)

    def other():
        return tf.image.decode_image(data, channels=3, expand_animations=False)[y0:y1, x0:x1]

    image = tf.cond(tf.strings.substr(data, 0, 2) == b"\xff\xd8", jpeg, other)
    image = tf.image.convert_image_dtype(image, tf.float32)
    return crop.warp_image_tf(image, crop.shift_origin_tf(A, x0, y0), input_size)


def preprocess(example, seed, options, training):
    """One parsed record -> ``(inputs, targets)`` (see the module docstring)."""
    joint_set = skeleton.get_joint_set(options.joint_set)
    aug = augment.sample(seed, options.augmentation if training else augment.NO_AUGMENTATION)
    center = example["box/center"]
    scale = example["box/scale"] * aug["scale"]
    A = crop.crop_transform_tf(center, scale, options.input_size, aug["rotation_deg"], aug["flip"])

    num_joints = joint_set.num_joints
    has_3d = tf.shape(example["joints/3d"])[0] > 0
    joints_3d = tf.cond(has_3d, lambda: example["joints/3d"], lambda: tf.zeros([num_joints, 3]))
    joints_3d = tf.ensure_shape(joints_3d, [num_joints, 3])
    xy = crop.transform_points_tf(example["joints/2d"], A) * (options.xy_res / options.input_size)
    root_depth = joints_3d[joint_set.root, 2]
    grid = volume.VoxelGrid(options.xy_res, options.depth, options.z_range_mm)
    z = grid.voxel_z(joints_3d[:, 2] - root_depth)
    z = tf.where(has_3d, z, tf.fill([num_joints], options.depth / 2.0))
    voxels = tf.concat([xy, z[:, None]], axis=-1)
    mask = tf.cast(example["joints/visible"] > 0, tf.float32)
    voxels = augment.flip_joints(voxels, aug["flip"], joint_set.flip_index)
    mask = augment.flip_joints(mask, aug["flip"], joint_set.flip_index)

    if options.inputs == "heatmaps":
        # depth 1 with z at the middle of its one bin: the plain 2D Gaussians, peak 1
        # (losses.render_targets); at z = 0, the bin's edge, they would peak at 0.5
        xy = tf.concat([voxels[:, :2], tf.fill([num_joints, 1], 0.5)], axis=-1)
        heatmaps = losses.render_targets(xy[None], options.xy_res, options.xy_res, 1,
                                         options.sigma, fine_depth=1)[0] * mask
        inputs = {"heatmaps": tf.ensure_shape(heatmaps, [options.xy_res, options.xy_res,
                                                         num_joints])}
    else:
        image = decode_crop(example["image/encoded"], example["image/height"],
                            example["image/width"], A, options.input_size)
        image = augment.apply_color_gain(image, aug["gain"])
        inputs = {"image": tf.ensure_shape(image, [options.input_size, options.input_size, 3])}
    targets = {
        "joints_voxel": tf.ensure_shape(voxels, [num_joints, 3]),
        "mask": tf.ensure_shape(mask, [num_joints]),
        "has_3d": tf.cast(has_3d, tf.float32),
        "center": center,
        "scale": scale,
        "focal": example["camera/f"],
        "principal": example["camera/c"],
        "joints_3d": joints_3d,
        "joints_2d": tf.ensure_shape(example["joints/2d"], [num_joints, 2]),
        "root_depth": root_depth,
        "action": example["meta/action"],
        "subject": example["meta/subject"],
        "camera": example["meta/camera"],
        "frame": example["meta/frame"],
    }
    return inputs, targets


def make_dataset(file_pattern, *, training, batch_size, counts=None, **options):
    """Builds the input pipeline.

    Args:
      file_pattern: glob (or comma-separated globs) of record files.
      training: shuffle, repeat and augment; otherwise one pass, in order.
      batch_size: per-replica batch size (training drops the last partial batch).
      counts: :func:`record_counts` of ``file_pattern``, where the caller has
        them (training counts its files once for all its pipelines); default:
        counted here. A file whose reading ends before its count (a record
        whose data fails its checksum: TensorFlow's reader skips the rest of
        the file) is named in a warning on stderr at the end of each pass over
        it, or, ``strict``, an error.
      **options: fields of :class:`PipelineOptions` (``input_size``, ``depth``,
        ``seed``, ``deterministic``, ``strict``, ``augmentation``, ``skip``, ...).

    Returns:
      ``tf.data.Dataset`` of ``(inputs, targets)`` batches.
    """
    unknown = set(options) - {f.name for f in dataclasses.fields(PipelineOptions)}
    if unknown:
        raise ValueError(f"unknown pipeline options {sorted(unknown)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    opts = PipelineOptions(**options)
    num_joints = skeleton.get_joint_set(opts.joint_set).num_joints
    counts = record_counts(file_pattern) if counts is None else counts
    files = list(counts)
    if not files:
        raise ValueError(f"no files match file_pattern={file_pattern!r}")
    expected = [-1 if counts[f] is None else counts[f] for f in files]  # -1: not counted
    # strict, with files that have no count (URLs), a missing record could not be told:
    # TensorFlow's DataLossError (naming no file) is left to stop the pass then
    end_without_error = not (opts.strict and -1 in expected)

    def read(path, expected):
        # A record whose data fails its checksum ends the file (TensorFlow's reader
        # moves on to the next file), so ignore_errors here ends it without an error and
        # a marker after the last record tells, naming the file, when records are missing.
        records_of_file = tf.data.TFRecordDataset(path)
        if end_without_error:  # TensorFlow's own warning (naming no file) is kept
            records_of_file = records_of_file.ignore_errors(log_warning=True)
        if opts.records_per_file:
            records_of_file = records_of_file.take(opts.records_per_file)
            expected = tf.minimum(expected, opts.records_per_file)
        end = tf.data.Dataset.from_tensors((tf.constant(b""), True))
        marked = records_of_file.map(lambda record: (record, False)).concatenate(end)
        # numbered by a counter: each record gets its index, the end marker the count
        numbered = marked.scan(tf.constant(0, tf.int64),
                               lambda n, element: (n + 1, (n, *element)))

        def record_or_check_at_end(index, record, is_end):
            def check():
                read_so_far = index
                complete = (expected < 0) | (read_so_far >= expected)
                message = [f"{'ERROR' if opts.strict else 'WARNING'}: record", read_so_far,
                           "of", path, "is damaged (its data fails the checksum, or the file "
                           "changed after it was counted: copy it again); TensorFlow's "
                           "reader skips the rest of the file:",
                           expected - read_so_far, "of", expected,
                           "records not read"]
                if opts.strict:
                    with tf.control_dependencies([tf.debugging.Assert(complete, message)]):
                        return tf.constant(False)

                def warn():
                    tf.print(*message, output_stream=sys.stderr)
                    return tf.constant(False)
                return tf.cond(complete, lambda: tf.constant(False), warn)
            return tf.cond(is_end, check, lambda: tf.constant(True))

        return numbered.filter(record_or_check_at_end).map(lambda i, r, _: (path, i, r))

    ds = tf.data.Dataset.from_tensor_slices((files, tf.constant(expected, tf.int64)))
    if training:
        ds = ds.shuffle(len(files), seed=opts.seed)
    # Sequential interleaving is deterministic; the parallel one may reorder.
    ds = ds.interleave(read, cycle_length=min(4, len(files)), block_length=1,
                       num_parallel_calls=None if opts.deterministic else tf.data.AUTOTUNE)
    if opts.num_shards > 1:
        ds = ds.shard(opts.num_shards, opts.shard_index)
    if training:
        ds = ds.shuffle(opts.shuffle_buffer, seed=opts.seed).repeat()
        ds = ds.skip(opts.skip)

    # Seeds come from the element's position in the (shuffled, repeated) stream,
    # so a run resumed with ``skip`` continues the same random stream.
    ds = ds.enumerate(start=opts.skip)

    def parse(position, element):
        path, index, serialized = element
        example = records.parse_example(serialized)
        ok = validate(example, num_joints, needs_image=opts.inputs == "image")
        if opts.strict:
            with tf.control_dependencies([tf.debugging.Assert(ok, [
                    "invalid record (NaN joints, bad box or image)", path, "index", index])]):
                ok = tf.identity(ok)
        return position, example, ok, path, index

    def keep(position, example, ok, path, index):
        def warn():
            tf.print("WARNING: skipping invalid record (NaN/Inf joints, bad box or not a "
                     "JPEG/PNG image; pose-only MoCap records are for model=lifting):", path,
                     "record", index, output_stream=sys.stderr)
            return ok
        return tf.cond(ok, lambda: ok, warn)

    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=opts.deterministic or None)
    ds = ds.filter(keep)

    def prepare(position, example, ok, path, index):
        seed = tf.stack([tf.cast(opts.seed, tf.int64), position])
        return preprocess(example, seed, opts, training)

    ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=opts.deterministic or None)
    if not opts.strict:
        ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=training)
    return ds.prefetch(tf.data.AUTOTUNE)
