"""Converts motion capture (world-frame 3D joints) into pose-only records, one per
frame and Human3.6M camera, for network B of the decoupled model trained alone.

    python tools/convert_mocap.py --motion=../shared/data/h36m_mocap_17j_10fps.npz \
        --output_dir=data/h36m_mocap [--subjects=S1,S5,S6,S7,S8,S9,S11] [--every=1]
    python tools/train.py --flagfile=configs/h36m_lifting.cfg

Writes train-*.tfrecord (S1, S5, S6, S7, S8) and test-*.tfrecord (S9, S11) without
images, then bone_lengths.json (mean training bone lengths) beside them.
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import flags

from tf_volpose.data import h36m, mocap

FLAGS = flags.FLAGS
flags.DEFINE_string("motion", None, "The .npz of \"S<n>/<action>\" -> (frames, 17, 3) world mm.")
flags.DEFINE_string("output_dir", None, "Where to write the records.")
flags.DEFINE_list("subjects", list(h36m.TRAIN_SUBJECTS + h36m.TEST_SUBJECTS), "Subjects.")
flags.DEFINE_integer("every", 1, "Keep every N-th frame of the motion file.")
flags.mark_flags_as_required(["motion", "output_dir"])


def main(argv):
    del argv
    summary = mocap.convert(FLAGS.motion, FLAGS.output_dir, tuple(FLAGS.subjects), FLAGS.every,
                            progress=_cli.sequence_progress())
    _cli.report_conversion(summary, FLAGS.output_dir, skipped="views skipped")


if __name__ == "__main__":
    _cli.run(main, errors=(h36m.ConversionError,))
