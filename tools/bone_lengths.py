"""Writes the bone lengths that the root-depth fit (--root_depth=bone_lengths, exports) matches.

    python tools/bone_lengths.py --train_pattern='data/h36m/train-*'   # -> data/h36m/bone_lengths.json
    python tools/bone_lengths.py --checkpoint=runs/h36m [--max_examples=1000]
        # -> runs/h36m/model_bone_lengths.json, calibrated to the model's own skeletons

Without --checkpoint: the mean bone lengths of the records' 3D skeletons (training
copies them into its run directory, and tools/eval.py, tools/export.py and
tools/predict.py use that copy by default). With --checkpoint: the model
runs over its training records (--train_pattern to choose others) and the file
holds the lengths its decoded skeletons have at the true root depth, scaled so
that the fit is unbiased there; pass it as --bone_lengths to tools/export.py and
tools/eval.py (README: root depth from bone lengths).
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import app, flags

import train as train_tool
from tf_volpose import bone_lengths, evaluation, skeleton

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "", "Calibrate to this trained run (checkpoint file or "
                                      "model directory) instead of averaging the records.")
flags.DEFINE_string("output", None, "Output JSON (default: bone_lengths.json beside the records; "
                                    "with --checkpoint, model_bone_lengths.json in the run).")
flags.DEFINE_integer("max_examples", 1000, "With --checkpoint: records to run (0: all).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = train_tool.config_for_checkpoint(FLAGS.checkpoint)  # without one: the flags
    if FLAGS.checkpoint:
        path, scale = evaluation.write_model_bone_lengths(
            config, FLAGS.checkpoint, FLAGS.output, max_examples=FLAGS.max_examples)
        print(f"wrote {path} (the model's skeletons at the true root depth, x{scale:.3f} "
              f"for an unbiased fit on {config.train_pattern})")
        return
    if not config.train_pattern:
        raise ValueError("give --train_pattern (records to average) or --checkpoint (a run to "
                         "calibrate to)")
    path = bone_lengths.write(config.train_pattern, FLAGS.output,
                              skeleton.get_joint_set(config.joint_set))
    print(f"wrote {path}")


if __name__ == "__main__":
    train_tool.define_config_flags()
    _cli.run(main)
