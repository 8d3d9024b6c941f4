"""Exports a checkpoint as a TF Serving SavedModel: exports/volpose/<N>/.

    python tools/export.py --checkpoint=runs/synthetic --export_base=exports/volpose [--version=N]
        [--precision=fp32|bf16] [--flagfile=CFG]

The model is the run's config.json (flags given explicitly or in a --flagfile
override its fields). Root depth fits the mean training bone lengths (the run's
bone_lengths.json, which training stores; for older runs, bone_lengths.json beside
the training records, written on the fly if missing), or the lengths in
--bone_lengths, e.g. ones calibrated to this model by tools/bone_lengths.py
--checkpoint (README: root depth from bone lengths).
"""

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

from absl import app, flags

import train as train_tool
from tf_volpose import evaluation, export, hardware

FLAGS = flags.FLAGS
flags.DEFINE_string("checkpoint", None, "Checkpoint file or model directory.")
flags.DEFINE_string("export_base", "exports/volpose", "Base directory of numbered versions.")
flags.DEFINE_integer("version", None, "Version number (default: highest existing + 1).")
flags.DEFINE_enum("precision", "fp32", list(export.PRECISIONS),
                  "Compute precision of the export (bf16: bfloat16 except the float32 heads).")
flags.DEFINE_string("bone_lengths", "", "Bone lengths JSON the root-depth fit matches (default: "
                    "the run's bone_lengths.json, else the one beside the training records; "
                    "tools/bone_lengths.py --checkpoint writes one calibrated to the model).")
flags.DEFINE_float("fov_deg", export.DEFAULT_FOV_DEG, "Field of view of the default intrinsics.")
flags.DEFINE_string("serving_decode", None, "Heatmap decoding inside the graph (default: "
                    "local_softargmax; softargmax for a run trained with --loss=integral).")
flags.mark_flag_as_required("checkpoint")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = train_tool.config_for_checkpoint(FLAGS.checkpoint)
    lengths, lengths_path = train_tool.bone_lengths_for_checkpoint(config, FLAGS.checkpoint,
                                                                  FLAGS.bone_lengths)
    model, source = evaluation.load_trained_model(config, FLAGS.checkpoint)
    path = export.export_saved_model(model, config, FLAGS.export_base, lengths, FLAGS.version,
                                     FLAGS.precision, FLAGS.serving_decode, FLAGS.fov_deg,
                                     provenance={"checkpoint": source,
                                                 "bone_lengths_file": lengths_path})
    print(f"exported {source} ({FLAGS.precision}) to {path}; root depth fits the bone lengths "
          f"in {lengths_path}")
    if FLAGS.precision == "bf16" and hardware.cpu_has_bf16_instructions() is False:
        print("note: this CPU has no avx512_bf16/amx_bf16 instructions; on such CPUs a bf16 "
              "export runs slower than fp32 (README: bf16 export). Serve it where they exist.")


if __name__ == "__main__":
    train_tool.define_config_flags()
    _cli.run(main)
