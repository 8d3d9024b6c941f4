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

Speed (measured in README, ``tools/benchmark.py``): :class:`BatchNorm` runs
TensorFlow's fused batch-norm kernel instead of Keras 3's composite ops (which
also round-trip bfloat16 activations through float32), :class:`Residual`
folds its second and third batch norms into the preceding convolutions at
inference, so a block runs three conv+bias(+ReLU) kernels that oneDNN fuses,
:class:`Conv2D` computes its training gradients with faster kernels, and
:class:`UpSampling2D` upsamples with one resize kernel instead of two repeats.

Convolution biases: every convolution except the heads feeds, directly or
through adds, pooling, upsampling and 1x1 convolutions, only batch norms,
which remove any per-channel constant in training. Such a bias has a zero
true gradient; the computed one is rounding noise that RMSprop scales up to
full-size steps. ``conv_bias=False`` (the default) leaves them out: the same
function class, about 0.25% fewer parameters, no noise updates and a faster
step (README). ``conv_bias=True`` builds the layout of runs saved before
(``training.load_config`` picks it for them).
"""

import keras
import tensorflow as tf
from keras import layers

BACKBONES = ("hg", "hg-stacked")
HEAD_SUFFIX = "_head"  # every stack's 1x1 output conv is named ``<prefix>s<i>_head``


def head_layers(model):
    """The stacks' head convolutions of ``model``, nested models (``decoupled``) included."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from head_layers(layer)
        elif layer.name.endswith(HEAD_SUFFIX):
            yield layer


@keras.saving.register_keras_serializable(package="tf_volpose")
class BatchNorm(layers.BatchNormalization):
    """``keras.layers.BatchNormalization`` on TensorFlow's fused kernel.

    Same variables, names and inference output as the Keras layer (checkpoints
    are interchangeable). For ``(B, H, W, C)`` inputs normalised over the last
    axis it calls ``FusedBatchNormV3``: one pass in the compute dtype with
    float32 statistics, where Keras 3 upcasts bfloat16/float16 activations to
    float32 and runs several elementwise ops (forward and backward). Other
    inputs fall back to the Keras implementation.

    One documented difference in training: the moving variance is updated
    with the unbiased batch variance (``n / (n - 1)`` times the biased one
    used for normalisation), as PyTorch and Keras 2 do; Keras 3 uses the
    biased one. With ``n = B*H*W`` in the thousands this is immaterial.
    """

    def _fusable(self, inputs, mask):
        return (mask is None and len(inputs.shape) == 4 and self.axis in (-1, 3)
                and self.center and self.scale and not self.renorm)

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        x = tf.cast(inputs, self.compute_dtype)
        if training and self.trainable:
            # the kernel also updates the moving statistics (one op instead of six)
            y, moving_mean, moving_variance = tf.compat.v1.nn.fused_batch_norm(
                x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=True,
                exponential_avg_factor=1.0 - self.momentum)
            self.moving_mean.assign(moving_mean)
            self.moving_variance.assign(moving_variance)
            return y
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, self.gamma, self.beta, mean=self.moving_mean, variance=self.moving_variance,
            epsilon=self.epsilon, is_training=False)
        return y

    def inference_affine(self):
        """``(scale, shift)``, float32 ``(C,)``: the layer at inference is ``x * scale + shift``."""
        scale = self.gamma * tf.math.rsqrt(self.moving_variance + self.epsilon)
        return scale, self.beta - self.moving_mean * scale


