"""One training loop for every model of the paper, under any ``tf.distribute`` strategy.

A custom loop (``strategy.run``, ``distribute_datasets_from_function``,
``tf.nn.compute_average_loss``) rather than ``Model.fit``, because ``fit``
fails under ``MultiWorkerMirroredStrategy`` (keras-team/keras#20585). The
same code runs under the default strategy (CPU or one GPU), ``mirrored`` (all
local GPUs) and ``multi_worker`` (cluster from ``TF_CONFIG``). Only the chief
writes checkpoints and summaries.

Checkpoints (``tf.train.CheckpointManager``) hold the step, the weights (also
keyed by layer path, so ``init_checkpoint`` can restore by name into another
architecture) and the optimizer; the input position follows from the step and
the seed, so a resumed run continues the same data stream. A checkpoint is
written every ``checkpoint_every`` steps and on SIGTERM/SIGINT; TF writes it
under a temporary name and renames it, so a SIGKILL loses at most one
interval and never leaves one that fails to restore.
"""

import contextlib
import dataclasses
import fnmatch
import json
import math
import os
import re
import signal
import threading
import time
from typing import Callable, Optional, Tuple

import keras
import numpy as np
import tensorflow as tf

from tf_volpose import _files, bone_lengths, camera, losses, skeleton, summaries, volume
from tf_volpose.data import augment, pipeline, records, synthetic
from tf_volpose.models import decoupled, hourglass, regression, volumetric

MODELS = ("volumetric", "regression", "decoupled", "lifting")
STRATEGIES = ("default", "mirrored", "multi_worker")
PRECISIONS = ("none", "mixed_bfloat16", "mixed_float16")
SCHEDULES = ("constant", "step", "cosine")
TRAIN_TARGETS = ("joints_voxel", "mask")


