"""Hourglass building blocks and the two stacked backbones (DESIGN.md section 1).

* :class:`Residual`: pre-activation bottleneck BN-ReLU-conv1x1(out/2),
  BN-ReLU-conv3x3(out/2), BN-ReLU-conv1x1(out); the skip is a 1x1 conv only
  when the widths differ.
* ``hg``: Newell et al.'s uniform hourglass; after each hourglass a residual
  and a 1x1 conv-BN-ReLU "lin" layer; next input =
  ``x + conv1x1(features) + conv1x1(heatmaps)``.
* ``hg-stacked``: the coarse-to-fine authors' design; hourglass upper branch of
  three residuals ending at ``2*features``, lin layers ``2f -> 2f -> f``, next
  input = ``conv1x1(concat(lin_i, lin_{i-1})) + conv1x1(heatmaps)`` with the
  stem's pooled ``f/2`` features standing in for ``lin_0``.

:func:`build_backbone` wires stacks onto an image tensor and returns per-stack
head outputs, so the volumetric, regression and decoupled models share it.
"""

import keras
from keras import layers

BACKBONES = ("hg", "hg-stacked")


@keras.saving.register_keras_serializable(package="tf_volpose")
class Residual(layers.Layer):
    """Pre-activation bottleneck residual block.

    Args:
      filters: output channels (the bottleneck uses ``filters // 2``).

    Input ``(B, H, W, C)`` -> output ``(B, H, W, filters)``.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        if int(filters) != filters or filters < 2:
            raise ValueError(f"filters must be an integer >= 2, got {filters!r}")
        self.filters = int(filters)
        half = self.filters // 2
        self.bn1 = layers.BatchNormalization(name="bn1")
        self.conv1 = layers.Conv2D(half, 1, name="conv1")
        self.bn2 = layers.BatchNormalization(name="bn2")
        self.conv2 = layers.Conv2D(half, 3, padding="same", name="conv2")
        self.bn3 = layers.BatchNormalization(name="bn3")
        self.conv3 = layers.Conv2D(self.filters, 1, name="conv3")
        self.skip = None

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        channels = input_shape[-1]
        half = self.filters // 2
        self.bn1.build(input_shape)
        self.conv1.build(input_shape)
        self.bn2.build(input_shape[:-1] + (half,))
        self.conv2.build(input_shape[:-1] + (half,))
        self.bn3.build(input_shape[:-1] + (half,))
        self.conv3.build(input_shape[:-1] + (half,))
        if channels != self.filters:
            self.skip = layers.Conv2D(self.filters, 1, name="skip")
            self.skip.build(input_shape)

    def call(self, x, training=None):
        y = self.conv1(keras.ops.relu(self.bn1(x, training=training)))
        y = self.conv2(keras.ops.relu(self.bn2(y, training=training)))
        y = self.conv3(keras.ops.relu(self.bn3(y, training=training)))
        return y + (self.skip(x) if self.skip is not None else x)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters)
        return config


def _lin(x, filters, name):
    x = layers.Conv2D(filters, 1, name=f"{name}_conv")(x)
    x = layers.BatchNormalization(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _pool(x, name):
    return layers.MaxPooling2D(2, name=name)(x)


def _upsample(x, name):
    return layers.UpSampling2D(2, interpolation="nearest", name=name)(x)


def uniform_hourglass(x, depth, features, name):
    """Newell's hourglass: ``features`` channels at every level, ``depth`` poolings."""
    up = Residual(features, name=f"{name}_up")(x)
    low = Residual(features, name=f"{name}_low1")(_pool(x, f"{name}_pool"))
    if depth > 1:
        low = uniform_hourglass(low, depth - 1, features, f"{name}_inner")
    else:
        low = Residual(features, name=f"{name}_low2")(low)
    low = Residual(features, name=f"{name}_low3")(low)
    return layers.Add(name=f"{name}_add")([up, _upsample(low, f"{name}_upsample")])


