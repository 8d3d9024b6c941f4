"""Stores the mean training bone lengths beside the records (for --root_depth=bone_lengths).

    python tools/bone_lengths.py --train_pattern='data/h36m/train-*'   # -> data/h36m/bone_lengths.json
"""

from absl import flags

from tf_volpose import evaluation, skeleton

import _cli  # tools/ is on sys.path when this script runs

FLAGS = flags.FLAGS
flags.DEFINE_string("train_pattern", None, "Glob of training records with 3D joints.")
flags.DEFINE_string("output", None, "Output JSON (default: bone_lengths.json beside the records).")
flags.DEFINE_string("joint_set", "h36m17", "Joint set of the records.")
flags.mark_flag_as_required("train_pattern")


def main(argv):
    del argv
    path = evaluation.write_bone_lengths(FLAGS.train_pattern, FLAGS.output,
                                         skeleton.get_joint_set(FLAGS.joint_set))
    print(f"wrote {path}")


if __name__ == "__main__":
    _cli.run(main)
