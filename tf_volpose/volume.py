"""The voxel grid: encode joints, decode heatmaps, lift voxels to metric 3D.

Voxel frame (DESIGN.md): continuous coordinates, voxel ``i`` spans ``[i, i+1)``
and its centre is ``i + 0.5``. ``x`` follows image ``u`` and ``y`` image ``v``
inside the crop box, scaled to ``xy_res``; ``z`` is depth relative to the root
joint, ``z = (Z - Z_root + z_range) / (2 z_range) * depth``.

Heatmaps are ``(B, H, W, J*d)`` with joint ``j`` owning channels
``j*d ... j*d+d-1`` (``[b, y_row, x_col, j*d+k]``). A coarse stack (``d <
depth``) decodes to the same fine grid: its ``z`` is scaled by ``depth / d``.

NumPy functions are the reference; ``*_tf`` functions are the same maps as TF
ops (tested against each other) for graphs: evaluation and export.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_volpose import _checks, camera, crop, skeleton

DECODE_METHODS = ("argmax", "local_softargmax", "softargmax", "quadratic")


@dataclasses.dataclass(frozen=True)
class VoxelGrid:
    """A ``xy_res x xy_res x depth`` grid over a crop box and ``+-z_range_mm`` of depth.

    Args:
      xy_res: voxels along x and y (heatmap side).
      depth: voxels along z (the finest stack's depth resolution).
      z_range_mm: half-extent of the depth range around the root, mm.

    Example:
      >>> grid = VoxelGrid(xy_res=64, depth=64, z_range_mm=1000.0)
      >>> voxels = grid.encode(joints_cam, K=K, center=center, scale=scale)
      >>> joints = grid.lift(voxels, K=K, center=center, scale=scale,
      ...                    root_depth=joints_cam[0, 2])
    """

    xy_res: int = 64
    depth: int = 64
    z_range_mm: float = 1000.0

    def __post_init__(self):
        for name in ("xy_res", "depth"):
            value = getattr(self, name)
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        _checks.positive("z_range_mm", self.z_range_mm)

    @property
    def voxel_mm(self):
        """Depth extent of one fine voxel, mm."""
        return 2.0 * self.z_range_mm / self.depth

    def encode(self, joints_cam, K, center, scale, root=0):
        """Camera-frame joints -> continuous voxel coordinates.

        Args:
          joints_cam: (J, 3) camera frame, mm.
          K: (3, 3) intrinsics (pinhole; distortion is not part of the grid).
          center: (2,) box centre, px. scale: box side / 200 px.
          root: index of the root joint (its z is ``depth / 2``).

        Returns:
          (J, 3) float64 voxel coordinates ``(x, y, z)``.
        """
        joints_cam = _checks.as_array("joints_cam", joints_cam, shape=(None, 3))
        if np.any(joints_cam[:, 2] <= 0):
            raise ValueError(f"joints_cam must have positive depth Z, got min Z = "
                             f"{joints_cam[:, 2].min()}")
        K = _checks.intrinsics(K)
        A = crop.crop_transform(center, scale, self.xy_res)
        xy = crop.transform_points(camera.project_pinhole(joints_cam, K), A)
        z = self.voxel_z(joints_cam[:, 2] - joints_cam[root, 2])
        return np.concatenate([xy, z[:, None]], axis=-1)

    def lift(self, voxels, K, center, scale, root_depth):
        """Voxel coordinates -> camera-frame joints, mm (inverse of :meth:`encode`).

        Args:
          voxels: (J, 3) continuous voxel coordinates in this grid.
          K: (3, 3) intrinsics. center: (2,) px. scale: positive float.
          root_depth: absolute depth of the root joint, mm (positive).

        Returns:
          (J, 3) float64 camera-frame joints, mm.
        """
        voxels = _checks.as_array("voxels", voxels, shape=(None, 3))
        K = _checks.intrinsics(K)
        root_depth = _checks.positive("root_depth", root_depth)
        A = crop.crop_transform(center, scale, self.xy_res)
        uv = crop.transform_points(voxels[:, :2], np.linalg.inv(A))
        depth = root_depth + self.relative_depth(voxels[:, 2])
        return camera.backproject_pinhole(uv, depth, K)

    def relative_depth(self, z):
        """Voxel z -> depth relative to the root (the grid centre), mm.

        NumPy in, float64 NumPy out; a TF tensor in, a tensor of its dtype out.
        """
        if not tf.is_tensor(z):
            z = np.asarray(z, dtype=np.float64)
        return z / self.depth * 2.0 * self.z_range_mm - self.z_range_mm

    def voxel_z(self, relative_depth_mm):
        """Depth relative to the root, mm -> voxel z (inverse of :meth:`relative_depth`).

        The root sits at ``depth / 2``; ``+-z_range_mm`` map to ``depth`` and 0. NumPy in,
        float64 NumPy out; a TF tensor in, a tensor of its dtype out.
        """
        if not tf.is_tensor(relative_depth_mm):
            relative_depth_mm = np.asarray(relative_depth_mm, dtype=np.float64)
        return (relative_depth_mm + self.z_range_mm) / (2.0 * self.z_range_mm) * self.depth

    def decode(self, heatmaps, joints, method="argmax", window=6, beta=1.0):
        """NumPy reference of :func:`decode_heatmaps_tf` (same arguments, NumPy output)."""
        return decode_heatmaps(heatmaps, joints, self.depth, method, window, beta)


# ------------------------------------------------------------------- decoding


def _split_channels(heatmaps, joints):
    heatmaps = np.asarray(heatmaps, dtype=np.float64)
    if heatmaps.ndim != 4:
        raise ValueError(f"heatmaps must have shape (B, H, W, J*d), got {heatmaps.shape}")
    b, h, w, c = heatmaps.shape
    if c % joints:
        raise ValueError(f"heatmaps has {c} channels, not a multiple of joints={joints}")
    return heatmaps.reshape(b, h, w, joints, c // joints)


def decode_heatmaps(heatmaps, joints, depth, method="argmax", window=6, beta=1.0):
    """Heatmaps -> voxel coordinates on the fine grid (NumPy reference).

    Args:
      heatmaps: (B, H, W, J*d), joint-major channels.
      joints: J.
      depth: the fine grid's depth; ``z`` is returned in its units.
      method: ``argmax`` (centre of the best voxel, the paper),
        ``local_softargmax`` (centroid of ``max(h, 0)`` in a
        ``(2*window+1)^3`` box around the best voxel; ``window=6`` keeps the
        truncation bias of a sigma-2 Gaussian under 0.02 voxel), or
        ``softargmax`` (expectation under ``softmax(beta * h)`` over the whole
        volume; suits models trained with an integral loss), or ``quadratic``
        (a parabola through the log-heatmap at the best voxel and its two
        neighbours along each axis, as in DARK (Zhang et al., CVPR 2020):
        exact for a sampled Gaussian, unbiased near the grid border where a
        window is truncated; offsets are clipped to +-0.5 voxel).
      window: half-width of the local box, voxels.
      beta: softmax inverse temperature of ``softargmax``.

    Returns:
      voxels: (B, J, 3) ``(x, y, z)``; confidence: (B, J) peak value.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"method must be one of {DECODE_METHODS}, got {method!r}")
    volume = _split_channels(heatmaps, joints)  # (B, Y, X, J, d)
    b, ny, nx, nj, nd = volume.shape
    per_joint = volume.transpose(0, 3, 1, 2, 4).reshape(b, nj, -1)
    best = per_joint.argmax(-1)
    confidence = np.take_along_axis(per_joint, best[..., None], -1)[..., 0]
    iy, ix, iz = np.unravel_index(best, (ny, nx, nd))
    centres = [np.arange(n) + 0.5 for n in (nx, ny, nd)]
    if method == "argmax":
        coords = np.stack([ix + 0.5, iy + 0.5, iz + 0.5], axis=-1)
    elif method == "quadratic":
        vol = volume.transpose(0, 3, 1, 2, 4)  # (B, J, Y, X, d)
        bb, jj = np.meshgrid(np.arange(b), np.arange(nj), indexing="ij")
        floor = 1e-6 * np.maximum(confidence, 1e-12)
        offsets = []
        for axis, (index, n) in enumerate(((ix, nx), (iy, ny), (iz, nd))):
            def value(shift):
                pos = [iy, ix, iz]
                pos[(1, 0, 2)[axis]] = np.clip(index + shift, 0, n - 1)
                return np.log(np.maximum(vol[bb, jj, pos[0], pos[1], pos[2]], floor))
            lo, mid, hi = value(-1), value(0), value(1)
            curvature = lo - 2.0 * mid + hi
            inside = (index > 0) & (index < n - 1) & (curvature < 0)
            safe = np.where(inside, curvature, -1.0)
            offsets.append(np.where(inside, np.clip(0.5 * (lo - hi) / safe, -0.5, 0.5), 0.0))
        coords = np.stack([ix + 0.5 + offsets[0], iy + 0.5 + offsets[1], iz + 0.5 + offsets[2]], -1)
    else:
        if method == "softargmax":
            logits = beta * per_joint
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            weights = weights.reshape(b, nj, ny, nx, nd)
        else:
            weights = np.maximum(volume.transpose(0, 3, 1, 2, 4), 0.0)
            inside = [np.abs(np.arange(n)[None, None] - i[..., None]) <= window
                      for n, i in ((ny, iy), (nx, ix), (nd, iz))]
            weights = (weights * inside[0][..., :, None, None]
                       * inside[1][..., None, :, None] * inside[2][..., None, None, :])
        total = weights.sum((2, 3, 4))
        total = np.where(total > 0, total, 1.0)
        coords = np.stack([
            np.einsum("bjyxk,x->bj", weights, centres[0]),
            np.einsum("bjyxk,y->bj", weights, centres[1]),
            np.einsum("bjyxk,k->bj", weights, centres[2]),
        ], axis=-1) / total[..., None]
        # A joint with no positive evidence in its window falls back to argmax.
        fallback = np.stack([ix + 0.5, iy + 0.5, iz + 0.5], axis=-1)
        coords = np.where((weights.sum((2, 3, 4)) > 0)[..., None], coords, fallback)
    coords[..., 2] *= depth / nd
    return coords, confidence


