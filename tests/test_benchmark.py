"""The benchmark functions run and report sane values on tiny sizes (no timing assertions)."""

import ast
import json
import re
import sys

import numpy as np
import pytest

from tests.conftest import REPO, assert_one_line_errors, run_scripts
from tf_volpose import benchmark, hardware, training, volume


def test_loss_and_decode_sections_report_positive_numbers():
    loss = benchmark.loss_speed(batch_size=1, joints=2, size=8, depth=8, features=4, repeats=1)
    assert all(loss[f"{name}_ms"] > 0 for name in ("separable", "dense", "head_dense",
                                                    "head_separable", "head_fused"))
    assert loss["dense_target_bytes"] == 8 * 8 * 2 * 8 * 4
    decode = benchmark.decode_speed(batch_size=1, joints=2, size=8, depth=4, repeats=1)
    assert all(decode[f"{m}_ms"] > 0 for m in volume.DECODE_METHODS)


def test_matmul_rates_time_each_shape_in_tensorflow_and_float32_in_numpy():
    shapes = ((64, 32, 16), (8, 8, 8))
    rates = benchmark.matmul_rates("float32", shapes, repeats=1)
    assert set(rates) == {"tf_64x32x16", "numpy_64x32x16", "tf_8x8x8", "numpy_8x8x8"}
    assert all(np.isfinite(r) and r > 0 for r in rates.values())
    # NumPy has no bfloat16 BLAS: TensorFlow's products alone
    assert set(benchmark.matmul_rates("bfloat16", shapes, repeats=1)) == {"tf_64x32x16",
                                                                         "tf_8x8x8"}


def test_benchmark_tool_model_section_measures_bf16_where_this_machine_computes_it(tmp_path):
    """By default the model section measures fp32 and bf16, but fp32 alone where bfloat16
    would be emulated (on a 2-core AVX2 host its training step at the paper size took 244 s
    of benchmark to come out at 0.14x fp32), saying so. The roofline divides by the best
    of the matmul products, each in the JSON."""
    (out,) = run_scripts([("tools/benchmark.py", [
        "--sections=model", "--features=8", "--input_size=64", "--hourglass_depth=1",
        "--depths=1,4", "--batch_size=2", "--repeats=1", f"--output_json={tmp_path / 'b.json'}"])])
    assert out.returncode == 0, out.stderr[-2000:]
    emulated = hardware.bf16_is_emulated()
    written = json.loads((tmp_path / "b.json").read_text())
    assert written["config"]["hourglass_depth"] == 1
    section = written["model"]
    assert ("bf16" in section) == (not emulated)
    assert ("bf16 would be emulated" in out.stdout) == emulated
    fp32 = section["fp32"]
    assert fp32["forward_img_per_s"] > 0 and fp32["train_img_per_s"] > 0
    # FLOPs from the graph: more than the 7x7 stem convolution alone (2*7*7*3*c per pixel)
    assert fp32["gflops_per_image"] > 2 * 7 * 7 * 3 * 2 * 32 * 32 / 1e9  # 2 = 8 / 4 channels
    for name in ("fp32", "bf16"):
        rates = section[f"{name}_matmul_gflops"]
        assert len(rates) >= len(benchmark.PEAK_SHAPES)
        assert section[f"{name}_matmul_peak_gflops"] == max(rates.values())
    assert section["fp32_roofline_fraction"] == pytest.approx(
        fp32["forward_img_per_s"] * fp32["gflops_per_image"] / max(
            section["fp32_matmul_gflops"].values()))


def test_pipeline_section_on_large_frames(tmp_path):
    pattern = benchmark.write_large_frame_records(str(tmp_path), count=4, size=500)
    result = benchmark.pipeline_speed(pattern, batch_size=2, input_size=64, batches=3)
    assert result["img_per_s"] > 0 and np.isfinite(result["img_per_s"])


def test_export_section_compares_fp32_and_bf16_exports(tmp_path):
    from tf_volpose.data import synthetic
    config = training.TrainConfig(features=8, input_size=64, depths=(1, 4), hourglass_depth=1)
    synthetic.generate(str(tmp_path), num_train=0, num_val=6, seed=3)
    model = training.build_model(config)
    result = benchmark.export_precision_speed(model, config, np.full(16, 250.0),
                                              str(tmp_path / "val-*"), batch_size=4, repeats=1)
    assert result["images"] == 6 and result["fp32_img_per_s"] > 0
    assert result["fp32_export_s"] > 0 and result["bf16_export_s"] > 0
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


