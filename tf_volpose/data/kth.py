"""KTH Multiview Football II -> records, from the dataset's documented layout.

The release (one zip per player and sequence, e.g. ``player2sequence1.zip``)
unpacks to a folder ``Sequence <k>/`` holding ``Camera 1/``, ``Camera 2/``,
``Camera 3/`` with frames ``00001.png`` ... (1-based) and three text files with
one number per line, read in MATLAB (column-major) order as documented in the
release's ``readme.txt`` (N = 14 joints, C = 3 cameras, T frames):

* ``positions2d.txt``: ``A`` of shape ``2 x N x C x T`` (px);
* ``positions3d.txt``: ``B`` of shape ``3 x N x T`` (the reconstruction's units);
* ``cameras.txt``: ``M`` of shape ``2 x 4 x C x T``, affine cameras with
  ``uv = M[:, :, c, t] @ [X, 1]``.

Joints are in :data:`skeleton.KTH14` order. The cameras are affine (scaled
orthographic, per frame), so each record gets the equivalent pinhole camera of
:meth:`camera.Camera.from_affine` with the person placed ``distance_mm`` away
and the principal point at the image centre; its 3D joints are that camera's
frame, in mm (``units_to_mm`` converts the file's units). ``joints/2d`` are the
annotated pixels. No real KTH files were available when this was written: the
layout follows the release's readme, and the converter checks every size.
"""

import collections
import glob
import os

import cv2
import numpy as np

from tf_volpose import _files, camera, crop, skeleton
from tf_volpose.data import records
from tf_volpose.data.h36m import ConversionError, require_input

NUM_JOINTS = 14
NUM_CAMERAS = 3
CAMERA_DIRS = tuple(f"Camera {c}" for c in range(1, NUM_CAMERAS + 1))
R_HIP, R_KNEE = (skeleton.KTH14.joint_names.index(n) for n in ("r_hip", "r_knee"))


def _read_matlab_array(path, leading_shape):
    """A column-major array of shape ``leading_shape + (T,)`` from one number per line."""
    try:
        values = np.loadtxt(path, dtype=np.float64, ndmin=1)
    except (OSError, ValueError) as e:
        raise ConversionError(f"cannot read {path}: {_files.error_reason(e)}") from e
    per_frame = int(np.prod(leading_shape))
    if values.size == 0 or values.size % per_frame:
        raise ConversionError(f"{path}: {values.size} numbers is not a multiple of "
                              f"{'x'.join(map(str, leading_shape))} = {per_frame}")
    return values.reshape(tuple(leading_shape) + (-1,), order="F")


def read_sequence(sequence_dir):
    """``(joints_2d (T, C, N, 2) px, joints_3d (T, N, 3), cameras (T, C, 2, 4))``."""
    A = _read_matlab_array(os.path.join(sequence_dir, "positions2d.txt"),
                           (2, NUM_JOINTS, NUM_CAMERAS))
    B = _read_matlab_array(os.path.join(sequence_dir, "positions3d.txt"), (3, NUM_JOINTS))
    M = _read_matlab_array(os.path.join(sequence_dir, "cameras.txt"), (2, 4, NUM_CAMERAS))
    frames = {A.shape[-1], B.shape[-1], M.shape[-1]}
    if len(frames) != 1:
        raise ConversionError(f"{sequence_dir}: positions2d, positions3d and cameras disagree "
                              f"on the frame count: {A.shape[-1]}, {B.shape[-1]}, {M.shape[-1]}")
    return A.transpose(3, 2, 1, 0), B.transpose(2, 1, 0), M.transpose(3, 2, 0, 1)


def find_sequences(kth_root):
    """Every folder under ``kth_root`` holding a ``positions2d.txt``, sorted."""
    require_input(kth_root, "kth_root", directory=True)
    found = glob.glob(os.path.join(kth_root, "**", "positions2d.txt"), recursive=True)
    if not found:
        raise ConversionError(f"no KTH sequence (a folder with positions2d.txt) under {kth_root}")
    return sorted(os.path.dirname(p) for p in found)


