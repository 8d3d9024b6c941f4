"""Person boxes and the affine maps between an image and a square crop.

A box is ``(center, scale)``: a square of side ``200 * scale`` px centred at
``center = (u, v)`` px (the hourglass convention).

Coordinate conventions:
  * image px: pixel ``i`` has its centre at ``u = i`` (OpenCV, projection).
  * crop coordinates are *continuous*: the crop spans ``[0, out_size)`` and
    crop pixel ``j`` covers ``[j, j + 1)``, centre ``j + 0.5`` -- the same
    convention as voxels (DESIGN.md), so ``voxel = crop * xy_res / out_size``.

:func:`crop_transform` gives the 3x3 matrix ``A`` with
``crop = A @ [u, v, 1]``. The NumPy functions are the reference; the ``*_tf``
functions are the same maps as TF ops for ``tf.data`` and exported graphs.
"""

import cv2
import numpy as np
import tensorflow as tf

from tf_volpose import _checks

BOX_SIZE_PX = 200.0  # box side per unit of scale (hourglass convention)


def box_from_xywh(x, y, w, h, padding=1.0):
    """``(center (2,), scale)`` of the square box around an ``x, y, w, h`` rectangle.

    The square's side is ``padding * max(w, h)``.
    """
    w = _checks.positive("w", w)
    h = _checks.positive("h", h)
    center = np.array([x + w / 2.0, y + h / 2.0], dtype=np.float64)
    return center, padding * max(w, h) / BOX_SIZE_PX


def xywh_from_box(center, scale):
    """The square ``(x, y, w, h)`` rectangle of a ``(center, scale)`` box (inverse of
    :func:`box_from_xywh` for square rectangles)."""
    center = _checks.as_array("center", center, shape=(2,))
    side = _checks.positive("scale", scale) * BOX_SIZE_PX
    return np.array([center[0] - side / 2.0, center[1] - side / 2.0, side, side])


def crop_transform(center, scale, out_size, rotation_deg=0.0, flip=False):
    """3x3 matrix from image px to continuous crop coordinates.

    Args:
      center: (2,) box centre, image px.
      scale: box side / 200 px; must be positive.
      out_size: crop side (any unit: pixels of a crop, or voxels of a grid).
      rotation_deg: rotation of the content about the box centre,
        counter-clockwise as seen on screen (v points down).
      flip: mirror horizontally (after rotation).

    Returns:
      (3, 3) float64 ``A`` with ``[x, y, 1] = A @ [u, v, 1]``.
    """
    center = _checks.as_array("center", center, shape=(2,))
    scale = _checks.positive("scale", scale)
    out_size = _checks.positive("out_size", out_size)
    rotation = np.deg2rad(_checks.as_array("rotation_deg", rotation_deg, shape=()))
    zoom = out_size / (BOX_SIZE_PX * scale)
    cos, sin = np.cos(rotation), np.sin(rotation)
    mirror = -1.0 if flip else 1.0
    # crop = out/2 + mirror_x * zoom * Rot @ (uv - center)
    linear = zoom * np.array([[mirror * cos, mirror * sin], [-sin, cos]])
    A = np.eye(3)
    A[:2, :2] = linear
    A[:2, 2] = out_size / 2.0 - linear @ center
    return A


def transform_points(points, A):
    """Applies a 3x3 affine ``A`` to ``(..., 2)`` points."""
    points = np.asarray(points, dtype=np.float64)
    A = np.asarray(A, dtype=np.float64)
    return points @ A[:2, :2].T + A[:2, 2]


def _pixel_index_matrix(A):
    """``A`` expressed between pixel *indices* (crop centre ``j + 0.5`` -> ``j``)."""
    shift = np.eye(3)
    shift[:2, 2] = -0.5
    return shift @ np.asarray(A, dtype=np.float64)


