import hashlib
import os
import re
import signal

import cv2
import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import camera, crop, skeleton
from tf_volpose.data import augment, pipeline, records, synthetic
from tests.conftest import damage_data_of_record, file_size_limit, write_undecodable_records


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthetic.generate(str(out), num_train=24, num_val=8, seed=3, examples_per_shard=10, workers=1)
    return out


def _digest(directory):
    h = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        h.update(name.encode())
        h.update((directory / name).read_bytes())
    return h.hexdigest()


def test_synthetic_is_deterministic_and_sharded(synthetic_dir, tmp_path):
    assert sorted(os.listdir(synthetic_dir)) == [
        "synthetic.json", "train-00000.tfrecord", "train-00001.tfrecord", "train-00002.tfrecord",
        "val-00000.tfrecord"]
    assert synthetic.rendered_set(str(synthetic_dir)) == {
        "num_train": 24, "num_val": 8, "seed": 3, "motion": None, "examples_per_shard": 10}
    synthetic.generate(str(tmp_path), num_train=24, num_val=8, seed=3, examples_per_shard=10,
                       workers=2)  # a process pool gives the same bytes
    assert _digest(tmp_path) == _digest(synthetic_dir)
    other = tmp_path / "other"
    synthetic.generate(str(other), num_train=2, num_val=0, seed=4, workers=1)
    a = next(iter(tf.data.TFRecordDataset(str(other / "train-00000.tfrecord")))).numpy()
    b = next(iter(tf.data.TFRecordDataset(str(synthetic_dir / "train-00000.tfrecord")))).numpy()
    assert a != b


def test_an_interrupted_rendering_leaves_no_manifest(synthetic_dir, tmp_path):
    def interrupt(split, done, total):
        if split == "val" and done == 2:
            raise KeyboardInterrupt

    complete = tmp_path / "complete"
    synthetic.generate(str(complete), num_train=3, num_val=0, seed=1, workers=1)
    assert synthetic.rendered_set(str(complete))["num_train"] == 3
    # rendering again over it removes the old manifest first, then stops in val
    with pytest.raises(KeyboardInterrupt):
        synthetic.generate(str(complete), num_train=3, num_val=4, seed=1, examples_per_shard=1,
                           workers=1, progress=interrupt)
    # the train split and a val shard are complete files, but not a set
    assert (complete / "train-00002.tfrecord").exists() and (complete / "val-00000.tfrecord").exists()
    assert synthetic.rendered_set(str(complete)) is None
    assert synthetic.rendered_set(str(tmp_path / "nothing")) is None


def test_synthetic_records_are_exact(synthetic_dir):
    for raw in tf.data.TFRecordDataset(str(synthetic_dir / "val-00000.tfrecord")):
        ex = records.parse_example(raw)
        K = camera.intrinsics_matrix(ex["camera/f"].numpy(), ex["camera/c"].numpy())
        joints_3d = ex["joints/3d"].numpy()
        assert 2500 < joints_3d[0, 2] < 6500  # 3-6 m away (the aim point is jittered)
        np.testing.assert_allclose(camera.project_pinhole(joints_3d, K), ex["joints/2d"].numpy(),
                                   atol=1e-2)
        image = tf.io.decode_jpeg(ex["image/encoded"]).numpy()
        assert image.shape == (ex["image/height"], ex["image/width"], 3)


def test_motion_file_drives_the_poses(tmp_path, rng):
    poses = {f"S{s}/walking_1": rng.normal(0, 1, (5, 17, 3)) * 50 + [0, 0, 900] for s in (1, 9)}
    path = tmp_path / "motion.npz"
    np.savez(path, **poses)
    out = tmp_path / "out"
    counts = synthetic.generate(str(out), 3, 2, seed=0, motion=str(path), workers=1)
    assert counts == {"train": 3, "val": 2}
    subjects = {records.parse_example(r)["meta/subject"].numpy()
                for r in tf.data.TFRecordDataset(str(out / "val-00000.tfrecord"))}
    assert subjects == {b"S9"}
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    np.save(tmp_path / "array.npy", poses["S1/walking_1"])
    (tmp_path / "text.npz").write_text("not an archive\n")
    for name, message in (("bad.npz", "holds no .frames, 17, 3. arrays; keys: .'x'."),
                          ("array.npy", "is a single .npy array, not an .npz archive"),
                          ("text.npz", "cannot read motion file .* as a NumPy .npz archive")):
        with pytest.raises(ValueError) as info:
            synthetic.generate(str(out), 1, 1, motion=str(tmp_path / name), workers=1)
        assert name in str(info.value) and re.search(message, str(info.value)), info.value


