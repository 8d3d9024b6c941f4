import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import camera, crop
from tf_volpose.data import h36m, mocap, pipeline, records
from tests.conftest import assert_one_line_error, random_pose, run_scripts, write_fake_motion


def _write_cdf(path, data):
    from cdflib.cdfwrite import CDF
    os.makedirs(os.path.dirname(path), exist_ok=True)
    writer = CDF(path)
    writer.write_var({"Variable": "Pose", "Data_Type": 45, "Num_Elements": 1, "Rec_Vary": True,
                      "Dim_Sizes": list(data.shape[1:])}, var_data=data)
    writer.close()


def _fake_h36m(root, rng, frames=12, subjects=("S1", "S9"), cam_id="54138969"):
    """A real-layout tree: D3_Positions_mono CDF poses and extracted JPEG frames."""
    frames_root = root / "frames"
    for subject in subjects:
        cam = camera.Camera.from_h36m(subject, cam_id)
        poses32 = np.zeros((frames, 32, 3))
        for f in range(frames):
            pose = random_pose(rng, root_depth=5000.0)
            pose[:, 0] *= 0.5  # keep the person well inside the 1000 px frame
            poses32[f] = rng.normal(0, 50, (32, 3)) + pose[0]
            poses32[f, list(h36m.H36M32_TO_17)] = pose
        action = "Directions 1"
        _write_cdf(str(root / subject / "MyPoseFeatures" / "D3_Positions_mono" /
                       f"{action}.{cam_id}.cdf"), poses32.reshape(1, frames, 96))
        for f in range(0, frames, 5):
            if subject == "S9" and f == 5:
                continue  # a missing frame: skipped and counted
            path = h36m.frame_path(str(frames_root), subject, action, cam_id, f)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            image = np.full((1002, 1000, 3), 90, np.uint8)
            uv = cam.project(poses32[f, list(h36m.H36M32_TO_17)])
            for u, v in uv:
                cv2.circle(image, (int(u), int(v)), 8, (255, 255, 255), -1)
            cv2.imwrite(path, image)
    return frames_root


def test_h36m_real_layout_converts(tmp_path, rng):
    frames_root = _fake_h36m(tmp_path / "h36m", rng)
    out = tmp_path / "out"
    summary = h36m.convert(str(tmp_path / "h36m"), str(out), str(frames_root), subjects=("S1", "S9"))
    assert summary["written"] == {"train": 3, "test": 2}  # frames 0, 5, 10; S9 lacks frame 5
    assert summary["skipped"] == {"missing image": 1}
    assert sorted(os.listdir(out)) == ["test-00000.tfrecord", "train-00000.tfrecord"]
    for raw in tf.data.TFRecordDataset(str(out / "train-00000.tfrecord")):
        ex = records.parse_example(raw)
        cam = camera.Camera.from_h36m("S1", ex["meta/camera"].numpy().decode())
        # joints/2d is the projection of joints/3d with the dataset's distortion
        np.testing.assert_allclose(cam.project(ex["joints/3d"].numpy()), ex["joints/2d"].numpy(),
                                   atol=1e-3)
        assert ex["meta/action"].numpy() == b"Directions 1" and ex["meta/frame"].numpy() % 5 == 0
        assert (ex["image/height"].numpy(), ex["image/width"].numpy()) == (1002, 1000)
    # records parse through the pipeline and the crop contains the person
    ds = pipeline.make_dataset(str(out / "*.tfrecord"), training=False, batch_size=8,
                               input_size=64, xy_res=16)
    inputs, targets = next(iter(ds))
    voxels = targets["joints_voxel"].numpy()
    assert voxels.shape[0] == 5
    assert (voxels[..., :2] > 0).all() and (voxels[..., :2] < 16).all()
    # the drawn joint dots are where the targets say
    image = inputs["image"].numpy()[0].mean(-1)
    for x, y in voxels[0, :, :2] * 4:
        assert image[min(int(y), 63), min(int(x), 63)] > 0.6


