"""Drawing shared by the TensorBoard summaries and the demo (NumPy/OpenCV, RGB uint8).

Colours (the paper's Figure 4): left joints/limbs red, right green, centre blue.
"""

import os

import cv2
import numpy as np

from tf_volpose import _files, camera, skeleton

LEFT_RGB = (230, 40, 40)
RIGHT_RGB = (40, 200, 40)
CENTER_RGB = (60, 120, 255)
# OpenCV takes integer pixel coordinates (a Python int beyond 32 bits fails to parse), and
# a decoded joint can land arbitrarily far outside an image: geometry is clipped to this
# square first, which is far larger than any image, so what is drawn does not change.
DRAW_LIMIT_PX = 2.0 ** 20


def limb_color(joint_set, a, b):
    sides = {joint_set.side(a), joint_set.side(b)}
    if "left" in sides:
        return LEFT_RGB
    if "right" in sides:
        return RIGHT_RGB
    return CENTER_RGB


def _clip_segment(p, q, limit=DRAW_LIMIT_PX):
    """The part of the segment ``p -> q`` (px) inside ``[-limit, limit]^2``, or None
    (Liang-Barsky: the segment's direction is kept, only its ends move)."""
    d = q - p
    t0, t1 = 0.0, 1.0
    for axis in (0, 1):
        for sign in (-1.0, 1.0):
            room, rate = limit - sign * p[axis], sign * d[axis]  # inside: t * rate <= room
            if rate > 0:
                t1 = min(t1, room / rate)
            elif rate < 0:
                t0 = max(t0, room / rate)
            elif room < 0:
                return None
    if t0 > t1:
        return None
    return p + t0 * d, p + t1 * d


def _pixel(p):
    return tuple(int(round(v)) for v in p)


def _drawable(p):
    return bool(np.isfinite(p).all() and (np.abs(p) <= DRAW_LIMIT_PX).all())


def _draw_bones_and_joints(canvas, pts, joint_set, bones, thickness, radius, filled):
    """Bones (in the given order) then joints; non-finite points are skipped, bones are
    clipped to :data:`DRAW_LIMIT_PX` and joints beyond it (off any image) not drawn."""
    for child, parent in bones:
        if np.isfinite(pts[[child, parent]]).all():
            segment = _clip_segment(pts[child], pts[parent])
            if segment is not None:
                cv2.line(canvas, _pixel(segment[0]), _pixel(segment[1]),
                         limb_color(joint_set, child, parent), thickness, cv2.LINE_AA)
    for j, p in enumerate(pts):
        if _drawable(p):
            cv2.circle(canvas, _pixel(p), radius, limb_color(joint_set, j, j),
                       -1 if filled else 1, cv2.LINE_AA)
    return canvas


