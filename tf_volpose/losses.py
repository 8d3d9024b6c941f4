"""Volumetric MSE (Eq. 3 of the paper) without dense targets, the integral loss, and the
coordinate L2 loss.

The target of joint ``j`` is separable,
``G[b, y, x, j*d + k] = gx(x) * gy(y) * gz(k)``:

* ``gx(x) = exp(-(x + 0.5 - vx)^2 / (2 sigma^2))`` (peak 1, no rounding), ``gy`` likewise;
* ``gz(k) = (Phi((k + 1 - vz)/s) - Phi((k - vz)/s)) / (2 Phi(0.5/s) - 1)`` with
  ``s = sigma * d / fine_depth``: the fine Gaussian's mass in each coarse bin,
  normalised so a centred bin has 1. ``d == 1`` gives plain 2D heatmaps.

Because ``sum (G - p)^2 = sum G^2 - 2 sum G p + sum p^2`` and ``G`` factorises,
:func:`volumetric_loss` needs only the ``(B, J, 3)`` joint coordinates: the
input pipeline never carries the 4.5M-float volumes. :func:`dense_volumetric_loss`
is the dense reference used by the tests and the benchmark.
:func:`head_volumetric_loss_per_example` goes one step further for a stack whose
heatmaps feed only the loss (the last): it takes the 1x1 head's input and
weights and never forms the heatmaps at all (what the training step does).

:func:`integral_loss_per_example` is the alternative to Eq. 3 of Sun et al.
("Integral Human Pose Regression", ECCV 2018): the L1 error of each joint's
soft-argmax, so the volume is trained through the coordinates it decodes to
(``loss="integral"`` in training; decode such models with ``softargmax``).
:func:`distribution_loss_per_example` (the KL divergence from the normalised
target to the softmax, also separable) is added to it with a small weight
(``distribution_loss_weight``): alone, the integral loss can leave a joint on a
saturated spike that no longer learns.
"""

import math
from typing import NamedTuple, Optional

import tensorflow as tf

from tf_volpose import volume

_SQRT_HALF = math.sqrt(0.5)


def _phi(x):
    return 0.5 * (1.0 + tf.math.erf(x * _SQRT_HALF))


def target_profiles(joints_voxel, height, width, depth, sigma=2.0, fine_depth=64):
    """The 1D factors of the target: ``gx (B, J, W)``, ``gy (B, J, H)``, ``gz (B, J, d)``.

    ``joints_voxel`` is ``(B, J, 3)`` in this stack's grid (z already in units of ``depth``).
    """
    v = tf.cast(joints_voxel, tf.float32)
    centres_x = tf.range(width, dtype=tf.float32) + 0.5
    centres_y = tf.range(height, dtype=tf.float32) + 0.5
    gx = tf.exp(-tf.square(centres_x - v[..., 0:1]) / (2.0 * sigma ** 2))
    gy = tf.exp(-tf.square(centres_y - v[..., 1:2]) / (2.0 * sigma ** 2))
    s = sigma * depth / fine_depth
    edges = tf.range(depth + 1, dtype=tf.float32)
    cdf = _phi((edges - v[..., 2:3]) / s)
    # a bin's mass is never negative, but a difference of CDF values near 1 can round
    # below 0 (XLA's erf: -1.6e-7), and the KL term's q log q is then NaN
    gz = tf.maximum(cdf[..., 1:] - cdf[..., :-1], 0.0) / (2.0 * _phi(tf.constant(0.5 / s))
                                                           - 1.0)
    return gx, gy, gz


def render_targets(joints_voxel, height, width, depth, sigma=2.0, fine_depth=64):
    """Dense targets ``(B, H, W, J*depth)`` (for tests, benchmarks and 2D inputs of the decoupled net)."""
    gx, gy, gz = target_profiles(joints_voxel, height, width, depth, sigma, fine_depth)
    dense = tf.einsum("bjy,bjx,bjk->byxjk", gy, gx, gz)
    shape = tf.shape(dense)
    return tf.reshape(dense, [shape[0], height, width, shape[3] * depth])


