import json

import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import camera
from tests.conftest import random_pose


def _rotation(rng):
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.linalg.det(q))


def test_world_camera_round_trip(rng):
    cam = camera.Camera(R=_rotation(rng), T=rng.normal(0, 1000, 3), f=[1000, 1010], c=[500, 490])
    X = rng.normal(0, 1000, (20, 3))
    np.testing.assert_allclose(cam.camera_to_world(cam.world_to_camera(X)), X, atol=1e-9)
    # the camera centre maps to the origin
    np.testing.assert_allclose(cam.world_to_camera(cam.T[None]), 0.0, atol=1e-9)


def test_project_backproject_round_trip_without_distortion(rng):
    cam = camera.Camera(R=np.eye(3), T=np.zeros(3), f=[1145.0, 1143.8], c=[512.5, 515.4])
    X = random_pose(rng)
    uv = cam.project(X)
    np.testing.assert_allclose(cam.backproject(uv, X[:, 2]), X, atol=1e-9)
    # hand-computed value: (100, -50, 2000) -> u = 1145*0.05 + 512.5
    np.testing.assert_allclose(cam.project([[100.0, -50.0, 2000.0]]),
                               [[1145.0 * 0.05 + 512.5, 1143.8 * -0.025 + 515.4]])


def test_distortion_model_by_hand():
    k, p = [0.1, 0.01, 0.001], [0.002, -0.003]
    cam = camera.Camera(R=np.eye(3), T=np.zeros(3), f=[1000, 1000], c=[0, 0], k=k, p=p)
    x, y = 0.2, -0.1
    r2 = x * x + y * y
    radial = 1 + k[0] * r2 + k[1] * r2 ** 2 + k[2] * r2 ** 3
    xd = x * radial + p[0] * x * y + p[1] * (r2 + x * x)  # no factor 2 (H36M)
    yd = y * radial + p[0] * (r2 + y * y) + p[1] * x * y
    np.testing.assert_allclose(cam.project([[x * 3000, y * 3000, 3000]]), [[1000 * xd, 1000 * yd]])


def test_bad_inputs_name_the_argument():
    with pytest.raises(ValueError, match="R"):
        camera.Camera(R=np.ones((3, 3)), T=np.zeros(3), f=[1, 1], c=[0, 0])
    with pytest.raises(ValueError, match="f"):
        camera.Camera(R=np.eye(3), T=np.zeros(3), f=[-1, 1], c=[0, 0])
    cam = camera.Camera(R=np.eye(3), T=np.zeros(3), f=[1, 1], c=[0, 0])
    with pytest.raises(ValueError, match="points_cam"):
        cam.project(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="NaN"):
        cam.project([[np.nan, 0, 1]])
    with pytest.raises(ValueError, match="depth"):
        cam.backproject([[0, 0]], [-5.0])
    with pytest.raises(ValueError, match="S99"):
        camera.Camera.from_h36m("S99", "54138969")


def test_focal_lengths_from_a_command_line():
    assert camera.focal_lengths(["1145.5", "1144"]) == [1145.5, 1144.0]
    for bad, message in ((["1000"], r"must have shape \(2,\)"), ([1, 2, 3], r"shape \(2,\)"),
                         (["-5", "500"], "must be positive"), ([0, 500], "must be positive"),
                         (["nan", "1"], "NaN or Inf"), (["abc", "1"], "must be numeric")):
        with pytest.raises(ValueError, match=message):
            camera.focal_lengths(bad)


def test_focal_from_fov_by_hand_and_back(rng):
    # 90 degrees across 512 px: the image edge is 256 px from the centre at tan(45) = 1
    assert camera.focal_from_fov(512, 90.0) == pytest.approx(256.0)
    # 60 degrees: tan(30) = 1/sqrt(3)
    assert camera.focal_from_fov(300, 60.0) == pytest.approx(150.0 * np.sqrt(3.0))
    # the default 50 degrees, read back as the angle the image side subtends
    side = rng.uniform(64, 4000)
    focal = camera.focal_from_fov(side)
    assert np.degrees(2.0 * np.arctan(side / 2.0 / focal)) == pytest.approx(camera.DEFAULT_FOV_DEG)
    # a tensor in (what the export's default intrinsics pass), a tensor out
    np.testing.assert_allclose(camera.focal_from_fov(tf.constant([512.0, 300.0]), 90.0).numpy(),
                               [256.0, 150.0], rtol=1e-6)


def test_window_intrinsics_project_into_the_window(rng):
    f, c = np.array([1145.0, 1143.8]), np.array([512.5, 515.4])
    origin, zoom = np.array([300.0, 120.0]), 0.25
    f_win, c_win = camera.window_intrinsics(f, c, origin, zoom)
    np.testing.assert_allclose(f_win, [286.25, 285.95])
    np.testing.assert_allclose(c_win, [(512.5 - 300.0) / 4, (515.4 - 120.0) / 4])
    # a point seen through the window's camera lands where the full image's pixel,
    # moved to the window's origin and resized, does
    points = random_pose(rng)
    uv = camera.project_pinhole(points, camera.intrinsics_matrix(f, c))
    np.testing.assert_allclose(
        camera.project_pinhole(points, camera.intrinsics_matrix(f_win, c_win)),
        (uv - origin) * zoom, atol=1e-9)