def _best_voxel_tf(heatmaps, joints, nd):
    """Each joint's maximum: ``(iy, ix, iz, confidence)``, each ``(B, J)``.

    Reads the ``(B, Y, X, J*d)`` heatmaps in place, once: the maximum over z
    of every (y, x, joint), then the best (y, x) of that ``d``-times smaller
    map and the best z in its column, so the volume is never transposed. Ties
    go to the first voxel in (y, x, z) order, as a flat argmax of the
    ``(Y, X, d)`` volume would.
    """
    ny, nx = heatmaps.shape[1], heatmaps.shape[2]
    columns = tf.reshape(heatmaps, [tf.shape(heatmaps)[0], ny * nx, joints, nd])
    column_peak = tf.transpose(tf.reduce_max(columns, axis=-1), [0, 2, 1])     # (B, J, YX)
    best_yx = tf.argmax(column_peak, axis=-1, output_type=tf.int32)            # (B, J)
    iy, ix = best_yx // nx, best_yx % nx
    column = _gather_voxels_tf(heatmaps, joints, nd, iy[..., None], ix[..., None],
                               tf.range(nd)[None, None])                       # (B, J, d)
    iz = tf.argmax(column, axis=-1, output_type=tf.int32)
    return iy, ix, iz, tf.reduce_max(column_peak, axis=-1)