def frame_path(sequence_dir, camera_index, frame):
    """Image of 0-based ``frame`` from 0-based ``camera_index``."""
    return os.path.join(sequence_dir, CAMERA_DIRS[camera_index], f"{frame + 1:05d}.png")


def _as_jpeg(path):
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise OSError(f"cannot decode {path}")
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    if not ok:
        raise OSError(f"cannot re-encode {path} as JPEG")
    return data.tobytes(), image.shape[0], image.shape[1]


def convert(kth_root, output_dir, split="test", units_to_mm=1000.0, distance_mm=30000.0,
            strict=False, examples_per_shard=1000, progress=None):
    """Writes ``<split>-*`` records for every sequence and camera; returns a summary dict.

    The summary holds records written, frames skipped by reason, the largest
    distance between the annotated 2D joints and the pinhole projection of the
    3D joints (px; the affine-to-pinhole approximation plus the dataset's own
    reconstruction error), and the median thigh length in mm (about 400-500
    for an adult: a quick check of ``units_to_mm``).
    """
    if not units_to_mm > 0 or not distance_mm > 0:
        raise ValueError(f"units_to_mm and distance_mm must be positive, got "
                         f"{units_to_mm!r}, {distance_mm!r}")
    skipped = collections.Counter()
    written, worst_px, thighs = 0, 0.0, []
    with records.SplitWriters(output_dir, examples_per_shard) as writers:
        for sequence_dir in find_sequences(kth_root):
            joints_2d, joints_3d, cameras = read_sequence(sequence_dir)
            joints_3d = joints_3d * units_to_mm
            cameras = cameras.copy()
            cameras[..., :3] /= units_to_mm  # the same cameras acting on mm
            relative = os.path.relpath(sequence_dir, kth_root)
            player = os.path.dirname(relative) or os.path.basename(os.path.dirname(sequence_dir))
            action = os.path.basename(sequence_dir)
            for t in range(len(joints_3d)):
                pose = joints_3d[t]
                if not np.isfinite(pose).all():
                    skipped["non-finite joints"] += 1
                    continue
                thighs.append(np.linalg.norm(pose[R_HIP] - pose[R_KNEE]))
                for c in range(NUM_CAMERAS):
                    path = frame_path(sequence_dir, c, t)
                    try:
                        data, height, width = _as_jpeg(path)
                    except OSError:
                        if strict:
                            raise ConversionError(f"missing or corrupt frame {path}") from None
                        skipped["missing or corrupt image"] += 1
                        continue
                    uv = joints_2d[t, c]
                    if not np.isfinite(uv).all() or not np.isfinite(cameras[t, c]).all():
                        skipped["non-finite 2D joints or camera"] += 1
                        continue
                    try:
                        cam = camera.Camera.from_affine(cameras[t, c], pose.mean(0), distance_mm,
                                                        [width / 2.0, height / 2.0])
                    except ValueError:
                        skipped["degenerate camera"] += 1
                        continue
                    in_camera = cam.world_to_camera(pose)
                    worst_px = max(worst_px, float(np.abs(cam.project(in_camera) - uv).max()))
                    center, scale = crop.box_from_joints(uv, 1.15)
                    writers[split].write(records.make_example(
                        data, height, width, uv, center, scale, cam.f, cam.c,
                        joints_3d=in_camera, dataset="kth", subject=player.replace(os.sep, "/"),
                        action=action, camera=CAMERA_DIRS[c], frame=t))
                    written += 1
            if progress:
                progress(sequence_dir, written)
    return {"written": {split: written} if written else {}, "skipped": dict(skipped),
            "max_reprojection_px": worst_px,
            "median_thigh_mm": float(np.median(thighs)) if thighs else None}