def test_h36m_strict_and_unreadable_files(tmp_path, rng):
    frames_root = _fake_h36m(tmp_path / "h36m", rng, subjects=("S9",))
    with pytest.raises(h36m.ConversionError, match="missing frame image .*S9_Directions_1"):
        h36m.convert(str(tmp_path / "h36m"), str(tmp_path / "out"), str(frames_root),
                     subjects=("S9",), strict=True)
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tfrecord")]
    bad = tmp_path / "bad" / "S1" / "MyPoseFeatures" / "D3_Positions_mono" / "Walking.54138969.cdf"
    os.makedirs(bad.parent)
    bad.write_bytes(b"not a cdf")
    with pytest.raises(h36m.ConversionError, match="Walking.54138969.cdf"):
        h36m.convert(str(tmp_path / "bad"), str(tmp_path / "out2"), str(frames_root),
                     subjects=("S1",))
    (tmp_path / "empty").mkdir()
    with pytest.raises(h36m.ConversionError, match="no D3_Positions_mono"):
        h36m.convert(str(tmp_path / "empty"), str(tmp_path / "out3"), subjects=("S1",))
    # a root or frames root that is not there says so (before: "no D3_Positions_mono .cdf
    # files under" it)
    for root, frames, message in ((tmp_path / "nowhere", None, "h36m_root .*nowhere: no such "
                                   "directory"),
                                  (bad, None, "h36m_root .*cdf is not a "
                                   "directory"),
                                  (tmp_path / "h36m", tmp_path / "noframes", "frames_root "
                                   ".*noframes: no such directory")):
        with pytest.raises(h36m.ConversionError, match=message):
            h36m.convert(str(root), str(tmp_path / "out5"), frames and str(frames),
                         subjects=("S9",))
    assert not (tmp_path / "out5").exists()
    for every in (0, 2.5):  # before: "range() arg 3 must not be zero" mid-way
        with pytest.raises(ValueError, match=f"every must be a positive integer .*got {every}"):
            h36m.convert(str(tmp_path / "h36m"), str(tmp_path / "out4"), subjects=("S9",),
                         every=every)
    assert not (tmp_path / "out4").exists()


def test_mocap_converts_to_pose_only_records_per_camera(tmp_path, rng, capfd):
    motion = write_fake_motion(tmp_path / "motion.npz", rng, frames=3)
    motion["S1/walking_1"][1, 4] = np.nan  # a frame that no camera can see: skipped, counted
    np.savez(tmp_path / "motion.npz", **motion)
    out = tmp_path / "out"
    summary = mocap.convert(str(tmp_path / "motion.npz"), str(out))
    # one record per frame and camera: S1 (train) lost its NaN frame in all four views
    assert summary == {"written": {"train": 8, "test": 12},
                       "skipped": {"non-finite or behind the camera": 4}}
    assert sorted(os.listdir(out)) == ["test-00000.tfrecord", "train-00000.tfrecord"]
    seen = set()
    for raw in tf.data.TFRecordDataset(str(out / "test-00000.tfrecord")):
        ex = records.parse_example(raw)
        camera_id, frame = ex["meta/camera"].numpy().decode(), int(ex["meta/frame"].numpy())
        seen.add((camera_id, frame))
        cam = camera.Camera.from_h36m("S9", camera_id)
        world = motion["S9/walking_1"][frame]
        # the camera's view of the world-frame joints, by the calibration's own formulas
        np.testing.assert_allclose(ex["joints/3d"].numpy(), (world - cam.T) @ cam.R.T, atol=0.05)
        np.testing.assert_allclose(ex["joints/2d"].numpy(), cam.project(cam.world_to_camera(world)),
                                   atol=1e-3)
        center, scale = crop.box_from_joints(ex["joints/2d"].numpy(), h36m.BOX_MARGIN)
        np.testing.assert_allclose(ex["box/center"].numpy(), center, atol=1e-3)
        np.testing.assert_allclose(ex["box/scale"].numpy(), scale, rtol=1e-6)
        np.testing.assert_allclose(ex["camera/f"].numpy(), cam.f, rtol=1e-6)
        assert ex["image/encoded"].numpy() == b""  # pose-only
        assert (ex["image/width"].numpy(), ex["image/height"].numpy()) == \
            camera.h36m_image_size("S9", camera_id)
        assert ex["meta/dataset"].numpy() == b"h36m_mocap" and ex["meta/action"].numpy() == \
            b"walking_1"
    assert seen == {(c, f) for c in camera.h36m_camera_table()["S9"] for f in range(3)}
    # network B's pipeline reads them; an image model's skips each, saying what they are for
    heatmaps = pipeline.make_dataset(str(out / "test-*"), training=False, batch_size=12,
                                     input_size=64, xy_res=16, inputs="heatmaps")
    inputs, targets = next(iter(heatmaps))
    assert inputs["heatmaps"].shape == (12, 16, 16, 17) and targets["has_3d"].numpy().all()
    images = pipeline.make_dataset(str(out / "test-*"), training=False, batch_size=12,
                                   input_size=64, xy_res=16)
    assert not list(images)
    assert "pose-only MoCap records are for model=lifting" in capfd.readouterr().err
    # every=2 keeps frames 0 and 2
    summary = mocap.convert(str(tmp_path / "motion.npz"), str(tmp_path / "every2"),
                            subjects=("S9",), every=2)
    assert summary["written"] == {"test": 8}