def _field(default, help_text):
    return dataclasses.field(default=default, metadata={"help": help_text})


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a training run needs; ``tools/train.py`` makes one flag per field."""

    model_dir: str = _field("runs/default", "Checkpoints and TensorBoard events; resumes if present.")
    train_pattern: str = _field("", "Glob of training records.")
    val_pattern: str = _field("", "Glob of validation records (empty: no validation).")
    model: str = _field("volumetric", f"One of {MODELS} (lifting: the decoupled model's "
                        "network B alone, 2D heatmaps -> volumes, trained on records' joints, "
                        "such as MoCap's pose-only records: tools/convert_mocap.py).")
    backbone: str = _field("hg", "hg (Newell) or hg-stacked (the authors' c2f design).")
    depths: Tuple[int, ...] = _field((1, 2, 4, 64), "Depth resolution per stack (decoupled, "
                                     "lifting: of network B).")
    decoupled_2d_stacks: int = _field(2, "Decoupled model: stacks of the image -> 2D network A.")
    features: int = _field(256, "Hourglass width.")
    joint_set: str = _field("h36m17", "Joint set of the records.")
    input_size: int = _field(256, "Input crop side, px (heatmaps are input_size/4).")
    hourglass_depth: int = _field(4, "Poolings per hourglass.")
    conv_bias: bool = _field(False, "Biases on the convolutions before batch norms (redundant; "
                                    "runs saved before this field had them).")
    z_range_mm: float = _field(1000.0, "Depth range +- around the root, mm.")
    sigma: float = _field(2.0, "Target Gaussian sigma, voxels.")
    loss: str = _field("volumetric", f"One of {losses.STACK_LOSSES}: the paper's per-voxel "
                       "MSE (Eq. 3), or the L1 error of each stack's soft-argmax (Sun et al., "
                       "ECCV 2018), which needs decode=softargmax.")
    distribution_loss_weight: float = _field(
        0.0, "With loss=integral: weight of the KL divergence from the target Gaussian to each "
        "stack's softmax, added to its loss (0: none); keeps a joint's softmax from settling "
        "on one spike that passes no gradient.")
    loss_weights: Tuple[float, ...] = _field((), "Per-stack loss weights (default equal).")
    batch_size: int = _field(4, "Global batch size.")
    learning_rate: float = _field(2.5e-4, "RMSprop learning rate.")
    lr_schedule: str = _field("constant", f"One of {SCHEDULES}.")
    lr_decay_steps: Tuple[int, ...] = _field((), "Boundaries of the step schedule.")
    lr_decay_factor: float = _field(0.1, "Factor per boundary of the step schedule.")
    train_steps: int = _field(100000, "Total training steps.")
    checkpoint_every: int = _field(1000, "Steps between checkpoints.")
    keep_checkpoints: int = _field(3, "Checkpoints kept.")
    summary_every: int = _field(50, "Steps between scalar summaries.")
    image_summary_every: int = _field(500, "Steps between image summaries (0: never).")
    val_every: int = _field(1000, "Steps between validation runs (0: only at the end).")
    val_examples: int = _field(64, "Validation records used each time.")
    decode: str = _field("local_softargmax", f"Heatmap decoding for validation: {volume.DECODE_METHODS}.")
    mixed_precision: str = _field("none", f"One of {PRECISIONS}.")
    strategy: str = _field("default", f"One of {STRATEGIES}.")
    init_checkpoint: str = _field("", "Checkpoint (or model dir) to initialise matching weights "
                                  "from; comma-separated, several (the decoupled model: network "
                                  "A's run, then network B's).")
    seed: int = _field(0, "Seed of the data order and augmentation.")
    deterministic: bool = _field(False, "Deterministic input order (slower).")
    augment: bool = _field(True, "Apply the paper's augmentation.")
    flip_prob: float = _field(0.5, "Probability of the horizontal flip augmentation (left/right "
                                   "joints swapped); 0 where images mark left and right, "
                                   "as the synthetic data's colours do.")
    synthetic_dir: str = _field("", "If set and train_pattern matches nothing (or only an "
                                "incomplete set here), render synthetic data here; "
                                "train_pattern and val_pattern must point into it.")
    synthetic_train: int = _field(0, "Synthetic training records to render.")
    synthetic_val: int = _field(0, "Synthetic validation records to render.")

    def __post_init__(self):
        def check(ok, name, value, expected):
            if not ok:
                raise ValueError(f"{name} must be {expected}, got {value!r}")

        check(self.model in MODELS, "model", self.model, f"one of {MODELS}")
        check(self.strategy in STRATEGIES, "strategy", self.strategy, f"one of {STRATEGIES}")
        check(self.mixed_precision in PRECISIONS, "mixed_precision", self.mixed_precision,
              f"one of {PRECISIONS}")
        check(self.lr_schedule in SCHEDULES, "lr_schedule", self.lr_schedule, f"one of {SCHEDULES}")
        check(self.decode in volume.DECODE_METHODS, "decode", self.decode,
              f"one of {volume.DECODE_METHODS}")
        check(self.loss in losses.STACK_LOSSES, "loss", self.loss, f"one of {losses.STACK_LOSSES}")
        # an integral-loss volume is logits whose soft-argmax is the answer: its peak alone
        # (argmax, local_softargmax, quadratic) is not what the loss trained
        check(self.loss != "integral" or self.decode == "softargmax", "decode", self.decode,
              "softargmax with loss='integral'")
        check(self.distribution_loss_weight == 0 or (self.loss == "integral"
                                                     and self.distribution_loss_weight > 0),
              "distribution_loss_weight", self.distribution_loss_weight, "0, or positive with "
              "loss='integral'")
        check(self.loss == "volumetric" or self.model != "regression", "loss", self.loss,
              "'volumetric' (unused) for model='regression', whose loss is Eq. 1's")
        check(len(self.depths) > 0 and min(self.depths) >= 1, "depths", self.depths,
              "a non-empty list of positive integers")
        for name in ("batch_size", "train_steps", "checkpoint_every", "summary_every", "features",
                     "input_size"):
            check(getattr(self, name) > 0, name, getattr(self, name), "positive")
        check(self.learning_rate > 0, "learning_rate", self.learning_rate, "positive")
        check(0.0 <= self.flip_prob <= 1.0, "flip_prob", self.flip_prob, "in [0, 1]")
        check(not self.loss_weights or len(self.loss_weights) == len(self.stack_depths),
              "loss_weights", self.loss_weights, f"{len(self.stack_depths)} numbers (one per stack)")
        skeleton.get_joint_set(self.joint_set)

    @property
    def stack_depths(self):
        """Depth resolution of every output stack, in output order."""
        if self.model == "decoupled":
            return (1,) * self.decoupled_2d_stacks + tuple(self.depths)
        if self.model == "regression":
            return ()
        return tuple(self.depths)

    @property
    def fine_depth(self):
        return max(self.depths)

    @property
    def predicts_3d(self):
        """Whether the model predicts depth: one whose depths are all 1 (2D heatmaps, as
        the MPII stage) has no root depth to fit, so its run needs no bone lengths."""
        return self.model == "regression" or self.fine_depth > 1

    @property
    def input_name(self):
        """The model's input: ``"heatmaps"`` (``(B, S/4, S/4, J)`` 2D heatmaps) for network B
        alone, else ``"image"`` (``(B, S, S, 3)``); the pipeline's ``inputs``."""
        return "heatmaps" if self.model == "lifting" else "image"

    @property
    def xy_res(self):
        return self.input_size // 4

    @property
    def grid(self):
        return volume.VoxelGrid(self.xy_res, self.fine_depth, self.z_range_mm)

    @property
    def num_joints(self):
        return skeleton.get_joint_set(self.joint_set).num_joints

    def to_json(self):
        return json.dumps(dataclasses.asdict(self), indent=2)


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or Inf; the last good checkpoint is kept."""


# ------------------------------------------------------------------ building


def build_model(config):
    """The Keras model a config describes."""
    joints = config.num_joints
    if config.model == "volumetric":
        return volumetric.build_volumetric_model(config.depths, joints, config.backbone,
                                                 config.features, config.input_size,
                                                 config.hourglass_depth,
                                                 conv_bias=config.conv_bias)
    if config.model == "regression":
        return regression.build_regression_model(joints, config.backbone, config.features,
                                                 config.input_size, 1, config.hourglass_depth,
                                                 conv_bias=config.conv_bias)
    net_b = decoupled.build_lifting_network(joints, config.depths, config.backbone,
                                            config.features, config.xy_res, config.hourglass_depth,
                                            conv_bias=config.conv_bias)
    if config.model == "lifting":  # its layer names are the decoupled model's: init_checkpoint
        return net_b
    net_a = decoupled.build_2d_network(joints, config.decoupled_2d_stacks, config.backbone,
                                       config.features, config.input_size, config.hourglass_depth,
                                       conv_bias=config.conv_bias)
    return decoupled.build_decoupled_model(net_a, net_b)


def stack_outputs(outputs):
    """Model output dict -> list of per-stack heatmaps in stack order."""
    return [outputs[f"stack{i}"] for i in range(len(outputs))]


class TrainingForward:
    """``model(images, training=True)`` for :func:`compute_loss`, the last head left to the loss.

    The last stack's heatmaps feed nothing but the loss (each earlier stack's
    feed the next stack). So for volumetric and decoupled models this runs the
    model up to the last head's input and hands the loss that input with the
    head's kernel and bias (:class:`losses.HeadInput`), which
    :func:`losses.head_volumetric_loss_per_example` turns into the same loss
    and gradients without the heatmaps: at the paper's size that skips the
    head's 27 GFLOP (forward and gradients) and its 71 MB volume and gradient
    per batch of 4 (README: +7% training speed). The variables, checkpoints and
    inference are the model's own. The regression baseline, or
    ``fuse_head=False``, runs the model as it is.

    Args:
      config: the :class:`TrainConfig` the model was built from.
      model: its Keras model.
      fuse_head: leave the last head to the loss where the model allows.
    """

    def __init__(self, config, model, fuse_head=True):
        self.model = model
        self.head, self.trunk = None, None
        if config.loss != "volumetric":  # the head-fused form is Eq. 3's alone
            fuse_head = False
        if fuse_head and config.model in ("volumetric", "lifting"):
            prefix = "s" if config.model == "volumetric" else "b_s"
            self.head, self.trunk = self._to_last_head(model, prefix=prefix)
        elif fuse_head and config.model == "decoupled":
            # the head is network B's; A runs whole and feeds B's trunk
            net_a, net_b = model.get_layer("net_a"), model.get_layer("net_b")
            self.head, trunk_b = self._to_last_head(net_b, prefix="b_s")
            if trunk_b is not None:
                image = keras.Input(net_a.input_shape[1:], name="image")
                out_a = net_a(image)
                out_b = trunk_b(out_a[f"stack{len(out_a) - 1}"])
                stacks = [out_a[f"stack{i}"] for i in range(len(out_a))]
                stacks += [out_b[f"stack{i}"] for i in range(len(out_b))]
                self.trunk = keras.Model(image, {f"stack{i}": t for i, t in enumerate(stacks)},
                                         name=f"{model.name}_to_last_head")

    @staticmethod
    def _to_last_head(model, prefix):
        """(head, sub-model with the heads' outputs but the last one's input) or (None, None)."""
        last = len(model.outputs) - 1
        try:
            head = model.get_layer(f"{prefix}{last}{hourglass.HEAD_SUFFIX}")
        except ValueError:
            return None, None
        if not (tuple(head.kernel_size) == (1, 1) and tuple(head.strides) == (1, 1)
                and head.activation is keras.activations.linear):
            return None, None
        outputs = {f"stack{i}": model.get_layer(f"stack{i}").output for i in range(last)}
        outputs[f"stack{last}"] = head.input
        return head, keras.Model(model.inputs, outputs, name=f"{model.name}_to_last_head")

    def __call__(self, images):
        """``(B, S, S, 3)`` (network B: 2D heatmaps ``(B, S/4, S/4, J)``) ->
        ``{"stack0": heatmaps, ..., "stack{k-1}": heatmaps or HeadInput}``."""
        if self.trunk is None:
            return self.model(images, training=True)
        outputs = dict(self.trunk(images, training=True))
        last = f"stack{len(outputs) - 1}"
        outputs[last] = losses.HeadInput(outputs[last], self.head.kernel, self.head.bias)
        return outputs


def compute_loss(config, outputs, targets):
    """Per-example total loss ``(B,)`` and per-stack per-example losses."""
    mask = targets["mask"]
    if config.model == "regression":
        loss = losses.coordinate_loss(outputs["coords"], targets["joints_voxel"], config.xy_res,
                                      config.fine_depth, mask=mask, per_example=True)
        return loss, [loss]
    return losses.multi_stage_loss(stack_outputs(outputs), targets["joints_voxel"],
                                   config.stack_depths, config.loss_weights or None, config.sigma,
                                   config.fine_depth, mask=mask, per_example=True,
                                   loss=config.loss,
                                   distribution_weight=config.distribution_loss_weight)


def predict_voxels(config, outputs, method=None):
    """Model outputs -> ``(B, J, 3)`` fine-grid voxel coordinates of the last stack."""
    if config.model == "regression":
        scale = tf.constant([config.xy_res, config.xy_res, config.fine_depth], tf.float32)
        return (tf.cast(outputs["coords"], tf.float32) + 0.5) * scale
    last = stack_outputs(outputs)[-1]
    voxels, _ = volume.decode_heatmaps_tf(last, config.num_joints, config.fine_depth,
                                          method or config.decode)
    return voxels


def make_strategy(name):
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _task(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return None, 0
    return resolver.task_type, resolver.task_id


def is_chief(strategy):
    task_type, task_id = _task(strategy)
    if task_type is None:
        return True
    cluster = strategy.cluster_resolver.cluster_spec().as_dict()
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and "chief" not in cluster)


def make_optimizer(config):
    lr = config.learning_rate
    if config.lr_schedule == "step":
        values = [lr * config.lr_decay_factor ** i for i in range(len(config.lr_decay_steps) + 1)]
        lr = keras.optimizers.schedules.PiecewiseConstantDecay(list(config.lr_decay_steps), values)
    elif config.lr_schedule == "cosine":
        lr = keras.optimizers.schedules.CosineDecay(lr, config.train_steps)
    optimizer = keras.optimizers.RMSprop(learning_rate=lr)
    if config.mixed_precision == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def _escape(name):
    # tf.train.Checkpoint's escaping of dict keys in checkpoint names
    return name.replace(".", "..").replace("/", ".S")


def _unescape(name):
    return re.sub(r"\.(.)", lambda m: "." if m.group(1) == "." else "/", name)


# where a checkpoint keeps the weight of layer path P: f"{_BY_NAME}{_escape(P)}{_VALUE}"
_BY_NAME, _VALUE = "weights_by_name/", "/.ATTRIBUTES/VARIABLE_VALUE"


def checkpoint_weight_shapes(path):
    """Weight path (``layer/.../name``) -> shape of each weight a tf_volpose checkpoint stores."""
    shapes = tf.train.load_checkpoint(path).get_variable_to_shape_map()
    return {_unescape(k[len(_BY_NAME):-len(_VALUE)]): tuple(shape) for k, shape in shapes.items()
            if k.startswith(_BY_NAME) and k.endswith(_VALUE)}


def check_checkpoint_matches(model, path, config, name="checkpoint"):
    """Raises a ValueError naming ``path`` unless it holds exactly ``model``'s weights.

    Same layer paths and shapes, checked from the file before anything is
    restored: a restore that fails midway leaves some variables assigned and
    TensorFlow logging a warning for each value it did not restore, which buries
    the error. The message names the first differing weight of each kind and,
    where the difference is the convolution biases, the flag.
    """
    stored = checkpoint_weight_shapes(path)
    if not stored:  # not written by tf_volpose's training: left to the restore's own checks
        return
    wanted = {w.path: tuple(w.shape) for w in model.weights}
    differ = sorted(p for p in wanted.keys() & stored.keys() if wanted[p] != stored[p])
    missing, extra = sorted(wanted.keys() - stored.keys()), sorted(stored.keys() - wanted.keys())
    problems = []
    if differ:
        problems.append(f"{len(differ)} weights differ in shape, e.g. {differ[0]!r}: "
                        f"{stored[differ[0]]} in the checkpoint, {wanted[differ[0]]} in the model")
    if missing:
        problems.append(f"{len(missing)} weights of the model are not in it, e.g. {missing[0]!r}")
    if extra:
        problems.append(f"it has {len(extra)} weights the model lacks, e.g. {extra[0]!r}")
    if not problems:
        return
    if any(p.endswith("/bias") for p in extra) and not config.conv_bias:
        hint = " It was saved with convolution biases: set conv_bias=True (--conv_bias)."
    elif any(p.endswith("/bias") for p in missing) and config.conv_bias:
        hint = " It was saved without convolution biases: set conv_bias=False (--conv_bias)."
    else:
        hint = (" Was it trained with other model settings (features, depths, backbone, "
                "joint set)? Its run's config.json has them.")
    raise ValueError(f"{name} {path!r} does not match the model of this config: "
                     f"{'; '.join(problems)}.{hint}")


def restore_by_name(model, paths):
    """Initialises ``model`` weights from tf_volpose checkpoints, matching layer paths.

    Args:
      model: the Keras model.
      paths: a checkpoint (or run directory), or several, comma-separated or as a list:
        the decoupled model takes network A's weights from one run (``net_a``'s layers, a
        2D run's) and network B's from another (``b_*``, a ``model=lifting`` run). Read
        in order; a weight that several hold takes the last one's value.

    Returns:
      ``(restored, not_found)``: lists of weight paths.
    """
    paths = [p.strip() for p in paths.split(",")] if isinstance(paths, str) else list(paths)
    restored = set()
    for path in paths:
        path = checkpoint_path(path, "init_checkpoint")
        try:
            reader = tf.train.load_checkpoint(path)
        except (tf.errors.NotFoundError, tf.errors.DataLossError, ValueError) as e:
            raise ValueError(f"init_checkpoint {path!r} cannot be read: {e}") from e
        shapes = reader.get_variable_to_shape_map()
        for weight in model.weights:
            key = f"{_BY_NAME}{_escape(weight.path)}{_VALUE}"
            if key in shapes and tuple(shapes[key]) == tuple(weight.shape):
                weight.assign(reader.get_tensor(key))
                restored.add(weight.path)
    return ([w.path for w in model.weights if w.path in restored],
            [w.path for w in model.weights if w.path not in restored])


# ---------------------------------------------------------------- summaries


def image_summaries(config, images, outputs, targets, max_images=3):
    """:func:`summaries.training_images` of a batch and ``model(images)``'s outputs: the
    decoded and ground-truth joints in crop pixels and, for heatmap models, every stack.
    Network B's input heatmaps (``model=lifting``) are shown as a grey crop: their
    maximum over the joints, at the crop's size."""
    to_px = config.input_size / config.xy_res
    if config.input_name == "heatmaps":
        grey = tf.reduce_max(images, axis=-1, keepdims=True)
        images = tf.image.resize(tf.tile(grey, [1, 1, 1, 3]), [config.input_size] * 2,
                                 method="nearest")
    stacks = [] if config.model == "regression" else stack_outputs(outputs)
    return summaries.training_images(
        images, predict_voxels(config, outputs)[..., :2] * to_px,
        targets["joints_voxel"][..., :2] * to_px, stacks,
        skeleton.get_joint_set(config.joint_set), max_images)


