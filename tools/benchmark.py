"""Speed of the model, the loss, the input pipeline and serving on this machine.

    python tools/benchmark.py --sections=model,loss,pipeline,serving --output_json=bench.json
    python tools/benchmark.py --sections=decode --batch_size=8   # heatmaps -> joints, per method
    python tools/benchmark.py --sections=model --backbone=hg --depths=1,2,4,64 --batch_size=4
    python tools/benchmark.py --sections=export --checkpoint=runs/synthetic   # fp32 vs bf16 export
    python tools/benchmark.py --sections=model --reference_json=ref.json   # ratios to PyTorch (tools/pytorch_reference.py)

Prints a table per section as it ends and writes all numbers as JSON (--output_json).
Numbers depend on the machine: run the baseline in the same session before comparing.
"""

import json
import os
import tempfile

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

import numpy as np
from absl import app, flags

from tf_volpose import (_files, benchmark, bone_lengths, evaluation, export, hardware,
                        skeleton, training)

FLAGS = flags.FLAGS
SECTIONS = ("model", "loss", "decode", "pipeline", "serving", "export")
flags.DEFINE_list("sections", ["model", "loss", "decode", "pipeline"], ", ".join(SECTIONS) + ".")
flags.register_validator("sections", lambda names: set(names) <= set(SECTIONS),
                         f"--sections: each must be one of {', '.join(SECTIONS)}")
flags.DEFINE_string("backbone", "hg", "Backbone of the benchmarked model.")
flags.DEFINE_list("depths", ["1", "2", "4", "64"], "Depth resolutions per stack.")
flags.DEFINE_integer("features", 256, "Hourglass width.")
flags.DEFINE_integer("input_size", 256, "Input crop side, px.")
flags.DEFINE_integer("hourglass_depth", 4, "Poolings per hourglass.")
flags.DEFINE_integer("batch_size", 4, "Batch size.")
flags.DEFINE_list("precisions", None, "Model section precisions (default: fp32,bf16; fp32 "
                  "alone where bf16 would be emulated: no GPU and no bf16 instructions).")
flags.DEFINE_integer("repeats", 5, "Timed repetitions (median).")
flags.DEFINE_integer("pipeline_frames", 64, "1000x1000 JPEG records written for the pipeline section.")
flags.DEFINE_string("export_dir", None, "Serving section: an exported version directory "
                    "(default: export the benchmarked model, untrained).")
flags.DEFINE_string("checkpoint", None, "Export section: a trained run or checkpoint file "
                    "(its config.json, checkpoint and validation records); its requests come "
                    "from --val_pattern.")
flags.DEFINE_string("val_pattern", None, "Export section: records to send (default: the run's).")
flags.DEFINE_integer("export_images", 200, "Export section: records sent per pass.")
flags.DEFINE_string("reference_json", None, "Model section: the JSON of tools/pytorch_reference.py "
                    "(run on this machine, same network and batch size); adds the fp32 ratios.")
flags.DEFINE_string("output_json", None, "Where to write the numbers.")


def _placeholder_bone_lengths(config):
    """250 mm per bone: enough to export an untrained model for speed measurements."""
    return np.full(len(skeleton.get_joint_set(config.joint_set).bones), 250.0)


def _model_precisions():
    """(precisions, bf16_left_out): --precisions; by default fp32 and bf16, but fp32 alone
    where bfloat16 would be emulated, whose training step then takes minutes at the paper
    size only to be several times slower than fp32 (README)."""
    if FLAGS.precisions:
        return FLAGS.precisions, False
    if hardware.bf16_is_emulated():
        return ["fp32"], True
    return ["fp32", "bf16"], False


