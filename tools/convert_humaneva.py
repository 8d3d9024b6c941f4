"""Converts HumanEva-I (prepared .npz files + frames) into records: train-* and validation-*.

    python tools/convert_humaneva.py --npz_3d=data_3d_humaneva15.npz --npz_2d=data_2d_humaneva15_gt.npz \
        --frames_root=FRAMES --output_dir=data/humaneva [--frames_pattern='{subject}/{action}/{camera}/{frame:06d}.jpg']
"""

import os

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import flags

from tf_volpose import bone_lengths, skeleton
from tf_volpose.data import humaneva
from tf_volpose.data.h36m import ConversionError

FLAGS = flags.FLAGS
flags.DEFINE_string("npz_3d", None, "positions_3d .npz (metres, world frame).")
flags.DEFINE_string("npz_2d", None, "positions_2d .npz (px, per camera).")
flags.DEFINE_string("frames_root", None, "Root of the frame images.")
flags.DEFINE_string("frames_pattern", humaneva.DEFAULT_FRAMES_PATTERN, "Frame path under frames_root.")
flags.DEFINE_string("output_dir", None, "Where to write the records.")
flags.DEFINE_bool("strict", False, "Fail on a missing frame instead of skipping it.")
flags.mark_flags_as_required(["npz_3d", "npz_2d", "frames_root", "output_dir"])


def main(argv):
    del argv

    def progress(subject, cam, summary):
        print(f"{subject} {cam}: {dict(summary['written'])} records so far", flush=True)

    summary = humaneva.convert(FLAGS.npz_3d, FLAGS.npz_2d, FLAGS.frames_root, FLAGS.output_dir,
                               FLAGS.frames_pattern, FLAGS.strict, progress=progress)
    print(f"records written: {summary['written']}; skipped: {summary['skipped'] or 'none'}")
    if summary["written"].get("train"):
        print("wrote " + bone_lengths.write(os.path.join(FLAGS.output_dir, "train-*"),
                                                       joint_set=skeleton.HUMANEVA15))


if __name__ == "__main__":
    _cli.run(main, errors=(ConversionError,))
