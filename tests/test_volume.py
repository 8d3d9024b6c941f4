import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import camera, skeleton, volume
from tests.conftest import box_around, random_pose

K = camera.intrinsics_matrix([1145.0, 1143.8], [512.5, 515.4])
GRID = volume.VoxelGrid(64, 64, 1000.0)


def _box(pose):
    return box_around(pose, K)


def render_gaussian(voxels, size=64, depth=64, sigma=2.0):
    """Independent dense renderer: (J, 3) voxel coords -> (1, size, size, J*depth)."""
    centres = np.arange(size) + 0.5
    zc = np.arange(depth) + 0.5
    out = []
    for x, y, z in voxels:
        g = (np.exp(-(centres[:, None, None] - y) ** 2 / (2 * sigma ** 2))
             * np.exp(-(centres[None, :, None] - x) ** 2 / (2 * sigma ** 2))
             * np.exp(-(zc[None, None, :] - z) ** 2 / (2 * sigma ** 2)))
        out.append(g)
    return np.concatenate(out, axis=-1)[None]


def test_encode_by_hand():
    grid = volume.VoxelGrid(64, 64, 1000.0)
    K1 = camera.intrinsics_matrix([1000.0, 1000.0], [0.0, 0.0])
    joints = np.array([[0.0, 0.0, 5000.0], [550.0, -275.0, 5500.0]])
    # box of side 200 px around (0, 0): u = 100 px is the right edge -> x = 64
    vox = grid.encode(joints, K=K1, center=[0.0, 0.0], scale=1.0)
    np.testing.assert_allclose(vox[0], [32, 32, 32])
    np.testing.assert_allclose(vox[1], [64, 16, 48])


def test_voxel_z_inverts_relative_depth():
    grid = volume.VoxelGrid(64, 16, 800.0)  # 100 mm per voxel, the root at z = 8
    np.testing.assert_allclose(grid.voxel_z([0.0, -800.0, 800.0, 250.0]), [8.0, 0.0, 16.0, 10.5])
    z = np.linspace(-3.0, 19.0, 23)  # beyond the grid on both sides too
    np.testing.assert_allclose(grid.voxel_z(grid.relative_depth(z)), z, atol=1e-12)
    z_tf = tf.constant(z, tf.float32)
    out = grid.voxel_z(grid.relative_depth(z_tf))
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), z, atol=1e-5)


def test_encode_lift_round_trip(rng):
    for _ in range(10):
        pose = random_pose(rng, root_depth=rng.uniform(3000, 6000))
        center, scale = _box(pose)
        vox = GRID.encode(pose, K=K, center=center, scale=scale)
        back = GRID.lift(vox, K=K, center=center, scale=scale, root_depth=pose[0, 2])
        assert np.abs(back - pose).max() < 1e-6


def test_move_root_depth_equals_lifting_at_the_new_depth(rng):
    poses = [random_pose(rng, root_depth=rng.uniform(3000, 6000)) for _ in range(3)]
    lifted, moved_to, expected = [], [], []
    for pose in poses:
        center, scale = _box(pose)
        vox = GRID.encode(pose, K=K, center=center, scale=scale)
        new_depth = pose[0, 2] + rng.uniform(-800, 800)
        lifted.append(GRID.lift(vox, K=K, center=center, scale=scale, root_depth=pose[0, 2]))
        moved_to.append(new_depth)
        expected.append(GRID.lift(vox, K=K, center=center, scale=scale, root_depth=new_depth))
    roots = np.array([p[0, 2] for p in poses])
    moved = volume.move_root_depth(np.stack(lifted), roots, np.array(moved_to))  # batched
    np.testing.assert_allclose(moved, np.stack(expected), atol=1e-6)
    single = volume.move_root_depth(lifted[0], roots[0], moved_to[0])
    np.testing.assert_allclose(single, expected[0], atol=1e-6)
    np.testing.assert_allclose(volume.move_root_depth(lifted[0], roots[0], roots[0]), lifted[0])
    # joints behind the camera (an untrained model's can be) stay on their pixels' rays
    behind = lifted[0] * [1.0, 1.0, -1.0]
    moved = volume.move_root_depth(behind, -100.0, 250.0)
    np.testing.assert_allclose(camera.project_pinhole(moved, K), camera.project_pinhole(behind, K))
    np.testing.assert_allclose(moved[:, 2], behind[:, 2] + 350.0)
    with pytest.raises(ValueError, match="joints_cam"):
        volume.move_root_depth(lifted[0] * [1.0, 1.0, 0.0], roots[0], moved_to[0])
    with pytest.raises(ValueError, match="new_root_depth"):
        volume.move_root_depth(lifted[0], roots[0], np.nan)