def test_generate_rejects_bad_counts_before_writing(tmp_path):
    for kwargs, field in ((dict(num_train=-1, num_val=2), "num_train must be an integer >= 0"),
                          (dict(num_train=2, num_val=1.5), "num_val"),
                          (dict(num_train=2, num_val=2, examples_per_shard=0),
                           "examples_per_shard must be an integer >= 1, got 0")):
        with pytest.raises(ValueError, match=field):
            synthetic.generate(str(tmp_path / "out"), workers=1, **kwargs)
    assert not (tmp_path / "out").exists()


def test_make_example_rejects_bad_values():
    good = dict(image_encoded=b"\xff\xd8x", height=4, width=4, joints_2d=np.zeros((17, 2)),
                center=[2, 2], scale=1.0, f=[1, 1], c=[0, 0])
    records.make_example(**good)
    with pytest.raises(ValueError, match="scale"):
        records.make_example(**{**good, "scale": 0.0})
    with pytest.raises(ValueError, match="joints_2d"):
        records.make_example(**{**good, "joints_2d": np.full((17, 2), np.nan)})
    with pytest.raises(ValueError, match="joints_3d"):
        records.make_example(**{**good, "joints_3d": np.zeros((16, 3))})
    # no image is a pose-only record (MoCap); empty bytes are a caller's mistake
    pose_only = records.make_example(**{**good, "image_encoded": None})
    assert records.parse_example(pose_only.SerializeToString())["image/encoded"].numpy() == b""
    with pytest.raises(ValueError, match="image_encoded is empty"):
        records.make_example(**{**good, "image_encoded": b""})


def test_sharded_writer_never_leaves_a_truncated_shard(tmp_path):
    example = records.make_example(image_encoded=b"\xff\xd8x", height=4, width=4,
                                   joints_2d=np.zeros((2, 2)), center=[2, 2], scale=1.0,
                                   f=[1, 1], c=[0, 0])
    with pytest.raises(RuntimeError):
        with records.ShardedWriter(str(tmp_path), "train", examples_per_shard=3) as writer:
            for i in range(5):
                writer.write(example)
            raise RuntimeError("crash")
    assert sorted(os.listdir(tmp_path)) == ["train-00000.tfrecord"]  # shard 1 was discarded
    # resume keeps complete shards and writes the rest
    with records.ShardedWriter(str(tmp_path), "train", examples_per_shard=3, resume=True) as writer:
        for i in range(5):
            writer.write(example)
    assert writer.skipped_existing == 3
    assert sorted(os.listdir(tmp_path)) == ["train-00000.tfrecord", "train-00001.tfrecord"]
    assert sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "train-00001.tfrecord"))) == 2


def _write_records(path, payloads):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for data in payloads:
            writer.write(data)