def _check(heatmaps, joints_voxel, depth):
    if heatmaps.shape.rank != 4:
        raise ValueError(f"heatmaps must have shape (B, H, W, J*depth), got {heatmaps.shape}")
    _check_channels(heatmaps.shape[-1], joints_voxel, depth, "heatmaps has {} channels")


def _check_channels(channels, joints_voxel, depth, what):
    joints = joints_voxel.shape[1]
    if joints is not None and channels is not None and channels != joints * depth:
        raise ValueError(f"{what.format(channels)}; joints_voxel has {joints} joints and "
                         f"depth={depth} needs {joints * depth}")


def _per_example(sum_p2, sum_gp, profiles, mask, voxels_per_joint):
    """``sum (G - p)^2 = sum G^2 - 2 sum G p + sum p^2`` per joint ``(B, J)``, masked,
    summed over joints and divided by ``J * voxels_per_joint``: ``(B,)``."""
    gx, gy, gz = profiles
    # sum G^2 factorises into 1D sums
    sum_g2 = tf.reduce_sum(gx * gx, -1) * tf.reduce_sum(gy * gy, -1) * tf.reduce_sum(gz * gz, -1)
    per_joint = sum_g2 - 2.0 * sum_gp + sum_p2
    if mask is not None:
        per_joint *= tf.cast(mask, tf.float32)
    count = tf.cast(tf.shape(per_joint)[-1] * voxels_per_joint, tf.float32)
    return tf.reduce_sum(per_joint, axis=-1) / count


def _z_blocks(gz):
    """``(B, J*d, J)``, ``blocks[b, j*d + k, j] = gz[b, j, k]``, zero off the diagonal
    blocks: ``rows @ blocks`` contracts a ``(B, H*W, J*d)`` volume with the z profiles
    in one batched matmul (a many-operand einsum measured 5x slower here)."""
    batch, joints, depth = tf.unstack(tf.shape(gz))
    eye = tf.eye(joints, dtype=gz.dtype)
    return tf.reshape(gz[:, :, :, None] * eye[None, :, None, :], [batch, joints * depth, joints])


def _expected_value(volume_rows, gx, gy, blocks):
    """``sum over voxels of G * volume`` per joint ``(B, J)``, for ``volume_rows``
    ``(B, H*W, J*d)``, the separable ``G``'s profiles ``gx``, ``gy`` and its z
    profiles as :func:`_z_blocks`."""
    sums_z = tf.matmul(volume_rows, blocks)  # (B, H*W, J)
    sums_z = tf.reshape(sums_z, [tf.shape(sums_z)[0], gy.shape[-1], gx.shape[-1], -1])
    return tf.einsum("byxj,bjy,bjx->bj", sums_z, gy, gx)


@tf.custom_gradient
def _volume_sums(p, gx, gy, gz):
    """``sum p^2`` and ``sum G p`` per joint, ``(B, J)`` each, for ``p`` ``(B, H, W, J, d)``.

    Written for oneDNN CPUs, where matrix products run near peak and
    elementwise passes over the volume cost memory bandwidth (depth 64, 17
    joints, batch 4: 71 MB per pass). ``p`` is viewed as ``(B, H*W, J*d)``
    rows; the z contraction of ``sum G p`` is one batched matmul with the
    block-diagonal ``(J*d, J)`` matrix of the ``gz`` profiles, and ``sum p^2``
    reduces over the rows. The gradient is written out,
    ``d/dp = 2 p a + b G`` for upstream ``a, b`` ``(B, J)``, with ``b G`` the
    transposed product (autodiff instead tiles, multiplies and adds several
    volume-sized intermediates; measured in the README). The profiles get no
    gradient: they are functions of the ground truth.
    """
    batch, height, width, joints, depth = tf.unstack(tf.shape(p))
    rows = tf.reshape(p, [batch, height * width, joints * depth])
    blocks = _z_blocks(gz)
    sum_gp = _expected_value(rows, gx, gy, blocks)
    sum_p2 = tf.reduce_sum(
        tf.reshape(tf.reduce_sum(tf.square(rows), axis=1), [batch, joints, depth]), axis=-1)

    def grad(d_sum_p2, d_sum_gp):
        g_yx = tf.einsum("bj,bjy,bjx->byxj", d_sum_gp, gy, gx)
        g = tf.matmul(tf.reshape(g_yx, [batch, height * width, joints]), blocks, transpose_b=True)
        dp = rows * tf.repeat(2.0 * d_sum_p2, depth, axis=1)[:, None, :] + g
        return tf.reshape(dp, tf.shape(p)), None, None, None

    return (sum_p2, sum_gp), grad