def _gather_voxels_tf(heatmaps, joints, nd, iy, ix, iz):
    """Heatmap values at voxel indices of each joint (int32, in range).

    ``iy``, ``ix``, ``iz`` broadcast against each other to ``(B, J, ...)``; so does the result.
    """
    joint = tf.reshape(tf.range(joints), [1, joints] + [1] * (len(iy.shape) - 2))
    flat = ((iy * heatmaps.shape[2] + ix) * joints + joint) * nd + iz
    rows = tf.reshape(heatmaps, [tf.shape(heatmaps)[0], -1])
    return tf.reshape(tf.gather(rows, tf.reshape(flat, [tf.shape(flat)[0], -1]), batch_dims=1),
                      tf.shape(flat))


def soft_argmax_tf(heatmaps, joints, beta=1.0):
    """Expected voxel of each joint under ``softmax(beta * h)`` over its whole volume.

    Differentiable: the ``softargmax`` decoding and :func:`losses.integral_loss_per_example`
    (Sun et al., ECCV 2018) share it.

    Args:
      heatmaps: (B, H, W, J*d) float32, joint-major channels.
      joints: J.
      beta: softmax inverse temperature.

    Returns:
      (B, J, 3) ``(x, y, z)`` in this volume's own voxels (``z`` in units of its ``d``).
    """
    return soft_argmax_log_partition_tf(heatmaps, joints, beta)[0]