def test_count_records_reads_the_framing_and_names_a_truncated_file(tmp_path):
    payloads = [b"", b"x" * 7, os.urandom(300)]
    path = tmp_path / "three.tfrecord"
    _write_records(path, payloads)
    # the counts TensorFlow's reader agrees with; an empty file holds no records
    assert records.count_records(str(path)) == 3 == sum(1 for _ in tf.data.TFRecordDataset(str(path)))
    _write_records(tmp_path / "none.tfrecord", [])
    assert records.check_complete([str(path), str(tmp_path / "none.tfrecord")]) == {
        str(path): 3, str(tmp_path / "none.tfrecord"): 0}
    # framing: 12-byte header + data + 4-byte CRC per record
    data = path.read_bytes()
    assert len(data) == sum(16 + len(p) for p in payloads)
    last = 16 + 23  # where the third record starts
    # cut anywhere in the last record: its header, its data or its CRC
    for cut in (last + 5, last + 12, last + 200, len(data) - 1):
        (tmp_path / "cut.tfrecord").write_bytes(data[:cut])
        needs = "a 12-byte header" if cut - last < 12 else "316 bytes"
        with pytest.raises(ValueError, match=rf"cut.tfrecord: record 2 at byte {last} needs "
                                             rf"{needs}, but the file ends {cut - last} bytes "
                                             rf"after it: the file is truncated .*; 2 complete"):
            records.count_records(str(tmp_path / "cut.tfrecord"))
    (tmp_path / "notes.txt").write_text("not a record file at all\n")
    with pytest.raises(ValueError, match=r"notes.txt: record 0 at byte 0 .* not a TFRecord file"):
        records.count_records(str(tmp_path / "notes.txt"))


def test_record_headers_are_checked_against_their_checksum(tmp_path):
    # the CRC-32C check value of "123456789" is 0xE3069283 (RFC 3720), masked as TFRecord
    # framing stores it: rotated right by 15 bits, plus 0xA282EAD8
    assert records.masked_crc32c(b"123456789") == 0xC78AB0E5
    payloads = [b"", b"x" * 7, os.urandom(300)]
    path = tmp_path / "three.tfrecord"
    _write_records(path, payloads)
    data = path.read_bytes()
    assert data[8:12] == records.masked_crc32c(data[:8]).to_bytes(4, "little")  # TF's writer
    # a download preallocated with zeros and cut short: zero headers frame 16-byte records,
    # so the file used to count 3 + 4 records; TensorFlow's reader stops at the first
    (tmp_path / "zeros.tfrecord").write_bytes(data + bytes(64))
    with pytest.raises(ValueError, match=rf"zeros.tfrecord: record 3 at byte {len(data)} has a "
                                         rf"header that fails its checksum: .*; 3 complete"):
        records.count_records(str(tmp_path / "zeros.tfrecord"))
    assert sum(1 for _ in tf.data.TFRecordDataset(str(tmp_path / "zeros.tfrecord"))
               .ignore_errors()) == 3


@pytest.mark.parametrize("strict", [False, True])
def test_pipeline_names_a_file_whose_reading_ends_at_a_damaged_record(synthetic_dir, tmp_path,
                                                                      capfd, strict):
    """TensorFlow's reader ends a file at a record whose data fails its checksum: before, the
    rest of the file was skipped with only TensorFlow's warning, which names no file, or,
    strict, a DataLossError naming no file."""
    source = synthetic_dir / "val-00000.tfrecord"
    total = records.count_records(str(source))
    damage_data_of_record(source, tmp_path / "val-00000.tfrecord", 3)
    dataset = pipeline.make_dataset(str(tmp_path / "val-*"), training=False, batch_size=1,
                                    input_size=64, xy_res=16, strict=strict)
    message = (f"ERROR: record] [3] [of] [{tmp_path}/val-00000.tfrecord] [is damaged" if strict
               else f'record 3 of "{tmp_path}/val-00000.tfrecord" is damaged')
    if strict:
        with pytest.raises(tf.errors.InvalidArgumentError, match=re.escape(message)):
            list(dataset)
        # files with no count (on a bucket) stop at TensorFlow's error, as before
        uncounted = pipeline.make_dataset(
            str(tmp_path / "val-*"), training=False, batch_size=1, input_size=64, xy_res=16,
            strict=True, counts={str(tmp_path / "val-00000.tfrecord"): None})
        with pytest.raises(tf.errors.DataLossError, match="corrupted record"):
            list(uncounted)
        return
    assert sum(1 for _ in dataset) == 3
    stderr = capfd.readouterr().err
    assert f"WARNING: {message} (its data fails the checksum, or the file changed " \
           f"after it was counted: copy it again); " \
           f"TensorFlow's reader skips the rest of the file: {total - 3} of {total} records " \
           f"not read" in stderr, stderr[-2000:]
    # an intact file, or one read only in part (records_per_file), warns of nothing
    list(pipeline.make_dataset(str(source), training=False, batch_size=8, input_size=64,
                               xy_res=16))
    list(pipeline.make_dataset(str(tmp_path / "val-*"), training=False, batch_size=1,
                               input_size=64, xy_res=16, records_per_file=3))
    assert "damaged" not in capfd.readouterr().err