def test_convert_mocap_tool_writes_records_and_bone_lengths(tmp_path, rng):
    write_fake_motion(tmp_path / "motion.npz", rng, frames=2)
    out = tmp_path / "out"
    done, missing = run_scripts([
        ("tools/convert_mocap.py", [f"--motion={tmp_path / 'motion.npz'}", f"--output_dir={out}"]),
        ("tools/convert_mocap.py", [f"--motion={tmp_path / 'none.npz'}",
                                    f"--output_dir={tmp_path / 'out2'}"])])
    assert done.returncode == 0, done.stderr[-2000:]
    assert "records written: {'train': 8, 'test': 8}" in done.stdout
    assert sorted(os.listdir(out)) == ["bone_lengths.json", "test-00000.tfrecord",
                                       "train-00000.tfrecord"]
    assert_one_line_error(missing, f"motion {tmp_path / 'none.npz'}: no such file")
    assert not (tmp_path / "out2").exists()


def test_mocap_views_leave_out_frames_behind_the_camera(rng):
    cam = camera.Camera.from_h36m("S9", "54138969")
    in_front = cam.camera_to_world(random_pose(rng, root_depth=5000.0))
    behind = cam.camera_to_world(random_pose(rng, root_depth=-3000.0))
    joints_3d, joints_2d, keep = mocap.views(np.stack([in_front, behind]), cam)
    assert keep.tolist() == [True, False]
    assert np.isfinite(joints_2d[0]).all() and np.isnan(joints_2d[1]).all()
    assert (joints_3d[1, :, 2] < 0).all()


def test_mocap_bad_inputs_name_the_problem(tmp_path, rng):
    with pytest.raises(h36m.ConversionError, match="motion .*nowhere.npz: no such file"):
        mocap.convert(str(tmp_path / "nowhere.npz"), str(tmp_path / "out"))
    (tmp_path / "text.npz").write_text("not numpy")
    with pytest.raises(h36m.ConversionError, match="cannot read motion file .*text.npz"):
        mocap.convert(str(tmp_path / "text.npz"), str(tmp_path / "out"))
    write_fake_motion(tmp_path / "s9.npz", rng, frames=1, subjects=("S9",))
    with pytest.raises(h36m.ConversionError, match=r"holds no \"S<n>/<action>\" sequence of "
                       r"\['S1'\] \(keys such as \['S9/walking_1'\]\)"):
        mocap.convert(str(tmp_path / "s9.npz"), str(tmp_path / "out"), subjects=("S1",))
    with pytest.raises(ValueError, match="unknown Human3.6M subject 'S2'"):
        mocap.convert(str(tmp_path / "s9.npz"), str(tmp_path / "out"), subjects=("S2",))
    with pytest.raises(ValueError, match="every must be a positive integer"):
        mocap.convert(str(tmp_path / "s9.npz"), str(tmp_path / "out"), every=0)
    assert not (tmp_path / "out").exists()