@pytest.mark.parametrize("method,tol", [("argmax", 0.5 * np.sqrt(3)), ("local_softargmax", 0.05),
                                        ("quadratic", 1e-3)])
def test_encode_decode(rng, method, tol):
    voxels = rng.uniform(8, 56, (5, 3))
    heatmaps = render_gaussian(voxels)
    decoded, conf = GRID.decode(heatmaps, joints=5, method=method)
    err = np.linalg.norm(decoded[0] - voxels, axis=-1)
    assert err.max() < tol, err
    if method == "argmax":
        assert np.abs(decoded[0] - voxels).max() <= 0.5
    np.testing.assert_allclose(conf[0], heatmaps.reshape(64 * 64, 5, 64).max((0, 2)).max(), rtol=0.2)


def test_quadratic_is_exact_near_the_border_where_the_window_is_truncated():
    voxels = np.array([[1.3, 62.2, 32.7]])  # about one voxel from the x and y borders
    heatmaps = render_gaussian(voxels)
    quad, _ = GRID.decode(heatmaps, joints=1, method="quadratic")
    local, _ = GRID.decode(heatmaps, joints=1, method="local_softargmax")
    assert np.abs(quad[0] - voxels).max() < 1e-3
    assert np.abs(local[0] - voxels).max() > 0.3  # the truncated window biases the centroid


def test_coarse_depth_decodes_on_the_fine_grid():
    voxels = np.array([[20.2, 30.7, 40.3]])
    coarse = render_gaussian(voxels * [1, 1, 4 / 64], depth=4, sigma=2.0)
    decoded, _ = volume.decode_heatmaps(coarse, 1, depth=64, method="argmax")
    np.testing.assert_allclose(decoded[0, 0], [20.5, 30.5, 2.5 * 16])
    flat, _ = volume.decode_heatmaps(render_gaussian(voxels, depth=1), 1, depth=64)
    assert flat[0, 0, 2] == 32.0  # d = 1: no depth information -> the root plane


@pytest.mark.parametrize("method", volume.DECODE_METHODS)
@pytest.mark.parametrize("case", ["peaks", "window_beyond_the_grid", "depth_1", "ties",
                                  "no_positive_evidence"])
def test_decode_numpy_equals_tf(rng, method, case):
    # the TF decoder reads the (B, Y, X, J*d) layout in place and gathers the local window;
    # the NumPy reference transposes and masks the whole volume
    depth, window = {"depth_1": 1}.get(case, 8), {"window_beyond_the_grid": 6}.get(case, 2)
    heatmaps = rng.normal(0, 0.05, (2, 16, 16, 3 * depth)).astype(np.float32)
    if case in ("peaks", "window_beyond_the_grid", "depth_1"):
        centres = rng.uniform(0, 16, (3, 3)) * [1, 1, depth / 16]  # some near the borders
        heatmaps += render_gaussian(centres, size=16, depth=depth)
    elif case == "ties":  # zeros and ones: the first voxel in (y, x, z) order wins
        heatmaps = (heatmaps > 0.05).astype(np.float32)
    else:
        heatmaps = -np.abs(heatmaps)  # local_softargmax falls back to the argmax
    ref, ref_conf = volume.decode_heatmaps(heatmaps, 3, depth=16, method=method, window=window,
                                           beta=5.0)
    got, conf = volume.decode_heatmaps_tf(heatmaps, 3, depth=16, method=method, window=window,
                                          beta=5.0)
    np.testing.assert_allclose(got.numpy(), ref, atol=1e-4)
    np.testing.assert_allclose(conf.numpy(), ref_conf, atol=1e-6)


def test_lift_numpy_equals_tf(rng):
    poses = [random_pose(rng) for _ in range(3)]
    boxes = [_box(p) for p in poses]
    voxels = np.stack([GRID.encode(p, K=K, center=c, scale=s) for p, (c, s) in zip(poses, boxes)])
    got = volume.lift_tf(voxels, np.stack([K] * 3), np.stack([c for c, _ in boxes]),
                         np.array([s for _, s in boxes]), np.array([p[0, 2] for p in poses]), GRID)
    np.testing.assert_allclose(got.numpy(), np.stack(poses), atol=0.5)  # float32 at ~5 m