def _reference(**changes):
    """A reference JSON as tools/pytorch_reference.py writes it, numbers by hand."""
    reference = {"torch": "2.x", "threads": 2, "backbone": "hg", "batch_size": 4,
                 "depths": [1, 2, 4, 64], "features": 256, "joints": 17, "input_size": 256,
                 "params": 13231415,
                 "forward_img_per_s_nchw": 2.0, "forward_img_per_s_channels_last": 4.0,
                 "forward_img_per_s": 4.0, "train_img_per_s_nchw": 1.0,
                 "train_img_per_s_channels_last": 1.25, "train_img_per_s": 1.25}
    reference.update(changes)
    return reference


def test_reference_ratios_divide_by_each_memory_format(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(_reference()))
    reference = benchmark.load_reference(str(path), training.TrainConfig(), 4)
    ratios = benchmark.reference_ratios({"forward_img_per_s": 5.0, "train_img_per_s": 2.5},
                                        reference)
    assert ratios == pytest.approx({"forward": 1.25, "forward_vs_nchw": 2.5,
                                    "forward_vs_channels_last": 1.25, "train": 2.0,
                                    "train_vs_nchw": 2.5, "train_vs_channels_last": 2.0})
    # a file from before the script recorded its hourglass depth measured 4, the only one
    with pytest.raises(ValueError, match="measured hourglass_depth=4, the benchmarked model "
                                         "has hourglass_depth=1"):
        benchmark.load_reference(str(path), training.TrainConfig(hourglass_depth=1), 4)


@pytest.mark.parametrize("changes, message", [
    ({"features": 64}, "measured features=64, the benchmarked model has features=256"),
    ({"depths": [1, 64]}, "measured depths=[1, 64]"),
    ({"batch_size": 8}, "measured batch_size=8"),
    ({"input_size": 128}, "measured input_size=128"),
    ({"backbone": "hg-stacked"}, "measured backbone='hg-stacked'"),
    ({"hourglass_depth": 2}, "measured hourglass_depth=2, the benchmarked model has "
                             "hourglass_depth=4"),
    ({"train_img_per_s": None, "forward_img_per_s": None}, "has no 'forward_img_per_s'"),
])
def test_a_reference_of_another_network_is_refused(tmp_path, changes, message):
    reference = {k: v for k, v in _reference(**changes).items() if v is not None}
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(reference))
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        benchmark.load_reference(str(path), training.TrainConfig(), 4)
    assert str(path) in str(error.value)


def test_a_reference_measured_on_another_cpu_is_refused(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(_reference(cpu="AMD EPYC 9B14")))
    with pytest.raises(ValueError, match=re.escape(
            "was measured on another CPU ('AMD EPYC 9B14'; this machine's: "
            "'Intel(R) Xeon(R) Processor')")):
        benchmark.load_reference(str(path), training.TrainConfig(), 4,
                                 cpu="Intel(R) Xeon(R) Processor")
    assert benchmark.load_reference(str(path), training.TrainConfig(), 4,
                                    cpu="AMD EPYC 9B14")["cpu"] == "AMD EPYC 9B14"
    # files written before the script recorded its CPU: taken as they are
    path.write_text(json.dumps(_reference()))
    assert "cpu" not in benchmark.load_reference(str(path), training.TrainConfig(), 4,
                                                 cpu="AMD EPYC 9B14")


