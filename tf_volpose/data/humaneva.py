"""HumanEva-I -> records, from the widely used prepared ``.npz`` files plus frames.

``positions_3d[subject][action]`` is ``(F, 15, 3)`` metres in the world frame and
``positions_2d[subject][action]`` a list per camera (C1, C2, C3) of ``(F, 15, 2)`` px;
subjects are ``Train/S1`` ... and ``Validate/S1`` ... (the train/validation protocol),
actions like ``Walking 1 chunk0``. The files carry no calibration, so each camera is
fitted to the 3D-2D correspondences of all its frames (``Camera.from_correspondences``,
a DLT); the camera-frame 3D joints then project onto the given 2D joints. Only Walking
and Jogging are converted. Frame images are read from
``frames_pattern.format(subject=..., action=..., camera=..., frame=...)`` under ``frames_root``.
"""

import collections
import os

import numpy as np
import tensorflow as tf

from tf_volpose import _files, camera, crop
from tf_volpose.data import records
from tf_volpose.data.h36m import ConversionError, require_input

ACTIONS = ("Walking", "Jogging")
CAMERAS = ("C1", "C2", "C3")
DEFAULT_FRAMES_PATTERN = "{subject}/{action}/{camera}/{frame:06d}.jpg"


def _load(path, key):
    try:
        return np.load(path, allow_pickle=True)[key].item()
    except (OSError, KeyError, ValueError) as e:
        raise ConversionError(f"cannot read {key} from {path}: {_files.error_reason(e)}") from e


def convert(npz_3d, npz_2d, frames_root, output_dir, frames_pattern=DEFAULT_FRAMES_PATTERN,
            strict=False, examples_per_shard=1000, progress=None):
    """Writes ``train-*`` and ``validation-*`` records; returns a summary dict."""
    require_input(frames_root, "frames_root", directory=True)
    positions_3d = _load(npz_3d, "positions_3d")
    positions_2d = _load(npz_2d, "positions_2d")
    summary = {"written": collections.Counter(), "skipped": collections.Counter()}
    with records.SplitWriters(output_dir, examples_per_shard) as writers:
        for full_subject in sorted(positions_3d):
            split_name, _, subject = full_subject.rpartition("/")
            split = "validation" if split_name.lower().startswith("valid") else "train"
            actions = [a for a in sorted(positions_3d[full_subject]) if a.split()[0] in ACTIONS]
            for cam_index, cam_name in enumerate(CAMERAS):
                world, pixels = [], []
                for action in actions:
                    world.append(positions_3d[full_subject][action].reshape(-1, 3) * 1000.0)
                    pixels.append(positions_2d[full_subject][action][cam_index].reshape(-1, 2))
                if not world:
                    continue
                world, pixels = np.concatenate(world), np.concatenate(pixels)
                ok = np.isfinite(world).all(1) & np.isfinite(pixels).all(1)
                cam = camera.Camera.from_correspondences(world[ok], pixels[ok])
                for action in actions:
                    poses = positions_3d[full_subject][action] * 1000.0
                    joints_2d = positions_2d[full_subject][action][cam_index]
                    writer = writers[split]
                    for frame in range(len(poses)):
                        path = os.path.join(frames_root, frames_pattern.format(
                            subject=subject, action=action, camera=cam_name, frame=frame))
                        try:
                            with open(path, "rb") as f:
                                data = f.read()
                            height, width, _ = tf.io.extract_jpeg_shape(data).numpy()
                        except (OSError, tf.errors.InvalidArgumentError):
                            if strict:
                                raise ConversionError(f"missing or corrupt frame {path}") from None
                            summary["skipped"]["missing or corrupt image"] += 1
                            continue
                        if not (np.isfinite(poses[frame]).all() and np.isfinite(joints_2d[frame]).all()):
                            summary["skipped"]["non-finite joints"] += 1
                            continue
                        center, scale = crop.box_from_joints(joints_2d[frame], 1.15)
                        writer.write(records.make_example(
                            data, int(height), int(width), joints_2d[frame], center, scale, cam.f,
                            cam.c, joints_3d=cam.world_to_camera(poses[frame]),
                            dataset="humaneva", subject=subject,
                            action=action.split(" chunk")[0], camera=cam_name, frame=frame))
                        summary["written"][split] += 1
                if progress:
                    progress(full_subject, cam_name, summary)
    return {"written": dict(summary["written"]), "skipped": dict(summary["skipped"])}