@pytest.mark.parametrize("strict", [False, True])
def test_pipeline_names_a_truncated_shard_before_reading(synthetic_dir, tmp_path, strict):
    # TensorFlow's reader would end the file early (a warning naming no file) or,
    # strict, raise DataLossError naming no file
    for name in ("train-00000.tfrecord", "train-00001.tfrecord"):
        data = (synthetic_dir / name).read_bytes()
        (tmp_path / name).write_bytes(data if name.endswith("0.tfrecord") else data[:-100])
    with pytest.raises(ValueError, match=r"train-00001.tfrecord: record 9 at byte \d+ .*"
                                         r"truncated.*9 complete records"):
        pipeline.make_dataset(str(tmp_path / "train-*"), training=True, batch_size=2,
                              input_size=64, strict=strict)
    # a caller that counted the files itself (training) builds without the check
    pipeline.make_dataset(str(tmp_path / "train-*"), training=True, batch_size=2,
                          input_size=64, strict=strict,
                          counts={str(p): None for p in sorted(tmp_path.glob("train-*"))})


def test_yields_an_example_tells_records_that_never_decode(synthetic_dir, tmp_path):
    options = dict(input_size=64, xy_res=16)
    assert pipeline.yields_an_example(str(synthetic_dir / "train-*"), skip=5, **options)
    # a JPEG's magic bytes and nothing else: valid to the record checks, dropped when
    # decoding fails, so the repeated training stream of these would never end
    write_undecodable_records(tmp_path, "bad")
    _write_records(tmp_path / "empty-00000.tfrecord", [])
    for prefix in ("bad", "empty"):
        assert not pipeline.yields_an_example(str(tmp_path / f"{prefix}-*"), **options)
    # one good file among them is enough
    good = sorted(synthetic_dir.glob("train-*"))[0]
    assert pipeline.yields_an_example(f"{tmp_path / 'bad-*'},{good}", **options)


@pytest.mark.skipif(not hasattr(signal, "SIGXFSZ"), reason="needs POSIX file size limits")
def test_a_shard_that_cannot_be_written_is_named_and_leaves_nothing(tmp_path):
    """A full disk (here a file size limit: EFBIG where a full disk gives ENOSPC, the
    latter checked by hand on a 3 MB tmpfs) was a traceback from TFRecordWriter naming
    the temporary file; it is an OSError naming the shard, and no file is left."""
    with pytest.raises(OSError, match=f"cannot write {tmp_path}/train-00000.tfrecord: .*File "
                                      f"too large"):
        with file_size_limit(50_000), records.ShardedWriter(str(tmp_path), "train", 100) as w:
            for _ in range(100):
                w.write(b"x" * 10_000)
    assert os.listdir(tmp_path) == []


def test_resume_writes_a_truncated_or_short_shard_again(tmp_path):
    def payload(i):
        return f"record {i}".encode()

    with records.ShardedWriter(str(tmp_path), "train", examples_per_shard=3) as writer:
        for i in range(8):  # shards of 3, 3 and 2 records
            writer.write(payload(i))
    shard = [tmp_path / f"train-{i:05d}.tfrecord" for i in range(4)]
    shard[1].write_bytes(shard[1].read_bytes()[:-3])  # an interrupted copy
    # more input than before: the short last shard must take the new records too
    with records.ShardedWriter(str(tmp_path), "train", examples_per_shard=3,
                               resume=True) as writer:
        for i in range(10):
            writer.write(payload(i))
    assert writer.skipped_existing == 3  # shard 0 only
    read = [r.numpy() for s in shard for r in tf.data.TFRecordDataset(str(s))]
    assert read == [payload(i) for i in range(10)]