def soft_argmax_log_partition_tf(heatmaps, joints, beta=1.0):
    """:func:`soft_argmax_tf` and the log partition function of the same softmax.

    The integral loss needs the expectation and its KL term the log partition
    (:func:`losses.distribution_loss_per_example`); both come from one
    exponentiation of the volume. The gradient is written out, ``d/dl_v`` of
    ``coords_a`` being ``p_v (pos_a(v) - coords_a)`` and of ``log Z`` being
    ``p_v``: one pass over the volume instead of autodiff's five, and the
    exponentials are kept from the forward pass.

    Args:
      heatmaps: (B, H, W, J*d) float32, joint-major channels.
      joints: J.
      beta: softmax inverse temperature.

    Returns:
      ``(coords, log_partition)``: (B, J, 3) as :func:`soft_argmax_tf`, and (B, J)
      ``log sum over the joint's voxels of exp(beta * h)``.
    """
    ny, nx = heatmaps.shape[1], heatmaps.shape[2]
    nd = heatmaps.shape[3] // joints
    cx, cy, cz = [tf.range(n, dtype=heatmaps.dtype) + 0.5 for n in (nx, ny, nd)]

    @tf.custom_gradient
    def forward(heatmaps):
        # softmax weights in the (B, Y*X, J, d) layout; the expectation separates into
        # sums of the weights over z per pixel and over pixels per z, so the volume is
        # never transposed
        b = tf.shape(heatmaps)[0]
        logits = tf.reshape(heatmaps, [b, ny * nx, joints, nd])
        # a pass over the volume saved in the usual case; a tensor beta is always applied
        if not (isinstance(beta, (int, float)) and beta == 1.0):
            logits = beta * logits
        shift = tf.reduce_max(tf.reduce_max(logits, axis=-1), axis=1)  # (B, J)
        weights = tf.exp(logits - shift[:, None, :, None])
        per_pixel = tf.reshape(tf.reduce_sum(weights, axis=-1), [b, ny, nx, joints])
        per_z = tf.reduce_sum(weights, axis=1)  # (B, J, d)
        mass = tf.reduce_sum(per_z, axis=-1)    # (B, J)
        coords = tf.stack([
            tf.einsum("byxj,x->bj", per_pixel, cx),
            tf.einsum("byxj,y->bj", per_pixel, cy),
            tf.einsum("bjk,k->bj", per_z, cz),
        ], axis=-1) / mass[..., None]
        log_partition = shift + tf.math.log(mass)

        def grad(d_coords, d_log_partition):
            # d_h_v = beta * w_v / mass * (sum_a d_a (pos_a(v) - coords_a) + d_logZ):
            # a per-pixel part (x, y and the per-joint constants) plus a per-z part
            scale = beta / mass
            constant = d_log_partition - tf.reduce_sum(d_coords * coords, axis=-1)
            per_pixel_part = (d_coords[:, None, None, :, 0] * cx[None, None, :, None]
                              + d_coords[:, None, None, :, 1] * cy[None, :, None, None]
                              + constant[:, None, None, :]) * scale[:, None, None, :]
            per_z_part = d_coords[..., 2:] * cz * scale[..., None]  # (B, J, d)
            d_logits = weights * (tf.reshape(per_pixel_part, [b, ny * nx, joints, 1])
                                  + per_z_part[:, None])
            return tf.reshape(d_logits, tf.shape(heatmaps))

        return (coords, log_partition), grad

    return forward(heatmaps)


