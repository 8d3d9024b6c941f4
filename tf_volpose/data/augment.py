"""The paper's augmentation as stateless TF ops (deterministic given a seed).

As in the authors' code: scale ~ N(1, 0.25) clipped to [0.75, 1.25]; rotation ~
N(0, 30 deg) clipped to +-60 deg, applied with probability 0.4; horizontal flip
with probability 0.5 (left/right joints swapped); per-channel colour gain
U(0.8, 1.2). Rotation and flip act on x, y only.
"""

import dataclasses

import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AugmentOptions:
    scale_sigma: float = 0.25
    scale_range: tuple = (0.75, 1.25)
    rotation_sigma_deg: float = 30.0
    rotation_limit_deg: float = 60.0
    rotation_prob: float = 0.4
    flip_prob: float = 0.5
    color_gain: tuple = (0.8, 1.2)

    def __post_init__(self):
        for name in ("rotation_prob", "flip_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value!r}")
        if not 0 < self.scale_range[0] <= self.scale_range[1]:
            raise ValueError(f"scale_range must be 0 < low <= high, got {self.scale_range!r}")


NO_AUGMENTATION = AugmentOptions(scale_sigma=0.0, rotation_prob=0.0, flip_prob=0.0,
                                 color_gain=(1.0, 1.0))


def sample(seed, options=AugmentOptions()):
    """Draws one augmentation from a stateless ``seed`` (shape ``[2]`` int).

    Returns:
      dict with ``scale`` (factor on the box scale), ``rotation_deg``, ``flip``
      (bool) and ``gain`` ``(3,)``.
    """
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=5)
    scale = tf.clip_by_value(
        1.0 + options.scale_sigma * tf.random.stateless_normal([], seeds[0]),
        options.scale_range[0], options.scale_range[1])
    rotation = tf.clip_by_value(
        options.rotation_sigma_deg * tf.random.stateless_normal([], seeds[1]),
        -options.rotation_limit_deg, options.rotation_limit_deg)
    rotate = tf.random.stateless_uniform([], seeds[2]) < options.rotation_prob
    flip = tf.random.stateless_uniform([], seeds[3]) < options.flip_prob
    gain = tf.random.stateless_uniform([3], seeds[4], options.color_gain[0], options.color_gain[1])
    return {"scale": scale, "rotation_deg": tf.where(rotate, rotation, 0.0), "flip": flip,
            "gain": gain}


def apply_color_gain(image, gain):
    """``(H, W, 3)`` float image in [0, 1] times a per-channel gain, clipped to [0, 1]."""
    return tf.clip_by_value(image * tf.cast(gain, image.dtype), 0.0, 1.0)


def flip_joints(values, flip, flip_index):
    """Swaps left/right entries of ``(J, ...)`` ``values`` when ``flip`` is true."""
    perm = tf.where(flip, tf.constant(flip_index), tf.range(len(flip_index)))
    return tf.gather(values, perm)