def test_root_depth_from_bone_lengths(rng):
    for _ in range(5):
        pose = random_pose(rng, root_depth=rng.uniform(2500, 7000))
        bones = np.array(skeleton.H36M17.bones)
        lengths = np.linalg.norm(pose[bones[:, 0]] - pose[bones[:, 1]], axis=-1)
        center, scale = _box(pose)
        vox = GRID.encode(pose, K=K, center=center, scale=scale)
        z = volume.estimate_root_depth(vox, K=K, center=center, scale=scale,
                                       bone_lengths=lengths, grid=GRID)
        assert abs(z - pose[0, 2]) < 1e-3 * pose[0, 2]
        # a 10% longer skeleton is further away, by about 10%
        z_long = volume.estimate_root_depth(vox, K=K, center=center, scale=scale,
                                            bone_lengths=1.1 * lengths, grid=GRID)
        assert 1.05 < z_long / z < 1.15


def test_bad_inputs_raise_value_error():
    with pytest.raises(ValueError, match="scale"):
        GRID.encode(np.ones((17, 3)), K=K, center=[0, 0], scale=-1.0)
    with pytest.raises(ValueError, match="root_depth"):
        GRID.lift(np.ones((17, 3)), K=K, center=[0, 0], scale=1.0, root_depth=0.0)
    with pytest.raises(ValueError, match="voxels"):
        GRID.lift(np.ones((17, 2)), K=K, center=[0, 0], scale=1.0, root_depth=10.0)
    with pytest.raises(ValueError, match="joints_cam"):
        GRID.encode(np.full((17, 3), np.nan), K=K, center=[0, 0], scale=1.0)
    with pytest.raises(ValueError, match="depth"):
        volume.VoxelGrid(64, 0)
    with pytest.raises(ValueError, match="method"):
        GRID.decode(np.zeros((1, 4, 4, 4)), 1, method="mean")
    with pytest.raises(ValueError, match="multiple"):
        GRID.decode(np.zeros((1, 4, 4, 5)), 2)


def test_root_depth_numpy_equals_tf(rng):
    poses = [random_pose(rng, root_depth=rng.uniform(2500, 7000)) for _ in range(4)]
    bones = np.array(skeleton.H36M17.bones)
    lengths = np.linalg.norm(poses[0][bones[:, 0]] - poses[0][bones[:, 1]], axis=-1)
    boxes = [_box(p) for p in poses]
    voxels = np.stack([GRID.encode(p, K=K, center=c, scale=s) for p, (c, s) in zip(poses, boxes)])
    voxels[3, 13] += [8.0, -8.0, 8.0]  # an outlier joint: bones beyond the Huber threshold
    for huber_mm in (None, 50.0):
        ref = [volume.estimate_root_depth(v, K=K, center=c, scale=s, bone_lengths=lengths,
                                          grid=GRID, huber_mm=huber_mm)
               for v, (c, s) in zip(voxels, boxes)]
        got = volume.estimate_root_depth_tf(voxels, np.stack([K] * 4),
                                            np.stack([c for c, _ in boxes]),
                                            np.array([s for _, s in boxes]), lengths, GRID,
                                            huber_mm=huber_mm)
        np.testing.assert_allclose(got.numpy(), ref, rtol=2e-3)


