"""The benchmark functions run and report sane values on tiny sizes (no timing assertions)."""

import numpy as np

from tf_volpose import benchmark, training, volume


def test_model_and_loss_sections_report_positive_numbers():
    config = training.TrainConfig(features=8, input_size=64, depths=(1, 4))
    result = benchmark.model_speed(config, batch_size=2, repeats=1)
    assert result["forward_img_per_s"] > 0 and result["train_img_per_s"] > 0
    # FLOPs from the graph: more than the 7x7 stem convolution alone (2*7*7*3*c per pixel)
    assert result["gflops_per_image"] > 2 * 7 * 7 * 3 * 2 * 32 * 32 / 1e9
    loss = benchmark.loss_speed(batch_size=1, joints=2, size=8, depth=8, features=4, repeats=1)
    assert all(loss[f"{name}_ms"] > 0 for name in ("separable", "dense", "head_dense",
                                                    "head_separable", "head_fused"))
    assert loss["dense_target_bytes"] == 8 * 8 * 2 * 8 * 4
    decode = benchmark.decode_speed(batch_size=1, joints=2, size=8, depth=4, repeats=1)
    assert all(decode[f"{m}_ms"] > 0 for m in volume.DECODE_METHODS)


def test_pipeline_section_on_large_frames(tmp_path):
    pattern = benchmark.write_large_frame_records(str(tmp_path), count=4, size=500)
    result = benchmark.pipeline_speed(pattern, batch_size=2, input_size=64, batches=3)
    assert result["img_per_s"] > 0 and np.isfinite(result["img_per_s"])


def test_export_section_compares_fp32_and_bf16_exports(tmp_path):
    import pytest
    from tf_volpose.data import synthetic
    config = training.TrainConfig(features=8, input_size=64, depths=(1, 4), hourglass_depth=2)
    synthetic.generate(str(tmp_path), num_train=0, num_val=6, seed=3)
    model = training.build_model(config)
    result = benchmark.export_precision_speed(model, config, np.full(16, 250.0),
                                              str(tmp_path / "val-*"), batch_size=4, repeats=1)
    assert result["images"] == 6 and result["fp32_img_per_s"] > 0
    assert result["bf16_speedup"] == pytest.approx(result["bf16_img_per_s"]
                                                   / result["fp32_img_per_s"])
    for key in ("joint_diff_abs_mm", "joint_diff_root_relative_mm", "joint_diff_voxels",
                "joint_diff_same_root_depth_mm", "root_depth_diff_mm"):
        d = result[key]
        assert 0 <= d["median"] <= d["p95"] <= d["max"] and 0 <= d["mean"] <= d["max"]
    for key in ("joint_diff_abs_mm", "joint_diff_root_relative_mm",
                "joint_diff_same_root_depth_mm"):
        assert 0 <= result[key]["within_1mm"] <= 1
    # synthetic records have 3D ground truth; by the triangle inequality the two exports'
    # MPJPEs differ by at most their mean root-relative distance
    mpjpe = result["mpjpe_root_relative_mm"]
    assert set(mpjpe) == {"fp32", "bf16"} and all(np.isfinite(v) and v > 0 for v in mpjpe.values())
    assert abs(mpjpe["fp32"] - mpjpe["bf16"]) <= result["joint_diff_root_relative_mm"]["mean"] + 1e-3
    with pytest.raises(ValueError, match="no files match"):
        benchmark.export_precision_speed(model, config, np.full(16, 250.0),
                                         str(tmp_path / "none-*"))
