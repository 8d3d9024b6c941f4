"""Coordinate-regression baseline (Table 1): the same backbone, a fully connected head.

The head downsamples the last stack's lin features with strided 3x3
conv-BN-ReLU blocks to 4x4 (a fully connected layer on the 64x64 map would have
50M weights), flattens, and regresses ``3J`` numbers: the joints' voxel
coordinates normalised to ``[-0.5, 0.5]`` (``losses.normalized_coordinates``),
so predictions decode and lift through the same path as the volumetric model.
"""

import math

import keras
from keras import layers

from tf_volpose.models import hourglass, volumetric


def build_regression_model(joints=17, backbone="hg", features=256, input_size=256, stacks=1,
                           hourglass_depth=4, name="regression", conv_bias=False):
    """Returns a model: ``image (B, S, S, 3)`` -> ``{"coords": (B, J, 3)}`` float32.

    ``conv_bias``: see ``hourglass.build_backbone`` (also the head's convs, each before a batch norm).
    """
    volumetric.check_input_size(input_size, hourglass_depth)
    image = volumetric.image_input(input_size)
    _, x = hourglass.build_backbone(image, [None] * stacks, backbone, features, hourglass_depth,
                                    conv_bias=conv_bias)
    for i in range(int(math.log2(input_size // 4 // 4))):
        x = layers.Conv2D(features, 3, strides=2, padding="same", use_bias=conv_bias,
                          name=f"reg_conv{i}")(x)
        x = hourglass.BatchNorm(name=f"reg_bn{i}")(x)
        x = layers.ReLU(name=f"reg_relu{i}")(x)
    x = layers.Flatten(name="reg_flatten")(x)
    x = layers.Dense(3 * joints, name="reg_fc")(x)
    coords = volumetric.float32_output(layers.Reshape((joints, 3))(x), "coords")
    return keras.Model(image, {"coords": coords}, name=name)