def volumetric_loss_per_example(heatmaps, joints_voxel, depth, sigma=2.0, fine_depth=64,
                                mask=None):
    """Per-example form of :func:`volumetric_loss`: ``(B,)``, each divided by ``J*H*W*depth``.

    Distributed training averages these over the global batch
    (``tf.nn.compute_average_loss``).
    """
    heatmaps = tf.cast(heatmaps, tf.float32)
    joints_voxel = tf.cast(joints_voxel, tf.float32)
    _check(heatmaps, joints_voxel, depth)
    shape = tf.shape(heatmaps)
    batch, height, width = shape[0], heatmaps.shape[1], heatmaps.shape[2]
    joints = tf.shape(joints_voxel)[1]
    gx, gy, gz = target_profiles(joints_voxel, height, width, depth, sigma, fine_depth)
    p = tf.reshape(heatmaps, [batch, height, width, joints, depth])
    sum_p2, sum_gp = _volume_sums(p, gx, gy, gz)
    return _per_example(sum_p2, sum_gp, (gx, gy, gz), mask, height * width * depth)


def volumetric_loss(heatmaps, joints_voxel, depth, sigma=2.0, fine_depth=64, mask=None):
    """Mean squared error to the separable Gaussian target, computed without it.

    Args:
      heatmaps: (B, H, W, J*depth) predictions.
      joints_voxel: (B, J, 3) continuous voxel coordinates in this stack's grid.
      depth: this stack's z resolution d.
      sigma: Gaussian width, voxels of the xy grid / of the fine z grid.
      fine_depth: z resolution the Gaussian's sigma refers to.
      mask: optional (B, J); 0 drops a joint (unannotated) from the sum.

    Returns:
      Scalar float32: ``sum over b, unmasked j and all voxels of (G - p)^2``
      divided by ``B * J * H * W * depth``.
    """
    return tf.reduce_mean(
        volumetric_loss_per_example(heatmaps, joints_voxel, depth, sigma, fine_depth, mask))


@tf.custom_gradient
def _gram(rows):
    """``rows^T rows`` per example, ``(B, C, C)`` for ``rows`` ``(B, N, C)``.

    Autodiff would run two products for the gradient (one per operand); the
    Gram matrix is symmetric, so one suffices: ``d/d rows = rows (dG + dG^T)``.
    """

    def grad(d_gram):
        return tf.matmul(rows, d_gram + tf.linalg.matrix_transpose(d_gram))

    return tf.matmul(rows, rows, transpose_a=True), grad