def test_benchmark_tool_checks_the_reference_before_measuring(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("not json")
    wrong = tmp_path / "ref.json"
    wrong.write_text(json.dumps(_reference(features=64)))
    assert_one_line_errors("tools/benchmark.py", [
        ([f"--reference_json={tmp_path / 'missing.json'}", "--sections=model"], "missing.json"),
        ([f"--reference_json={text}", "--sections=model"], "cannot read the PyTorch reference"),
        ([f"--reference_json={wrong}", "--sections=model"], "measured features=64"),
        ([f"--reference_json={wrong}", "--sections=loss"], "needs --sections=model"),
    ])


def test_benchmark_tool_loss_and_decode_sections_measure_the_models_last_stack(tmp_path):
    """Both sections take the benchmarked model's joints, heatmap side, last depth and
    (the loss) width: the loss section used to measure 256 features at 64^3 whatever
    the flags said."""
    (out,) = run_scripts([("tools/benchmark.py", [
        "--sections=loss,decode", "--features=4", "--input_size=64", "--depths=1,8",
        "--batch_size=1", "--repeats=1", f"--output_json={tmp_path / 'b.json'}"])])
    assert out.returncode == 0, out.stderr[-2000:]
    results = json.loads((tmp_path / "b.json").read_text())
    assert {k: results["loss"][k] for k in ("joints", "size", "depth", "features")} == {
        "joints": 17, "size": 16, "depth": 8, "features": 4}
    assert results["loss"]["dense_target_bytes"] == 16 * 16 * 17 * 8 * 4
    assert {k: results["decode"][k] for k in ("joints", "size", "depth")} == {
        "joints": 17, "size": 16, "depth": 8}
    # what it prints is a table per section, not the JSON (before: unlabelled JSON blocks)
    lines = out.stdout.splitlines()
    assert "== loss" in lines and "== decode" in lines
    decode = dict(line.split() for line in lines[lines.index("== decode") + 1:-1])
    assert {k: decode[k] for k in ("batch_size", "joints", "size", "depth")} == {
        "batch_size": "1", "joints": "17", "size": "16", "depth": "8"}
    assert float(decode["argmax_ms"]) == pytest.approx(results["decode"]["argmax_ms"], rel=1e-3)
    assert lines[-1] == f"wrote {tmp_path / 'b.json'}"
    # the machine comes first, in both: the numbers mean little without it
    assert lines[0] == "== host" and results["host"] == hardware.describe_host()


def test_format_section_flattens_nested_numbers():
    section = {"fp32": {"forward_img_per_s": 5.31234, "gflops": 72.0}, "batch": 4,
               "precisions": ["fp32", "bf16"], "speedup": 1.0 / 3.0}
    assert benchmark.format_section("model", section) == "\n".join([
        "== model",
        "  fp32.forward_img_per_s  5.312",
        "  fp32.gflops             72",
        "  batch                   4",
        '  precisions              ["fp32", "bf16"]',
        "  speedup                 0.3333"])


def test_pytorch_reference_is_the_same_network(tmp_path):
    """tools/pytorch_reference.py builds this project's ``hg`` (with convolution biases, as
    Newell's code): the same weights, layer for layer, so its speed is a fair reference."""
    torch = pytest.importorskip("torch")
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import pytorch_reference
    finally:
        sys.path.remove(str(REPO / "tools"))
    for depths, features in (((1, 4), 16), ((2, 1, 8), 32)):
        ours = training.build_model(training.TrainConfig(
            depths=depths, features=features, input_size=64, conv_bias=True))
        theirs = pytorch_reference.StackedHourglass([17 * d for d in depths], features)
        keras_shapes = sorted(tuple(w.shape) for w in ours.weights)
        torch_shapes = sorted(
            tuple(p.shape[2:]) + tuple(p.shape[1::-1]) if p.dim() == 4 else tuple(p.shape)
            for p in pytorch_reference.weight_tensors(theirs))
        assert keras_shapes == torch_shapes
        assert pytorch_reference.count_weights(theirs) == ours.count_params()
        outputs = theirs.eval()(torch.zeros(1, 3, 64, 64))
        assert [tuple(o.shape) for o in outputs] == [(1, 17 * d, 16, 16) for d in depths]
    # what the script writes is what tools/benchmark.py --reference_json reads
    path = tmp_path / "ref.json"
    path.write_text(json.dumps(pytorch_reference.measure((1, 4), 17, 16, 64, 2, repeats=1)))
    config = training.TrainConfig(depths=(1, 4), features=16, input_size=64)
    reference = benchmark.load_reference(str(path), config, 2)
    ratios = benchmark.reference_ratios({"forward_img_per_s": 1.0, "train_img_per_s": 1.0},
                                        reference)
    assert set(ratios) == {"forward", "train", "forward_vs_nchw", "forward_vs_channels_last",
                           "train_vs_nchw", "train_vs_channels_last"}


def test_pytorch_reference_imports_neither_tensorflow_nor_this_project():
    """It runs in a PyTorch-only environment (its docstring's two commands)."""
    tree = ast.parse((REPO / "tools" / "pytorch_reference.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    assert imported <= {"json", "os", "statistics", "sys", "timeit", "torch", "absl"}, imported