def test_real_h36m_mocap_is_seen_inside_every_camera_frame(shared_data, tmp_path):
    """The bundled calibration and the shared motion file agree: every 100th frame of S9
    and S11, seen by each of the four cameras, projects inside that camera's image."""
    summary = mocap.convert(str(shared_data / "h36m_mocap_17j_10fps.npz"), str(tmp_path),
                            subjects=("S9", "S11"), every=100)
    assert summary["skipped"] == {} and summary["written"]["test"] > 500
    inside = []
    for raw in tf.data.TFRecordDataset(sorted(map(str, tmp_path.glob("test-*")))):
        ex = records.parse_example(raw)
        uv = ex["joints/2d"].numpy()
        size = np.array([ex["image/width"].numpy(), ex["image/height"].numpy()])
        inside.append(((uv >= 0) & (uv < size)).all())
    assert np.mean(inside) > 0.99, np.mean(inside)


def _jpeg_file(path, size=(200, 160), dots=()):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = np.full((size[1], size[0], 3), 80, np.uint8)
    for u, v in dots:
        cv2.circle(image, (int(u), int(v)), 3, (255, 255, 255), -1)
    cv2.imwrite(str(path), image)


def test_mpii_layout_converts(tmp_path, rng):
    import h5py
    from tf_volpose.data import mpii
    n = 3
    parts = rng.uniform(60, 140, (n, 16, 2))
    parts[1, 4] = 0.0  # unannotated joint
    with h5py.File(tmp_path / "train.h5", "w") as f:
        f["part"] = parts
        f["visible"] = np.ones((n, 16))
        f["center"] = np.full((n, 2), 100.0)
        f["scale"] = np.full(n, 0.5)
        f["normalize"] = np.full(n, 20.0)
        f["imgname"] = np.array([b"a.jpg", b"b.jpg", b"missing.jpg"])
    for name, p in (("a.jpg", parts[0]), ("b.jpg", parts[1])):
        _jpeg_file(tmp_path / "images" / name, dots=p)
    summary = mpii.convert(str(tmp_path / "train.h5"), str(tmp_path / "images"), str(tmp_path / "out"))
    assert summary == {"written": 2, "skipped": {"missing image": 1}}
    ds = pipeline.make_dataset(str(tmp_path / "out" / "train-*"), training=False, batch_size=4,
                               input_size=64, xy_res=16, joint_set="mpii16")
    inputs, targets = next(iter(ds))
    assert targets["has_3d"].numpy().tolist() == [0.0, 0.0]
    assert targets["mask"].numpy()[1, 4] == 0.0 and targets["mask"].numpy()[0].sum() == 16
    voxels = targets["joints_voxel"].numpy()
    visible = targets["mask"].numpy() > 0
    assert ((voxels[..., :2] > 0) & (voxels[..., :2] < 16)).all(-1)[visible].all()
    # before: h5py's "Unable to synchronously open file (unable to open file: name = ...,
    # errno = 2, error message = 'No such file or directory', flags = 0, o_flags = 0)"
    with pytest.raises(h36m.ConversionError, match="^MPII annotations .*none.h5: no such file$"):
        mpii.convert(str(tmp_path / "none.h5"), str(tmp_path / "images"), str(tmp_path / "o2"))
    with pytest.raises(h36m.ConversionError, match="^images_dir .*noimages: no such directory$"):
        mpii.convert(str(tmp_path / "train.h5"), str(tmp_path / "noimages"), str(tmp_path / "o2"))
    (tmp_path / "text.h5").write_text("not HDF5")
    with pytest.raises(h36m.ConversionError, match="cannot read MPII annotations .*text.h5"):
        mpii.convert(str(tmp_path / "text.h5"), str(tmp_path / "images"), str(tmp_path / "o2"))
    assert not (tmp_path / "o2").exists()