def stacked_hourglass(x, depth, features, out_features, name):
    """The authors' hourglass: three residuals per branch, ending at ``out_features``."""
    up = Residual(features, name=f"{name}_up1")(x)
    up = Residual(features, name=f"{name}_up2")(up)
    up = Residual(out_features, name=f"{name}_up3")(up)
    low = _pool(x, f"{name}_pool")
    for i in (1, 2, 3):
        low = Residual(features, name=f"{name}_low{i}")(low)
    if depth > 1:
        low = stacked_hourglass(low, depth - 1, features, out_features, f"{name}_inner")
    else:
        low = Residual(out_features, name=f"{name}_low4")(low)
    low = Residual(out_features, name=f"{name}_low5")(low)
    return layers.Add(name=f"{name}_add")([up, _upsample(low, f"{name}_upsample")])


def stem(image, features, backbone):
    """7x7/2 conv-BN-ReLU, residual, max-pool, residuals: ``(B, S, S, 3) -> (B, S/4, S/4, .)``.

    Returns ``(x, pooled)``: the first hourglass input and the pooled
    ``features/2``-channel map (``hg-stacked`` fuses it into stack 1).
    """
    half = features // 2
    x = layers.Conv2D(features // 4, 7, strides=2, padding="same", name="stem_conv")(image)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = Residual(half, name="stem_res1")(x)
    pooled = _pool(x, "stem_pool")
    x = Residual(half, name="stem_res2")(pooled)
    if backbone == "hg-stacked":
        x = Residual(half, name="stem_res3")(x)
    x = Residual(features, name="stem_res4")(x)
    return x, pooled


def build_backbone(image, head_channels, backbone="hg", features=256, hourglass_depth=4,
                   name_prefix=""):
    """Stacks hourglasses on ``image`` with a 1x1 head after each.

    Args:
      image: ``(B, S, S, C)`` Keras tensor (``S`` divisible by ``4 * 2**hourglass_depth``),
        or, with ``stem=False`` semantics, any map (see ``decoupled.py``).
      head_channels: output channels per stack; ``None`` means no head (its
        heatmaps are neither output nor fed back).
      backbone: ``"hg"`` or ``"hg-stacked"``.
      features: hourglass width (256 in the paper).
      hourglass_depth: poolings per hourglass (4 at 64x64).

    Returns:
      ``(heads, last_features)``: a list with one ``(B, S/4, S/4, c)`` tensor
      (or ``None``) per stack, and the last stack's lin features.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if int(features) != features or features < 4 or features % 4:
        raise ValueError(f"features must be a positive multiple of 4, got {features!r}")
    x, pooled = stem(image, features, backbone)
    return stack_hourglasses(x, pooled, head_channels, backbone, features, hourglass_depth,
                             name_prefix)


def stack_hourglasses(x, previous, head_channels, backbone, features, hourglass_depth,
                      name_prefix=""):
    """The stacks of :func:`build_backbone`, from the first hourglass input ``x`` on.

    ``previous`` is what ``hg-stacked`` concatenates with stack 1's lin features.
    """
    heads, lin = [], None
    for i, channels in enumerate(head_channels):
        name = f"{name_prefix}s{i}"
        if backbone == "hg":
            y = uniform_hourglass(x, hourglass_depth, features, f"{name}_hg")
            y = Residual(features, name=f"{name}_res")(y)
            lin = _lin(y, features, f"{name}_lin")
        else:
            y = stacked_hourglass(x, hourglass_depth, features, 2 * features, f"{name}_hg")
            y = _lin(y, 2 * features, f"{name}_lin1")
            lin = _lin(y, features, f"{name}_lin2")
        head = None
        if channels is not None:
            head = layers.Conv2D(channels, 1, name=f"{name}_head")(lin)
        heads.append(head)
        if i == len(head_channels) - 1:
            break
        if backbone == "hg":
            parts = [x, layers.Conv2D(features, 1, name=f"{name}_fuse_features")(lin)]
            width = features
        else:
            cat = layers.Concatenate(name=f"{name}_concat")([lin, previous])
            width = cat.shape[-1]
            parts = [layers.Conv2D(width, 1, name=f"{name}_fuse_features")(cat)]
            previous = lin
        if head is not None:
            parts.append(layers.Conv2D(width, 1, name=f"{name}_fuse_heatmaps")(head))
        x = layers.Add(name=f"{name}_fuse")(parts) if len(parts) > 1 else parts[0]
    return heads, lin