def _conv2d_with_fast_gradients(x, kernel, bias, padding):
    """``conv2d(x, kernel) (+ bias)`` (stride 1, NHWC) with cheaper gradients.

    The gradients are the textbook ones, computed with kernels that run faster
    on oneDNN CPUs than what autodiff plus grappler produce (measured in the
    README): 1x1 convolutions are matrix products, so both the input and the
    kernel gradient are plain matmuls over ``B*H*W`` rows; larger kernels call
    ``Conv2DBackpropFilter``/``Conv2DBackpropInput`` directly; the bias
    gradient is a separate ``(1, N) x (N, C)`` product rather than grappler's
    fused ``Conv2DBackpropFilterWithBias`` kernel, which is up to 1.5x slower
    than the filter gradient alone here. ``bias`` may be ``None``. All ops
    have XLA kernels.
    """

    def input_and_kernel_grads(x, kernel, dy):
        kh, kw, cin, cout = kernel.shape
        if kh == 1 and kw == 1:
            rows, dy_rows = tf.reshape(x, [-1, cin]), tf.reshape(dy, [-1, cout])
            dkernel = tf.reshape(tf.matmul(rows, dy_rows, transpose_a=True), kernel.shape)
            dx = tf.matmul(dy_rows, tf.reshape(kernel, [cin, cout]), transpose_b=True)
            return tf.reshape(dx, tf.shape(x)), dkernel
        dkernel = tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=tf.shape(kernel), out_backprop=dy, strides=[1, 1, 1, 1],
            padding=padding)
        dx = tf.raw_ops.Conv2DBackpropInput(
            input_sizes=tf.shape(x), filter=kernel, out_backprop=dy, strides=[1, 1, 1, 1],
            padding=padding)
        return dx, dkernel

    if bias is None:
        @tf.custom_gradient
        def conv(x, kernel):
            y = tf.nn.conv2d(x, kernel, strides=1, padding=padding)
            return y, lambda dy: input_and_kernel_grads(x, kernel, dy)

        return conv(x, kernel)

    @tf.custom_gradient
    def conv_bias(x, kernel, bias):
        y = tf.nn.bias_add(tf.nn.conv2d(x, kernel, strides=1, padding=padding), bias)

        def grad(dy):
            dy_rows = tf.reshape(dy, [-1, dy.shape[-1]])
            # a (1, N) x (N, C) product sums the rows faster than reduce_sum here
            dbias = tf.matmul(tf.ones([1, tf.shape(dy_rows)[0]], dy.dtype), dy_rows)[0]
            return input_and_kernel_grads(x, kernel, dy) + (dbias,)

        return y, grad

    return conv_bias(x, kernel, bias)


@keras.saving.register_keras_serializable(package="tf_volpose")
class Conv2D(layers.Conv2D):
    """``keras.layers.Conv2D`` whose training gradients run faster on CPU.

    Same variables, names, config and forward output as the Keras layer
    (checkpoints are interchangeable). Stride-1, undilated, ungrouped NHWC
    convolutions use :func:`_conv2d_with_fast_gradients`; any other
    configuration is the Keras layer unchanged.
    """

    def _fast(self):
        return (self.groups == 1 and self.data_format == "channels_last"
                and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1))

    def call(self, inputs, training=None):
        # inference keeps the plain graph, which grappler fuses with the next ops
        if not training or not self._fast():
            return super().call(inputs)
        bias = tf.cast(self.bias, self.compute_dtype) if self.use_bias else None
        y = _conv2d_with_fast_gradients(
            tf.cast(inputs, self.compute_dtype), tf.cast(self.kernel, self.compute_dtype), bias,
            self.padding.upper())
        return self.activation(y) if self.activation is not None else y


def _conv_bn_relu_folded(x, conv, bn):
    """``relu(bn(conv(x)))`` at inference as one conv with the batch norm folded in.

    ``bn(conv(x)) = conv(x) * s + t = x * (W s) + (b s + t)`` per output
    channel (``b = 0`` without a bias); the fold costs one pass over the kernel
    per call, small next to the activations, and keeps the weights trainable
    and checkpoints unchanged.
    """
    scale, shift = bn.inference_affine()
    kernel = tf.cast(conv.kernel * scale, x.dtype)
    bias = tf.cast(shift if conv.bias is None else conv.bias * scale + shift, x.dtype)
    y = tf.nn.conv2d(x, kernel, strides=1, padding=conv.padding.upper())
    return tf.nn.relu(tf.nn.bias_add(y, bias))


def _conv_with_bias(x, conv):
    """``conv(x)`` at inference as conv + bias, with a zero bias when the layer has none.

    Grappler fuses conv + bias + the residual add into one oneDNN kernel, but
    only with the bias present; without it the add is a separate pass over the
    activations (a trace of the bf16 forward: 214 vs 206 ms of serialised ops).
    """
    # a zero grappler cannot prove (a constant zero bias is folded away, and the fusion with it)
    bias = conv.bias if conv.bias is not None else conv.kernel[0, 0, 0] * 0.0
    y = tf.nn.conv2d(x, tf.cast(conv.kernel, x.dtype), strides=1, padding=conv.padding.upper())
    return tf.nn.bias_add(y, tf.cast(bias, x.dtype))