def test_humaneva_layout_converts_with_fitted_cameras(tmp_path, rng):
    from tf_volpose.data import humaneva
    cams = [camera.Camera(R=camera.look_at_rotation([4000.0 * np.cos(a), 4000.0 * np.sin(a), 1500.0],
                                                    [0, 0, 1000.0]),
                          T=[4000.0 * np.cos(a), 4000.0 * np.sin(a), 1500.0], f=[760.0, 760.0],
                          c=[320.0, 240.0]) for a in (0.3, 2.2, 4.1)]
    poses = {}
    for subject in ("Train/S1", "Validate/S2"):
        seq = np.stack([random_pose(rng)[:15] * [1, 1, 0] for _ in range(4)])  # (F, 15, 3) mm
        seq[..., 2] += rng.normal(1000, 300, seq.shape[:2])
        poses[subject] = {"Walking 1 chunk0": seq / 1000.0, "Box 1 chunk0": seq / 1000.0}
    positions_2d = {s: {a: [c.project(c.world_to_camera(p.reshape(-1, 3) * 1000)).reshape(-1, 15, 2)
                            for c in cams] for a, p in acts.items()} for s, acts in poses.items()}
    np.savez(tmp_path / "3d.npz", positions_3d=poses)
    np.savez(tmp_path / "2d.npz", positions_2d=positions_2d)
    for subject, acts in positions_2d.items():
        for cam_name, uv in zip(humaneva.CAMERAS, acts["Walking 1 chunk0"]):
            for frame in range(4):
                _jpeg_file(tmp_path / "frames" / humaneva.DEFAULT_FRAMES_PATTERN.format(
                    subject=subject.split("/")[1], action="Walking 1 chunk0", camera=cam_name,
                    frame=frame), size=(640, 480))
    summary = humaneva.convert(str(tmp_path / "3d.npz"), str(tmp_path / "2d.npz"),
                               str(tmp_path / "frames"), str(tmp_path / "out"))
    assert summary["written"] == {"train": 12, "validation": 12}  # Box is not converted
    for raw in tf.data.TFRecordDataset(str(tmp_path / "out" / "validation-00000.tfrecord")):
        ex = records.parse_example(raw)
        K = camera.intrinsics_matrix(ex["camera/f"].numpy(), ex["camera/c"].numpy())
        np.testing.assert_allclose(camera.project_pinhole(ex["joints/3d"].numpy(), K),
                                   ex["joints/2d"].numpy(), atol=0.05)
        assert ex["meta/subject"].numpy() == b"S2" and ex["meta/action"].numpy() == b"Walking 1"
    for args, message in (
            ((tmp_path / "3d.npz", tmp_path / "2d.npz", tmp_path / "noframes"),
             "frames_root .*noframes: no such directory"),  # before: every frame skipped
            ((tmp_path / "no.npz", tmp_path / "2d.npz", tmp_path / "frames"),
             "cannot read positions_3d from .*no.npz: No such file or directory$")):
        with pytest.raises(h36m.ConversionError, match=message):
            humaneva.convert(*map(str, args), str(tmp_path / "out2"))
    assert not (tmp_path / "out2").exists()


