"""Mean bone lengths, the prior a root-depth fit matches: computed from records,
stored as JSON, and found for a trained run.

The absolute root depth of a decoded skeleton is the depth whose back-projection
has these bone lengths (:func:`volume.estimate_root_depth_tf`). Three files hold
them (``lengths_mm`` in mm, ``joint_set.bones`` order, plus where they came from):

* ``bone_lengths.json`` beside the training records: their mean, written by the
  converters and ``tools/bone_lengths.py``;
* ``bone_lengths.json`` in a run's directory: the same lengths, stored by training
  before its first step, so that a run directory alone exports, predicts and
  evaluates without the records it was trained on (a run copied to another
  machine, or a tool started from another directory: ``config.json`` keeps the
  records' pattern as it was given, often relative);
* ``model_bone_lengths.json`` in a run's directory: lengths calibrated to the
  model's own skeletons (:func:`evaluation.calibrate_bone_lengths`), used only
  when asked for.
"""

import json
import os

import numpy as np
import tensorflow as tf

from tf_volpose import _files, skeleton, volume
from tf_volpose.data import pipeline

FILE = "bone_lengths.json"
MODEL_FILE = "model_bone_lengths.json"  # in the run directory
_BATCH = 1024  # records parsed together: one parse per record costs ~2 ms in Python


def _damaged_record(path, start):
    """The index of the first record from ``start`` on whose data fails its checksum."""
    index = start
    try:
        for _ in tf.data.TFRecordDataset(path).skip(start):
            index += 1
    except tf.errors.DataLossError:
        return index
    return None


def _poses(file_pattern, joint_set):
    """``(F, J, 3)`` mm: the finite 3D poses of ``joint_set`` in the records (2D-only
    records and poses of other joint sets are left out)."""
    values = joint_set.num_joints * 3
    spec = {"joints/3d": tf.io.RaggedFeature(tf.float32)}
    poses = []
    for path in pipeline.record_files(file_pattern):
        read = 0
        try:
            for raw in tf.data.TFRecordDataset(path).batch(_BATCH):
                joints = tf.io.parse_example(raw, spec)["joints/3d"]
                whole = joints.row_lengths().numpy() == values
                if whole.any():
                    poses.append(tf.ragged.boolean_mask(joints, whole).flat_values.numpy()
                                 .reshape(-1, joint_set.num_joints, 3))
                read += int(raw.shape[0])
        except tf.errors.DataLossError as e:  # a record's data fails its checksum
            record = _damaged_record(path, read)
            raise ValueError(f"{path}: record {record if record is not None else read} is "
                             f"damaged ({_files.error_message(e)}): copy the file again") from e
    if not poses:
        return np.zeros((0, joint_set.num_joints, 3), np.float32)
    poses = np.concatenate(poses)
    return poses[np.isfinite(poses).all((1, 2))]


def compute(file_pattern, joint_set=skeleton.H36M17):
    """``(lengths (J-1,) mm in joint_set.bones order, poses used)`` over the
    records' 3D joints."""
    poses = _poses(file_pattern, joint_set)
    if not len(poses):
        raise ValueError(f"no records with 3D joints match {file_pattern!r}")
    return volume.mean_bone_lengths(poses, joint_set), len(poses)


def save(output, joint_set, lengths, poses, **provenance):
    """Writes the JSON that :func:`load` reads, atomically; returns ``output``."""
    return _files.write_text_atomically(output, json.dumps(
        {"joint_set": joint_set.name, "bones": joint_set.bones,
         "lengths_mm": [float(v) for v in lengths], "poses": int(poses), **provenance}, indent=1))


def beside_records(file_pattern):
    """The path of ``bone_lengths.json`` beside the records (the first file's directory)."""
    return os.path.join(os.path.dirname(pipeline.list_files(file_pattern)[0]), FILE)


def write(file_pattern, output=None, joint_set=skeleton.H36M17):
    """Stores the records' mean bone lengths as JSON (default: beside them); returns the path."""
    lengths, count = compute(file_pattern, joint_set)
    return save(output or beside_records(file_pattern), joint_set, lengths, count,
                source="records", records=file_pattern)