def decode_heatmaps_tf(heatmaps, joints, depth, method="argmax", window=6, beta=1.0):
    """TF version of :func:`decode_heatmaps`; returns float32 ``(voxels, confidence)``.

    The heatmaps are read in place, never transposed: :func:`_best_voxel_tf`
    reads them once, and the sub-voxel methods read only the few voxels around
    each joint's maximum (``local_softargmax`` gathers its ``(2*window+1)^3``
    box instead of masking the whole volume: README, 14 -> 0.8 ms per image
    for a 64^3 x 17 volume on 2 cores), except ``softargmax``, an expectation
    over the whole volume, which sums the weights over z and over pixels.
    """
    if method not in DECODE_METHODS:
        raise ValueError(f"method must be one of {DECODE_METHODS}, got {method!r}")
    heatmaps = tf.cast(heatmaps, tf.float32)
    ny, nx = heatmaps.shape[1], heatmaps.shape[2]
    nd = heatmaps.shape[3] // joints
    iy, ix, iz, confidence = _best_voxel_tf(heatmaps, joints, nd)
    argmax = tf.cast(tf.stack([ix, iy, iz], axis=-1), tf.float32) + 0.5
    if method == "argmax":
        coords = argmax
    elif method == "quadratic":
        floor = 1e-6 * tf.maximum(confidence, 1e-12)
        offsets = []
        for axis, (index, n) in enumerate(((ix, nx), (iy, ny), (iz, nd))):
            def value(shift, axis=axis, index=index, n=n):
                pos = [iy, ix, iz]
                pos[(1, 0, 2)[axis]] = tf.clip_by_value(index + shift, 0, n - 1)
                return tf.math.log(tf.maximum(_gather_voxels_tf(heatmaps, joints, nd, *pos),
                                              floor))
            lo, mid, hi = value(-1), value(0), value(1)
            curvature = lo - 2.0 * mid + hi
            inside = (index > 0) & (index < n - 1) & (curvature < 0)
            safe = tf.where(inside, curvature, -1.0)
            offsets.append(tf.where(inside, tf.clip_by_value(0.5 * (lo - hi) / safe, -0.5, 0.5),
                                    0.0))
        coords = argmax + tf.stack(offsets, axis=-1)
    elif method == "softargmax":
        coords = soft_argmax_tf(heatmaps, joints, beta)
    else:
        # the box around the maximum, per axis at most the whole axis; voxels outside the
        # grid are read clipped and weighted 0, as the reference's masks leave them out
        def axis_window(index, n, shape):
            reach = min(int(window), n - 1)
            position = index[..., None] + tf.range(-reach, reach + 1)
            valid = (position >= 0) & (position < n)
            return (tf.reshape(tf.clip_by_value(position, 0, n - 1), shape),
                    tf.reshape(tf.cast(valid, tf.float32), shape),
                    tf.reshape(tf.cast(position, tf.float32) + 0.5, shape))
        b = tf.shape(heatmaps)[0]
        y, valid_y, cy = axis_window(iy, ny, [b, joints, -1, 1, 1])
        x, valid_x, cx = axis_window(ix, nx, [b, joints, 1, -1, 1])
        z, valid_z, cz = axis_window(iz, nd, [b, joints, 1, 1, -1])
        values = _gather_voxels_tf(heatmaps, joints, nd, y, x, z)  # (B, J, Ry, Rx, Rz)
        weights = tf.nn.relu(values) * valid_y * valid_x * valid_z
        total = tf.reduce_sum(weights, axis=[2, 3, 4])
        coords = tf.stack([tf.reduce_sum(weights * c, axis=[2, 3, 4]) for c in (cx, cy, cz)],
                          axis=-1) / tf.maximum(total, 1e-12)[..., None]
        # a joint with no positive evidence in its window falls back to argmax
        coords = tf.where((total > 0)[..., None], coords, argmax)
    coords = coords * tf.constant([1.0, 1.0, depth / nd])
    return coords, confidence


