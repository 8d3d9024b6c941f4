import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import bone_lengths, camera, crop, evaluation, metrics, skeleton, training, volume
from tf_volpose.data import synthetic
from tests.conftest import REPO, box_around, copy_to_file_system, random_pose


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_data")
    synthetic.generate(str(out), num_train=12, num_val=6, seed=2, workers=1)
    return out


def _config(data_dir, model_dir, **kw):
    values = dict(model_dir=str(model_dir), train_pattern=str(data_dir / "train-*"),
                  val_pattern=str(data_dir / "val-*"), features=8, input_size=64, hourglass_depth=1,
                  depths=(1, 64), batch_size=2, train_steps=2, checkpoint_every=2, summary_every=1,
                  image_summary_every=0, val_every=0, val_examples=2)
    values.update(kw)
    return training.TrainConfig(**values)


def test_oracle_floor_continuous_and_argmax(data_dir, tmp_path):
    config = _config(data_dir, tmp_path)
    result, paths = evaluation.evaluate(config, evaluation.EvalOptions(oracle="quadratic"),
                                        output_dir=str(tmp_path / "soft"))
    assert result["mpjpe_mm"]["Average"]["mean"] < 0.5  # continuous coordinates survive the grid
    local, _ = evaluation.evaluate(config, evaluation.EvalOptions(oracle="local_softargmax"),
                                   output_dir=str(tmp_path / "local"))
    assert local["mpjpe_mm"]["Average"]["mean"] < 60.0  # biased only by windows cut by the border
    argmax, _ = evaluation.evaluate(config, evaluation.EvalOptions(oracle="argmax", decode="argmax"),
                                    output_dir=str(tmp_path / "argmax"))
    floor = argmax["mpjpe_mm"]["Average"]["mean"]
    # quantisation floor: uniform error within a voxel; a 16x16 grid of a ~1 m box is coarse
    assert 5.0 < floor < 200.0
    assert argmax["voxel_error"] == pytest.approx(0.48, abs=0.12)  # E|U(-.5,.5)^3| ~ 0.48
    assert os.path.exists(paths[0]) and paths[1].endswith("report.md")
    text = open(paths[1]).read()
    assert "MPJPE" in text and "PA-MPJPE" in text and "3D PCP" in text