def main(argv):
    del argv
    if "export" in FLAGS.sections and FLAGS.checkpoint:
        training.checkpoint_path(FLAGS.checkpoint)  # a wrong path fails now, naming it
    config = training.TrainConfig(backbone=FLAGS.backbone, depths=tuple(map(int, FLAGS.depths)),
                                  features=FLAGS.features, input_size=FLAGS.input_size,
                                  hourglass_depth=FLAGS.hourglass_depth)
    precisions, bf16_left_out = _model_precisions()
    reference = None
    if FLAGS.reference_json:  # read and checked now, not after the model section's minutes
        if "model" not in FLAGS.sections or "fp32" not in precisions:
            raise ValueError("--reference_json compares fp32 speeds: it needs --sections=model "
                             "and fp32 in --precisions")
        reference = benchmark.load_reference(FLAGS.reference_json, config, FLAGS.batch_size)
    results = {"host": hardware.describe_host(),
               "config": {"backbone": config.backbone, "depths": list(config.depths),
                          "features": config.features, "input_size": config.input_size,
                          "hourglass_depth": config.hourglass_depth,
                          "batch_size": FLAGS.batch_size}}
    print(benchmark.format_section("host", results["host"]), flush=True)
    if "model" in FLAGS.sections:
        if bf16_left_out:
            print(f"note: {hardware.BF16_EMULATED_BECAUSE}: bf16 would be emulated (README, "
                  "Measured numbers), so the model section measures fp32 alone; "
                  "--precisions=fp32,bf16 measures both", flush=True)
        section = {}
        for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
            # the peak is the best product, each one's rate in the JSON
            rates = benchmark.matmul_rates(dtype)
            section[f"{name}_matmul_peak_gflops"] = max(rates.values())
            section[f"{name}_matmul_gflops"] = rates
        for precision in precisions:
            section[precision] = benchmark.model_speed(config, FLAGS.batch_size, precision,
                                                       FLAGS.repeats)
        fp32 = section.get("fp32")
        if fp32:
            achieved = fp32["gflops_per_image"] * fp32["forward_img_per_s"]
            section["fp32_forward_gflops"] = achieved
            section["fp32_roofline_fraction"] = achieved / section["fp32_matmul_peak_gflops"]
        if fp32 and "bf16" in section:
            section["bf16_forward_speedup"] = (section["bf16"]["forward_img_per_s"]
                                               / fp32["forward_img_per_s"])
        if reference is not None:
            section["vs_pytorch_reference"] = benchmark.reference_ratios(fp32, reference)
        results["model"] = section
        print(benchmark.format_section("model", section), flush=True)
    if "loss" in FLAGS.sections:
        # the benchmarked model's last stack (the defaults are issue #3's: 17 joints, 64^3)
        section = benchmark.loss_speed(FLAGS.batch_size, config.num_joints,
                                       config.xy_res, config.depths[-1],
                                       config.features, FLAGS.repeats)
        section["speedup"] = section["dense_ms"] / section["separable_ms"]
        section["head_fused_speedup"] = section["head_dense_ms"] / section["head_fused_ms"]
        results["loss"] = section
        print(benchmark.format_section("loss", section), flush=True)
    if "decode" in FLAGS.sections:
        section = benchmark.decode_speed(FLAGS.batch_size, config.num_joints, config.xy_res,
                                         config.depths[-1], FLAGS.repeats)
        results["decode"] = section
        print(benchmark.format_section("decode", section), flush=True)
    if "pipeline" in FLAGS.sections:
        with tempfile.TemporaryDirectory() as tmp:
            pattern = benchmark.write_large_frame_records(tmp, FLAGS.pipeline_frames)
            section = benchmark.pipeline_speed(pattern, FLAGS.batch_size, FLAGS.input_size)
        if "model" in results and "fp32" in results["model"]:
            section["ratio_to_training"] = (section["img_per_s"]
                                            / results["model"]["fp32"]["train_img_per_s"])
        results["pipeline"] = section
        print(benchmark.format_section("pipeline", section), flush=True)
    if "serving" in FLAGS.sections:
        with tempfile.TemporaryDirectory() as tmp:
            export_dir = FLAGS.export_dir
            if export_dir is None:
                model = training.build_model(config)
                export_dir = export.export_saved_model(model, config, os.path.join(tmp, "volpose"),
                                                       _placeholder_bone_lengths(config))
            image = export.warmup_image(480)
            section = benchmark.serving_speed(export_dir, image, [0.0, 0.0, 480.0, 480.0])
        results["serving"] = section
        print(benchmark.format_section("serving", section), flush=True)
    if "export" in FLAGS.sections:
        if FLAGS.checkpoint:
            run_config = training.load_config(training.run_directory(FLAGS.checkpoint))
            model, _ = evaluation.load_trained_model(run_config, FLAGS.checkpoint)
            lengths = bone_lengths.for_run(
                run_config.train_pattern, training.run_directory(FLAGS.checkpoint),
                joint_set=skeleton.get_joint_set(run_config.joint_set))[0]
        elif FLAGS.val_pattern:  # the benchmarked model, untrained: its speed only
            run_config, model = config, training.build_model(config)
            lengths = _placeholder_bone_lengths(config)
        else:
            raise app.UsageError("--sections=export needs --checkpoint (a trained run) or "
                                 "--val_pattern (records; the benchmarked model is then "
                                 "exported untrained, for speed only)")
        section = benchmark.export_precision_speed(
            model, run_config, lengths, FLAGS.val_pattern or run_config.val_pattern,
            FLAGS.batch_size, FLAGS.export_images)
        section["trained"] = bool(FLAGS.checkpoint)
        results["export"] = section
        print(benchmark.format_section("export", section), flush=True)
    if FLAGS.output_json:
        text = json.dumps(results, indent=2)
        print(f"wrote {_files.write_text_atomically(FLAGS.output_json, text)}")


if __name__ == "__main__":
    _cli.run(main)