def move_root_depth(joints_cam, root_depth, new_root_depth):
    """Lifted joints -> the same voxels lifted at another root depth (pinhole cameras).

    ``lift`` puts each joint on its pixel's ray at the root depth plus the joint's
    depth relative to the root, so a new root depth slides every joint along its
    ray by the same change of depth: ``X' = X * (Z + new - old) / Z``. This needs
    neither the voxels nor the intrinsics, e.g. to compare two models' joints at
    one root depth.

    Args:
      joints_cam: (..., J, 3) camera frame, mm, as lifted at ``root_depth``.
      root_depth, new_root_depth: (...) mm.

    Returns:
      (..., J, 3) float64 camera-frame joints, mm.
    """
    joints_cam = _checks.as_array("joints_cam", joints_cam, shape=(..., None, 3))
    # lift() does not forbid joints behind the camera (an untrained model's can be); the
    # slide along the ray holds for them too, only Z = 0 has no ray
    if np.any(joints_cam[..., 2] == 0):
        raise ValueError("joints_cam must have nonzero depth Z (a ray through the camera "
                         "centre), got Z = 0")
    change = (_checks.as_array("new_root_depth", new_root_depth)
              - _checks.as_array("root_depth", root_depth))
    z = joints_cam[..., 2:]
    return joints_cam * (z + change[..., None, None]) / z


def lift_tf(voxels, K, center, scale, root_depth, grid):
    """Batched TF version of :meth:`VoxelGrid.lift`.

    Args:
      voxels: (B, J, 3). K: (B, 3, 3). center: (B, 2). scale: (B,).
      root_depth: (B,) mm. grid: a :class:`VoxelGrid`.

    Returns:
      (B, J, 3) float32 camera-frame joints, mm.
    """
    voxels = tf.cast(voxels, tf.float32)
    uv = voxels_to_image_tf(voxels[..., :2], center, scale, grid.xy_res)
    depth = tf.cast(root_depth, tf.float32)[:, None] + grid.relative_depth(voxels[..., 2])
    K = tf.cast(K, tf.float32)
    f = tf.stack([K[:, 0, 0], K[:, 1, 1]], axis=-1)[:, None]
    c = tf.stack([K[:, 0, 2], K[:, 1, 2]], axis=-1)[:, None]
    xy = (uv - c) / f * depth[..., None]
    return tf.concat([xy, depth[..., None]], axis=-1)


def voxels_to_image_tf(xy, center, scale, xy_res):
    """Batched inverse crop map: ``(B, J, 2)`` voxel x,y -> image px (no rotation/flip)."""
    side = crop.BOX_SIZE_PX * tf.cast(scale, tf.float32)
    return ((tf.cast(xy, tf.float32) / xy_res - 0.5) * side[:, None, None]
            + tf.cast(center, tf.float32)[:, None])


# ---------------------------------------------------------------- root depth


# Bone-length misfit beyond which a bone counts linearly (Huber), mm. A misfit of
# a few voxels is what a wrongly decoded joint gives its (two) bones; counted
# quadratically, that one joint moved the whole skeleton (measured on the synthetic
# validation set: root depth error -23%, see the README). Clean skeletons misfit by
# far less (subject vs mean bone lengths), where the fit is plain least squares.
ROOT_DEPTH_HUBER_MM = 50.0

# The root depth fit keeps every joint at least this far in front of the camera. Without
# it a pose decoded with a joint far behind the root (an untrained network's, or a hard
# image's) could fit bone lengths best with the root under 1 m away and that joint at a
# negative depth: behind the camera, where nothing the camera saw can be.
MIN_JOINT_DEPTH_MM = 100.0