def to_uint8(image):
    """Float [0, 1] or uint8 ``(H, W, 3)`` -> contiguous uint8 copy."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    return np.ascontiguousarray(image.copy())


def draw_skeleton_2d(image, joints_2d, joint_set=skeleton.H36M17, thickness=2, radius=3,
                     dashed=False):
    """Draws bones (``(child, parent)``) and joints onto a copy of ``image``.

    Args:
      image: ``(H, W, 3)`` RGB, float [0, 1] or uint8.
      joints_2d: ``(J, 2)`` px, any distance outside the image; non-finite joints
        (and their bones) are skipped.
      dashed: draw joints as hollow circles (e.g. ground truth next to predictions).
    """
    return _draw_bones_and_joints(to_uint8(image), np.asarray(joints_2d, dtype=np.float64),
                                  joint_set, joint_set.bones, thickness, radius,
                                  filled=not dashed)


def colorize(values, size=None):
    """``(H, W)`` values -> ``(H, W, 3)`` RGB uint8 with a jet colour map (min-max scaled)."""
    values = np.asarray(values, dtype=np.float64)
    lo, hi = values.min(), values.max()
    scaled = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    image = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    if size is not None:
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
    return np.ascontiguousarray(image)


def heatmap_projections(heatmaps, joints):
    """Max-projections of one ``(H, W, J*d)`` volume over joints.

    Returns:
      ``(xy, xz)`` colour images: ``xy`` ``(H, W, 3)`` (max over joints and z),
      ``xz`` ``(H, W, 3)`` (max over joints and y; z runs down, stretched to H rows).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    h, w, c = heatmaps.shape
    volume = heatmaps.reshape(h, w, joints, c // joints)
    xy = volume.max(axis=(2, 3))
    xz = volume.max(axis=(0, 2)).T  # (d, W)
    return colorize(xy), colorize(xz, size=(h, w))


def render_skeleton_3d(joints_3d, joint_set=skeleton.H36M17, size=256, azimuth_deg=0.0,
                       elevation_deg=0.0, background=(255, 255, 255)):
    """The 3D skeleton seen from a virtual orthographic camera, as an RGB image.

    ``joints_3d`` is ``(J, 3)`` camera-frame mm (x right, y down, z forward);
    the view rotates about the root by ``azimuth_deg`` (about the vertical
    y axis) and ``elevation_deg``. The skeleton is centred and scaled to fit.
    Non-finite joints and their bones are left out (with a non-finite root,
    the view centres on the mean of the others; with none finite, the canvas
    stays empty).
    """
    joints = np.asarray(joints_3d, dtype=np.float64)
    canvas = np.empty((size, size, 3), np.uint8)
    canvas[:] = background
    finite = np.isfinite(joints).all(axis=1)
    if not finite.any():
        return canvas
    root = joints[joint_set.root] if finite[joint_set.root] else joints[finite].mean(axis=0)
    view = (camera.rotation_matrix([1, 0, 0], np.deg2rad(elevation_deg))
            @ camera.rotation_matrix([0, 1, 0], np.deg2rad(azimuth_deg)))
    # non-finite joints are never drawn: zeros keep NaN out of the product
    rotated = np.where(finite[:, None], joints - root, 0.0) @ view.T
    extent = max(np.abs(rotated[finite, :2]).max(), 1.0)
    uv = rotated[:, :2] / extent * (0.42 * size) + size / 2.0
    uv[~finite] = np.nan  # so that the drawing skips them and their bones
    # far bones first, so nearer ones are drawn over them
    order = sorted(joint_set.bones, key=lambda b: -(rotated[b[0], 2] + rotated[b[1], 2]))
    return _draw_bones_and_joints(canvas, uv, joint_set, order, thickness=3, radius=4,
                                  filled=True)


def pose_figure(image, joints_2d, joints_3d, joint_set=skeleton.H36M17, height=400,
                novel_view=(60.0, 20.0)):
    """The paper's Figure 4 layout: the image with the 2D skeleton, the 3D skeleton seen
    from the camera, and from a novel viewpoint ``(azimuth_deg, elevation_deg)``.

    Args:
      image: ``(H, W, 3)`` RGB. joints_2d: ``(J, 2)`` px in ``image``.
      joints_3d: ``(J, 3)`` camera-frame mm.

    Returns:
      ``(height, ., 3)`` RGB uint8.
    """
    image = to_uint8(image)
    zoom = height / image.shape[0]
    resized = cv2.resize(image, (max(int(round(image.shape[1] * zoom)), 1), height),
                         interpolation=cv2.INTER_AREA if zoom < 1 else cv2.INTER_LINEAR)
    thickness = max(2, height // 150)
    panel_2d = draw_skeleton_2d(resized, np.asarray(joints_2d) * zoom, joint_set, thickness,
                                radius=thickness + 1)
    front = render_skeleton_3d(joints_3d, joint_set, height)
    novel = render_skeleton_3d(joints_3d, joint_set, height, *novel_view)
    gap = np.full((height, 6, 3), 255, np.uint8)
    return np.concatenate([panel_2d, gap, front, gap, novel], axis=1)


def check_image_path(path):
    """The extension of the image file ``path`` (``.png``); a ValueError when OpenCV
    cannot write an image there (a directory, or an extension naming no format it
    encodes), before anything is computed for it."""
    path = os.fspath(path)
    if path.endswith(("/", os.sep)) or os.path.isdir(path):
        raise ValueError(f"cannot write the image {path!r}: it is a directory; name a file "
                         f"in it, e.g. {os.path.join(path, 'figure.png')}")
    extension = os.path.splitext(path)[1]
    if not extension or not cv2.haveImageWriter("image" + extension):
        raise ValueError(f"cannot write the image {path!r}: OpenCV writes no format with the "
                         f"extension {extension or '(none)'!r}; name it .png or .jpg")
    return extension


def write_image(path, image):
    """Writes an RGB image ``(H, W, 3)`` in the format its extension names (PNG,
    JPEG, ...), atomically, its directory made if missing; returns ``path``.

    ``cv2.imwrite`` reports a failed write (a missing directory, a full disk)
    only by returning ``False``; this raises an OSError naming the file.
    """
    ok, data = cv2.imencode(check_image_path(path), to_uint8(image)[..., ::-1])
    if not ok:
        raise OSError(f"OpenCV could not encode {os.fspath(path)!r}")
    return _files.write_bytes_atomically(path, data.tobytes())
