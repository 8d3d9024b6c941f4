"""The decoupled architecture of Sec. 3.3.

Network A maps the image to 2D heatmaps (every stack ``d = 1``); network B
maps 2D heatmaps to 3D volumes and sees no image features, so:

* A trains alone on 2D-only images (MPII): ``build_2d_network``;
* B trains alone on heatmaps rendered from MoCap 3D poses
  (``losses.render_targets`` with ``depth=1``): ``build_lifting_network``;
* both train end to end: ``build_decoupled_model`` (outputs of A, then of B,
  named ``stack0 ... stack{k-1}`` like the volumetric model).
"""

import keras

from tf_volpose.models import hourglass, volumetric


def build_2d_network(joints=17, stacks=2, backbone="hg", features=256, input_size=256,
                     hourglass_depth=4, name="net_a", conv_bias=False):
    """Network A: ``image (B, S, S, 3)`` -> 2D heatmaps ``stack{i}`` ``(B, S/4, S/4, J)``."""
    return volumetric.build_volumetric_model((1,) * stacks, joints, backbone, features, input_size,
                                             hourglass_depth, name=name, conv_bias=conv_bias)


def build_lifting_network(joints=17, depths=(64,), backbone="hg", features=256, heatmap_size=64,
                          hourglass_depth=4, name="net_b", conv_bias=False):
    """Network B: 2D heatmaps ``(B, H, H, J)`` -> volumes ``stack{i}`` ``(B, H, H, J*d_i)``."""
    if heatmap_size % 2 ** hourglass_depth:
        raise ValueError(f"heatmap_size must be a multiple of {2 ** hourglass_depth}, "
                         f"got {heatmap_size!r}")
    heatmaps = keras.Input((heatmap_size, heatmap_size, joints), name="heatmaps")
    x = hourglass.Conv2D(features, 1, use_bias=conv_bias, name="b_in_conv")(heatmaps)
    x = hourglass.Residual(features, conv_bias, name="b_in_res")(x)
    heads, _ = hourglass.stack_hourglasses(x, x, [joints * d for d in depths], backbone, features,
                                           hourglass_depth, name_prefix="b_", conv_bias=conv_bias)
    outputs = {f"stack{i}": volumetric.float32_output(h, f"stack{i}") for i, h in enumerate(heads)}
    return keras.Model(heatmaps, outputs, name=name)


def build_decoupled_model(net_a, net_b, name="decoupled"):
    """End to end: A's last 2D heatmaps feed B. Outputs: A's stacks, then B's."""
    image = keras.Input(net_a.input_shape[1:], name="image")
    out_a = net_a(image)
    out_b = net_b(out_a[f"stack{len(out_a) - 1}"])
    # renamed through float32_output: a plain Identity would take the global policy and, under
    # mixed precision, cast the parts' float32 outputs back down
    stacks = [out_a[k] for k in sorted(out_a, key=lambda k: int(k[5:]))]
    stacks += [out_b[k] for k in sorted(out_b, key=lambda k: int(k[5:]))]
    outputs = {f"stack{i}": volumetric.float32_output(h, f"stack{i}") for i, h in enumerate(stacks)}
    return keras.Model(image, outputs, name=name)