def _bone_misfit(residual_mm, huber_mm, ops):
    """Per-bone penalty of ``|bone| - L``: Huber with ``huber_mm``, squares if None.

    ``ops`` is ``np`` or ``tf`` (both have ``abs`` and ``where``), so the NumPy
    reference and the graph version share the definition.
    """
    if huber_mm is None:
        return residual_mm ** 2
    size = ops.abs(residual_mm)
    return ops.where(size <= huber_mm, 0.5 * residual_mm ** 2, huber_mm * (size - 0.5 * huber_mm))


def _check_huber(huber_mm):
    if huber_mm is None:
        return
    try:
        valid = bool(np.isfinite(huber_mm) and huber_mm > 0)
    except TypeError:
        valid = False
    if not valid:
        raise ValueError(f"huber_mm must be a positive number of mm or None, got {huber_mm!r}")


def estimate_root_depth(voxels, K, center, scale, bone_lengths, grid,
                        joint_set=skeleton.H36M17, search_mm=(300.0, 30000.0),
                        huber_mm=ROOT_DEPTH_HUBER_MM):
    """Absolute root depth whose lifted skeleton best matches known bone lengths.

    Minimises ``sum_i rho(|bone_i(Z)| - L_i)`` over the root depth ``Z``, where
    bones are ``joint_set.bones`` (``(child, parent)`` in child order) of the
    skeleton ``VoxelGrid.lift(voxels, ..., root_depth=Z)`` (joints at ``Z`` plus
    their depth relative to the grid centre, where the root is by construction)
    and ``rho`` is the Huber penalty (``r^2 / 2`` up to ``huber_mm``, linear
    beyond), so one wrongly decoded joint cannot drag the whole skeleton;
    ``huber_mm=None`` is least squares. ``Z`` is at least ``search_mm[0]`` and far
    enough that every joint lies :data:`MIN_JOINT_DEPTH_MM` or more in front of
    the camera (the fit's depth otherwise, where that bound is not reached).
    A log-spaced scan from there to ``search_mm[1]`` brackets the minimum,
    golden-section search refines it.

    Args:
      voxels: (J, 3) voxel coordinates. K: (3, 3). center: (2,) px.
      scale: box side / 200. bone_lengths: (J-1,) mm.
      grid: the :class:`VoxelGrid` of ``voxels``.
      huber_mm: misfit, mm, beyond which a bone counts linearly; None: squares.

    Returns:
      Root depth, mm (float).
    """
    voxels = _checks.as_array("voxels", voxels, shape=(joint_set.num_joints, 3))
    K = _checks.intrinsics(K)
    bones = np.array(joint_set.bones)
    bone_lengths = _checks.as_array("bone_lengths", bone_lengths, shape=(len(bones),))
    _checks.positive("bone_lengths", bone_lengths)
    _check_huber(huber_mm)
    A = crop.crop_transform(center, scale, grid.xy_res)
    uv = crop.transform_points(voxels[:, :2], np.linalg.inv(A))
    rays = camera.backproject_pinhole(uv, np.ones(len(uv)), K)  # (J, 3), Z = 1
    # depths relative to the grid centre, as lift() places them: the fitted skeleton is
    # the lifted one even where the root joint is not decoded at depth / 2
    dz = grid.relative_depth(voxels[:, 2])
    child, parent = bones[:, 0], bones[:, 1]
    slope = rays[child] - rays[parent]                       # d bone / d Z
    offset = dz[child, None] * rays[child] - dz[parent, None] * rays[parent]

    def cost(z):
        z = np.asarray(z, dtype=np.float64)[..., None, None]
        lengths = np.linalg.norm(z * slope + offset, axis=-1)
        return _bone_misfit(lengths - bone_lengths, huber_mm, np).sum(-1)

    nearest = max(search_mm[0], MIN_JOINT_DEPTH_MM - dz.min())
    candidates = np.geomspace(nearest, max(search_mm[1], nearest), 400)
    best = int(np.argmin(cost(candidates)))
    lo = candidates[max(best - 1, 0)]
    hi = candidates[min(best + 1, len(candidates) - 1)]
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(60):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if cost(a) < cost(b):
            hi = b
        else:
            lo = a
    return float((lo + hi) / 2.0)


