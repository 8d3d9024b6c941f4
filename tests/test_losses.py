import numpy as np
import pytest
import tensorflow as tf
from math import erf, sqrt

from tf_volpose import losses, volume


@pytest.mark.parametrize("depth", [1, 2, 4, 64])
def test_separable_loss_equals_dense_reference(rng, depth):
    h = tf.constant(rng.normal(0, 0.3, (2, 16, 16, 3 * depth)).astype(np.float32))
    # joints inside, near and outside the grid border
    joints = np.array([[[8.3, 7.1, 0.5], [0.2, 15.9, 0.01], [-2.0, 18.0, 1.3]],
                       [[15.5, 0.4, 0.99], [4.0, 4.0, -0.2], [9.9, 9.9, 0.5]]]) * [1, 1, depth]
    joints = tf.constant(joints, tf.float32)
    mask = tf.constant([[1, 0, 1], [1, 1, 1]], tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(h)
        fast = losses.volumetric_loss(h, joints, depth, mask=mask)
        dense = losses.dense_volumetric_loss(h, joints, depth, mask=mask)
    np.testing.assert_allclose(fast.numpy(), dense.numpy(), rtol=1e-5)
    g_fast, g_dense = tape.gradient(fast, h).numpy(), tape.gradient(dense, h).numpy()
    np.testing.assert_allclose(g_fast, g_dense, rtol=1e-5, atol=1e-5 * np.abs(g_dense).max())


@pytest.mark.parametrize("depth,with_bias", [(1, True), (2, False), (4, True), (64, True)])
def test_head_fused_loss_equals_the_loss_of_the_heads_output(rng, depth, with_bias):
    """Value and gradients (features, kernel, bias) of the loss taken before the 1x1 head."""
    features = tf.constant(rng.normal(0, 1, (2, 16, 12, 8)).astype(np.float32))
    kernel = tf.constant(rng.normal(0, 0.2, (1, 1, 8, 3 * depth)).astype(np.float32))
    bias = tf.constant(rng.normal(0, 0.2, (3 * depth,)).astype(np.float32)) if with_bias else None
    joints = tf.constant(np.array([[[8.3, 7.1, 0.5], [0.2, 15.9, 0.01], [-2.0, 18.0, 1.3]],
                                   [[11.5, 0.4, 0.99], [4.0, 4.0, -0.2], [13.9, 9.9, 0.5]]])
                         * [1, 1, depth], tf.float32)
    mask = tf.constant([[1, 0, 1], [1, 1, 1]], tf.float32)
    weights = tf.constant([1.0, 3.0])  # the two examples' losses reach the gradient differently
    variables = [features, kernel] + ([bias] if with_bias else [])

    def heads_output():
        heatmaps = tf.nn.conv2d(features, kernel, 1, "VALID")
        return heatmaps + bias if with_bias else heatmaps

    results = []
    for loss_fn in (lambda: losses.volumetric_loss_per_example(heads_output(), joints, depth,
                                                               mask=mask),
                    lambda: losses.head_volumetric_loss_per_example(features, kernel, bias,
                                                                    joints, depth, mask=mask)):
        with tf.GradientTape() as tape:
            tape.watch(variables)
            per_example = loss_fn()
            weighted = tf.reduce_sum(weights * per_example)
        results.append((per_example.numpy(), tape.gradient(weighted, variables)))
    (loss_ref, grads_ref), (loss_fused, grads_fused) = results
    np.testing.assert_allclose(loss_fused, loss_ref, rtol=1e-5)
    for fused, ref in zip(grads_fused, grads_ref):
        ref = ref.numpy()
        np.testing.assert_allclose(fused.numpy(), ref, rtol=1e-5, atol=1e-5 * np.abs(ref).max())


def test_head_input_in_multi_stage_loss_and_channel_errors(rng):
    joints = tf.constant(rng.uniform(2, 14, (2, 2, 3)) * [1, 1, 64], tf.float32)
    features = tf.constant(rng.normal(0, 1, (2, 16, 16, 4)).astype(np.float32))
    kernel = tf.constant(rng.normal(0, 0.3, (1, 1, 4, 2 * 4)).astype(np.float32))
    coarse = tf.constant(rng.normal(0, 0.3, (2, 16, 16, 2)).astype(np.float32))
    heatmaps = tf.nn.conv2d(features, kernel, 1, "VALID")
    total, per = losses.multi_stage_loss([coarse, heatmaps], joints, (1, 4), weights=(2.0, 0.5))
    total_h, per_h = losses.multi_stage_loss(
        [coarse, losses.HeadInput(features, kernel, None)], joints, (1, 4), weights=(2.0, 0.5))
    np.testing.assert_allclose(total_h.numpy(), total.numpy(), rtol=1e-5)
    np.testing.assert_allclose(per_h[1].numpy(), per[1].numpy(), rtol=1e-5)
    assert per_h[1].shape == ()  # a batch mean, like the heatmaps' loss
    with pytest.raises(ValueError, match="kernel has 8 output channels.*depth=64 needs 128"):
        losses.head_volumetric_loss_per_example(features, kernel, None, joints, 64)
    with pytest.raises(ValueError, match="features must have shape"):
        losses.head_volumetric_loss_per_example(features[0], kernel, None, joints, 4)


def test_target_values_by_hand():
    gx, gy, gz = losses.target_profiles(tf.constant([[[3.5, 2.0, 32.0]]]), 8, 8, 64)
    np.testing.assert_allclose(gx.numpy()[0, 0, 3], 1.0)  # centre 3.5 = voxel 3's centre
    np.testing.assert_allclose(gy.numpy()[0, 0, 2], np.exp(-0.25 / 8), rtol=1e-6)
    phi = lambda x: 0.5 * (1 + erf(x / sqrt(2)))
    s = 2.0
    expected = (phi((33 - 32) / s) - phi((32 - 32) / s)) / (2 * phi(0.5 / s) - 1)
    np.testing.assert_allclose(gz.numpy()[0, 0, 32], expected, rtol=1e-5)
    # d = 1: the whole depth range in one bin -> plain 2D heatmap, value 1
    _, _, gz1 = losses.target_profiles(tf.constant([[[3.5, 2.0, 0.5]]]), 8, 8, 1)
    np.testing.assert_allclose(gz1.numpy()[0, 0], [1.0], rtol=1e-5)


def test_coarse_target_is_the_marginal_of_the_fine_one():
    joints = tf.constant([[[5.0, 5.0, 37.3]]])
    _, _, fine = losses.target_profiles(joints, 8, 8, 64)
    _, _, coarse = losses.target_profiles(joints * [1, 1, 4 / 64], 8, 8, 4)
    fine_mass = fine.numpy()[0, 0].reshape(4, 16).sum(-1)
    coarse = coarse.numpy()[0, 0]
    # z = 37.3 of 64 lies in coarse bin 2, 5.3 fine voxels from bin 1: both hold mass
    assert fine_mass[1] > 1e-3 and fine_mass[2] > 0.5
    # proportional to the fine mass per coarse bin (a constant normalisation ratio)
    np.testing.assert_allclose(coarse * fine_mass[2] / coarse[2], fine_mass, rtol=1e-4, atol=1e-7)


def test_perfect_prediction_has_zero_loss_and_masked_joints_count_nothing(rng):
    joints = tf.constant(rng.uniform(2, 14, (2, 3, 3)) * [1, 1, 0.25], tf.float32)
    target = losses.render_targets(joints, 16, 16, 4)
    assert losses.volumetric_loss(target, joints, 4).numpy() < 1e-7
    noisy = target + tf.constant(rng.normal(0, 1, target.shape), tf.float32)
    mask = tf.constant([[0, 0, 0], [0, 0, 0]], tf.float32)
    assert losses.volumetric_loss(noisy, joints, 4, mask=mask).numpy() == 0.0


def test_multi_stage_weights_and_errors(rng):
    joints = tf.constant(rng.uniform(2, 14, (1, 2, 3)) * [1, 1, 4], tf.float32)
    outs = [tf.zeros([1, 16, 16, 2 * d]) for d in (1, 64)]
    total, per = losses.multi_stage_loss(outs, joints, (1, 64), weights=(2.0, 0.5))
    np.testing.assert_allclose(total.numpy(), 2 * per[0].numpy() + 0.5 * per[1].numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="depths"):
        losses.multi_stage_loss(outs, joints, (1,))
    with pytest.raises(ValueError, match="channels"):
        losses.volumetric_loss(outs[0], joints, 4)


def test_each_stack_sees_the_fine_z_scaled_to_its_depth():
    fine = tf.constant([[[5.5, 9.25, 40.0], [11.0, 3.0, 12.8]]])  # z on the 64-deep grid
    depths = (1, 4, 64)
    scaled = losses.stack_targets(fine, depths)
    # by hand: z * d / 64, x and y unchanged
    np.testing.assert_allclose(scaled[1].numpy(), [[[5.5, 9.25, 2.5], [11.0, 3.0, 0.8]]])
    np.testing.assert_allclose(scaled[0].numpy()[..., 2], [[0.625, 0.2]])
    # the stacks' own targets are then a perfect prediction for every stack; the fine
    # target handed to a coarse stack (no scaling) is not
    outputs = [losses.render_targets(joints, 16, 16, d) for joints, d in zip(scaled, depths)]
    _, per_stack = losses.multi_stage_loss(outputs, fine, depths)
    assert max(loss.numpy() for loss in per_stack) < 1e-7
    unscaled = losses.render_targets(fine, 16, 16, 4)
    assert losses.multi_stage_loss([unscaled], fine, (4,))[0].numpy() > 1e-3


def test_coordinate_loss_by_hand():
    joints = tf.constant([[[8.0, 8.0, 32.0], [16.0, 0.0, 64.0]]])
    pred = tf.constant([[[0.0, 0.0, 0.0], [0.5, -0.5, 0.5]]])  # exact
    assert losses.coordinate_loss(pred, joints, 16, 64).numpy() == 0.0
    off = pred + [[[0.3, 0.4, 0.0], [0, 0, 0]]]  # squared error 0.25 on one of two joints
    np.testing.assert_allclose(losses.coordinate_loss(off, joints, 16, 64).numpy(), 0.125)


def _soft_argmax_by_hand(heatmaps, joints, depth):
    """Expectation of the voxel centres under each joint's softmax, in float64 loops."""
    b, ny, nx, _ = heatmaps.shape
    volume = heatmaps.astype(np.float64).reshape(b, ny, nx, joints, depth)
    out = np.zeros((b, joints, 3))
    for i in range(b):
        for j in range(joints):
            w = np.exp(volume[i, :, :, j] - volume[i, :, :, j].max())
            w /= w.sum()
            yy, xx, zz = np.meshgrid(np.arange(ny) + 0.5, np.arange(nx) + 0.5,
                                     np.arange(depth) + 0.5, indexing="ij")
            out[i, j] = [(w * xx).sum(), (w * yy).sum(), (w * zz).sum()]
    return out


@pytest.mark.parametrize("depth", [1, 4])
def test_integral_loss_is_the_l1_error_of_the_soft_argmax(rng, depth):
    heatmaps = rng.normal(0, 3, (2, 8, 6, 3 * depth)).astype(np.float32)
    joints = rng.uniform(-1, 9, (2, 3, 3)) * [1, 1, depth / 8]
    mask = np.array([[1, 0, 1], [1, 1, 1]], np.float32)
    loss = losses.integral_loss_per_example(tf.constant(heatmaps), tf.constant(joints), depth,
                                            tf.constant(mask)).numpy()
    error = np.abs(_soft_argmax_by_hand(heatmaps, 3, depth) - joints) / [6, 8, depth]
    if depth == 1:  # one bin: no z to learn
        error[..., 2] = 0.0
    expected = (error.sum(-1) * mask).mean(-1)  # masked joints count 0 of the 3
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


def test_integral_loss_of_a_sharp_peak_by_hand_and_its_gradient_pulls_to_the_target():
    heatmaps = np.zeros((1, 4, 4, 2), np.float32)  # one joint, depth 2
    heatmaps[0, 1, 3, 1] = 60.0  # y 1, x 3, z 1: the soft-argmax is that voxel's centre
    target = tf.constant([[[1.5, 1.5, 0.5]]])
    loss = losses.integral_loss_per_example(tf.constant(heatmaps), target, 2)
    # |3.5 - 1.5| / 4 + |1.5 - 1.5| / 4 + |1.5 - 0.5| / 2
    np.testing.assert_allclose(loss.numpy(), [1.0], rtol=1e-6)
    # a softer peak: gradient steps move the soft-argmax towards the target
    logits = tf.Variable(heatmaps / 15.0)
    for _ in range(2):
        with tf.GradientTape() as tape:
            loss = losses.integral_loss_per_example(logits, target, 2)
        logits.assign_sub(10.0 * tape.gradient(loss, logits))
    before = losses.integral_loss_per_example(tf.constant(heatmaps / 15.0), target, 2)[0]
    after = losses.integral_loss_per_example(logits, target, 2)[0]
    assert after < 0.8 * before
    # d E[x] / d h_i = w_i (x_i - E[x]) (softmax), for a flat volume: the voxel right of
    # the centre raises E[x] by (3.5 - 2) / 32 per unit of logit
    flat = tf.Variable(tf.zeros([1, 4, 4, 2]))
    with tf.GradientTape() as tape:
        x = volume.soft_argmax_tf(flat, 1)[0, 0, 0]
    np.testing.assert_allclose(tape.gradient(x, flat).numpy()[0, 0, 3, 0], 1.5 / 32, rtol=1e-5)


def test_integral_loss_in_multi_stage_loss_and_its_errors(rng):
    joints = tf.constant(rng.uniform(1, 7, (2, 3, 3)) * [1, 1, 0.5], tf.float32)  # z on 4
    outputs = [tf.constant(rng.normal(0, 1, (2, 8, 8, 3 * d)), tf.float32) for d in (2, 4)]
    total, per_stack = losses.multi_stage_loss(outputs, joints, (2, 4), weights=(1.0, 3.0),
                                               fine_depth=4, loss="integral")
    scaled = losses.stack_targets(joints, (2, 4), fine_depth=4)
    for got, out, target, d in zip(per_stack, outputs, scaled, (2, 4)):
        np.testing.assert_allclose(
            got.numpy(), np.mean(losses.integral_loss_per_example(out, target, d)), rtol=1e-6)
    np.testing.assert_allclose(total.numpy(), per_stack[0].numpy() + 3 * per_stack[1].numpy(),
                               rtol=1e-6)
    head = losses.HeadInput(tf.zeros([2, 8, 8, 5]), tf.zeros([1, 1, 5, 12]), None)
    with pytest.raises(ValueError, match="integral loss needs the heatmaps"):
        losses.multi_stage_loss([head], joints, (4,), fine_depth=4, loss="integral")
    with pytest.raises(ValueError, match=r"loss must be one of \('volumetric', 'integral'\), "
                                         r"got 'l2'"):
        losses.multi_stage_loss(outputs, joints, (2, 4), fine_depth=4, loss="l2")
    total, per_stack = losses.multi_stage_loss(outputs, joints, (2, 4), fine_depth=4,
                                               loss="integral", distribution_weight=0.5)
    for got, out, target, d in zip(per_stack, outputs, scaled, (2, 4)):
        expected = (losses.integral_loss_per_example(out, target, d)
                    + 0.5 * losses.distribution_loss_per_example(out, target, d, fine_depth=4))
        np.testing.assert_allclose(got.numpy(), np.mean(expected), rtol=1e-6)
    with pytest.raises(ValueError, match="distribution_weight must be 0, or positive with "
                                         "loss='integral', got 0.5 with loss='volumetric'"):
        losses.multi_stage_loss(outputs, joints, (2, 4), fine_depth=4, distribution_weight=0.5)
    with pytest.raises(ValueError, match="got -1.0 with loss='integral'"):
        losses.multi_stage_loss(outputs, joints, (2, 4), fine_depth=4, loss="integral",
                                distribution_weight=-1.0)


def _dense_divergence(heatmaps, joints_voxel, depth, fine_depth, mask):
    """KL(q || softmax) from the dense target, by NumPy."""
    batch, ny, nx, channels = heatmaps.shape
    joints = channels // depth
    inside = np.clip(joints_voxel, 0, [nx, ny, depth])
    q = losses.render_targets(tf.constant(inside, tf.float32), ny, nx, depth,
                              fine_depth=fine_depth).numpy().reshape(batch, ny, nx, joints, depth)
    q = q / q.sum(axis=(1, 2, 4), keepdims=True)
    h = heatmaps.reshape(batch, ny, nx, joints, depth).astype(np.float64)
    log_p = h - np.log(np.exp(h).sum(axis=(1, 2, 4), keepdims=True))
    terms = np.where(q > 0, q * (np.log(np.where(q > 0, q, 1.0)) - log_p), 0.0)
    return (terms.sum(axis=(1, 2, 4)) * mask).mean(axis=-1)


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_distribution_loss_is_the_kl_divergence_of_the_dense_target(rng, depth):
    heatmaps = rng.normal(0, 2, (2, 8, 8, 3 * depth)).astype(np.float32)
    joints = rng.uniform(0, 8, (2, 3, 3)) * [1, 1, depth / 8]
    joints[0, 0] = [-3.0, 9.5, depth + 2.0]  # outside: clamped to the border for this term
    mask = np.array([[1, 1, 0], [1, 1, 1]], np.float32)
    loss = losses.distribution_loss_per_example(tf.constant(heatmaps), tf.constant(joints),
                                                depth, fine_depth=8, mask=tf.constant(mask))
    np.testing.assert_allclose(loss.numpy(), _dense_divergence(heatmaps, joints, depth, 8, mask),
                               rtol=1e-5)
    # zero where the softmax is the target, whatever the logits' offset
    q = losses.render_targets(tf.constant(np.clip(joints, 0, [8, 8, depth]), tf.float32), 8, 8,
                              depth, fine_depth=8).numpy()
    exact = losses.distribution_loss_per_example(tf.constant(np.log(q) + 7.0),
                                                 tf.constant(joints), depth, fine_depth=8)
    np.testing.assert_allclose(exact.numpy(), 0.0, atol=1e-5)


def test_distribution_loss_moves_a_saturated_spike_the_integral_loss_cannot():
    """A joint settled on a one-hot spike at the wrong depth (as network B's feet, README):
    the softmax passes the integral loss no gradient; the KL term's, ``p - q``, lowers the
    spike and raises the target's voxels."""
    heatmaps = np.zeros((1, 8, 8, 8), np.float32)  # one joint, depth 8
    heatmaps[0, 4, 4, 1] = 40.0  # spike at z = 1.5
    logits = tf.Variable(heatmaps)
    target = tf.constant([[[4.5, 4.5, 6.5]]])
    gradients = {}
    for weight in (0.0, 1.0):
        with tf.GradientTape() as tape:
            total, _ = losses.multi_stage_loss([logits], target, (8,), fine_depth=8,
                                               loss="integral", distribution_weight=weight)
        gradients[weight] = tape.gradient(total, logits).numpy()[0]
    assert np.abs(gradients[0.0]).max() < 1e-12
    q = losses.render_targets(target, 8, 8, 8, fine_depth=8).numpy()[0]
    spike = np.zeros_like(q)
    spike[4, 4, 1] = 1.0
    np.testing.assert_allclose(gradients[1.0], spike - q / q.sum(), atol=1e-6)


def test_depth_profile_is_never_negative_and_the_divergence_finite_under_xla(rng):
    """XLA's erf rounds the CDF difference of a bin far from the joint to about -1.6e-7;
    unclamped, the KL term's q log q was NaN for three of these four examples."""
    joints = tf.constant(rng.uniform(0, 1, (4, 17, 3)) * [8, 8, 32], tf.float32)
    profiles = tf.function(lambda j: losses.target_profiles(j, 8, 8, 32, fine_depth=64),
                           jit_compile=True)
    assert profiles(joints)[2].numpy().min() >= 0.0
    heatmaps = tf.constant(rng.normal(0, 1, (4, 8, 8, 17 * 32)), tf.float32)
    divergence = tf.function(
        lambda h: losses.distribution_loss_per_example(h, joints, 32, fine_depth=64),
        jit_compile=True)
    np.testing.assert_allclose(divergence(heatmaps).numpy(),
                               losses.distribution_loss_per_example(heatmaps, joints, 32,
                                                                    fine_depth=64).numpy(),
                               rtol=1e-4)