def test_pipeline_crops_contain_the_person(synthetic_dir):
    ds = pipeline.make_dataset(str(synthetic_dir / "val-*"), training=False, batch_size=4,
                               input_size=64, xy_res=16)
    inputs, targets = next(iter(ds))
    assert inputs["image"].shape == (4, 64, 64, 3) and inputs["image"].dtype == tf.float32
    voxels = targets["joints_voxel"].numpy()
    assert (voxels[..., :2] > 0).all() and (voxels[..., :2] < 16).all()  # all joints in the crop
    np.testing.assert_allclose(voxels[:, 0, 2], 32.0)  # the root sits mid-depth
    # without augmentation, voxel coordinates equal VoxelGrid.encode of the 3D joints
    from tf_volpose import volume
    grid = volume.VoxelGrid(16, 64, 1000.0)
    for b in range(4):
        K = camera.intrinsics_matrix(targets["focal"][b].numpy(), targets["principal"][b].numpy())
        expected = grid.encode(targets["joints_3d"][b].numpy(), K=K,
                               center=targets["center"][b].numpy(), scale=float(targets["scale"][b]))
        np.testing.assert_allclose(voxels[b], expected, atol=2e-3)


def test_augmented_joints_follow_the_pixels(synthetic_dir):
    """Render the crop's joints as dots before warping: they must land at the voxel coordinates."""
    raw = next(iter(tf.data.TFRecordDataset(str(synthetic_dir / "train-00000.tfrecord"))))
    ex = records.parse_example(raw)
    h, w = int(ex["image/height"]), int(ex["image/width"])
    canvas = np.zeros((h, w, 3), np.uint8)
    uv = ex["joints/2d"].numpy()
    cv2.circle(canvas, tuple(int(round(v)) for v in uv[3]), 3, (255, 255, 255), -1)  # r_ankle
    ok, png = cv2.imencode(".png", canvas)
    ex = dict(ex)
    ex["image/encoded"] = tf.constant(png.tobytes())
    for position in range(6):
        seed = tf.constant([5, position], tf.int64)
        opts = pipeline.PipelineOptions(input_size=64, xy_res=64)
        inputs, targets = pipeline.preprocess(ex, seed, opts, training=True)
        image = inputs["image"].numpy()[..., 0]
        aug = augment.sample(seed)
        joint = skeleton.H36M17.flip_index[3] if bool(aug["flip"]) else 3
        x, y = targets["joints_voxel"].numpy()[joint, :2]
        if 3 < x < 61 and 3 < y < 61:
            ys, xs = np.nonzero(image > 0.3 * image.max())
            np.testing.assert_allclose([xs.mean() + 0.5, ys.mean() + 0.5], [x, y], atol=0.6)


def test_heatmap_inputs_are_gaussians_at_the_augmented_joints(synthetic_dir):
    """``inputs="heatmaps"`` (network B alone) reads no image: the same targets as the image
    pipeline's, with the same augmentation, and per joint a Gaussian of peak 1 centred on
    its continuous voxel x, y (computed here from the formula), zero where not annotated."""
    options = dict(input_size=64, xy_res=16, depth=8, seed=4, deterministic=True)
    take = lambda **kw: next(iter(pipeline.make_dataset(
        str(synthetic_dir / "train-*"), training=True, batch_size=6, **options, **kw)))
    image_inputs, image_targets = take()
    inputs, targets = take(inputs="heatmaps", sigma=1.5)
    assert set(inputs) == {"heatmaps"} and set(image_inputs) == {"image"}
    for key in ("joints_voxel", "mask", "center", "scale", "root_depth"):
        np.testing.assert_allclose(targets[key].numpy(), image_targets[key].numpy(), atol=1e-5)
    voxels = targets["joints_voxel"].numpy()
    x = np.arange(16) + 0.5  # pixel centres
    expected = np.exp(-((x[None, None, :, None] - voxels[:, None, None, :, 0]) ** 2
                        + (x[None, :, None, None] - voxels[:, None, None, :, 1]) ** 2)
                      / (2 * 1.5 ** 2))
    np.testing.assert_allclose(inputs["heatmaps"].numpy(), expected, atol=1e-5)
    # a joint that is not annotated has no heatmap
    raw = next(iter(tf.data.TFRecordDataset(str(synthetic_dir / "train-00000.tfrecord"))))
    ex = dict(records.parse_example(raw))
    ex["joints/visible"] = tf.constant([0] + [1] * 16, tf.int64)
    opts = pipeline.PipelineOptions(input_size=64, xy_res=16, inputs="heatmaps")
    heatmaps = pipeline.preprocess(ex, tf.constant([0, 0], tf.int64), opts, training=False)[0]
    assert heatmaps["heatmaps"].numpy()[..., 0].max() == 0.0
    assert heatmaps["heatmaps"].numpy()[..., 1:].max(axis=(0, 1)).min() > 0.5
    with pytest.raises(ValueError, match="inputs must be one of"):
        pipeline.PipelineOptions(inputs="depth")


