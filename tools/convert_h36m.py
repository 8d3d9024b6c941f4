"""Converts Human3.6M (official release layout) into tf_volpose records.

    python tools/convert_h36m.py --h36m_root=ROOT --output_dir=data/h36m \
        [--frames_root=FRAMES] [--subjects=S1,S5,S6,S7,S8,S9,S11] [--every=5] [--strict]

Writes train-*.tfrecord (S1, S5, S6, S7, S8) and test-*.tfrecord (S9, S11), then
bone_lengths.json (mean training bone lengths) beside them.
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import flags

from tf_volpose.data import h36m

FLAGS = flags.FLAGS
flags.DEFINE_string("h36m_root", None, "Root of the official release (S1/MyPoseFeatures/...).")
flags.DEFINE_string("output_dir", None, "Where to write the records.")
flags.DEFINE_string("frames_root", None, "Extracted frames root (default: decode the videos).")
flags.DEFINE_list("subjects", list(h36m.TRAIN_SUBJECTS + h36m.TEST_SUBJECTS), "Subjects.")
flags.DEFINE_integer("every", 5, "Keep every N-th frame (5: 50 -> 10 fps).")
flags.DEFINE_bool("strict", False, "Fail on a missing image instead of skipping the frame.")
flags.mark_flags_as_required(["h36m_root", "output_dir"])


def main(argv):
    del argv
    summary = h36m.convert(FLAGS.h36m_root, FLAGS.output_dir, FLAGS.frames_root,
                           tuple(FLAGS.subjects), FLAGS.every, FLAGS.strict,
                           progress=_cli.sequence_progress())
    _cli.report_conversion(summary, FLAGS.output_dir)


if __name__ == "__main__":
    _cli.run(main, errors=(h36m.ConversionError,))
