"""Human3.6M -> records (protocol split: S1, S5, S6, S7, S8 train; S9, S11 test).

Poses come from the official release,
``ROOT/S<n>/MyPoseFeatures/D3_Positions_mono/<Action> <k>.<camera>.cdf``
(variable ``Pose``, ``(1, F, 96)``: 32 joints, camera frame, mm); the 17 joints
of DESIGN.md are joints ``H36M32_TO_17`` of the 32. 2D joints come from
``D2_Positions`` when present, else from projecting with the bundled camera
(with the dataset's distortion model). Images come from the videos
``ROOT/S<n>/Videos/<Action> <k>.<camera>.mp4`` or from the widely used
extracted-frames layout ``FRAMES/S1/S1_Directions_1.54138969/S1_Directions_1.54138969_000001.jpg``
(spaces become ``_``; the number is the 0-based frame index plus one).
Every ``every``-th frame is kept (50 -> 10 fps). A frame whose image is
missing is skipped and counted (``strict`` makes it an error).
"""

import collections
import glob
import os

import cv2
import numpy as np
import tensorflow as tf

from tf_volpose import camera, crop
from tf_volpose.data import records

H36M32_TO_17 = (0, 1, 2, 3, 6, 7, 8, 12, 13, 14, 15, 17, 18, 19, 25, 26, 27)
TRAIN_SUBJECTS = ("S1", "S5", "S6", "S7", "S8")
TEST_SUBJECTS = ("S9", "S11")
BOX_MARGIN = 1.15


class ConversionError(RuntimeError):
    """A file the converter needs cannot be read (the message names it)."""


def require_input(path, what, directory=False):
    """Raises a :class:`ConversionError` naming ``what`` and ``path`` when the
    converter's input ``path`` is missing or not a directory (``directory``) or
    not a file: checked before anything is read or written, so the message says
    so instead of "no sequences under it" or a reader's own wording."""
    kind = "directory" if directory else "file"
    if not os.path.exists(path):
        raise ConversionError(f"{what} {path}: no such {kind}")
    if os.path.isdir(path) != directory:
        raise ConversionError(f"{what} {path} is not a {kind}")
    return path


def check_selection(subjects, every):
    """Raises a ValueError for a subject that is not Human3.6M's or an ``every`` (keep
    every N-th frame) that is not a positive integer, before anything is read."""
    for subject in subjects:
        if subject not in TRAIN_SUBJECTS + TEST_SUBJECTS:
            raise ValueError(f"unknown Human3.6M subject {subject!r}")
    if int(every) != every or every < 1:
        raise ValueError(f"every must be a positive integer (keep every N-th frame), got "
                         f"{every!r}")


def read_cdf(path, variable="Pose"):
    """``(F, C)`` float64 array of a Human3.6M CDF file's ``variable``."""
    import cdflib
    try:
        data = cdflib.CDF(path).varget(variable)
    except Exception as e:  # cdflib raises several types for corrupt files
        raise ConversionError(f"cannot read {variable} from {path}: {e}") from e
    data = np.asarray(data, dtype=np.float64)
    return data.reshape(data.shape[-2], data.shape[-1]) if data.ndim == 3 else data


def sequences(h36m_root, subjects):
    """``(subject, action, camera_id, pose_path)`` of every D3_Positions_mono file, sorted."""
    found = []
    for subject in subjects:
        pattern = os.path.join(h36m_root, subject, "MyPoseFeatures", "D3_Positions_mono", "*.cdf")
        for path in sorted(glob.glob(pattern)):
            stem = os.path.basename(path)[:-len(".cdf")]
            action, _, camera_id = stem.rpartition(".")
            if action and camera_id.isdigit():
                found.append((subject, action, camera_id, path))
    return found


def frame_path(frames_root, subject, action, camera_id, frame):
    name = f"{subject}_{action.replace(' ', '_')}.{camera_id}"
    return os.path.join(frames_root, subject, name, f"{name}_{frame + 1:06d}.jpg")


def _video_frames(path, wanted):
    """Yields ``(index, JPEG bytes)`` for the wanted frame indices of a video, in order."""
    capture = cv2.VideoCapture(path)
    if not capture.isOpened():
        raise ConversionError(f"cannot open video {path}")
    wanted = set(wanted)
    index = 0
    try:
        while wanted:
            ok, image = capture.read()
            if not ok:
                break
            if index in wanted:
                wanted.discard(index)
                yield index, cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
            index += 1
    finally:
        capture.release()