@keras.saving.register_keras_serializable(package="tf_volpose")
class Residual(layers.Layer):
    """Pre-activation bottleneck residual block.

    Args:
      filters: output channels (the bottleneck uses ``filters // 2``).
      conv_bias: give the convolutions biases (redundant before batch norms;
        see the module docstring).

    Input ``(B, H, W, C)`` -> output ``(B, H, W, filters)``. At inference
    ``bn2``/``bn3`` are folded into ``conv1``/``conv2`` (same function, fewer passes).
    """

    def __init__(self, filters, conv_bias=False, **kwargs):
        super().__init__(**kwargs)
        if int(filters) != filters or filters < 2:
            raise ValueError(f"filters must be an integer >= 2, got {filters!r}")
        self.filters = int(filters)
        self.conv_bias = bool(conv_bias)
        half = self.filters // 2
        self.bn1 = BatchNorm(name="bn1")
        self.conv1 = Conv2D(half, 1, use_bias=self.conv_bias, name="conv1")
        self.bn2 = BatchNorm(name="bn2")
        self.conv2 = Conv2D(half, 3, padding="same", use_bias=self.conv_bias, name="conv2")
        self.bn3 = BatchNorm(name="bn3")
        self.conv3 = Conv2D(self.filters, 1, use_bias=self.conv_bias, name="conv3")
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
            self.skip = Conv2D(self.filters, 1, use_bias=self.conv_bias, name="skip")
            self.skip.build(input_shape)

    def call(self, x, training=None):
        if training:
            y = self.conv1(keras.ops.relu(self.bn1(x, training=training)))
            y = self.conv2(keras.ops.relu(self.bn2(y, training=training)))
            y = self.conv3(keras.ops.relu(self.bn3(y, training=training)))
            skip = x if self.skip is None else self.skip(x)
        else:
            y = _conv_bn_relu_folded(keras.ops.relu(self.bn1(x, training=False)), self.conv1,
                                     self.bn2)
            y = _conv_with_bias(_conv_bn_relu_folded(y, self.conv2, self.bn3), self.conv3)
            skip = x if self.skip is None else _conv_with_bias(x, self.skip)
        return y + skip

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)[:-1] + (self.filters,)

    def get_config(self):
        config = super().get_config()
        config.update(filters=self.filters, conv_bias=self.conv_bias)
        return config