# ---------------------------------------------------------------- the loop


class _StopFlag:
    """Set by SIGTERM/SIGINT; the loop checkpoints and returns at the next step."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        self.signal = signal.Signals(signum).name

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False


def _ensure_data(config, report):
    """Renders the synthetic set into ``config.synthetic_dir`` when it is needed.

    Needed when ``train_pattern`` matches nothing or only files in that
    directory, and the directory holds no complete set (see
    :func:`synthetic.rendered_set`): shards that an interrupted rendering
    left used to be taken for the set, so a run after a Ctrl-C trained on part
    of it and found no validation split. A complete set is used as it is, even
    if rendered with other counts (a note says so; delete the directory to
    render anew). Two runs starting together render it once: the second waits.
    """
    try:
        files = pipeline.list_files(config.train_pattern)
    except ValueError:
        if not config.synthetic_dir:
            raise
        files = []
    if not config.synthetic_dir:
        return
    directory = (None if _files.is_url(config.synthetic_dir)
                 else os.path.realpath(config.synthetic_dir))

    def in_synthetic_dir(path):
        return directory is not None and not _files.is_url(path) and \
            os.path.commonpath([directory, os.path.realpath(path)]) == directory

    if files and not any(map(in_synthetic_dir, files)):
        return  # real data elsewhere
    _files.check_directory(_files.require_local(config.synthetic_dir, "synthetic_dir"),
                           "synthetic_dir")
    if not files:
        _check_patterns_find_rendered(config)
    wanted = {"num_train": config.synthetic_train, "num_val": config.synthetic_val,
              "seed": config.seed}

    def waiting():
        report({"event": "data", "message": f"waiting for another run rendering synthetic "
                f"records into {config.synthetic_dir}"})

    with _files.exclusive_lock(os.path.join(config.synthetic_dir, ".render.lock"), waiting):
        rendered = synthetic.rendered_set(config.synthetic_dir)
        if rendered is not None:
            if any(rendered.get(k) != v for k, v in wanted.items()) or rendered.get("motion"):
                report({"event": "data", "message": f"using the synthetic set in "
                        f"{config.synthetic_dir} as it was rendered ({rendered}), not "
                        f"{wanted}: delete the directory to render it anew"})
            return
        why = ("the shards there are not a complete set (an interrupted rendering, or one "
               "older than synthetic.json)" if files else "no records match train_pattern")
        report({"event": "data", "message": f"rendering {config.synthetic_train} + "
                f"{config.synthetic_val} synthetic records into {config.synthetic_dir}: {why}"})
        counts = synthetic.generate(config.synthetic_dir, config.synthetic_train,
                                    config.synthetic_val, seed=config.seed)
        report({"event": "data", "message": f"wrote {counts} records"})


def _check_patterns_find_rendered(config):
    """Raises a ValueError, before anything is rendered, when ``train_pattern`` (or
    ``val_pattern``, where set and matching nothing yet) would not match the shards
    rendered into ``synthetic_dir``: rendering there could not help, and a run given
    only another ``synthetic_dir`` used to render for minutes, then fail with "no
    files match" and a hint to convert a dataset."""
    for name, split in (("train_pattern", "train"), ("val_pattern", "val")):
        pattern = getattr(config, name)
        if not pattern or (split == "val" and _matches_anything(pattern)):
            continue
        shard = records.shard_name(config.synthetic_dir, split, 0)
        # realpath as well as abspath: a symlink on either side still finds the shards
        if not any(fnmatch.fnmatchcase(norm(shard), norm(p.strip()))
                   for p in pattern.split(",") for norm in (os.path.abspath, os.path.realpath)):
            raise ValueError(
                f"{name} {pattern!r} matches no files and would not match the synthetic "
                f"records rendered into synthetic_dir {config.synthetic_dir!r} (such as "
                f"{os.path.basename(shard)}): point it into that directory, e.g. "
                f"{os.path.join(config.synthetic_dir, split + '-*')!r}")