def head_volumetric_loss_per_example(features, kernel, bias, joints_voxel, depth, sigma=2.0,
                                     fine_depth=64, mask=None):
    """:func:`volumetric_loss_per_example` of a 1x1 head's output, without computing it.

    Equals ``volumetric_loss_per_example(conv1x1(features, kernel) + bias, ...)``
    in value and gradients (up to float32 rounding), but neither the heatmaps
    nor their gradient are formed. With ``X`` the ``(H*W, C)`` feature rows of
    one example, ``W_j`` the ``(C, d)`` kernel columns of joint ``j`` and
    ``c_j`` their biases, the head's output is ``p_j = X W_j + c_j``, so

    * ``sum p_j^2 = <X^T X, W_j W_j^T> + 2 (1^T X) W_j c_j + H*W |c_j|^2``:
      one ``(C, C)`` Gram matrix per example instead of the ``(H*W, J*d)`` volume;
    * ``sum G_j p_j = sum_k gz_jk (s_j . W_jk + c_jk sum(gx_j) sum(gy_j))`` with
      ``s_j = sum_yx gy_j(y) gx_j(x) X[y, x]``: the target's 2D profile
      contracts the features before the kernel does.

    At the last stack of the paper's model (depth 64, 17 joints, 256
    features, 64x64, batch 4) the Gram matrices take 2.1 GFLOP and as much
    for their gradient, against 9.1 GFLOP for the head and 18.3 for its
    gradients, and no 71 MB volume is written (README: the training step
    gains ~7%). Computed in float32 whatever the dtype of ``features``.

    Args:
      features: (B, H, W, C) the head's input.
      kernel: (1, 1, C, J*depth) or (C, J*depth) the head's kernel.
      bias: (J*depth,) the head's bias, or None.
      joints_voxel, depth, sigma, fine_depth, mask: as in :func:`volumetric_loss`.

    Returns:
      (B,) float32, each divided by ``J*H*W*depth``.
    """
    features = tf.cast(features, tf.float32)
    joints_voxel = tf.cast(joints_voxel, tf.float32)
    if features.shape.rank != 4 or features.shape[-1] is None:
        raise ValueError(f"features must have shape (B, H, W, C), got {features.shape}")
    height, width, channels = features.shape[1], features.shape[2], features.shape[3]
    kernel = tf.reshape(tf.cast(kernel, tf.float32), [channels, -1])
    _check_channels(kernel.shape[-1], joints_voxel, depth, "kernel has {} output channels")
    batch, joints = tf.shape(features)[0], tf.shape(joints_voxel)[1]
    gx, gy, gz = target_profiles(joints_voxel, height, width, depth, sigma, fine_depth)
    rows = tf.reshape(features, [batch, height * width, channels])
    per_joint_kernel = tf.transpose(tf.reshape(kernel, [channels, joints, depth]), [1, 0, 2])
    # <X^T X, W_j W_j^T> for every example and joint: one (B, C*C) x (C*C, J) product
    kernel_gram = tf.matmul(per_joint_kernel, per_joint_kernel, transpose_b=True)  # (J, C, C)
    sum_p2 = tf.matmul(tf.reshape(_gram(rows), [batch, channels * channels]),
                       tf.reshape(kernel_gram, [joints, channels * channels]), transpose_b=True)
    # s_j and, in the same product, the row sums 1^T X the bias terms need
    profiles_2d = tf.reshape(gy[:, :, :, None] * gx[:, :, None, :], [batch, joints, -1])
    ones = tf.ones([batch, 1, height * width])
    contracted = tf.matmul(tf.concat([profiles_2d, ones], axis=1), rows)  # (B, J+1, C)
    s, row_sums = contracted[:, :-1], contracted[:, -1]
    sum_gp = tf.reduce_sum(s * tf.einsum("bjk,jck->bjc", gz, per_joint_kernel), axis=-1)
    if bias is not None:
        bias = tf.reshape(tf.cast(bias, tf.float32), [joints, depth])
        kernel_bias = tf.einsum("jck,jk->jc", per_joint_kernel, bias)  # W_j c_j, (J, C)
        sum_p2 += (2.0 * tf.matmul(row_sums, kernel_bias, transpose_b=True)
                   + float(height * width) * tf.reduce_sum(tf.square(bias), axis=-1))
        sum_gp += (tf.reduce_sum(gx, -1) * tf.reduce_sum(gy, -1)
                   * tf.reduce_sum(gz * bias, axis=-1))
    return _per_example(sum_p2, sum_gp, (gx, gy, gz), mask, height * width * depth)