def test_augmentation_ops_eager_and_in_dataset_map():
    seeds = tf.constant([[1, i] for i in range(200)], tf.int64)
    eager = [augment.sample(s) for s in seeds]
    mapped = list(tf.data.Dataset.from_tensor_slices(seeds).map(augment.sample))
    for a, b in zip(eager, mapped):
        for key in a:
            np.testing.assert_array_equal(a[key].numpy(), b[key].numpy())
    scales = np.array([float(a["scale"]) for a in eager])
    rotations = np.array([float(a["rotation_deg"]) for a in eager])
    assert scales.min() >= 0.75 and scales.max() <= 1.25
    assert np.abs(rotations).max() <= 60 and 0.2 < (rotations != 0).mean() < 0.6
    assert 0.35 < np.mean([bool(a["flip"]) for a in eager]) < 0.65
    image = tf.fill([2, 2, 3], 0.9)
    out = augment.apply_color_gain(image, [1.2, 1.0, 0.5]).numpy()
    np.testing.assert_allclose(out[0, 0], [1.0, 0.9, 0.45], rtol=1e-6)
    flipped = augment.flip_joints(tf.range(17), tf.constant(True), skeleton.H36M17.flip_index)
    assert flipped.numpy()[1] == 4 and flipped.numpy()[4] == 1 and flipped.numpy()[0] == 0


def test_pipeline_is_deterministic_with_a_seed(synthetic_dir):
    def first_batches(**kw):
        ds = pipeline.make_dataset(str(synthetic_dir / "train-*"), training=True, batch_size=2,
                                   input_size=64, xy_res=16, seed=7, deterministic=True, **kw)
        return [b[1]["joints_voxel"].numpy() for b in ds.take(3)]

    a, b = first_batches(), first_batches()
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    resumed = first_batches(skip=2)  # a resumed run continues the same stream
    np.testing.assert_array_equal(resumed[0], a[1])


def test_records_per_file_reads_the_first_records_of_every_file(synthetic_dir):
    files = sorted(synthetic_dir.glob("train-*"))  # 10, 10 and 4 records
    expected = [records.parse_example(raw)["joints/3d"].numpy()
                for path in files for raw in tf.data.TFRecordDataset(str(path)).take(3)]
    ds = pipeline.make_dataset(str(synthetic_dir / "train-*"), training=False, batch_size=4,
                               input_size=64, xy_res=16, records_per_file=3)
    got = np.concatenate([targets["joints_3d"].numpy() for _, targets in ds])
    assert len(got) == 9

    def in_order(poses):  # the interleaving order of files is not the point here
        return sorted(poses, key=lambda pose: tuple(pose.ravel()))

    np.testing.assert_allclose(in_order(list(got)), in_order(expected))


