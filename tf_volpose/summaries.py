"""TensorBoard summaries of a training run: step scalars, validation, hyperparameters, images.

Each ``write_*`` function writes to the default summary writer (``with
writer.as_default(step=...)``), so the training loop decides where and when;
this module decides what and under which tag:

* ``loss/total``, ``loss/stack<i>``, ``learning_rate``, ``perf/steps_per_sec``,
  ``perf/images_per_sec`` (:func:`write_step_scalars`);
* ``val/mpjpe_voxels`` and, with 3D ground truth, ``val/mpjpe_mm_gt_root``
  (:func:`write_validation`);
* ``input_skeletons``: input crops with the predicted (filled) and ground-truth
  (hollow) 2D skeletons, and per volumetric stack ``heatmaps_xy/stack<i>`` and
  ``heatmaps_xz/stack<i>``, the heatmaps' max-projections (:func:`training_images`);
* the run's hyperparameters for TensorBoard's HParams tab (:func:`write_hparams`).
"""

import dataclasses

import numpy as np
import tensorflow as tf

from tf_volpose import visualize


def training_images(images, predicted_px, true_px, stack_heatmaps, joint_set, max_images=3):
    """The image summaries of one batch, as ``name -> (N, H, W, 3)`` uint8.

    Args:
      images: ``(B, S, S, 3)`` float [0, 1] input crops.
      predicted_px, true_px: ``(B, J, 2)`` joints in crop pixels (x, y).
      stack_heatmaps: per stack ``(B, H, W, J*d)`` heatmaps, joint-major; empty
        for models without heatmaps (the regression baseline).
      joint_set: the :class:`skeleton.JointSet` of ``J`` joints.
      max_images: at most this many of the batch (``N = min(B, max_images)``).
    """
    images, predicted_px, true_px = (np.asarray(a)[:max_images]
                                     for a in (images, predicted_px, true_px))
    crops = [visualize.draw_skeleton_2d(
        visualize.draw_skeleton_2d(image, truth, joint_set, thickness=1, dashed=True),
        predicted, joint_set) for image, predicted, truth in zip(images, predicted_px, true_px)]
    result = {"input_skeletons": np.stack(crops)}
    for s, heatmaps in enumerate(stack_heatmaps):
        heatmaps = np.asarray(heatmaps)[:max_images]
        xy, xz = zip(*(visualize.heatmap_projections(h, joint_set.num_joints) for h in heatmaps))
        result[f"heatmaps_xy/stack{s}"] = np.stack(xy)
        result[f"heatmaps_xz/stack{s}"] = np.stack(xz)
    return result


def write_images(named_images):
    """Writes :func:`training_images`' images (every image of each tag)."""
    for name, images in named_images.items():
        tf.summary.image(name, images, max_outputs=images.shape[0])


def write_step_scalars(loss, stack_losses, learning_rate, steps_per_sec, batch_size):
    """The training curves: total and per-stack loss, learning rate, speed."""
    tf.summary.scalar("loss/total", float(loss))
    for i, value in enumerate(stack_losses):
        tf.summary.scalar(f"loss/stack{i}", float(value))
    tf.summary.scalar("learning_rate", float(learning_rate))
    tf.summary.scalar("perf/steps_per_sec", steps_per_sec)
    tf.summary.scalar("perf/images_per_sec", steps_per_sec * batch_size)


def write_validation(entry):
    """A validation result: ``{"mpjpe_voxels": float, "mpjpe_mm": float or None, ...}``."""
    tf.summary.scalar("val/mpjpe_voxels", entry["mpjpe_voxels"])
    if entry["mpjpe_mm"] is not None:
        tf.summary.scalar("val/mpjpe_mm_gt_root", entry["mpjpe_mm"])


def hparam_values(config):
    """A config dataclass's fields as HParams values: scalars as they are, tuples joined."""
    values = {}
    for key, value in dataclasses.asdict(config).items():
        if isinstance(value, (bool, int, float, str)):
            values[key] = value
        elif isinstance(value, (tuple, list)):
            values[key] = ",".join(str(v) for v in value)
    return values


def write_hparams(config):
    """The run's hyperparameters (:func:`hparam_values`) for the HParams tab."""
    from tensorboard.plugins.hparams import api as hp  # only where summaries are written
    hp.hparams(hparam_values(config))
