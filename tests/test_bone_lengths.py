import json
import math

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import damage_data_of_record, random_pose
from tf_volpose import bone_lengths, skeleton
from tf_volpose.data import records


def _example(joints_2d, joints_3d=None):
    return records.make_example(image_encoded=b"\xff\xd8 jpeg", height=64, width=64,
                                joints_2d=joints_2d, center=[32, 32], scale=0.3, f=[100, 100],
                                c=[32, 32], joints_3d=joints_3d)


def _write(path, examples):
    with tf.io.TFRecordWriter(str(path)) as writer:
        for example in examples:
            writer.write(example.SerializeToString())


@pytest.fixture
def mixed_records(tmp_path, rng):
    """Two files of 3D poses, 2D-only records, a pose with a NaN joint and a 16-joint
    pose (another joint set); returns (pattern, the 17-joint finite poses)."""
    poses = [random_pose(rng) for _ in range(9)]
    nan_pose = _example(np.zeros((17, 2)), random_pose(rng))
    nan_pose.features.feature["joints/3d"].float_list.value[4] = math.nan
    _write(tmp_path / "train-00000.tfrecord",
           [_example(np.zeros((17, 2)), p) for p in poses[:5]] + [_example(np.zeros((17, 2)))] +
           [nan_pose, _example(np.zeros((16, 2)), random_pose(rng)[:16])])
    _write(tmp_path / "train-00001.tfrecord",
           [_example(np.zeros((17, 2)))] + [_example(np.zeros((17, 2)), p) for p in poses[5:]])
    return str(tmp_path / "train-*"), poses


def _reference(poses, joint_set=skeleton.H36M17):
    """Mean length of each bone, one pose and one bone at a time."""
    return np.array([np.mean([math.dist(pose[child], pose[parent]) for pose in poses])
                     for child, parent in joint_set.bones])


def test_compute_averages_the_3d_poses_of_the_joint_set(mixed_records, monkeypatch):
    pattern, poses = mixed_records
    lengths, count = bone_lengths.compute(pattern)
    assert count == 9  # 2D-only, non-finite and 16-joint records left out
    np.testing.assert_allclose(lengths, _reference(poses), rtol=1e-6)
    monkeypatch.setattr(bone_lengths, "_BATCH", 2)  # records split across batches
    np.testing.assert_allclose(bone_lengths.compute(pattern)[0], lengths, rtol=1e-12)


def test_compute_without_3d_poses_and_a_damaged_record_in_a_later_batch(tmp_path, monkeypatch,
                                                                        rng):
    _write(tmp_path / "mpii-00000.tfrecord", [_example(np.zeros((17, 2)))] * 3)
    with pytest.raises(ValueError, match="no records with 3D joints match"):
        bone_lengths.compute(str(tmp_path / "mpii-*"))
    assert bone_lengths.store_in_run(str(tmp_path / "mpii-*"), str(tmp_path / "run")) is None
    _write(tmp_path / "whole.tfrecord", [_example(np.zeros((17, 2)), random_pose(rng))] * 10)
    damage_data_of_record(tmp_path / "whole.tfrecord", tmp_path / "train-00000.tfrecord", 6)
    monkeypatch.setattr(bone_lengths, "_BATCH", 4)  # record 6 is in the second batch
    with pytest.raises(ValueError, match=f"{tmp_path}/train-00000.tfrecord: record 6 is damaged "
                                         f"\\(corrupted record at \\d+\\): copy the file again"):
        bone_lengths.compute(str(tmp_path / "train-*"))


def test_load_names_the_file_and_what_is_wrong(tmp_path):
    path = tmp_path / "lengths.json"
    for text, message in (("not json", "cannot read bone lengths"),
                          ("[1, 2]", "lengths_mm must hold 16 positive numbers"),
                          (json.dumps({"lengths_mm": [100.0] * 15}), "16 positive numbers"),
                          (json.dumps({"lengths_mm": [100.0] * 15 + [0.0]}), "16 positive")):
        path.write_text(text)
        with pytest.raises(ValueError, match=message):
            bone_lengths.load(str(path))
    with pytest.raises(ValueError, match="cannot read bone lengths .*missing.json"):
        bone_lengths.load(str(tmp_path / "missing.json"))


