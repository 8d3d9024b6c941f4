"""Renders the embedded synthetic dataset.

    python tools/make_synthetic.py --output_dir=data/synthetic --num_train=20000 --num_val=500 --seed=0
    python tools/make_synthetic.py ... --motion=../shared/data/h36m_mocap_17j_10fps.npz  # real motion
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import flags
import keras

from tf_volpose.data import synthetic

FLAGS = flags.FLAGS
flags.DEFINE_string("output_dir", None, "Where to write train-*.tfrecord and val-*.tfrecord.")
flags.DEFINE_integer("num_train", 20000, "Training records.")
flags.DEFINE_integer("num_val", 500, "Validation records.")
flags.DEFINE_integer("seed", 0, "Random seed; the same seed gives byte-identical records.")
flags.DEFINE_string("motion", None, "Optional .npz of (frames, 17, 3) world-mm poses.")
flags.DEFINE_integer("workers", None, "Rendering processes (default: all cores).")
flags.DEFINE_integer("examples_per_shard", 500, "Records per shard.")
flags.mark_flag_as_required("output_dir")


def main(argv):
    del argv
    bars = {}

    def progress(split, done, total):
        if split not in bars:
            print(f"rendering {total} {split} records")
            bars[split] = keras.utils.Progbar(total, unit_name="record")
        if done % 50 == 0 or done == total:
            bars[split].update(done)

    try:
        counts = synthetic.generate(FLAGS.output_dir, FLAGS.num_train, FLAGS.num_val, FLAGS.seed,
                                    FLAGS.motion, FLAGS.examples_per_shard, FLAGS.workers,
                                    progress)
    except BaseException:
        if bars:
            print(flush=True)  # end the bar's line: an error (a full disk) starts its own
        raise
    print(f"wrote {counts} records to {FLAGS.output_dir}")


if __name__ == "__main__":
    _cli.run(main)
