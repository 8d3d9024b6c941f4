"""Evaluates a checkpoint (or the representation oracle) and writes metrics.json and report.md.

    python tools/eval.py --checkpoint=runs/synthetic [--split=test]
        [--decode=argmax|local_softargmax|softargmax|quadratic] [--flip_test]
        [--root_depth=gt|bone_lengths]
    python tools/eval.py --flagfile=configs/synthetic.cfg --oracle=argmax   # no checkpoint needed

With --checkpoint, the run's config.json describes the model and data; training flags
given explicitly or in a --flagfile override its fields (e.g. --decode, one of argmax,
local_softargmax, softargmax, quadratic, the heatmap decoding). Without a checkpoint (or
without a config.json beside it) the flags alone do. --split=NAME reads NAME-*.tfrecord
beside the training records (default: --val_pattern).
"""

import os

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import app, flags

import train as train_tool
from tf_volpose import evaluation

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", "", "Checkpoint file or model directory (latest checkpoint).")
flags.DEFINE_string("split", "", "Split name, e.g. test (default: the config's val_pattern).")
flags.DEFINE_string("output_dir", None, "Where to write (default: the checkpoint's directory).")
flags.DEFINE_bool("flip_test", False, "Average the volume of the image and its mirror.")
flags.DEFINE_enum("root_depth", "gt", ["gt", "bone_lengths"], "Absolute root depth source.")
flags.DEFINE_string("bone_lengths", "", "Bone lengths JSON for --root_depth=bone_lengths (default: "
                    "the run's bone_lengths.json, else the one beside the training records; "
                    "tools/bone_lengths.py --checkpoint writes one calibrated to the model).")
flags.DEFINE_enum("oracle", "none", list(evaluation.ORACLES), "Feed ground truth instead of a model.")
flags.DEFINE_integer("max_examples", 0, "Evaluate at most this many records (0: all).")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = train_tool.config_for_checkpoint(FLAGS.checkpoint)  # without one: the flags
    pattern = None
    if FLAGS.split:
        pattern = os.path.join(os.path.dirname(config.train_pattern), f"{FLAGS.split}-*")
    options = evaluation.EvalOptions(decode=config.decode, flip_test=FLAGS.flip_test,
                                     root_depth=FLAGS.root_depth, oracle=FLAGS.oracle,
                                     bone_lengths=FLAGS.bone_lengths,
                                     max_examples=FLAGS.max_examples)
    if FLAGS.root_depth == "bone_lengths" and not FLAGS.bone_lengths:
        train_tool.point_at_calibrated_bone_lengths(FLAGS.checkpoint)
    result, paths = evaluation.evaluate(config, options, FLAGS.checkpoint or None,
                                        FLAGS.output_dir, pattern)
    print(evaluation.report_markdown(result, evaluation.report_title(result)))
    print("wrote " + ", ".join(paths))


if __name__ == "__main__":
    train_tool.define_config_flags()
    _cli.run(main)
