"""The coarse-to-fine volumetric model and test-time flip averaging.

:func:`build_volumetric_model` returns a functional Keras model: input
``image`` ``(B, S, S, 3)`` float in [0, 1]; outputs ``stack0`` ...
``stack{k-1}``, each ``(B, S/4, S/4, joints * depths[i])`` in the joint-major
layout of DESIGN.md (channel ``j*d + k`` is slice ``k`` of joint ``j``).
Outputs are float32 even under a mixed-precision policy.
"""

import keras
import tensorflow as tf
from keras import layers

from tf_volpose import skeleton
from tf_volpose.models import hourglass


def check_input_size(input_size, hourglass_depth):
    multiple = 4 * 2 ** hourglass_depth
    if int(input_size) != input_size or input_size <= 0 or input_size % multiple:
        raise ValueError(f"input_size must be a positive multiple of {multiple} "
                         f"(hourglass_depth={hourglass_depth}), got {input_size!r}")


def image_input(input_size, name="image"):
    return keras.Input((input_size, input_size, 3), name=name)


def float32_output(x, name):
    """Names an output and casts it to float32 (mixed precision keeps losses in fp32)."""
    return layers.Activation("linear", dtype="float32", name=name)(x)


def build_volumetric_model(depths=(1, 2, 4, 64), joints=17, backbone="hg", features=256,
                           input_size=256, hourglass_depth=4, name="volumetric", conv_bias=False):
    """Stacked hourglasses supervised at depth resolutions ``depths``.

    Args:
      depths: z resolution of each stack, e.g. ``(1, 2, 4, 64)`` (coarse-to-fine,
        Table 4), ``(64, 64, 64, 64)`` (naive stacking), ``(64,)`` (one volume).
      joints: J.
      backbone: ``"hg"`` or ``"hg-stacked"``.
      features: hourglass width.
      input_size: S, a multiple of ``4 * 2**hourglass_depth`` (64 for depth 4).
      conv_bias: biases on the convolutions before batch norms (see
        ``hourglass.build_backbone``); ``True`` only for runs saved with them.

    Returns:
      A ``keras.Model`` with outputs ``{"stack0": ..., ...}``.

    Example:
      >>> model = build_volumetric_model(depths=(1, 64), features=32, input_size=64)
      >>> model(tf.zeros([2, 64, 64, 3]))["stack1"].shape  # (2, 16, 16, 17 * 64)
    """
    depths = tuple(int(d) for d in depths)
    if not depths or min(depths) < 1:
        raise ValueError(f"depths must be a non-empty list of positive integers, got {depths!r}")
    check_input_size(input_size, hourglass_depth)
    image = image_input(input_size)
    heads, _ = hourglass.build_backbone(image, [joints * d for d in depths], backbone, features,
                                        hourglass_depth, conv_bias=conv_bias)
    outputs = {f"stack{i}": float32_output(h, f"stack{i}") for i, h in enumerate(heads)}
    return keras.Model(image, outputs, name=name)


def flip_heatmaps(heatmaps, joint_set=skeleton.H36M17):
    """Mirrors ``(B, H, W, J*d)`` heatmaps in x and swaps left/right joint channels."""
    heatmaps = tf.convert_to_tensor(heatmaps)
    joints = joint_set.num_joints
    d = heatmaps.shape[-1] // joints
    channels = [j * d + k for j in joint_set.flip_index for k in range(d)]
    return tf.gather(heatmaps[:, :, ::-1], channels, axis=-1)


def flip_average(model_fn, images, joint_set=skeleton.H36M17):
    """Test-time flip: mean of the volume of ``images`` and of their mirror, mapped back.

    Args:
      model_fn: ``(B, S, S, 3) -> (B, H, W, J*d)`` heatmaps (e.g. the last stack).
      images: ``(B, S, S, 3)`` crops.

    Returns:
      ``(B, H, W, J*d)`` averaged heatmaps.
    """
    images = tf.convert_to_tensor(images)
    both = model_fn(tf.concat([images, images[:, :, ::-1]], axis=0))
    direct, mirrored = tf.split(both, 2, axis=0)
    return 0.5 * (direct + flip_heatmaps(mirrored, joint_set))
