"""Motion capture -> pose-only records, for network B of the decoupled model alone.

Network B (:func:`tf_volpose.models.decoupled.build_lifting_network`) maps 2D
heatmaps to 3D volumes and sees no image, so it can learn from MoCap alone
(Sec. 3.3 of the paper): each frame, seen by each calibrated camera, becomes
a record with the camera-frame 3D joints, their 2D projection (with the
dataset's distortion), the box around them and the intrinsics, and no image
(``image/encoded`` empty). ``model=lifting`` trains on such records, rendering
its input heatmaps from the 2D joints in the pipeline
(:func:`tf_volpose.data.pipeline.make_dataset` with ``inputs="heatmaps"``).

The motion is an ``.npz`` of ``"S<n>/<action>"`` -> ``(frames, 17, 3)`` world mm
in the Human3.6M MoCap frame (z up), such as ``../shared/data/h36m_mocap_17j_10fps.npz``;
it is seen through the bundled calibration of the subject's four cameras
(:meth:`tf_volpose.camera.Camera.from_h36m`). The split is the protocol's: S1,
S5, S6, S7, S8 -> ``train-*``; S9, S11 -> ``test-*``.
"""

import collections

import numpy as np

from tf_volpose import _files, camera, crop
from tf_volpose.data import h36m, records


def load_motion(path):
    """Reads ``(frames, 17, 3)`` world-mm arrays from an ``.npz``; keys ``"S<n>/<action>"``."""
    try:
        data = np.load(path)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot read motion file {path} as a NumPy .npz archive: "
                         f"{_files.error_reason(e)}") from e
    if not isinstance(data, np.lib.npyio.NpzFile):
        raise ValueError(f"motion file {path} is a single .npy array, not an .npz archive "
                         f"of \"S<n>/<action>\" sequences")
    motion = {}
    for key in data.files:
        array = data[key]
        if array.ndim == 3 and array.shape[1:] == (17, 3):
            motion[key] = array.astype(np.float64)
    if not motion:
        raise ValueError(f"motion file {path} holds no (frames, 17, 3) arrays; keys: {data.files}")
    return motion


def views(poses_world, cam):
    """What one camera sees of a sequence: ``(joints_3d, joints_2d, keep)``.

    Args:
      poses_world: ``(F, J, 3)`` world mm.
      cam: a :class:`tf_volpose.camera.Camera`.

    Returns:
      ``joints_3d`` ``(F, J, 3)`` camera mm, ``joints_2d`` ``(F, J, 2)`` px with the
      camera's distortion, and ``keep`` ``(F,)``: frames whose joints are all finite
      and in front of the camera (the others' 2D joints are NaN).
    """
    frames, joints, _ = poses_world.shape
    finite = np.isfinite(poses_world).all(axis=(1, 2))
    joints_3d = np.full((frames, joints, 3), np.nan)
    seen = cam.world_to_camera(poses_world[finite].reshape(-1, 3))
    joints_3d[finite] = seen.reshape(-1, joints, 3)
    keep = finite & (np.nan_to_num(joints_3d[..., 2]) > 0).all(axis=1)
    joints_2d = np.full((frames, joints, 2), np.nan)
    if keep.any():
        joints_2d[keep] = cam.project(joints_3d[keep].reshape(-1, 3)).reshape(-1, joints, 2)
    return joints_3d, joints_2d, keep


def convert(motion_path, output_dir, subjects=h36m.TRAIN_SUBJECTS + h36m.TEST_SUBJECTS, every=1,
            examples_per_shard=10000, progress=None):
    """Writes the pose-only records of a motion file: ``train-*.tfrecord`` (S1, S5-S8)
    and ``test-*.tfrecord`` (S9, S11), one record per frame and camera. A record's
    ``meta/frame`` is the frame's index in the motion file (10 fps in the shared one),
    not in the 50 fps videos.

    Args:
      motion_path: ``.npz`` of ``"S<n>/<action>"`` -> ``(frames, 17, 3)`` world mm.
      output_dir: destination (local).
      subjects: the subjects to convert; sequences of others are left out.
      every: keep every ``every``-th frame.
      examples_per_shard: records per shard.
      progress: optional ``callable(done_sequences, total_sequences, summary)``.

    Returns:
      Summary dict: ``written`` per split, ``skipped`` per reason.

    Raises:
      h36m.ConversionError: the file is missing or holds no sequence of these subjects.
    """
    h36m.check_selection(subjects, every)
    h36m.require_input(motion_path, "motion")
    try:
        motion = load_motion(motion_path)
    except ValueError as e:
        raise h36m.ConversionError(str(e)) from e
    todo = sorted(k for k in motion if k.partition("/")[0] in subjects)
    if not todo:
        raise h36m.ConversionError(
            f"motion file {motion_path} holds no \"S<n>/<action>\" sequence of {list(subjects)} "
            f"(keys such as {sorted(motion)[:3]})")
    cameras = {s: sorted(k for k in camera.h36m_camera_table()[s]) for s in subjects}
    summary = {"written": collections.Counter(), "skipped": collections.Counter()}
    with records.SplitWriters(output_dir, examples_per_shard) as writers:
        for done, key in enumerate(todo, 1):
            subject, _, action = key.partition("/")
            split = "train" if subject in h36m.TRAIN_SUBJECTS else "test"
            frames = np.arange(0, len(motion[key]), every)
            for camera_id in cameras[subject]:
                cam = camera.Camera.from_h36m(subject, camera_id)
                width, height = camera.h36m_image_size(subject, camera_id)
                joints_3d, joints_2d, keep = views(motion[key][frames], cam)
                if not keep.all():
                    summary["skipped"]["non-finite or behind the camera"] += int((~keep).sum())
                for i in np.flatnonzero(keep):
                    center, scale = crop.box_from_joints(joints_2d[i], h36m.BOX_MARGIN)
                    writers[split].write(records.make_example(
                        None, height, width, joints_2d[i], center, scale, cam.f, cam.c,
                        joints_3d=joints_3d[i], dataset="h36m_mocap", subject=subject,
                        action=action, camera=camera_id, frame=int(frames[i])))
                    summary["written"][split] += 1
            if progress:
                progress(done, len(todo), summary)
    return {"written": dict(summary["written"]), "skipped": dict(summary["skipped"])}