def warp_image(image, A, out_size, border_value=0.0):
    """Crops ``image`` (H, W, C) with ``A`` into ``(out_size, out_size, C)`` (bilinear, OpenCV)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise ValueError(f"image must have shape (H, W, C), got {image.shape}")
    M = _pixel_index_matrix(A)[:2]
    out = cv2.warpAffine(image, M, (int(out_size), int(out_size)), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=border_value)
    return out.reshape(int(out_size), int(out_size), -1)


# ---------------------------------------------------------------- TF versions


def crop_transform_tf(center, scale, out_size, rotation_deg=0.0, flip=False):
    """TF version of :func:`crop_transform` (float32 tensors; ``flip`` may be a bool tensor).

    Inputs are assumed valid (graph code cannot raise readable errors; the
    record reader checks them).
    """
    center = tf.cast(center, tf.float32)
    scale = tf.cast(scale, tf.float32)
    out_size = tf.cast(out_size, tf.float32)
    rotation = tf.cast(rotation_deg, tf.float32) * (np.pi / 180.0)
    zoom = out_size / (BOX_SIZE_PX * scale)
    cos, sin = tf.cos(rotation), tf.sin(rotation)
    mirror = tf.where(tf.cast(flip, tf.bool), -1.0, 1.0)
    a00, a01 = zoom * mirror * cos, zoom * mirror * sin
    a10, a11 = -zoom * sin, zoom * cos
    t0 = out_size / 2.0 - (a00 * center[0] + a01 * center[1])
    t1 = out_size / 2.0 - (a10 * center[0] + a11 * center[1])
    return tf.stack([tf.stack([a00, a01, t0]), tf.stack([a10, a11, t1]),
                     tf.constant([0.0, 0.0, 1.0])])


def transform_points_tf(points, A):
    """TF version of :func:`transform_points` for ``(N, 2)`` points."""
    A = tf.cast(A, tf.float32)
    return tf.matmul(tf.cast(points, tf.float32), A[:2, :2], transpose_b=True) + A[:2, 2]


def source_window_tf(A, out_size, height, width, margin=2):
    """Integer pixel window ``(x0, y0, x1, y1)`` of an image that the crop ``A`` samples.

    The crop's corners mapped back into the image, widened by ``margin`` px for
    bilinear neighbours and clipped to the image; never empty.
    """
    corners = tf.constant([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]) * float(out_size)
    region = transform_points_tf(corners, tf.linalg.inv(tf.cast(A, tf.float32)))
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    lo = tf.cast(tf.floor(tf.reduce_min(region, axis=0)), tf.int32) - (margin - 1)
    hi = tf.cast(tf.math.ceil(tf.reduce_max(region, axis=0)), tf.int32) + margin
    x0 = tf.clip_by_value(lo[0], 0, width - 1)
    y0 = tf.clip_by_value(lo[1], 0, height - 1)
    return x0, y0, tf.clip_by_value(hi[0], x0 + 1, width), tf.clip_by_value(hi[1], y0 + 1, height)


def shift_origin_tf(A, x0, y0):
    """``A`` for an image cropped at ``(x0, y0)``: pixel ``(u, v)`` there is ``(u + x0, v + y0)``."""
    offset = tf.stack([tf.stack([1.0, 0.0, tf.cast(x0, tf.float32)]),
                       tf.stack([0.0, 1.0, tf.cast(y0, tf.float32)]),
                       tf.constant([0.0, 0.0, 1.0])])
    return tf.matmul(tf.cast(A, tf.float32), offset)


def warp_image_tf(image, A, out_size):
    """TF version of :func:`warp_image`: ``(H, W, C)`` float image -> ``(out, out, C)``.

    Uses ``ImageProjectiveTransformV3`` (bilinear, zero fill), which takes the
    map from output pixel indices to input pixel indices.
    """
    A = tf.cast(A, tf.float32)
    shift = tf.constant([[1.0, 0.0, -0.5], [0.0, 1.0, -0.5], [0.0, 0.0, 1.0]])
    inverse = tf.linalg.inv(tf.matmul(shift, A))
    transform = tf.reshape(inverse, [9])[:8] / inverse[2, 2]
    image = tf.convert_to_tensor(image)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None],
        transforms=transform[None],
        output_shape=tf.constant([int(out_size), int(out_size)], tf.int32),
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="CONSTANT")
    return out[0]


def box_from_joints(joints_2d, margin=1.15, visible=None):
    """``(center, scale)`` of the square box around 2D joints.

    The centre is the centre of the joints' bounding box and the side is
    ``margin`` times its longest side (the authors' Human3.6M boxes are about 1.15x).

    Args:
      joints_2d: (J, 2) px. visible: optional (J,) mask of joints to use.
    """
    joints_2d = _checks.as_array("joints_2d", joints_2d, shape=(None, 2), finite=False)
    if visible is not None:
        joints_2d = joints_2d[np.asarray(visible, dtype=bool)]
    joints_2d = joints_2d[np.all(np.isfinite(joints_2d), axis=-1)]
    if len(joints_2d) < 2:
        raise ValueError("joints_2d needs at least two finite visible joints for a box")
    lo, hi = joints_2d.min(0), joints_2d.max(0)
    side = margin * max(float((hi - lo).max()), 1.0)
    return (lo + hi) / 2.0, side / BOX_SIZE_PX


def xywh_or_whole_image(values, image_size):
    """A person box ``(x, y, w, h)`` px as given (e.g. on a command line), or the whole image.

    Args:
      values: 4 numbers (or strings of numbers), or empty/None for the whole image.
      image_size: ``(W, H)`` px of the (upright) image.

    Raises:
      ValueError: not 4 finite numbers with positive width and height, or no
        pixel of the image inside (the exported signatures refuse such a box too).
    """
    if not values:
        return [0.0, 0.0, float(image_size[0]), float(image_size[1])]
    box = _checks.as_array("box (x,y,w,h)", values, shape=(4,))
    _checks.positive("box width and height", box[2:])
    if not box_overlaps_image(box, image_size):
        raise ValueError(f"box (x,y,w,h) {box.tolist()} lies outside the "
                         f"{image_size[0]}x{image_size[1]} image")
    return box.tolist()


def box_overlaps_image(xywh, image_size):
    """Whether a box ``(x, y, w, h)`` px holds at least part of a pixel of a ``(W, H)`` image
    (a box partly outside is fine: the crop pads; one wholly outside would crop only padding)."""
    xywh = np.asarray(xywh, np.float64)
    return bool(np.all(xywh[:2] < np.asarray(image_size, np.float64))
                and np.all(xywh[:2] + xywh[2:] > 0))


def box_overlaps_image_tf(xywh, image_size):
    """TF version of :func:`box_overlaps_image` for one ``(4,)`` box and ``(2,)`` size; a bool."""
    return (tf.reduce_all(xywh[:2] < image_size)
            & tf.reduce_all(xywh[:2] + xywh[2:] > 0))


def box_from_xywh_tf(box, padding=1.0):
    """TF version of :func:`box_from_xywh` for ``(B, 4)`` ``x, y, w, h`` -> ``(center (B, 2), scale (B,))``."""
    box = tf.cast(box, tf.float32)
    center = box[:, :2] + box[:, 2:] / 2.0
    return center, padding * tf.reduce_max(box[:, 2:], axis=-1) / BOX_SIZE_PX


def upright_image_bytes(data):
    """JPEG/PNG bytes -> bytes whose stored pixels are the upright (displayed) image.

    OpenCV and image viewers apply a JPEG's EXIF orientation; TF's ``decode_image``
    (the exported graph, the input pipeline) does not, so a phone's portrait photo
    would reach the network lying on its side, and a box drawn on the displayed
    image would miss the person. Where the orientation is not the identity, the
    upright pixels are re-encoded (JPEG, quality 95); otherwise ``data`` is
    returned as it is.

    Returns:
      ``(bytes, (H, W, 3) uint8 RGB upright image)``.

    Raises:
      ValueError: ``data`` is not an image OpenCV can decode.
    """
    buffer = np.frombuffer(data, np.uint8)
    upright = cv2.imdecode(buffer, cv2.IMREAD_COLOR) if buffer.size else None
    if upright is None:
        raise ValueError("not a JPEG or PNG image")
    stored = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if stored.shape != upright.shape or not np.array_equal(stored, upright):
        data = cv2.imencode(".jpg", upright, [cv2.IMWRITE_JPEG_QUALITY, 95])[1].tobytes()
    return data, np.ascontiguousarray(upright[..., ::-1])


def read_upright_image(path):
    """:func:`upright_image_bytes` of the file at ``path``.

    Raises:
      OSError: the file cannot be read (the message names it).
      ValueError: ``<path> is not a JPEG or PNG image``.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        return upright_image_bytes(data)
    except ValueError:
        raise ValueError(f"{path} is not a JPEG or PNG image") from None