def mean_bone_lengths(joints_cam, joint_set=skeleton.H36M17):
    """Mean bone lengths ``(J-1,)`` mm of ``(F, J, 3)`` poses, in ``joint_set.bones`` order."""
    joints_cam = _checks.as_array("joints_cam", joints_cam,
                                  shape=(None, joint_set.num_joints, 3))
    bones = np.array(joint_set.bones)
    return np.linalg.norm(joints_cam[:, bones[:, 0]] - joints_cam[:, bones[:, 1]], axis=-1).mean(0)


def estimate_root_depth_tf(voxels, K, center, scale, bone_lengths, grid,
                           joint_set=skeleton.H36M17, search_mm=(300.0, 30000.0),
                           candidates=400, refinements=40, huber_mm=ROOT_DEPTH_HUBER_MM):
    """Batched TF version of :func:`estimate_root_depth` (same cost, bounds, scan and
    golden section).

    Args:
      voxels: (B, J, 3). K: (B, 3, 3). center: (B, 2). scale: (B,).
      bone_lengths: (J-1,) mm in ``joint_set.bones`` order.
      huber_mm: as in :func:`estimate_root_depth`.

    Returns:
      (B,) float32 root depths, mm.
    """
    _check_huber(huber_mm)
    voxels = tf.cast(voxels, tf.float32)
    K = tf.cast(K, tf.float32)
    bones = np.array(joint_set.bones)
    uv = voxels_to_image_tf(voxels[..., :2], center, scale, grid.xy_res)
    f = tf.stack([K[:, 0, 0], K[:, 1, 1]], axis=-1)[:, None]
    c = tf.stack([K[:, 0, 2], K[:, 1, 2]], axis=-1)[:, None]
    rays = tf.concat([(uv - c) / f, tf.ones_like(uv[..., :1])], axis=-1)  # (B, J, 3), Z = 1
    dz = grid.relative_depth(voxels[..., 2])  # as lift_tf places the joints
    child, parent = bones[:, 0], bones[:, 1]
    ray_c, ray_p = tf.gather(rays, child, axis=1), tf.gather(rays, parent, axis=1)
    slope = ray_c - ray_p                                                    # (B, N, 3)
    offset = tf.gather(dz, child, axis=1)[..., None] * ray_c - tf.gather(dz, parent, axis=1)[..., None] * ray_p
    lengths = tf.cast(bone_lengths, tf.float32)

    def cost(z):  # z: (B, M) -> (B, M)
        bone = z[..., None, None] * slope[:, None] + offset[:, None]
        return tf.reduce_sum(_bone_misfit(tf.norm(bone, axis=-1) - lengths, huber_mm, tf),
                             axis=-1)

    # each example's log-spaced candidates, from its nearest allowed depth (B, M)
    nearest = tf.maximum(search_mm[0], MIN_JOINT_DEPTH_MM - tf.reduce_min(dz, axis=-1))
    farthest = tf.maximum(float(search_mm[1]), nearest)
    steps = tf.constant(np.linspace(0.0, 1.0, candidates), tf.float32)
    grid_z = nearest[:, None] * (farthest / nearest)[:, None] ** steps
    best = tf.argmin(cost(grid_z), axis=-1, output_type=tf.int32)
    lo = tf.gather(grid_z, tf.maximum(best - 1, 0), batch_dims=1)
    hi = tf.gather(grid_z, tf.minimum(best + 1, candidates - 1), batch_dims=1)
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    for _ in range(refinements):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        better_a = cost(tf.stack([a, b], -1))
        take_a = better_a[:, 0] < better_a[:, 1]
        hi = tf.where(take_a, b, hi)
        lo = tf.where(take_a, lo, a)
    return (lo + hi) / 2.0