def _matches_anything(pattern):
    try:
        return bool(pipeline.list_files(pattern))
    except ValueError:
        return False


def _no_usable_records(name, file_pattern):
    return (f"{name} {file_pattern!r} yields no usable records: its files hold no valid "
            f"tf_volpose records (unreadable and invalid ones are skipped, each with a warning)")


def train(config: TrainConfig, dry_run: bool = False,
          progress: Optional[Callable[[dict], None]] = None):
    """Trains (or resumes) the model of ``config``.

    Args:
      config: a :class:`TrainConfig`.
      dry_run: build the data pipeline and the model, then return without training.
      progress: optional callable receiving a dict per step (``step``, ``loss``,
        ``images_per_sec``, ``eta_sec``, ``learning_rate``) and per event
        (``event`` in ``data``, ``restored``, ``init``, ``validation``,
        ``checkpoint``, ``interrupted``).

    Returns:
      dict with ``model`` (the Keras model), ``params``, ``summary`` (text),
      ``step``, ``loss``, ``validation`` (list of per-run dicts), ``checkpoint``,
      ``interrupted`` (signal name or None).

    Raises:
      TrainingDivergedError: the loss became NaN/Inf; the last good checkpoint is kept.
    """
    report = progress or (lambda info: None)
    previous_policy = keras.mixed_precision.global_policy().name
    if config.mixed_precision != "none":
        keras.mixed_precision.set_global_policy(config.mixed_precision)
    try:
        return _train(config, dry_run, report)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(config, dry_run, report):
    # a bucket out of reach, or a file where the directory goes, fails here, named
    _files.check_directory(config.model_dir, "model_dir")
    strategy = make_strategy(config.strategy)
    chief = is_chief(strategy)
    if chief:
        _ensure_data(config, report)
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"batch_size={config.batch_size} is not divisible by the "
                         f"{replicas} replicas in sync")
    per_replica = config.batch_size // replicas

    with strategy.scope():
        model = build_model(config)
        optimizer = make_optimizer(config)
        # Create the slot variables now: variables created inside the first traced
        # step under a distribution strategy fail to initialise.
        optimizer.build(model.trainable_variables)
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        checkpoint = tf.train.Checkpoint(
            step=step, model=model, optimizer=optimizer,
            weights_by_name={w.path: w for w in model.weights})

    summary_lines = []
    model.summary(print_fn=lambda line, *a, **k: summary_lines.append(line))
    result = {"model": model, "params": model.count_params(), "summary": "\n".join(summary_lines),
              "step": 0, "loss": None, "validation": [], "checkpoint": None, "interrupted": None}

    task_type, task_id = _task(strategy)
    directory = config.model_dir if chief else os.path.join(config.model_dir,
                                                            f"workertemp_{task_id}")
    manager = tf.train.CheckpointManager(checkpoint, directory, config.keep_checkpoints)
    if manager.latest_checkpoint:
        check_checkpoint_matches(model, manager.latest_checkpoint, config,
                                 f"model_dir {directory!r} holds a run to resume, but its checkpoint")
        checkpoint.restore(manager.latest_checkpoint).assert_existing_objects_matched()
        report({"event": "restored", "checkpoint": manager.latest_checkpoint,
                "step": int(step.numpy())})
    elif config.init_checkpoint:
        restored, not_found = restore_by_name(model, config.init_checkpoint)
        report({"event": "init", "restored": restored, "not_found": not_found})

    data_options = pipeline_options(config)
    # the training files are counted (and checked) once here, not by each pipeline
    train_options = dict(data_options, counts=pipeline.record_counts(config.train_pattern))
    start_step = int(step.numpy())

    def dataset_fn(context):
        batch = context.get_per_replica_batch_size(config.batch_size)
        pipelines = context.num_input_pipelines
        ds = pipeline.make_dataset(
            config.train_pattern, training=True, batch_size=batch,
            num_shards=pipelines, shard_index=context.input_pipeline_id,
            skip=start_step * config.batch_size // pipelines, **train_options)
        # Only what the step needs crosses to the replicas (no strings or metadata).
        return ds.map(lambda inputs, targets: (inputs, {k: targets[k] for k in TRAIN_TARGETS}))

    # the repeated stream would never end if no record decodes: one pass tells first
    if not dry_run and not pipeline.yields_an_example(config.train_pattern, **train_options):
        raise ValueError(_no_usable_records("train_pattern", config.train_pattern))
    dataset = strategy.distribute_datasets_from_function(dataset_fn)
    val_batches = []
    if config.val_pattern and chief:
        val = pipeline.make_dataset(config.val_pattern, training=False,
                                    batch_size=min(per_replica * 4, config.val_examples),
                                    **data_options)
        taken = 0
        for inputs, targets in val:
            keep = min(int(inputs[config.input_name].shape[0]), config.val_examples - taken)
            val_batches.append(({k: v[:keep] for k, v in inputs.items()},
                                {k: v[:keep] for k, v in targets.items()}))
            taken += keep
            if taken >= config.val_examples:
                break
        if not val_batches and not dry_run:  # a dry run only builds the pipeline
            raise ValueError(_no_usable_records("val_pattern", config.val_pattern))
    if dry_run:
        return result
    if chief:  # before the first step: a run killed at any point can be evaluated and exported
        _files.write_text_atomically(os.path.join(config.model_dir, "config.json"),
                                     config.to_json())

        def computing(why):
            report({"event": "data", "message": f"computing the bone lengths of "
                    f"{config.train_pattern} into {config.model_dir} ({why})"})

        if config.predicts_3d:  # the run directory alone then exports and predicts
            bone_lengths.store_in_run(config.train_pattern, config.model_dir,
                                      skeleton.get_joint_set(config.joint_set), computing)

    forward = TrainingForward(config, model)

    @tf.function
    def train_step(iterator):
        def step_fn(inputs, targets):
            with tf.GradientTape() as tape:
                outputs = forward(inputs[config.input_name])
                per_example, per_stack = compute_loss(config, outputs, targets)
                loss = tf.nn.compute_average_loss(per_example, global_batch_size=config.batch_size)
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            stack_losses = [tf.nn.compute_average_loss(l, global_batch_size=config.batch_size)
                            for l in per_stack]
            return loss, stack_losses

        inputs, targets = next(iterator)
        loss, stack_losses = strategy.run(step_fn, args=(inputs, targets))
        reduce = lambda x: strategy.reduce(tf.distribute.ReduceOp.SUM, x, axis=None)
        return reduce(loss), [reduce(l) for l in stack_losses]

    @tf.function
    def predict(images):
        return model(images, training=False)

    logdir = os.path.join(config.model_dir, "train")
    writer = tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()

    @contextlib.contextmanager
    def writing_summaries(at_step=None):
        """The writer as default; its write errors (a full disk) as an OSError."""
        try:
            with writer.as_default(step=at_step):
                yield
        except tf.errors.OpError as e:
            if logdir not in str(e):
                raise  # not the events file's
            raise OSError(f"cannot write TensorBoard events into {logdir} "
                          f"({_files.error_message(e)}); {_kept_checkpoint(manager)}") from e

    if chief and start_step == 0:
        with writing_summaries():
            summaries.write_hparams(config)

    def write_image_summaries():
        inputs, targets = val_batches[0]
        summaries.write_images(image_summaries(config, inputs[config.input_name],
                                               predict(inputs[config.input_name]), targets))

    def validate(at_step):
        if not val_batches:
            return None
        voxel_err, mm_err, count_3d = [], [], 0
        for inputs, targets in val_batches:
            voxels = predict_voxels(config, predict(inputs[config.input_name]))
            gt = targets["joints_voxel"]
            voxel_err.append(tf.reduce_mean(tf.norm(voxels - gt, axis=-1), axis=-1).numpy())
            has_3d = targets["has_3d"].numpy() > 0
            if has_3d.any():
                K = camera.intrinsics_matrix_tf(targets["focal"], targets["principal"])
                lifted = volume.lift_tf(voxels, K, targets["center"], targets["scale"],
                                        targets["root_depth"], config.grid)
                pred = lifted - lifted[:, :1]
                true = targets["joints_3d"] - targets["joints_3d"][:, :1]
                err = tf.reduce_mean(tf.norm(pred - true, axis=-1), axis=-1).numpy()
                mm_err.append(err[has_3d])
                count_3d += int(has_3d.sum())
        entry = {"step": at_step, "mpjpe_voxels": float(np.concatenate(voxel_err).mean()),
                 "mpjpe_mm": float(np.concatenate(mm_err).mean()) if mm_err else None,
                 "examples": int(sum(len(v) for v in voxel_err))}
        with writing_summaries(at_step):
            summaries.write_validation(entry)
            if config.image_summary_every:
                write_image_summaries()
        result["validation"].append(entry)
        report({"event": "validation", **entry})
        return entry

    if chief and start_step == 0:
        validate(0)  # the untrained baseline, so the curve shows the fall
    iterator = iter(dataset)
    last_loss = None
    with _StopFlag() as stop:
        window_start, window_step = time.time(), start_step
        while int(step.numpy()) < config.train_steps:
            try:
                loss, stack_losses = train_step(iterator)
            except tf.errors.OutOfRangeError:  # the repeated training stream is empty
                raise ValueError(_no_usable_records("train_pattern", config.train_pattern)) \
                    from None
            loss_value = float(loss)
            current = int(step.numpy()) + 1
            if not math.isfinite(loss_value):
                raise TrainingDivergedError(
                    f"loss is {loss_value} at step {current}; stopped without saving. The last "
                    f"good checkpoint is {manager.latest_checkpoint or '(none yet)'} in "
                    f"{directory}")
            step.assign(current)
            last_loss = loss_value
            now = time.time()
            rate = (current - window_step) / max(now - window_start, 1e-9)
            report({"step": current, "loss": loss_value, "images_per_sec": rate * config.batch_size,
                    "eta_sec": (config.train_steps - current) / max(rate, 1e-9),
                    "learning_rate": float(_current_lr(optimizer))})
            if current % config.summary_every == 0:
                with writing_summaries(current):
                    summaries.write_step_scalars(loss_value, stack_losses, _current_lr(optimizer),
                                                 rate, config.batch_size)
                window_start, window_step = now, current
            if config.image_summary_every and current % config.image_summary_every == 0 and chief \
                    and val_batches and not (config.val_every and current % config.val_every == 0):
                with writing_summaries(current):
                    write_image_summaries()
            if current % config.checkpoint_every == 0:
                result["checkpoint"] = save_checkpoint(manager, current)
                report({"event": "checkpoint", "path": result["checkpoint"], "step": current})
            if chief and config.val_every and current % config.val_every == 0 \
                    and current < config.train_steps:
                validate(current)
            if stop.signal:
                result["interrupted"] = stop.signal
                break
    final = int(step.numpy())
    if manager.latest_checkpoint is None or not manager.latest_checkpoint.endswith(f"-{final}"):
        result["checkpoint"] = save_checkpoint(manager, final)
        report({"event": "checkpoint", "path": result["checkpoint"], "step": final})
    else:
        result["checkpoint"] = manager.latest_checkpoint
    if result["interrupted"]:
        report({"event": "interrupted", "signal": result["interrupted"], "step": final})
    elif chief and final > start_step:
        validate(final)
    with writing_summaries():
        writer.flush()
    if not chief:
        try:  # its checkpoints only took part in the chief's saves
            tf.io.gfile.rmtree(directory)
        except tf.errors.OpError:
            pass  # already gone
    result.update(step=final, loss=last_loss)
    return result


def save_checkpoint(manager, number):
    """``manager.save(checkpoint_number=number)``; an OSError naming the directory and
    the checkpoint that is kept when it cannot be written (a full disk, no access).

    TensorFlow writes a checkpoint into ``<prefix>-<number>_temp/`` and moves it into
    place at the end; a failed write left that directory behind, and a traceback.
    The checkpoints already there stay as they were and a rerun resumes from the last.
    """
    try:
        return manager.save(checkpoint_number=number)
    except (tf.errors.OpError, OSError) as e:
        directory = manager.directory
        for temp in tf.io.gfile.glob(os.path.join(directory, f"*-{number}_temp")):
            tf.io.gfile.rmtree(temp)
        raise OSError(f"cannot write checkpoint {number} into {directory} "
                      f"({_files.error_message(e)}); {_kept_checkpoint(manager)}") from e


def _kept_checkpoint(manager):
    latest = manager.latest_checkpoint
    if latest:
        return (f"the last complete checkpoint, {latest}, is kept: free space (or fix access) "
                f"and run again to resume from it")
    return "no earlier checkpoint was written: free space (or fix access) and run again"


def weights_digest(model, trainable_only=True):
    """SHA-256 of the weights' bytes: equal digests mean identical weights.

    By default only trainable weights: batch-norm moving statistics are updated
    from each worker's own batches and differ between workers (as with ``fit``).
    """
    import hashlib
    digest = hashlib.sha256()
    for weight in (model.trainable_weights if trainable_only else model.weights):
        digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
    return digest.hexdigest()[:16]


def _current_lr(optimizer):
    lr = optimizer.learning_rate
    return lr.numpy() if hasattr(lr, "numpy") else lr


def pipeline_options(config):
    """The :func:`pipeline.make_dataset` options (crop, grid, seed, augmentation) of ``config``."""
    augmentation = (augment.AugmentOptions(flip_prob=config.flip_prob) if config.augment
                    else augment.NO_AUGMENTATION)
    return dict(input_size=config.input_size, xy_res=config.xy_res, depth=config.fine_depth,
                z_range_mm=config.z_range_mm, joint_set=config.joint_set, seed=config.seed,
                deterministic=config.deterministic, augmentation=augmentation,
                inputs=config.input_name, sigma=config.sigma)


def checkpoint_path(checkpoint, name="checkpoint"):
    """The checkpoint prefix ``checkpoint`` names: a model directory's latest, or itself.

    Raises a ValueError naming ``name`` and the path when there is none, before
    anything is built or read.
    """
    if tf.io.gfile.isdir(checkpoint):
        latest = tf.train.latest_checkpoint(checkpoint)
        if latest is None:
            raise ValueError(f"{name} {checkpoint!r}: no checkpoint in this directory")
        return latest
    if not _files.exists(checkpoint + ".index", name):
        directory = os.path.dirname(checkpoint) or "."
        present = sorted((p[:-len(".index")] for p in _files.glob_files(
            os.path.join(directory, "*.index"))), key=_step_of)
        names = [os.path.basename(p) for p in present]
        if len(names) > 6:  # the latest ones, which are what is usually meant
            names = [f"{len(names) - 5} older ones"] + names[-5:]
        hint = f"; {directory} holds {', '.join(names)}" if names else ""
        raise ValueError(f"{name} {checkpoint!r}: neither a model directory nor a checkpoint "
                         f"(no {checkpoint}.index){hint}")
    return checkpoint


def _step_of(prefix):
    """``ckpt-123`` -> 123, for ordering checkpoints by step (others first)."""
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def run_directory(checkpoint):
    """The model directory of ``checkpoint``: the directory itself, or a checkpoint file's."""
    return checkpoint if tf.io.gfile.isdir(checkpoint) else os.path.dirname(checkpoint)


def saved_config(model_dir):
    """:func:`load_config` of ``model_dir``, or ``None`` when it saved none."""
    if not _files.exists(os.path.join(model_dir, "config.json"), "model_dir's config"):
        return None
    return load_config(model_dir)


def load_config(model_dir):
    """The :class:`TrainConfig` a run saved in ``model_dir/config.json``."""
    path = os.path.join(model_dir, "config.json")
    try:
        values = json.loads(_files.read_text(path))
    except (OSError, ValueError) as e:  # unreadable, or not JSON (a damaged copy)
        raise ValueError(f"cannot read the training config {path}: "
                         f"{_files.error_reason(e)}") from e
    if not isinstance(values, dict):
        raise ValueError(f"{path} holds no training config (a JSON object of TrainConfig "
                         f"fields), got {type(values).__name__}")
    for key in ("depths", "loss_weights", "lr_decay_steps"):
        values[key] = tuple(values.get(key, ()))
    # runs saved before the field existed were built with these biases
    values.setdefault("conv_bias", True)
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        return TrainConfig(**{k: v for k, v in values.items() if k in known})
    except (TypeError, ValueError) as e:  # a value TrainConfig refuses
        raise ValueError(f"{path}: {e}") from e