def test_end_to_end_train_then_evaluate(data_dir, tmp_path):
    config = _config(data_dir, tmp_path)
    training.train(config)
    bone_lengths.write(config.train_pattern)
    calibrated, scale = evaluation.write_model_bone_lengths(config, str(tmp_path))
    assert calibrated == str(tmp_path / bone_lengths.MODEL_FILE)
    data = json.load(open(calibrated))
    assert data["source"] == "model" and data["poses"] == 12 and data["scale"] == scale
    assert data["checkpoint"].startswith(str(tmp_path)) and data["decode"] == config.decode
    for root_depth, lengths in (("gt", ""), ("bone_lengths", ""), ("bone_lengths", calibrated)):
        options = evaluation.EvalOptions(root_depth=root_depth, bone_lengths=lengths,
                                         flip_test=True)
        result, paths = evaluation.evaluate(config, options, checkpoint=str(tmp_path))
        assert os.path.dirname(paths[0]) == str(tmp_path)  # beside the checkpoint
        data = json.load(open(paths[0]))
        assert data["frames"] == 6 and "Average" in data["mpjpe_mm"]
        # the report names the bone lengths the fit used: by default the run's own copy
        assert data["options"]["bone_lengths"] == (
            (lengths or str(tmp_path / bone_lengths.FILE)) if root_depth == "bone_lengths"
            else "")
        assert set(data["pcp3d"]) >= {"upper_arms", "lower_legs", "all"}
        assert np.isfinite(data["pa_mpjpe_mm"]["Average"]["mean"])
        assert data["pa_mpjpe_mm"]["Average"]["mean"] <= data["mpjpe_mm"]["Average"]["mean"] + 1e-6
    with pytest.raises(ValueError, match="checkpoint"):
        evaluation.evaluate(config, evaluation.EvalOptions(), checkpoint=str(tmp_path / "none"))
    # a checkpoint with weights the model lacks (here: a run with convolution biases
    # restored into a model without) is refused, not silently half-used
    biased = dataclasses.replace(config, conv_bias=True)
    model = training.build_model(biased)
    checkpoint = tf.train.Checkpoint(model=model,
                                     weights_by_name={w.path: w for w in model.weights})
    saved = checkpoint.save(str(tmp_path / "biased" / "ckpt"))
    with pytest.raises(ValueError, match=r"does not match the model of this config: it has \d+ "
                                         r"weights the model lacks, e.g. .*/bias'.*conv_bias=True"):
        evaluation.load_trained_model(config, saved)
    # and the other way round; and another width: the first differing weight, both shapes
    with pytest.raises(ValueError, match=r"\d+ weights of the model are not in it, e.g. "
                                         r".*/bias'.*conv_bias=False"):
        evaluation.load_trained_model(biased, str(tmp_path))
    wider = dataclasses.replace(config, features=2 * config.features)
    with pytest.raises(ValueError, match=r"\d+ weights differ in shape, e.g. '.*': \(.*\) in the "
                                         r"checkpoint, \(.*\) in the model.*other model settings"):
        evaluation.load_trained_model(wider, str(tmp_path))
    restored, _ = evaluation.load_trained_model(biased, saved)
    assert training.weights_digest(restored) == training.weights_digest(model)
    # a model trained without flips on images that mark left and right gets no flip test
    no_flip = dataclasses.replace(config, flip_prob=0.0)
    with pytest.raises(ValueError, match="flip_prob=0.*without flip_test"):
        evaluation.evaluate(no_flip, evaluation.EvalOptions(flip_test=True),
                            checkpoint=str(tmp_path))
    result, _ = evaluation.evaluate(no_flip, evaluation.EvalOptions(), checkpoint=str(tmp_path),
                                    output_dir=str(tmp_path / "no_flip"))
    assert np.isfinite(result["mpjpe_mm"]["Average"]["mean"])
    # the tool calibrates the same lengths from the run directory alone
    out = subprocess.run([sys.executable, str(REPO / "tools" / "bone_lengths.py"),
                          f"--checkpoint={tmp_path}", f"--output={tmp_path / 'cli.json'}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0 and f"wrote {tmp_path / 'cli.json'}" in out.stdout, out.stderr[-2000:]
    np.testing.assert_allclose(bone_lengths.load(str(tmp_path / "cli.json")),
                               bone_lengths.load(calibrated), rtol=1e-5)
    # the eval tool, fitting root depths without --bone_lengths, points at the run's file
    out = subprocess.run([sys.executable, str(REPO / "tools" / "eval.py"),
                          f"--checkpoint={tmp_path}", "--root_depth=bone_lengths",
                          f"--output_dir={tmp_path / 'cli_eval'}"],
                         capture_output=True, text=True, timeout=300, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    assert f"note: {calibrated} holds bone lengths calibrated to this run" in out.stdout
    assert (tmp_path / "cli_eval" / "metrics.json").exists()


LIMBS = [(2, 1), (3, 2), (5, 4), (6, 5), (12, 11), (13, 12), (15, 14), (16, 15)]  # (child, parent)


def _short_limbed_predictions(rng, count, grid, K):
    """Predictions of a 'model' that decodes every pose exactly except its arms and legs,
    at 0.7x their length; lifted at the true root depth as collect_predictions does."""
    out = {k: [] for k in ("pred_mm", "pred_voxels", "K", "center", "scale", "root_depth_mm",
                           "true_mm")}
    for _ in range(count):
        true = random_pose(rng, root_depth=rng.uniform(2500.0, 7000.0))
        pred = true.copy()
        for child, parent in LIMBS:  # parents first
            pred[child] = pred[parent] + 0.7 * (true[child] - true[parent])
        center, scale = box_around(true, K)
        voxels = grid.encode(pred, K=K, center=center, scale=scale)
        out["pred_voxels"].append(voxels)
        out["pred_mm"].append(grid.lift(voxels, K=K, center=center, scale=scale,
                                        root_depth=true[0, 2]))
        for key, value in (("K", K), ("center", center), ("scale", scale),
                           ("root_depth_mm", true[0, 2]), ("true_mm", true)):
            out[key].append(value)
    out = {k: np.asarray(v, np.float32 if k == "pred_voxels" else np.float64)
           for k, v in out.items()}
    out["has_3d"] = np.ones(count, bool)
    return out


def test_bone_lengths_calibrated_to_a_model_that_shortens_limbs(rng):
    grid = volume.VoxelGrid(64, 64, 1000.0)
    K = camera.intrinsics_matrix([1145.0, 1143.8], [512.5, 515.4])
    calibration = _short_limbed_predictions(rng, 100, grid, K)
    lengths, poses, scale = evaluation.bone_lengths_matching_predictions(calibration, grid)
    true_lengths = volume.mean_bone_lengths(calibration["true_mm"])
    ratio = lengths / true_lengths
    limbs = [skeleton.H36M17.bones.index(bone) for bone in LIMBS]
    others = np.delete(ratio, limbs)
    np.testing.assert_allclose(others, scale, rtol=1e-3)  # exact bones: only the common factor
    np.testing.assert_allclose(ratio[limbs] / scale, 0.7, atol=0.02)
    assert poses == 100 and 0.95 < scale < 1.15

    def depth_ratio(predictions, lengths):  # fitted / true root depth, median
        fitted = volume.estimate_root_depth_tf(
            predictions["pred_voxels"], predictions["K"], predictions["center"],
            predictions["scale"], lengths, grid).numpy()
        return np.median(fitted / predictions["root_depth_mm"])

    # on other poses: the true lengths put the short-limbed skeletons ~24% too far
    # away, the calibrated ones at the right depth
    held_out = _short_limbed_predictions(rng, 60, grid, K)
    assert depth_ratio(held_out, true_lengths) > 1.15
    assert abs(depth_ratio(held_out, lengths) - 1.0) < 0.04
    # skeletons collapsed to a point (an untrained model) give no lengths to fit
    collapsed = dict(calibration, pred_mm=np.zeros_like(calibration["pred_mm"]))
    with pytest.raises(ValueError, match="bones of no length"):
        evaluation.bone_lengths_matching_predictions(collapsed, grid)
    # rows without 3D ground truth are left out; none at all is an error
    calibration["has_3d"][:10] = False
    calibration["pred_mm"][:10] = np.nan
    assert evaluation.bone_lengths_matching_predictions(calibration, grid)[1] == 90
    calibration["has_3d"][:] = False
    with pytest.raises(ValueError, match="no predictions with 3D ground truth"):
        evaluation.bone_lengths_matching_predictions(calibration, grid)


def test_table_arithmetic_on_hand_made_predictions():
    gt = np.zeros((4, 17, 3))
    gt[:, :, 2] = 5000.0
    gt[:, 1:, 0] = np.arange(1, 17) * 100.0  # a spread-out skeleton
    pred = gt.copy()
    pred[0, 1:, 1] += 17.0 / 16.0 * 10.0  # 16 joints off by 10.625 mm: frame MPJPE 10 mm
    pred[1, 1:, 1] += 17.0 / 16.0 * 20.0
    pred[2, 1:, 1] += 17.0 / 16.0 * 60.0
    pred[3] = gt[3]
    n = 4
    p = {"pred_mm": pred, "gt_mm": gt, "has_3d": np.ones(n, bool), "root_depth_mm": np.full(n, 5000.0),
         "pred_voxels": np.zeros((n, 17, 3)), "gt_voxels": np.zeros((n, 17, 3)),
         "pred_px": np.zeros((n, 17, 2)), "gt_px": np.zeros((n, 17, 2)), "mask": np.ones((n, 17)),
         "action": np.array(["Walking 1", "Walking 2", "Eating 1", "Eating 2"]),
         "subject": np.array(["S9"] * 4)}
    result = evaluation.compute_metrics(p)
    table = result["mpjpe_mm"]
    assert list(table) == ["Eating", "Walking", "Average"]  # Table 4 column order
    assert table["Walking"]["mean"] == pytest.approx(15.0)
    assert table["Eating"]["mean"] == pytest.approx(30.0)
    assert table["Average"]["mean"] == pytest.approx(22.5)  # frames: (10+20+60+0)/4
    # PCP rule: a limb is correct when both ends are within half its length. Joint i sits at
    # x = 100 i, so limb (a, b) is 100 |a - b| long. Frames 0, 1, 3 (errors <= 21.25 mm) get all
    # 16 limbs; frame 2 (63.75 mm on every joint but the root) only those longer than 127.5 mm:
    # (0, 4), (0, 7), (8, 11), (8, 14).
    assert result["pcp3d"]["all"] == pytest.approx((3 * 16 + 4) / 64)
    assert result["pcp3d"]["upper_arms"] == pytest.approx(3 / 4)


def test_representation_floor_on_real_h36m_s9(shared_data):
    """Argmax at 64^3 with ground-truth root depth on real S9 poses: about 21.6 mm."""
    data = np.load(shared_data / "h36m_mocap_17j_10fps.npz")
    grid = volume.VoxelGrid(64, 64, 1000.0)
    errors = []
    keys = sorted(k for k in data.files if k.startswith("S9/"))
    for key in keys:
        poses = data[key][::10]
        for cam_id in ("54138969", "55011271", "58860488", "60457274"):
            cam = camera.Camera.from_h36m("S9", cam_id)
            for pose in poses:
                joints = cam.world_to_camera(pose)
                center, scale = crop.box_from_joints(cam.project(joints))
                vox = grid.encode(joints, K=cam.K, center=center, scale=scale)
                quantised = np.floor(vox) + 0.5
                lifted = grid.lift(quantised, K=cam.K, center=center, scale=scale,
                                   root_depth=joints[0, 2])
                errors.append(metrics.mpjpe(lifted[None], joints[None])[0])
    floor = float(np.mean(errors))
    assert 15.0 < floor < 30.0, floor


def test_eval_tool_oracle_from_the_command_line(data_dir, tmp_path):
    repo = REPO
    out = subprocess.run(
        [sys.executable, str(repo / "tools" / "eval.py"), f"--train_pattern={data_dir}/train-*",
         f"--val_pattern={data_dir}/val-*", "--input_size=64", "--depths=1,64", "--oracle=argmax",
         "--decode=argmax", f"--output_dir={tmp_path}"], capture_output=True, text=True,
        timeout=300, cwd=repo, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 0, out.stderr[-2000:]
    data = json.load(open(tmp_path / "metrics.json"))
    assert data["options"]["decode"] == "argmax" and data["source"] == "oracle (argmax)"
    report = (tmp_path / "report.md").read_text()
    assert "MPJPE" in report
    # what it prints is the report, title included (before, the title lost the options)
    title = "# tf_volpose evaluation: oracle (argmax), decode=argmax, root depth=gt\n"
    assert report.startswith(title) and out.stdout.startswith(title)
    assert out.stdout.splitlines()[-1] == f"wrote {tmp_path}/metrics.json, {tmp_path}/report.md"
    flipped = dict(data, options=dict(data["options"], flip_test=True, root_depth="bone_lengths"))
    assert evaluation.report_title(flipped) == ("tf_volpose evaluation: oracle (argmax), "
                                                "decode=argmax, flip test, root depth=bone_lengths")
    # a ground-truth root depth is said to be one, not reported as an error of 0.0 mm
    assert data["root_depth_error_mm"] == 0.0 and "Root depth error" not in report
    assert "Root depth: the ground truth's (`--root_depth=bone_lengths` estimates it)." in report
    fitted = dict(flipped, root_depth_error_mm=12.34)
    assert "Root depth error: 12.3 mm\n" in evaluation.report_markdown(fitted, "t")
    # a library error reaches the user as one line, not a traceback
    out = subprocess.run(
        [sys.executable, str(repo / "tools" / "eval.py"), f"--train_pattern={data_dir}/train-*",
         f"--val_pattern={data_dir}/val-*", "--input_size=64", "--depths=1,64", "--flip_prob=0",
         "--flip_test", "--oracle=argmax"], capture_output=True, text=True,
        timeout=300, cwd=repo, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1].startswith("error: flip_test averages")


def test_bone_lengths_and_reports_beside_records_on_a_tensorflow_file_system(data_dir, tmp_path):
    """Bone lengths are written beside the records and read back wherever the records are
    (ram:// standing in for a bucket); an evaluation on those records writes its report
    there too, with the same numbers as on the local copy."""
    bucket = f"ram://{tmp_path.name}"
    copy_to_file_system(bucket, sorted(data_dir.glob("*.tfrecord")))
    pattern = f"{bucket}/train-*"
    written = bone_lengths.write(pattern, joint_set=skeleton.H36M17)
    assert written == f"{bucket}/{bone_lengths.FILE}"
    config = _config(data_dir, tmp_path, train_pattern=pattern)
    assert bone_lengths.beside_records(config.train_pattern) == written
    local, _ = bone_lengths.compute(str(data_dir / "train-*"))
    np.testing.assert_allclose(bone_lengths.load(written), local, rtol=1e-12)
    options = evaluation.EvalOptions(oracle="argmax", decode="argmax")
    result, paths = evaluation.evaluate(config, options, output_dir=f"{bucket}/eval",
                                        file_pattern=f"{bucket}/val-*")
    assert paths == [f"{bucket}/eval/metrics.json", f"{bucket}/eval/report.md"]
    assert json.loads(tf.io.gfile.GFile(paths[0]).read())["mpjpe_mm"] == result["mpjpe_mm"]
    same, _ = evaluation.evaluate(config, options, output_dir=str(tmp_path / "eval"),
                                  file_pattern=str(data_dir / "val-*"))
    assert same["mpjpe_mm"] == result["mpjpe_mm"]


def test_an_output_dir_that_cannot_be_one_fails_before_the_predictions(data_dir, tmp_path,
                                                                      monkeypatch):
    """Before: a FailedPreconditionError traceback once the predictions were made (lost)."""
    (tmp_path / "afile").write_text("")
    config = _config(data_dir, tmp_path)
    monkeypatch.setattr(evaluation, "collect_predictions", None)  # must not be reached
    for output_dir in (tmp_path / "afile", tmp_path / "afile" / "eval"):
        with pytest.raises(ValueError, match="afile"):
            evaluation.evaluate(config, evaluation.EvalOptions(oracle="argmax"),
                                output_dir=str(output_dir))


@pytest.mark.parametrize("field, value, message", [
    ("decode", "median", "decode must be one of"), ("root_depth", "guess", "root_depth must be"),
    ("oracle", "truth", "oracle must be one of"),
    ("max_examples", -5, "max_examples must be >= 0 \\(0: all\\), got -5"),  # stopped early
    ("batch_size", 0, "batch_size must be positive, got 0")])
def test_eval_options_name_a_bad_field(field, value, message):
    with pytest.raises(ValueError, match=message):
        evaluation.EvalOptions(**{field: value})