def _jpeg_size(data):
    height, width, _ = tf.io.extract_jpeg_shape(data).numpy()
    return int(height), int(width)


def convert(h36m_root, output_dir, frames_root=None, subjects=TRAIN_SUBJECTS + TEST_SUBJECTS,
            every=5, strict=False, examples_per_shard=1000, progress=None):
    """Converts Human3.6M into ``train-*.tfrecord`` and ``test-*.tfrecord``.

    Args:
      h36m_root: the official release root (``S1/MyPoseFeatures/...``).
      output_dir: destination.
      frames_root: extracted frames root; default: decode the videos.
      subjects: subjects to convert.
      every: keep every ``every``-th frame.
      strict: a missing image is an error instead of a skipped frame.
      progress: optional ``callable(done_sequences, total_sequences, summary)``.

    Returns:
      Summary dict: ``written`` per split, ``skipped`` per reason.
    """
    check_selection(subjects, every)
    if frames_root:
        require_input(frames_root, "frames_root", directory=True)
    todo = sequences(require_input(h36m_root, "h36m_root", directory=True), subjects)
    if not todo:
        raise ConversionError(f"no D3_Positions_mono .cdf files under {h36m_root} for {list(subjects)}")
    summary = {"written": collections.Counter(), "skipped": collections.Counter()}
    with records.SplitWriters(output_dir, examples_per_shard) as writers:
        for done, (subject, action, camera_id, pose_path) in enumerate(todo, 1):
            split = "train" if subject in TRAIN_SUBJECTS else "test"
            _convert_sequence(writers[split], h36m_root, frames_root, subject, action, camera_id,
                              pose_path, every, strict, summary)
            if progress:
                progress(done, len(todo), summary)
    return {"written": dict(summary["written"]), "skipped": dict(summary["skipped"])}


def _convert_sequence(writer, root, frames_root, subject, action, camera_id, pose_path, every,
                      strict, summary):
    poses = read_cdf(pose_path).reshape(-1, 32, 3)[:, H36M32_TO_17]
    cam = camera.Camera.from_h36m(subject, camera_id)
    d2_path = os.path.join(root, subject, "MyPoseFeatures", "D2_Positions",
                           os.path.basename(pose_path))
    if os.path.exists(d2_path):
        joints_2d = read_cdf(d2_path).reshape(-1, 32, 2)[:, H36M32_TO_17]
    else:
        joints_2d = cam.project(poses.reshape(-1, 3)).reshape(-1, 17, 2)
    wanted = list(range(0, len(poses), every))
    if frames_root:
        def images():
            for index in wanted:
                path = frame_path(frames_root, subject, action, camera_id, index)
                try:
                    with open(path, "rb") as f:
                        yield index, f.read()
                except OSError:
                    if strict:
                        raise ConversionError(f"missing frame image {path}") from None
                    summary["skipped"]["missing image"] += 1
                    yield index, None
        source = images()
    else:
        video = os.path.join(root, subject, "Videos", f"{action}.{camera_id}.mp4")
        if not os.path.exists(video):
            if strict:
                raise ConversionError(f"missing video {video}")
            summary["skipped"]["missing video"] += len(wanted)
            return
        source = _video_frames(video, wanted)
    for index, data in source:
        if data is None:
            continue
        if not np.isfinite(poses[index]).all() or not np.isfinite(joints_2d[index]).all():
            summary["skipped"]["non-finite joints"] += 1
            continue
        try:
            height, width = _jpeg_size(data)
        except tf.errors.InvalidArgumentError:
            if strict:
                raise ConversionError(f"corrupt image for {subject} {action} {camera_id} "
                                      f"frame {index}") from None
            summary["skipped"]["corrupt image"] += 1
            continue
        center, scale = crop.box_from_joints(joints_2d[index], BOX_MARGIN)
        writer.write(records.make_example(
            data, height, width, joints_2d[index], center, scale, cam.f, cam.c,
            joints_3d=poses[index], dataset="h36m", subject=subject, action=action,
            camera=camera_id, frame=index))
        summary["written"]["train" if subject in TRAIN_SUBJECTS else "test"] += 1