def dense_volumetric_loss(heatmaps, joints_voxel, depth, sigma=2.0, fine_depth=64, mask=None):
    """Dense reference of :func:`volumetric_loss` (materialises the target)."""
    heatmaps = tf.cast(heatmaps, tf.float32)
    joints_voxel = tf.cast(joints_voxel, tf.float32)
    _check(heatmaps, joints_voxel, depth)
    target = render_targets(joints_voxel, heatmaps.shape[1], heatmaps.shape[2], depth, sigma,
                            fine_depth)
    err = tf.square(target - heatmaps)
    if mask is not None:
        weights = tf.repeat(tf.cast(mask, tf.float32), depth, axis=1)  # (B, J*depth)
        err *= weights[:, None, None, :]
    return tf.reduce_mean(err)


def stack_targets(joints_voxel, depths, fine_depth=64):
    """Per-stack joint coordinates: z scaled from the fine grid to each stack's ``d``."""
    joints_voxel = tf.cast(joints_voxel, tf.float32)
    return [joints_voxel * tf.constant([1.0, 1.0, d / fine_depth]) for d in depths]


STACK_LOSSES = ("volumetric", "integral")


class HeadInput(NamedTuple):
    """A stack's 1x1 head, not yet applied: its input and weights.

    :func:`multi_stage_loss` takes one in place of that stack's heatmaps and
    computes the loss with :func:`head_volumetric_loss_per_example`, which
    never forms them (what the training step does for the last stack).
    """
    features: tf.Tensor  # (B, H, W, C)
    kernel: tf.Tensor  # (1, 1, C, J*d)
    bias: Optional[tf.Tensor]  # (J*d,) or None


