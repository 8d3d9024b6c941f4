"""Converts MPII (stacked-hourglass annotation .h5 + image folder) into 2D records.

    python tools/convert_mpii.py --annotations=annot/train.h5 --images=images --output_dir=data/mpii --split=train
    python tools/convert_mpii.py --annotations=annot/valid.h5 --images=images --output_dir=data/mpii --split=valid
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

import keras
from absl import flags

from tf_volpose.data import mpii
from tf_volpose.data.h36m import ConversionError

FLAGS = flags.FLAGS
flags.DEFINE_string("annotations", None, "The hourglass annotation .h5 file.")
flags.DEFINE_string("images", None, "MPII image folder.")
flags.DEFINE_string("output_dir", None, "Where to write the records.")
flags.DEFINE_string("split", "train", "Record file prefix.")
flags.DEFINE_bool("strict", False, "Fail on a missing image instead of skipping it.")
flags.mark_flags_as_required(["annotations", "images", "output_dir"])


def main(argv):
    del argv
    bar = {}

    def progress(done, total):
        bar.setdefault("bar", keras.utils.Progbar(total, unit_name="image"))
        if done % 100 == 0 or done == total:
            bar["bar"].update(done)

    summary = mpii.convert(FLAGS.annotations, FLAGS.images, FLAGS.output_dir, FLAGS.split,
                           FLAGS.strict, progress=progress)
    print(f"records written: {summary['written']}; skipped: {summary['skipped'] or 'none'}")


if __name__ == "__main__":
    _cli.run(main, errors=(ConversionError,))
