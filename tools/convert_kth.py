"""Converts KTH Multiview Football II (the release's sequence folders) into records.

    python tools/convert_kth.py --kth_root=KTH --output_dir=data/kth [--split=test] \
        [--units_to_mm=1000] [--distance_m=30]

KTH holds folders like ``player2/Sequence 1/`` (unzipped ``player2sequence1.zip``) with
``Camera 1..3/00001.png``, ``positions2d.txt``, ``positions3d.txt`` and ``cameras.txt``;
every such folder under --kth_root is converted. The cameras are affine: each record
gets the equivalent pinhole camera with the player --distance_m away (see
tf_volpose/data/kth.py). Check the printed median thigh length (about 400-500 mm for an
adult) to confirm --units_to_mm.
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import flags

from tf_volpose.data import kth
from tf_volpose.data.h36m import ConversionError

FLAGS = flags.FLAGS
flags.DEFINE_string("kth_root", None, "Folder holding the unzipped KTH sequence folders.")
flags.DEFINE_string("output_dir", None, "Where to write the records.")
flags.DEFINE_string("split", "test", "Record file prefix (KTH is used for evaluation).")
flags.DEFINE_float("units_to_mm", 1000.0, "Millimetres per unit of positions3d.txt.")
flags.DEFINE_float("distance_m", 30.0, "Depth given to the player by the equivalent pinhole camera.")
flags.DEFINE_bool("strict", False, "Fail on a missing frame instead of skipping it.")
flags.mark_flags_as_required(["kth_root", "output_dir"])


def main(argv):
    del argv

    def progress(sequence_dir, written):
        print(f"{sequence_dir}: {written} records so far", flush=True)

    summary = kth.convert(FLAGS.kth_root, FLAGS.output_dir, FLAGS.split, FLAGS.units_to_mm,
                          FLAGS.distance_m * 1000.0, FLAGS.strict, progress=progress)
    print(f"records written: {summary['written']}; skipped: {summary['skipped'] or 'none'}")
    print(f"median thigh length {summary['median_thigh_mm']:.0f} mm (expect ~400-500); "
          f"largest 2D annotation vs pinhole reprojection distance "
          f"{summary['max_reprojection_px']:.1f} px")


if __name__ == "__main__":
    _cli.run(main, errors=(ConversionError,))
