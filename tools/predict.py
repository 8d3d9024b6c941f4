"""The paper's Figure 4 for any photo: 2D skeleton, 3D skeleton from the camera and a novel view.

    python tools/predict.py --image=photo.jpg --saved_model=exports/volpose/1 --output=out.png
    python tools/predict.py --image=photo.jpg --checkpoint=runs/synthetic \
        --output=out.png --output_json=out.json [--box=x,y,w,h]

--saved_model takes an export version or its export base (then the newest version).
With --checkpoint the model is the run's config.json (training flags or a --flagfile
override its fields), and the root depth fits the run's bone lengths (or --bone_lengths),
as tools/export.py bakes them into an export.

Without --box the whole image is the box. Without --focal the default intrinsics
of the export are used: focal = max(W, H) / (2 tan(50 deg / 2)), principal point at the
image centre. Left joints are red, right green.
"""

import json

import _cli  # first, before TensorFlow loads; tools/ is on sys.path when this script runs

import tensorflow as tf
from absl import app, flags

import train as train_tool
from tf_volpose import _files, camera, crop, evaluation, export, skeleton, visualize

FLAGS = flags.FLAGS
flags.DEFINE_string("image", None, "Input image (JPEG or PNG).")
flags.DEFINE_list("box", None, "x,y,w,h of the person in px (default: the whole image).")
flags.DEFINE_string("saved_model", None, "An export version directory, or an export base "
                    "(its newest version).")
flags.DEFINE_string("checkpoint", None, "Checkpoint or model directory (its config.json "
                    "describes the model).")
flags.DEFINE_list("focal", None, "fx,fy in px (default: the documented field of view).")
flags.DEFINE_string("bone_lengths", "", "With --checkpoint: the bone lengths JSON the "
                    "root-depth fit matches (default: the run's, as tools/export.py).")
flags.DEFINE_string("output", "prediction.png", "Output picture (.png, .jpg).")
flags.DEFINE_string("output_json", None, "Optional JSON with the joints.")
flags.mark_flag_as_required("image")


def load_predictor():
    if bool(FLAGS.saved_model) == bool(FLAGS.checkpoint):
        raise app.UsageError("give exactly one of --saved_model or --checkpoint")
    if FLAGS.saved_model:
        if FLAGS.bone_lengths:
            raise ValueError("--bone_lengths is for --checkpoint: an export's bone lengths are "
                             "baked into it (tools/export.py --bone_lengths)")
        loaded, directory = export.load_export(FLAGS.saved_model)
        if directory != FLAGS.saved_model:
            print(f"using {directory}, the newest version under {FLAGS.saved_model}")
        return loaded.signatures["serving_default"], loaded.signatures["with_intrinsics"], loaded
    config = train_tool.config_for_checkpoint(FLAGS.checkpoint)
    lengths, _ = train_tool.bone_lengths_for_checkpoint(config, FLAGS.checkpoint,
                                                        FLAGS.bone_lengths)
    model, _ = evaluation.load_trained_model(config, FLAGS.checkpoint)
    module = export.ServingModule(model, config, lengths)
    return module.serving_default, module.with_intrinsics, module


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    # upright pixels for both the graph and the figure (phone photos carry EXIF rotations)
    data, image = crop.read_upright_image(FLAGS.image)
    h, w = image.shape[:2]
    # checked before loading anything: the graph would refuse them too, but with a traceback
    box = crop.xywh_or_whole_image(FLAGS.box, (w, h))
    focal = camera.focal_lengths(FLAGS.focal) if FLAGS.focal else None
    visualize.check_image_path(FLAGS.output)
    default, with_intrinsics, _ = load_predictor()
    inputs = dict(image_bytes=tf.constant([data]), box=tf.constant([box], tf.float32))
    if focal:
        out = with_intrinsics(**inputs, focal=tf.constant([focal], tf.float32),
                              principal_point=tf.constant([[w / 2.0, h / 2.0]], tf.float32))
    else:
        out = default(**inputs)
    joints_3d = out["joints_3d_mm"].numpy()[0]
    joints_2d = out["joints_2d_px"].numpy()[0]
    joint_set = skeleton.joint_set_with(joints_3d.shape[0])
    figure = visualize.pose_figure(image, joints_2d, joints_3d, joint_set)
    print(f"wrote {visualize.write_image(FLAGS.output, figure)}")
    if FLAGS.output_json:
        _files.write_text_atomically(FLAGS.output_json, json.dumps(
            {"joint_names": list(joint_set.joint_names),
             "joints_3d_mm": joints_3d.tolist(), "joints_2d_px": joints_2d.tolist(),
             "confidence": out["confidence"].numpy()[0].tolist(),
             "root_depth_mm": float(out["root_depth_mm"].numpy()[0]), "box": box}, indent=1))
        print(f"wrote {FLAGS.output_json}")


if __name__ == "__main__":
    train_tool.define_config_flags()
    _cli.run(main)