def load(path, joint_set=skeleton.H36M17):
    """``(J-1,)`` mm from a JSON :func:`save` wrote; ValueError naming the file otherwise."""
    return _read(path, joint_set)[0]


def _read(path, joint_set):
    """``(lengths, the whole JSON)`` of :func:`load`."""
    try:
        data = json.loads(_files.read_text(path))
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read bone lengths {path!r} (write it with "
                         f"tools/bone_lengths.py): {_files.error_reason(e)}") from e
    if not isinstance(data, dict):
        data = {}
    lengths = np.asarray(data.get("lengths_mm", []), dtype=np.float64)
    if lengths.shape != (len(joint_set.bones),) or not np.all(lengths > 0):
        raise ValueError(f"{path}: lengths_mm must hold {len(joint_set.bones)} positive numbers "
                         f"for {joint_set.name}, got {lengths.tolist()}")
    return lengths, data


def calibrated_path(run_dir):
    """The run's calibrated ``model_bone_lengths.json`` if it has one, else ``None``."""
    path = os.path.join(run_dir, MODEL_FILE)
    return path if _files.exists(path, "calibrated bone lengths") else None


def store_in_run(file_pattern, run_dir, joint_set=skeleton.H36M17, on_compute=None):
    """Puts the training records' bone lengths into ``run_dir`` (training does,
    before its first step); the path, or ``None`` for records without 3D joints.

    An existing copy is kept: a resumed run keeps the lengths it started with.
    The file beside the records is copied when there is one (the converters
    write it; it may come from more records than the pattern matches now);
    otherwise, or when that file is unusable (training does not depend on it),
    they are computed, which reads every record (about 1 s per 10,000
    synthetic ones), after calling ``on_compute(why)`` if given.
    """
    output = os.path.join(run_dir, FILE)
    if _files.exists(output, "the run's bone lengths"):
        return output
    source = beside_records(file_pattern)
    why = f"no {FILE} beside the records"
    if _files.exists(source, "bone lengths beside the records"):
        try:
            lengths, data = _read(source, joint_set)
            return save(output, joint_set, lengths, data.get("poses", 0), source="records",
                        records=data.get("records", file_pattern), copied_from=source)
        except ValueError as e:
            why = f"the file beside the records is unusable: {e}"
    if on_compute:
        on_compute(why)
    poses = _poses(file_pattern, joint_set)
    if not len(poses):
        return None  # 2D-only records: nothing to fit a root depth to
    return save(output, joint_set, volume.mean_bone_lengths(poses, joint_set), len(poses),
                source="records", records=file_pattern)


def for_run(file_pattern, run_dir=None, path="", joint_set=skeleton.H36M17):
    """The bone lengths a run's root-depth fit uses, and their file.

    In order: ``path`` when given; the run's own copy (``run_dir/bone_lengths.json``,
    see :func:`store_in_run`); the file beside the training records
    ``file_pattern``, written from them if missing (runs older than the run's copy).

    Returns:
      ``(lengths (J-1,) mm, path, written)``: ``written`` says that the file
      beside the records was written just now.
    """
    if path:
        return load(path, joint_set), path, False
    if run_dir:
        own = os.path.join(run_dir, FILE)
        if _files.exists(own, "the run's bone lengths"):
            return load(own, joint_set), own, False
    try:
        beside = beside_records(file_pattern)
    except ValueError as e:
        where = f"the run {run_dir!r} has no {FILE} and " if run_dir else ""
        raise ValueError(f"no bone lengths for the root-depth fit: {where}{e} (start from the "
                         f"directory the run was trained in, or give a bone lengths JSON, "
                         f"e.g. --bone_lengths=FILE)") from None
    written = not _files.exists(beside, "bone lengths beside the records")
    if written:
        write(file_pattern, beside, joint_set)
    return load(beside, joint_set), beside, written