def test_root_depth_keeps_every_joint_in_front_of_the_camera(rng):
    """Bone lengths a tenth of the pose's put the best fit at the search's floor, 300 mm,
    where the ankle, decoded 600 mm behind the root, lies at -300 mm, behind the camera
    (before: returned so). The fit stops at the depth that keeps it MIN_JOINT_DEPTH_MM in
    front; where that bound is not reached the fit is as before."""
    bones = np.array(skeleton.H36M17.bones)
    pose = random_pose(rng, root_depth=4500.0)
    lengths = np.linalg.norm(pose[bones[:, 0]] - pose[bones[:, 1]], axis=-1)
    center, scale = _box(pose)
    vox = GRID.encode(pose, K=K, center=center, scale=scale)
    vox[3, 2] = GRID.voxel_z(-600.0)
    bound = volume.MIN_JOINT_DEPTH_MM + 600.0
    assert GRID.relative_depth(vox[:, 2]).min() == pytest.approx(-600.0)
    # unbounded, the cost falls all the way down to the bound: its optimum lies beneath
    costs = [np.abs(np.linalg.norm(np.diff(GRID.lift(vox, K=K, center=center, scale=scale,
                                                     root_depth=z)[bones], axis=1)[:, 0],
                                   axis=-1) - 0.1 * lengths).sum() for z in (bound, 450.0)]
    assert costs[1] < costs[0]
    z = volume.estimate_root_depth(vox, K=K, center=center, scale=scale,
                                   bone_lengths=0.1 * lengths, grid=GRID)
    assert bound <= z < bound * 1.001
    lifted = GRID.lift(vox, K=K, center=center, scale=scale, root_depth=z)
    assert lifted[:, 2].min() >= volume.MIN_JOINT_DEPTH_MM - 1e-6
    both = np.stack([vox, GRID.encode(pose, K=K, center=center, scale=scale)])
    got = volume.estimate_root_depth_tf(both, np.stack([K] * 2), np.stack([center] * 2),
                                        np.array([scale] * 2), 0.1 * lengths, GRID).numpy()
    assert bound <= got[0] < bound * 1.001
    # beside it in the batch, the pose decoded as encoded fits its own lengths at its depth
    got = volume.estimate_root_depth_tf(both, np.stack([K] * 2), np.stack([center] * 2),
                                        np.array([scale] * 2), lengths, GRID).numpy()
    assert got[1] == pytest.approx(pose[0, 2], rel=1e-3)


def _brute_force_root_depth(voxels, center, scale, lengths, candidates, huber_mm=None):
    """Independent reference: the candidate depth whose lifted skeleton fits ``lengths`` best."""
    bones = np.array(skeleton.H36M17.bones)
    costs = []
    for z in candidates:
        lifted = GRID.lift(voxels, K=K, center=center, scale=scale, root_depth=z)
        misfit = np.abs(np.linalg.norm(lifted[bones[:, 0]] - lifted[bones[:, 1]], axis=-1)
                        - lengths)
        if huber_mm is not None:  # squares up to huber_mm, then the tangent line
            misfit = np.sqrt(np.where(misfit <= huber_mm, misfit ** 2,
                                      2 * huber_mm * misfit - huber_mm ** 2))
        costs.append((misfit ** 2).sum())
    return candidates[int(np.argmin(costs))]


def test_root_depth_fits_the_lifted_skeleton(rng):
    """The fitted depth is lift()'s root_depth, also where the root is not decoded at depth/2."""
    bones = np.array(skeleton.H36M17.bones)
    pose = random_pose(rng, root_depth=4500.0)
    lengths = np.linalg.norm(pose[bones[:, 0]] - pose[bones[:, 1]], axis=-1)
    center, scale = _box(pose)
    vox = GRID.encode(pose, K=K, center=center, scale=scale)
    vox[:, 2] += 5.0      # the whole skeleton decoded 5 voxels (156 mm) deeper
    vox[0, 2] -= 3.0      # and the root 3 voxels off its own place
    vox[13] += [2.0, -3.0, 4.0]
    for huber_mm in (None, 50.0):
        got = volume.estimate_root_depth(vox, K=K, center=center, scale=scale,
                                         bone_lengths=lengths, grid=GRID, huber_mm=huber_mm)
        brute = _brute_force_root_depth(vox, center, scale, lengths,
                                        np.arange(0.8, 1.2, 0.0002) * got, huber_mm)
        assert abs(got - brute) <= 0.0005 * got, (huber_mm, got, brute)


def test_root_depth_huber_bounds_one_wrong_joint(rng):
    """A joint decoded 8 voxels off drags the least-squares fit; the Huber fit barely moves."""
    bones = np.array(skeleton.H36M17.bones)
    for joint in (3, 13, 16):  # an ankle, a wrist (both ends of the skeleton)
        pose = random_pose(rng, root_depth=rng.uniform(3000, 6000))
        lengths = np.linalg.norm(pose[bones[:, 0]] - pose[bones[:, 1]], axis=-1)
        center, scale = _box(pose)
        vox = GRID.encode(pose, K=K, center=center, scale=scale)
        vox[joint] += [8.0, 8.0, -8.0]
        true = pose[0, 2]
        squares = volume.estimate_root_depth(vox, K=K, center=center, scale=scale,
                                             bone_lengths=lengths, grid=GRID, huber_mm=None)
        # the least-squares option is the textbook fit (checked by brute force)
        brute = _brute_force_root_depth(vox, center, scale, lengths,
                                        np.arange(0.5, 1.5, 0.001) * squares)
        assert abs(squares - brute) <= 0.001 * squares
        huber = volume.estimate_root_depth(vox, K=K, center=center, scale=scale,
                                           bone_lengths=lengths, grid=GRID)
        assert abs(huber - true) < 0.5 * abs(squares - true), (joint, huber, squares, true)
        assert abs(huber - true) < 0.05 * true