def test_intrinsics_matrix_tf_equals_numpy(rng):
    focal, principal = rng.uniform(100, 2000, (3, 2)), rng.uniform(-50, 1000, (3, 2))
    expected = np.stack([camera.intrinsics_matrix(f, c) for f, c in zip(focal, principal)])
    np.testing.assert_allclose(camera.intrinsics_matrix_tf(focal, principal).numpy(), expected,
                               rtol=1e-6)
    # K maps camera-frame rays to pixels as project_pinhole does
    points = random_pose(rng)
    K = camera.intrinsics_matrix_tf(focal[:1], principal[:1]).numpy()[0].astype(np.float64)
    homogeneous = points @ K.T
    np.testing.assert_allclose(homogeneous[:, :2] / homogeneous[:, 2:],
                               camera.project_pinhole(points, K), rtol=1e-9)


def test_bundled_table_matches_shared_file(shared_data):
    shared = json.loads((shared_data / "h36m_cameras.json").read_text())
    for subject in ("S1", "S9", "S11"):
        for cam_id, entry in shared[subject].items():
            cam = camera.Camera.from_h36m(subject, cam_id)
            np.testing.assert_array_equal(cam.R, entry["R"])
            np.testing.assert_array_equal(cam.T, entry["T"])
            np.testing.assert_array_equal(cam.f, entry["f"])
            np.testing.assert_array_equal(cam.k, entry["k"])
            assert camera.h36m_image_size(subject, cam_id) == (entry["width"], entry["height"])


def test_real_mocap_projects_inside_the_image(shared_data):
    data = np.load(shared_data / "h36m_mocap_17j_10fps.npz")
    poses = data["S1/walking_1"][::20]
    for cam_id in ("54138969", "60457274"):
        cam = camera.Camera.from_h36m("S1", cam_id)
        uv = cam.project(cam.world_to_camera(poses.reshape(-1, 3)))
        w, h = camera.h36m_image_size("S1", cam_id)
        assert (uv[:, 0] > 0).all() and (uv[:, 0] < w).all()
        assert (uv[:, 1] > 0).all() and (uv[:, 1] < h).all()
        # the world z axis points up, the camera y axis down: head above pelvis in the image
        heads = cam.project(cam.world_to_camera(poses[:, 10]))
        pelvis = cam.project(cam.world_to_camera(poses[:, 0]))
        assert (heads[:, 1] < pelvis[:, 1]).mean() > 0.95


def test_camera_from_correspondences_recovers_a_calibration(rng):
    true = camera.Camera(R=_rotation(rng), T=[1000.0, -2000.0, 1500.0], f=[1150.0, 1140.0],
                         c=[510.0, 490.0])
    points = rng.normal(0, 600, (40, 3)) + true.T + 4000 * true.R[2]  # in front of the camera
    uv = true.project(true.world_to_camera(points))
    fitted = camera.Camera.from_correspondences(points, uv)
    np.testing.assert_allclose(fitted.f, true.f, rtol=1e-6)
    np.testing.assert_allclose(fitted.c, true.c, atol=1e-4)
    np.testing.assert_allclose(fitted.R, true.R, atol=1e-8)
    np.testing.assert_allclose(fitted.T, true.T, atol=1e-4)
    with pytest.raises(ValueError, match="at least 6"):
        camera.Camera.from_correspondences(points[:5], uv[:5])


def test_from_affine_matches_the_affine_camera_near_the_reference(rng):
    R = camera.rotation_matrix([0.3, 1.0, 0.2], 0.7)
    M = np.zeros((2, 4))
    M[:, :3] = np.array([[0.12, 0.0], [0.0, 0.11]]) @ R[:2]  # px per mm, no skew
    M[:, 3] = [300.0, 200.0]
    X0 = np.array([500.0, -200.0, 1000.0])
    points = X0 + rng.normal(0, 300, (20, 3))
    affine_uv = points @ M[:, :3].T + M[:, 3]
    cam = camera.Camera.from_affine(M, X0, 1e9, [320.0, 180.0])
    np.testing.assert_allclose(cam.R @ cam.R.T, np.eye(3), atol=1e-12)
    assert np.linalg.det(cam.R) == pytest.approx(1.0)
    np.testing.assert_allclose(cam.f, [0.12e9, 0.11e9])
    np.testing.assert_allclose(cam.project(cam.world_to_camera(points)), affine_uv, atol=1e-3)
    # at a finite distance the reference point still lands exactly on M's pixel
    near = camera.Camera.from_affine(M, X0, 20000.0, [320.0, 180.0])
    np.testing.assert_allclose(near.project(near.world_to_camera(X0[None])), [M[:, :3] @ X0 + M[:, 3]],
                               atol=1e-9)
    assert near.world_to_camera(X0[None])[0, 2] == pytest.approx(20000.0)
    # a skewed affine camera: the pinhole keeps everything but the skew term
    skewed = M.copy()
    skewed[1, :3] += 0.01 * R[0]
    cam = camera.Camera.from_affine(skewed, X0, 1e9, [320.0, 180.0])
    error = cam.project(cam.world_to_camera(points)) - (points @ skewed[:, :3].T + skewed[:, 3])
    np.testing.assert_allclose(error[:, 0], 0, atol=1e-3)
    np.testing.assert_allclose(error[:, 1], -0.01 * (points - X0) @ R[0], atol=1e-3)
    with pytest.raises(ValueError, match="degenerate"):
        camera.Camera.from_affine(np.zeros((2, 4)), X0, 1e4, [0, 0])
    with pytest.raises(ValueError, match="distance"):
        camera.Camera.from_affine(M, X0, -1.0, [0, 0])