def test_bad_records_are_skipped_with_a_warning_or_fail_in_strict_mode(synthetic_dir, tmp_path, capfd):
    raws = [r.numpy() for r in tf.data.TFRecordDataset(str(synthetic_dir / "val-00000.tfrecord"))]
    bad_nan = tf.train.Example.FromString(raws[1])
    bad_nan.features.feature["joints/2d"].float_list.value[4] = float("nan")
    bad_jpeg = tf.train.Example.FromString(raws[2])
    bad_jpeg.features.feature["image/encoded"].bytes_list.value[0] = b"not an image at all"
    path = str(tmp_path / "mixed.tfrecord")
    with tf.io.TFRecordWriter(path) as w:
        for r in (raws[0], bad_nan.SerializeToString(), bad_jpeg.SerializeToString(), raws[3]):
            w.write(r)
    ds = pipeline.make_dataset(path, training=False, batch_size=8, input_size=64, xy_res=16)
    batch = next(iter(ds))
    assert batch[0]["image"].shape[0] == 2
    assert np.isfinite(batch[1]["joints_voxel"].numpy()).all()
    err = capfd.readouterr().err
    assert re.search(r'mixed.tfrecord"? record 1', err) and re.search(r'mixed.tfrecord"? record 2', err)
    strict = pipeline.make_dataset(path, training=False, batch_size=8, input_size=64, xy_res=16,
                                   strict=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="invalid record"):
        next(iter(strict))


def test_pipeline_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="file_pattern"):
        pipeline.make_dataset(str(tmp_path / "none-*"), training=True, batch_size=2)
    with pytest.raises(ValueError, match="unknown pipeline options"):
        pipeline.make_dataset(str(tmp_path / "x"), training=True, batch_size=2, colour=1)


def test_decode_crop_eager_in_dataset_map_and_opencv_agree(synthetic_dir):
    raw = next(iter(tf.data.TFRecordDataset(str(synthetic_dir / "val-00000.tfrecord"))))
    ex = records.parse_example(raw)
    A = crop.crop_transform(ex["box/center"].numpy(), float(ex["box/scale"]), 64,
                            rotation_deg=20.0, flip=True)
    full = tf.image.convert_image_dtype(tf.io.decode_jpeg(ex["image/encoded"]), tf.float32).numpy()
    reference = crop.warp_image(full, A, 64)  # whole image decoded, OpenCV warp
    args = (ex["image/encoded"], ex["image/height"], ex["image/width"], tf.constant(A, tf.float32))
    eager = pipeline.decode_crop(*args, 64).numpy()  # only the needed window decoded
    mapped = next(iter(tf.data.Dataset.from_tensors(args).map(
        lambda *a: pipeline.decode_crop(*a, 64)))).numpy()
    np.testing.assert_allclose(eager, mapped, atol=1e-6)
    np.testing.assert_allclose(eager, reference, atol=2e-2)


def test_list_files_sorts_joins_patterns_and_says_where_relative_ones_were_looked_for(
        tmp_path, monkeypatch):
    for name in ("b-00001.tfrecord", "a-00000.tfrecord", "b-00000.tfrecord"):
        (tmp_path / name).write_bytes(b"")
    assert pipeline.list_files(f"{tmp_path}/b-*, {tmp_path}/a-*") == [
        str(tmp_path / n) for n in ("a-00000.tfrecord", "b-00000.tfrecord", "b-00001.tfrecord")]
    monkeypatch.chdir(tmp_path / "..")
    # a run's config.json keeps a relative pattern; a tool started elsewhere says where it looked
    with pytest.raises(ValueError, match=re.escape(
            f"no files match file_pattern='data/train-*' (relative to {tmp_path.parent})")):
        pipeline.list_files("data/train-*")
    with pytest.raises(ValueError, match=r"no files match file_pattern='/nowhere/train-\*'$"):
        pipeline.list_files("/nowhere/train-*")
    # one that looks where records are says which splits are there (before: the message
    # alone, for --split=test of the synthetic set, which has train and val)
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(ValueError, match=re.escape(
            f"no files match file_pattern='{tmp_path}/test-*'; {tmp_path} holds a-*, b-*")):
        pipeline.list_files(f"{tmp_path}/test-*")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=re.escape(
            f"file_pattern='test-*' (relative to {tmp_path}); . holds a-*, b-*")):
        pipeline.list_files("test-*")


def test_sharded_writer_refuses_a_file_as_its_directory(tmp_path):
    (tmp_path / "afile").write_text("")  # before: "[Errno 17] File exists"
    with pytest.raises(ValueError, match=f"output_dir '{tmp_path}/afile' is a file, not a "
                                         f"directory"):
        records.ShardedWriter(str(tmp_path / "afile"), "train")