def test_a_run_keeps_its_bone_lengths_and_needs_no_records(mixed_records, tmp_path):
    pattern, poses = mixed_records
    run, elsewhere = str(tmp_path / "run"), str(tmp_path / "elsewhere")
    # without a file beside the records, the run's copy is computed from them
    computing = []
    stored = bone_lengths.store_in_run(pattern, run, on_compute=computing.append)
    assert stored == str(tmp_path / "run" / bone_lengths.FILE)
    assert computing == ["no bone_lengths.json beside the records"]
    data = json.load(open(stored))
    assert data["poses"] == 9 and data["records"] == pattern and "copied_from" not in data
    np.testing.assert_allclose(bone_lengths.load(stored), _reference(poses), rtol=1e-6)
    # with one beside the records, that one is copied (it may come from more records);
    # an existing copy is kept (a resumed run keeps the lengths it started with)
    beside = bone_lengths.save(bone_lengths.beside_records(pattern), skeleton.H36M17,
                               np.full(16, 123.0), 1000, source="records", records="all/*")
    assert bone_lengths.store_in_run(pattern, run) == stored
    assert bone_lengths.load(stored)[0] != 123.0
    copied = bone_lengths.store_in_run(pattern, elsewhere, on_compute=computing.append)
    assert len(computing) == 1  # copied, not computed
    data = json.load(open(copied))
    assert data["lengths_mm"] == [123.0] * 16 and data["poses"] == 1000
    assert data["records"] == "all/*" and data["copied_from"] == beside
    # for_run: a given file, then the run's copy, then the file beside the records
    given = bone_lengths.save(str(tmp_path / "given.json"), skeleton.H36M17, np.full(16, 7.0), 1)
    assert bone_lengths.for_run(pattern, run, given)[1:] == (given, False)
    lengths, path, written = bone_lengths.for_run(pattern, run)
    assert (path, written) == (stored, False)
    np.testing.assert_allclose(lengths, _reference(poses), rtol=1e-6)
    assert bone_lengths.for_run(pattern, str(tmp_path / "old_run"))[1:] == (beside, False)
    # the run's copy is all it needs once the records are gone
    for path in tmp_path.glob("train-*"):
        path.unlink()
    assert bone_lengths.for_run(pattern, run)[1] == stored
    with pytest.raises(ValueError, match=f"no bone lengths for the root-depth fit: the run "
                                         f"'{tmp_path}/old_run' has no bone_lengths.json and no "
                                         f"files match .*--bone_lengths=FILE"):
        bone_lengths.for_run(pattern, str(tmp_path / "old_run"))


def test_for_run_writes_the_file_beside_the_records_when_missing(mixed_records):
    pattern, poses = mixed_records
    lengths, path, written = bone_lengths.for_run(pattern)
    assert written and path == bone_lengths.beside_records(pattern)
    np.testing.assert_allclose(bone_lengths.load(path), lengths)
    np.testing.assert_allclose(lengths, _reference(poses), rtol=1e-6)
    assert bone_lengths.for_run(pattern)[1:] == (path, False)


def test_a_run_computes_its_own_when_the_file_beside_the_records_is_unusable(mixed_records,
                                                                             tmp_path):
    """Training does not depend on that file: a damaged one is not a reason to stop."""
    pattern, poses = mixed_records
    with open(bone_lengths.beside_records(pattern), "w") as f:
        f.write('{"lengths_mm": [1, 2')  # cut short
    why = []
    stored = bone_lengths.store_in_run(pattern, str(tmp_path / "run"), on_compute=why.append)
    assert len(why) == 1 and why[0].startswith("the file beside the records is unusable: "
                                               "cannot read bone lengths")
    np.testing.assert_allclose(bone_lengths.load(stored), _reference(poses), rtol=1e-6)