def test_root_depth_rejects_bad_huber():
    vox = np.full((17, 3), 32.0)
    for bad in (0.0, -5.0, float("nan"), float("inf"), "50"):
        with pytest.raises(ValueError, match="huber_mm"):
            volume.estimate_root_depth(vox, K=K, center=[500, 500], scale=1.0,
                                       bone_lengths=np.full(16, 250.0), grid=GRID, huber_mm=bad)
        with pytest.raises(ValueError, match="huber_mm"):
            volume.estimate_root_depth_tf(vox[None], K[None], [[500.0, 500.0]], [1.0],
                                          np.full(16, 250.0), GRID, huber_mm=bad)


def _softmax_by_autodiff(heatmaps, joints, beta):
    """Soft-argmax and log partition from a joint-major softmax, autodiff's gradients."""
    batch, ny, nx, channels = heatmaps.shape
    depth = channels // joints
    logits = tf.transpose(tf.reshape(beta * heatmaps, [batch, ny, nx, joints, depth]),
                          [0, 3, 1, 2, 4])
    flat = tf.reshape(logits, [batch, joints, -1])
    p = tf.reshape(tf.nn.softmax(flat), [batch, joints, ny, nx, depth])
    centres = [tf.range(n, dtype=tf.float32) + 0.5 for n in (nx, ny, depth)]
    coords = tf.stack([tf.einsum("bjyxk,x->bj", p, centres[0]),
                       tf.einsum("bjyxk,y->bj", p, centres[1]),
                       tf.einsum("bjyxk,k->bj", p, centres[2])], axis=-1)
    return coords, tf.reduce_logsumexp(flat, axis=-1)


@pytest.mark.parametrize("depth,beta", [(1, 1.0), (4, 1.0), (4, 2.5)])
def test_soft_argmax_log_partition_and_its_written_out_gradient_match_autodiff(rng, depth,
                                                                               beta):
    heatmaps = tf.constant(rng.normal(0, 3, (2, 5, 6, 3 * depth)), tf.float32)
    weights = tf.constant(rng.normal(size=(2, 3, 3)), tf.float32)
    log_weights = tf.constant(rng.normal(size=(2, 3)), tf.float32)

    @tf.function  # graph mode: the unused output's gradient arrives as zeros or None
    def values_and_gradients(fn):
        with tf.GradientTape(persistent=True) as tape:
            tape.watch(heatmaps)
            coords, log_partition = fn(heatmaps)
            of_coords = tf.reduce_sum(coords * weights)
            of_both = of_coords + tf.reduce_sum(log_partition * log_weights)
        return (coords, log_partition, tape.gradient(of_coords, heatmaps),
                tape.gradient(of_both, heatmaps))

    got = values_and_gradients(lambda h: volume.soft_argmax_log_partition_tf(h, 3, beta))
    expected = values_and_gradients(lambda h: _softmax_by_autodiff(h, 3, beta))
    for name, a, b in zip(("coords", "log_partition", "d_coords", "d_both"), got, expected):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(volume.soft_argmax_tf(heatmaps, 3, beta).numpy(),
                               got[0].numpy(), rtol=1e-6)


def test_soft_argmax_takes_a_tensor_beta_inside_a_graph(rng):
    heatmaps = tf.constant(rng.normal(0, 3, (2, 5, 6, 3 * 4)), tf.float32)
    # without autograph, as Keras layers and exports may trace it
    in_graph = tf.function(lambda h, beta: volume.soft_argmax_tf(h, 3, beta), autograph=False)
    np.testing.assert_allclose(in_graph(heatmaps, tf.constant(2.5)).numpy(),
                               _softmax_by_autodiff(heatmaps, 3, 2.5)[0].numpy(), rtol=1e-5)
    np.testing.assert_allclose(in_graph(heatmaps, tf.constant(1.0)).numpy(),
                               volume.soft_argmax_tf(heatmaps, 3, 1.0).numpy(), rtol=1e-6)