def _write_matlab_column(path, array):
    """One number per line in MATLAB (column-major) order, as the KTH release stores arrays."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    np.savetxt(path, np.asarray(array).reshape(-1, order="F"), fmt="%.9g")


def _fake_kth(root, rng, frames=3, size=(640, 360)):
    """``player2/Sequence 1`` in the release layout; poses in metres, affine cameras."""
    sequence = root / "player2" / "Sequence 1"
    poses = np.stack([random_pose(rng, root_depth=0.0)[:14] / 1000.0 for _ in range(frames)])
    A = np.zeros((2, 14, 3, frames))
    M = np.zeros((2, 4, 3, frames))
    for c in range(3):
        R = camera.rotation_matrix([0, 1, 0], 0.8 * c) @ camera.rotation_matrix([1, 0, 0], 0.3)
        for t in range(frames):
            scale = rng.uniform(120, 160)  # px per metre: the player is ~250 px tall
            M[:, :3, c, t] = scale * R[:2]
            M[:, 3, c, t] = [size[0] / 2 + rng.uniform(-50, 50), size[1] / 2]
            A[:, :, c, t] = (M[:, :3, c, t] @ poses[t].T) + M[:, 3:, c, t]
            if (c, t) != (2, 1):  # one missing frame image
                _jpeg_file(root / "tmp.png", size=size, dots=A[:, :, c, t].T)
                os.makedirs(sequence / f"Camera {c + 1}", exist_ok=True)
                os.replace(root / "tmp.png", sequence / f"Camera {c + 1}" / f"{t + 1:05d}.png")
    _write_matlab_column(sequence / "positions2d.txt", A)
    _write_matlab_column(sequence / "positions3d.txt", poses.transpose(2, 1, 0))
    _write_matlab_column(sequence / "cameras.txt", M)
    return poses, A


def test_kth_release_layout_converts(tmp_path, rng):
    from tf_volpose import skeleton
    from tf_volpose.data import kth
    poses, A = _fake_kth(tmp_path / "kth", rng)
    summary = kth.convert(str(tmp_path / "kth"), str(tmp_path / "out"))
    assert summary["written"] == {"test": 8} and summary["skipped"] == {"missing or corrupt image": 1}
    # the default 30 m distance is a close (weak-perspective) approximation of the affine
    # cameras; far away the equivalent pinhole reproduces them exactly
    assert 0.05 < summary["max_reprojection_px"] < 3.0
    far = kth.convert(str(tmp_path / "kth"), str(tmp_path / "out_far"), distance_mm=1e7)
    assert far["max_reprojection_px"] < 0.05
    thigh = np.median(np.linalg.norm(poses[:, 2] - poses[:, 1], axis=-1)) * 1000
    assert summary["median_thigh_mm"] == pytest.approx(thigh)
    seen = set()
    for raw in tf.data.TFRecordDataset(str(tmp_path / "out" / "test-00000.tfrecord")):
        ex = records.parse_example(raw)
        t, cam = int(ex["meta/frame"].numpy()), ex["meta/camera"].numpy().decode()
        c = int(cam.split()[-1]) - 1
        seen.add((t, c))
        np.testing.assert_allclose(ex["joints/2d"].numpy().reshape(14, 2), A[:, :, c, t].T,
                                   atol=1e-4)
        joints = ex["joints/3d"].numpy().reshape(14, 3)
        # a rigid motion of the world pose, in mm: bone lengths are kept
        for child, parent in skeleton.KTH14.bones:
            assert np.linalg.norm(joints[child] - joints[parent]) == pytest.approx(
                1000 * np.linalg.norm(poses[t, child] - poses[t, parent]), rel=1e-5)
        assert ex["meta/subject"].numpy() == b"player2" and ex["meta/action"].numpy() == b"Sequence 1"
        assert (ex["image/width"].numpy(), ex["image/height"].numpy()) == (640, 360)
    assert (1, 2) not in seen and len(seen) == 8
    ds = pipeline.make_dataset(str(tmp_path / "out" / "test-*"), training=False, batch_size=8,
                               input_size=64, xy_res=16, joint_set="kth14")
    inputs, targets = next(iter(ds))
    voxels = targets["joints_voxel"].numpy()
    assert voxels.shape == (8, 14, 3) and (voxels[..., :2] > 0).all() and (voxels[..., :2] < 16).all()
    image = inputs["image"].numpy()[0].mean(-1)
    for x, y in voxels[0, :, :2] * 4:  # the drawn joint dots are where the targets say
        assert image[min(int(y), 63), min(int(x), 63)] > 0.5


def test_kth_bad_files_name_the_problem(tmp_path, rng):
    from tf_volpose.data import kth
    _fake_kth(tmp_path / "kth", rng)
    with pytest.raises(h36m.ConversionError, match="missing or corrupt frame .*Camera 3.*00002.png"):
        kth.convert(str(tmp_path / "kth"), str(tmp_path / "out"), strict=True)
    assert not [f for f in os.listdir(tmp_path / "out") if f.endswith(".tfrecord")]
    with open(tmp_path / "kth" / "player2" / "Sequence 1" / "cameras.txt", "a") as f:
        f.write("1.0\n")
    with pytest.raises(h36m.ConversionError, match="cameras.txt: .* not a multiple of 2x4x3"):
        kth.convert(str(tmp_path / "kth"), str(tmp_path / "out2"))
    with pytest.raises(h36m.ConversionError, match="kth_root .*empty: no such directory"):
        kth.convert(str(tmp_path / "empty"), str(tmp_path / "out3"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(h36m.ConversionError, match="no KTH sequence"):
        kth.convert(str(tmp_path / "empty"), str(tmp_path / "out3"))
    assert not (tmp_path / "out3").exists()
    with pytest.raises(ValueError, match="units_to_mm"):
        kth.convert(str(tmp_path / "kth"), str(tmp_path / "out4"), units_to_mm=0)