def _lin(x, filters, name, conv_bias):
    x = Conv2D(filters, 1, use_bias=conv_bias, name=f"{name}_conv")(x)
    x = BatchNorm(name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def _pool(x, name):
    return layers.MaxPooling2D(2, name=name)(x)


@keras.saving.register_keras_serializable(package="tf_volpose")
class UpSampling2D(layers.UpSampling2D):
    """``keras.layers.UpSampling2D`` whose nearest-neighbour case is one resize kernel.

    Keras repeats the rows, then the columns (two ``Tile`` ops, the larger
    tensor written twice, and two gradients); TensorFlow's nearest-neighbour
    resize writes the same values once (integer factors: output pixel ``i``
    reads input pixel ``i // factor``). Same config; other interpolations and
    ``channels_first`` are Keras's own. README: fp32 training ~+2% (interleaved A/B).
    """

    def call(self, inputs):
        if self.interpolation != "nearest" or self.data_format != "channels_last":
            return super().call(inputs)
        shape = tf.shape(inputs)
        return tf.image.resize(inputs, [shape[1] * self.size[0], shape[2] * self.size[1]],
                               method="nearest")


def _upsample(x, name):
    return UpSampling2D(2, interpolation="nearest", name=name)(x)


def uniform_hourglass(x, depth, features, name, conv_bias=False):
    """Newell's hourglass: ``features`` channels at every level, ``depth`` poolings."""
    up = Residual(features, conv_bias, name=f"{name}_up")(x)
    low = Residual(features, conv_bias, name=f"{name}_low1")(_pool(x, f"{name}_pool"))
    if depth > 1:
        low = uniform_hourglass(low, depth - 1, features, f"{name}_inner", conv_bias)
    else:
        low = Residual(features, conv_bias, name=f"{name}_low2")(low)
    low = Residual(features, conv_bias, name=f"{name}_low3")(low)
    return layers.Add(name=f"{name}_add")([up, _upsample(low, f"{name}_upsample")])


def stacked_hourglass(x, depth, features, out_features, name, conv_bias=False):
    """The authors' hourglass: three residuals per branch, ending at ``out_features``."""
    up = Residual(features, conv_bias, name=f"{name}_up1")(x)
    up = Residual(features, conv_bias, name=f"{name}_up2")(up)
    up = Residual(out_features, conv_bias, name=f"{name}_up3")(up)
    low = _pool(x, f"{name}_pool")
    for i in (1, 2, 3):
        low = Residual(features, conv_bias, name=f"{name}_low{i}")(low)
    if depth > 1:
        low = stacked_hourglass(low, depth - 1, features, out_features, f"{name}_inner",
                                conv_bias)
    else:
        low = Residual(out_features, conv_bias, name=f"{name}_low4")(low)
    low = Residual(out_features, conv_bias, name=f"{name}_low5")(low)
    return layers.Add(name=f"{name}_add")([up, _upsample(low, f"{name}_upsample")])


def stem(image, features, backbone, conv_bias=False):
    """7x7/2 conv-BN-ReLU, residual, max-pool, residuals: ``(B, S, S, 3) -> (B, S/4, S/4, .)``.

    Returns ``(x, pooled)``: the first hourglass input and the pooled
    ``features/2``-channel map (``hg-stacked`` fuses it into stack 1).
    """
    half = features // 2
    x = Conv2D(features // 4, 7, strides=2, padding="same", use_bias=conv_bias,
               name="stem_conv")(image)
    x = BatchNorm(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    x = Residual(half, conv_bias, name="stem_res1")(x)
    pooled = _pool(x, "stem_pool")
    x = Residual(half, conv_bias, name="stem_res2")(pooled)
    if backbone == "hg-stacked":
        x = Residual(half, conv_bias, name="stem_res3")(x)
    x = Residual(features, conv_bias, name="stem_res4")(x)
    return x, pooled


def build_backbone(image, head_channels, backbone="hg", features=256, hourglass_depth=4,
                   name_prefix="", conv_bias=False):
    """Stacks hourglasses on ``image`` with a 1x1 head after each.

    Args:
      image: ``(B, S, S, C)`` Keras tensor (``S`` divisible by ``4 * 2**hourglass_depth``),
        or, with ``stem=False`` semantics, any map (see ``decoupled.py``).
      head_channels: output channels per stack; ``None`` means no head (its
        heatmaps are neither output nor fed back).
      backbone: ``"hg"`` or ``"hg-stacked"``.
      features: hourglass width (256 in the paper).
      hourglass_depth: poolings per hourglass (4 at 64x64).
      conv_bias: biases on the convolutions before batch norms (all but the
        heads); ``False`` except to rebuild runs saved with them.

    Returns:
      ``(heads, last_features)``: a list with one ``(B, S/4, S/4, c)`` tensor
      (or ``None``) per stack, and the last stack's lin features.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    if int(features) != features or features < 4 or features % 4:
        raise ValueError(f"features must be a positive multiple of 4, got {features!r}")
    x, pooled = stem(image, features, backbone, conv_bias)
    return stack_hourglasses(x, pooled, head_channels, backbone, features, hourglass_depth,
                             name_prefix, conv_bias)


def stack_hourglasses(x, previous, head_channels, backbone, features, hourglass_depth,
                      name_prefix="", conv_bias=False):
    """The stacks of :func:`build_backbone`, from the first hourglass input ``x`` on.

    ``previous`` is what ``hg-stacked`` concatenates with stack 1's lin features.
    """
    heads, lin = [], None
    for i, channels in enumerate(head_channels):
        name = f"{name_prefix}s{i}"
        if backbone == "hg":
            y = uniform_hourglass(x, hourglass_depth, features, f"{name}_hg", conv_bias)
            y = Residual(features, conv_bias, name=f"{name}_res")(y)
            lin = _lin(y, features, f"{name}_lin", conv_bias)
        else:
            y = stacked_hourglass(x, hourglass_depth, features, 2 * features, f"{name}_hg",
                                  conv_bias)
            y = _lin(y, 2 * features, f"{name}_lin1", conv_bias)
            lin = _lin(y, features, f"{name}_lin2", conv_bias)
        head = None
        if channels is not None:
            head = Conv2D(channels, 1, name=f"{name}{HEAD_SUFFIX}")(lin)
        heads.append(head)
        if i == len(head_channels) - 1:
            break
        if backbone == "hg":
            parts = [x, Conv2D(features, 1, use_bias=conv_bias,
                               name=f"{name}_fuse_features")(lin)]
            width = features
        else:
            cat = layers.Concatenate(name=f"{name}_concat")([lin, previous])
            width = cat.shape[-1]
            parts = [Conv2D(width, 1, use_bias=conv_bias, name=f"{name}_fuse_features")(cat)]
            previous = lin
        if head is not None:
            parts.append(Conv2D(width, 1, use_bias=conv_bias,
                                name=f"{name}_fuse_heatmaps")(head))
        x = layers.Add(name=f"{name}_fuse")(parts) if len(parts) > 1 else parts[0]
    return heads, lin