def integral_loss_per_example(heatmaps, joints_voxel, depth, mask=None, beta=1.0):
    """L1 error of the soft-argmax (Sun et al., ECCV 2018), per example.

    Each joint's volume is read as logits: its expected voxel under
    ``softmax(beta * h)`` (:func:`volume.soft_argmax_tf`) is compared with the
    target in normalised units (each axis divided by its voxel count, as the
    regression baseline's :func:`normalized_coordinates`), so x, y and z
    weigh alike at every depth. A ``depth == 1`` stack has no z to learn: only
    x and y count.

    Args:
      heatmaps: (B, H, W, J*depth) logits, joint-major channels.
      joints_voxel: (B, J, 3) this stack's voxel coordinates (z scaled to ``depth``).
      depth: this stack's z resolution.
      mask: optional (B, J); masked joints contribute nothing.
      beta: softmax inverse temperature.

    Returns:
      (B,) float32: mean over joints (masked ones count as 0) of ``|dx| + |dy| + |dz|``.
    """
    _check(heatmaps, joints_voxel, depth)
    heatmaps = tf.cast(heatmaps, tf.float32)
    predicted = volume.soft_argmax_tf(heatmaps, heatmaps.shape[-1] // depth, beta)
    return _integral_error(predicted, heatmaps.shape, joints_voxel, depth, mask)


def _integral_error(predicted, heatmaps_shape, joints_voxel, depth, mask):
    """:func:`integral_loss_per_example` from the soft-argmax ``predicted`` (B, J, 3)."""
    size = tf.constant([heatmaps_shape[2], heatmaps_shape[1], depth], tf.float32)
    error = tf.abs(predicted - tf.cast(joints_voxel, tf.float32)) / size
    if depth == 1:
        error = error[..., :2]
    error = tf.reduce_sum(error, axis=-1)
    if mask is not None:
        error *= tf.cast(mask, tf.float32)
    return tf.reduce_mean(error, axis=-1)


def distribution_loss_per_example(heatmaps, joints_voxel, depth, sigma=2.0, fine_depth=64,
                                  mask=None, beta=1.0):
    """KL divergence from the normalised target to each joint's softmax, per example.

    The integral loss sees only a volume's expectation, and a joint whose
    softmax has settled on a one-hot spike passes it no gradient (on network
    B the spike sat at one depth for every input: README). This term, added
    to it as Nibali et al.'s distribution regulariser ("Numerical Coordinate
    Regression with Convolutional Neural Networks", 2018; they use the
    Jensen-Shannon divergence), compares the whole softmax ``p`` with the
    target ``q`` (Eq. 3's separable Gaussian, normalised to sum 1): its
    gradient ``beta * (p - q)`` lowers a misplaced spike and raises the
    target's voxels however saturated ``p`` is, and a ``q`` centred on the
    target has its soft-argmax there, so the two losses agree. A target
    outside the grid is clamped to its border for this term (where the
    normalised profile stays defined). Never materialises ``q``.

    Args:
      heatmaps: (B, H, W, J*depth) logits, joint-major channels.
      joints_voxel: (B, J, 3) this stack's voxel coordinates (z scaled to ``depth``).
      depth, sigma, fine_depth: as :func:`volumetric_loss`.
      mask: optional (B, J); masked joints contribute nothing.
      beta: softmax inverse temperature (as :func:`integral_loss_per_example`).

    Returns:
      (B,) float32: mean over joints (masked ones count as 0) of ``KL(q || p)``, nats.
    """
    _check(heatmaps, joints_voxel, depth)
    heatmaps = tf.cast(heatmaps, tf.float32)
    log_partition = volume.soft_argmax_log_partition_tf(
        heatmaps, heatmaps.shape[-1] // depth, beta)[1]
    return _divergence(heatmaps, log_partition, joints_voxel, depth, sigma, fine_depth, mask,
                       beta)


def _divergence(heatmaps, log_partition, joints_voxel, depth, sigma, fine_depth, mask, beta):
    """:func:`distribution_loss_per_example` given the softmax's ``log_partition`` (B, J)."""
    ny, nx = heatmaps.shape[1], heatmaps.shape[2]
    joints = heatmaps.shape[-1] // depth
    size = tf.constant([nx, ny, depth], tf.float32)
    inside = tf.clip_by_value(tf.cast(joints_voxel, tf.float32), 0.0, size)
    profiles = [g / tf.reduce_sum(g, axis=-1, keepdims=True)
                for g in target_profiles(inside, ny, nx, depth, sigma, fine_depth)]
    qx, qy, qz = profiles
    # sum q log q separates into the profiles' own sums (0 log 0 = 0)
    neg_entropy = tf.add_n([tf.reduce_sum(tf.math.xlogy(q, q), axis=-1) for q in profiles])
    rows = tf.reshape(heatmaps, [-1, ny * nx, joints * depth])
    expected_logit = beta * _expected_value(rows, qx, qy, _z_blocks(qz))
    divergence = neg_entropy + log_partition - expected_logit
    if mask is not None:
        divergence *= tf.cast(mask, tf.float32)
    return tf.reduce_mean(divergence, axis=-1)


def _stack_loss_per_example(output, joints_voxel, depth, sigma, fine_depth, mask,
                            loss="volumetric", distribution_weight=0.0):
    if loss == "integral":
        if isinstance(output, HeadInput):
            raise ValueError("the integral loss needs the heatmaps: pass the stack's heatmaps, "
                             "not its HeadInput")
        if not distribution_weight:
            return integral_loss_per_example(output, joints_voxel, depth, mask)
        # one soft-argmax pass serves both terms
        _check(output, joints_voxel, depth)
        output = tf.cast(output, tf.float32)
        predicted, log_partition = volume.soft_argmax_log_partition_tf(
            output, output.shape[-1] // depth)
        return (_integral_error(predicted, output.shape, joints_voxel, depth, mask)
                + distribution_weight * _divergence(output, log_partition, joints_voxel, depth,
                                                    sigma, fine_depth, mask, 1.0))
    if isinstance(output, HeadInput):
        return head_volumetric_loss_per_example(output.features, output.kernel, output.bias,
                                                joints_voxel, depth, sigma, fine_depth, mask)
    return volumetric_loss_per_example(output, joints_voxel, depth, sigma, fine_depth, mask)


def multi_stage_loss(outputs, joints_voxel, depths, weights=None, sigma=2.0, fine_depth=64,
                     mask=None, per_example=False, loss="volumetric",
                     distribution_weight=0.0):
    """Weighted sum of per-stack losses (equal weights by default).

    Args:
      outputs: list of per-stack heatmaps ``(B, H, W, J*depths[i])``, or a
        :class:`HeadInput` in place of a stack's heatmaps.
      joints_voxel: (B, J, 3) on the fine grid (z in units of ``fine_depth``).
      depths: per-stack z resolution.
      weights: per-stack weights; default all 1 (the authors).
      mask: optional (B, J).
      per_example: return ``(B,)`` losses instead of batch means.
      loss: ``volumetric`` (Eq. 3, :func:`volumetric_loss`) or ``integral``
        (:func:`integral_loss_per_example`; heatmaps only, no :class:`HeadInput`).
      distribution_weight: with ``loss="integral"``, adds this times each
        stack's :func:`distribution_loss_per_example`.

    Returns:
      ``(total, [per-stack losses])``.
    """
    if loss not in STACK_LOSSES:
        raise ValueError(f"loss must be one of {STACK_LOSSES}, got {loss!r}")
    if distribution_weight < 0 or (distribution_weight and loss != "integral"):
        raise ValueError(f"distribution_weight must be 0, or positive with loss='integral', "
                         f"got {distribution_weight!r} with loss={loss!r}")
    if len(outputs) != len(depths):
        raise ValueError(f"{len(outputs)} outputs but {len(depths)} depths {list(depths)}")
    weights = [1.0] * len(depths) if weights is None else list(weights)
    if len(weights) != len(depths):
        raise ValueError(f"loss weights {weights} do not match depths {list(depths)}")
    per_stack = [_stack_loss_per_example(h, t, d, sigma, fine_depth, mask, loss,
                                         distribution_weight)
                 for h, t, d in zip(outputs, stack_targets(joints_voxel, depths, fine_depth), depths)]
    if not per_example:
        per_stack = [tf.reduce_mean(loss) for loss in per_stack]
    return tf.add_n([w * l for w, l in zip(weights, per_stack)]), per_stack


def normalized_coordinates(joints_voxel, xy_res, depth):
    """Voxel coordinates -> ``[-0.5, 0.5]`` per axis: the regression baseline's target."""
    return tf.cast(joints_voxel, tf.float32) / tf.constant([xy_res, xy_res, depth], tf.float32) - 0.5


def coordinate_loss(predictions, joints_voxel, xy_res, depth, mask=None, per_example=False):
    """L2 loss of the coordinate-regression baseline (Eq. 1).

    Args:
      predictions: (B, J*3) or (B, J, 3) normalised coordinates (see
        :func:`normalized_coordinates`).
      joints_voxel: (B, J, 3) ground truth voxel coordinates.
      mask: optional (B, J).
      per_example: return ``(B,)`` means over joints instead of the batch mean.

    Returns:
      Scalar: mean over ``B * J`` of the squared Euclidean error.
    """
    target = normalized_coordinates(joints_voxel, xy_res, depth)
    predictions = tf.reshape(tf.cast(predictions, tf.float32), tf.shape(target))
    err = tf.reduce_sum(tf.square(predictions - target), axis=-1)
    if mask is not None:
        err *= tf.cast(mask, tf.float32)
    per_joint_mean = tf.reduce_mean(err, axis=-1)
    return per_joint_mean if per_example else tf.reduce_mean(per_joint_mean)
