"""SavedModel export for TF Serving: one request in, the full answer out.

:class:`ServingModule` runs everything inside the graph: decoding the JPEG/PNG
bytes, cropping the box, the network, sub-voxel decoding, root depth from bone
lengths (the mean training ones, or ones calibrated to the model), and lifting to
camera-frame millimetres.

Signatures (batch dimension ``None``):

* ``serving_default``: ``image_bytes`` (string ``[None]``), ``box`` (float
  ``[None, 4]``: x, y, w, h px; the crop is the square of side ``max(w, h)``
  around the box centre) -> ``joints_3d_mm`` ``[None, J, 3]`` (camera frame,
  default intrinsics: focal ``max(H, W) / (2 tan(fov / 2))`` with
  ``fov = DEFAULT_FOV_DEG``, principal point at the image centre),
  ``joints_2d_px`` ``[None, J, 2]`` (original image), ``joints_voxel``
  ``[None, J, 3]``, ``confidence`` ``[None, J]`` (heatmap peak), ``root_depth_mm`` ``[None]``.
* ``with_intrinsics``: the same plus ``focal`` and ``principal_point`` ``[None, 2]`` px.
* ``heatmaps``: the final volume ``[None, H, W, J*d]`` for debugging (17.8 MB per image
  at 64^3 x 17: above gRPC's default 4 MB message limit; see ``serving/README.md``).

Bad inputs (undecodable bytes, non-finite or non-positive box, a box with no
pixel of its image in it, focal or principal point, an empty batch, inputs of
different batch sizes, a tensor not of its signature's shape) fail with
``InvalidArgumentError`` naming the input, which TF Serving returns as
``INVALID_ARGUMENT``. No ``jit_compile`` (TF Serving cannot run XLA functions on GPU).

:func:`export_saved_model` writes ``<export_base>/<version>/`` through a
temporary sibling renamed at the end, so a server never sees a half-written
version (exports into one base may run at once: each removes only the temporary
directories of exports no longer running, and one whose version another took
meanwhile moves to the next), and adds warm-up requests in ``assets.extra/tf_serving_warmup_requests``
and what the version was made from in ``assets.extra/export_info.json`` (precision,
decoding, intrinsics, the bone lengths baked into the graph, the model's config
and, from ``tools/export.py``, the checkpoint and bone-lengths file); TF Serving
ignores the latter.
"""

import dataclasses
import functools
import glob
import json
import os
import re
import shutil
import socket
import uuid

import cv2
import keras
import numpy as np
import tensorflow as tf

from tf_volpose import _checks, _files, camera, crop, skeleton, training, volume
from tf_volpose.models import hourglass

DEFAULT_FOV_DEG = camera.DEFAULT_FOV_DEG
WARMUP_FILE = "tf_serving_warmup_requests"
INFO_FILE = "export_info.json"
PRECISIONS = ("fp32", "bf16")
SIGNATURES = ("serving_default", "with_intrinsics", "heatmaps")  # ServingModule methods


class ServingModule(tf.Module):
    """The exported inference graph (also used in memory by ``tools/predict.py``).

    Args:
      model: the trained Keras model.
      config: its :class:`training.TrainConfig`.
      bone_lengths: (J-1,) bone lengths, mm, that the root-depth fit matches: the
        mean training ones, or ones calibrated to the model
        (:func:`evaluation.calibrate_bone_lengths`).
      decode: heatmap decoding (default ``local_softargmax``; ``softargmax``
        for a run trained with the integral loss, whose volumes are logits).
      fov_deg: field of view of the default intrinsics.
    """

    def __init__(self, model, config, bone_lengths, decode=None, fov_deg=DEFAULT_FOV_DEG):
        super().__init__(name="volpose")
        # checked here: in the graph, a zero field of view gives infinite focal lengths,
        # and the export was written as if it were fine
        if not 0.0 < float(fov_deg) < 180.0:
            raise ValueError(f"fov_deg must be in (0, 180) degrees, got {fov_deg!r}")
        if decode is None:
            decode = "softargmax" if config.loss == "integral" else "local_softargmax"
        if decode not in volume.DECODE_METHODS:
            raise ValueError(f"decode must be one of {volume.DECODE_METHODS}, got {decode!r}")
        if config.model == "regression":  # before: a KeyError traceback from inside the trace
            raise ValueError("a coordinate-regression model (model='regression', the paper's "
                             "Table 1 baseline) has no heatmaps, and the signatures serve "
                             "heatmaps: export and predict take volumetric and decoupled "
                             "models; evaluate this one with tools/eval.py")
        if config.model == "lifting":
            raise ValueError("network B alone (model='lifting') takes 2D heatmaps, not an "
                             "image, and the signatures take images: export the decoupled "
                             "model initialised from it (model='decoupled', "
                             "init_checkpoint=this run and network A's); evaluate this one "
                             "with tools/eval.py")
        self.model = model
        self.config = config
        self.joint_set = skeleton.get_joint_set(config.joint_set)
        self.decode = decode
        lengths = _checks.as_array("bone_lengths", bone_lengths,
                                   shape=(len(self.joint_set.bones),))
        _checks.positive("bone_lengths", lengths)
        self.bone_lengths = tf.constant(lengths, tf.float32)
        self.fov_deg = float(fov_deg)
        images = tf.TensorSpec([None], tf.string, name="image_bytes")
        boxes = tf.TensorSpec([None, 4], tf.float32, name="box")
        pairs = [tf.TensorSpec([None, 2], tf.float32, name=n) for n in ("focal", "principal_point")]
        # The network and the decoding are each one traced function that the signatures
        # call: traced once, not in each signature (tracing is most of an export's time),
        # and held once in the SavedModel. The graph code has no Python control flow on
        # tensors, and AutoGraph's conversion of it was 2-3.5 s of a 10.5-12.6 s export
        # (hg 1,2,4,64, 64 features, 128x128; README, "Export time").
        graph = functools.partial(tf.function, autograph=False)
        side, channels = config.grid.xy_res, self.joint_set.num_joints * config.grid.depth
        self.network = graph(self._volume, input_signature=[
            tf.TensorSpec([None, config.input_size, config.input_size, 3], tf.float32)])
        self.answer = graph(self._answer, input_signature=[
            tf.TensorSpec([None, side, side, channels], tf.float32),
            tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None], tf.float32),
            tf.TensorSpec([None, 2], tf.float32), tf.TensorSpec([None, 2], tf.float32)])
        self.serving_default = graph(self._default, input_signature=[images, boxes])
        self.with_intrinsics = graph(self._with_intrinsics, input_signature=[images, boxes] + pairs)
        self.heatmaps = graph(self._heatmaps, input_signature=[images, boxes])

    # -- graph pieces

    @staticmethod
    def _checked(image_bytes, box, **per_image):
        """The inputs, gated by checks that name what is wrong with them.

        ``per_image``: further ``(B, ...)`` inputs whose batch size must match.
        Every output depends on the checks, so a bad request fails with their
        message instead of first failing deeper (``map_fn``, the network, the
        intrinsics) with one that names no input.

        Each input is first held to its signature's shape at run time
        (``EnsureShape``: ``Shape of tensor box [1,3] is not compatible with
        expected shape [?,4]``). TF Serving does not check a request's tensors
        against the signature (tensorflow/serving#1527), and a rank check
        written with ``tf.shape`` is constant-folded from the signature's
        static shape; without it a ``(B, 3)`` box or a focal of 3 numbers was
        answered as if valid, and other shapes failed deep in the graph.
        """
        image_bytes = tf.ensure_shape(image_bytes, image_bytes.shape)
        box = tf.cast(tf.ensure_shape(box, box.shape), tf.float32)
        per_image = {name: tf.ensure_shape(value, value.shape) for name, value in per_image.items()}
        batch = tf.shape(image_bytes)[0]
        checks = [
            tf.debugging.assert_positive(batch, "image_bytes holds no images (empty batch)"),
            tf.debugging.assert_equal(batch, tf.shape(box)[0],
                                      "image_bytes and box must have the same batch size"),
        ] + [tf.debugging.assert_equal(batch, tf.shape(value)[0],
                                       f"image_bytes and {name} must have the same batch size")
             for name, value in per_image.items()]
        with tf.control_dependencies(checks):
            image_bytes = tf.identity(image_bytes)
            box = tf.debugging.assert_all_finite(box, "box must be finite")
            per_image = {name: tf.identity(value) for name, value in per_image.items()}
        with tf.control_dependencies([tf.debugging.assert_positive(
                box[:, 2:], "box width and height must be positive")]):
            box = tf.identity(box)
        return image_bytes, box, per_image

    def _crops(self, image_bytes, box):
        """Decodes and crops each (checked) image; returns crops, (B, 2) image sizes (W, H),
        center, scale."""
        center, scale = crop.box_from_xywh_tf(box)
        size = self.config.input_size

        def one(args):
            data, xywh, c, s = args
            image = tf.io.decode_image(data, channels=3, expand_animations=False)
            hw = tf.cast(tf.shape(image)[:2], tf.float32)
            wh = tf.stack([hw[1], hw[0]])
            inside = tf.debugging.Assert(crop.box_overlaps_image_tf(xywh, wh), [
                "box (x, y, w, h)", xywh, "lies outside the image (width, height)", wh])
            with tf.control_dependencies([inside]):
                image = tf.image.convert_image_dtype(image, tf.float32)
            A = crop.crop_transform_tf(c, s, size)
            return crop.warp_image_tf(image, A, size), wh

        crops, sizes = tf.map_fn(one, (image_bytes, box, center, scale),
                                 fn_output_signature=(tf.TensorSpec([size, size, 3], tf.float32),
                                                      tf.TensorSpec([2], tf.float32)))
        return crops, sizes, center, scale

    def _volume(self, crops):
        """(B, S, S, 3) crops -> (B, xy_res, xy_res, J * depth) float32 heatmaps of the
        last stack."""
        outputs = self.model(crops, training=False)
        return tf.cast(outputs[f"stack{len(outputs) - 1}"], tf.float32)

    def _answer(self, heatmaps, center, scale, focal, principal):
        """Heatmaps, the boxes' (B, 2) center px and (B,) scale, and (B, 2) focal and
        principal point px -> the signatures' answer (joints in mm, px and voxels)."""
        grid = self.config.grid
        voxels, confidence = volume.decode_heatmaps_tf(heatmaps, self.joint_set.num_joints,
                                                       grid.depth, self.decode)
        K = camera.intrinsics_matrix_tf(focal, principal)
        root = volume.estimate_root_depth_tf(voxels, K, center, scale, self.bone_lengths, grid,
                                             self.joint_set)
        joints_3d = volume.lift_tf(voxels, K, center, scale, root, grid)
        joints_2d = volume.voxels_to_image_tf(voxels[..., :2], center, scale, grid.xy_res)
        return {"joints_3d_mm": joints_3d, "joints_2d_px": joints_2d, "joints_voxel": voxels,
                "confidence": confidence, "root_depth_mm": root}

    def default_intrinsics(self, sizes):
        """(B, 2) image sizes (W, H) -> default ``focal`` and ``principal_point``."""
        f = camera.focal_from_fov(tf.reduce_max(sizes, axis=-1), self.fov_deg)
        return tf.stack([f, f], axis=-1), sizes / 2.0

    # -- signatures

    def _default(self, image_bytes, box):
        image_bytes, box, _ = self._checked(image_bytes, box)
        crops, sizes, center, scale = self._crops(image_bytes, box)
        focal, principal = self.default_intrinsics(sizes)
        return self.answer(self.network(crops), center, scale, focal, principal)

    def _with_intrinsics(self, image_bytes, box, focal, principal_point):
        image_bytes, box, intrinsics = self._checked(image_bytes, box, focal=focal,
                                                     principal_point=principal_point)
        focal = tf.debugging.assert_all_finite(intrinsics["focal"], "focal must be finite")
        with tf.control_dependencies([tf.debugging.assert_positive(focal,
                                                                   "focal must be positive")]):
            focal = tf.identity(focal)
        principal_point = tf.debugging.assert_all_finite(intrinsics["principal_point"],
                                                         "principal_point must be finite")
        crops, _, center, scale = self._crops(image_bytes, box)
        return self.answer(self.network(crops), center, scale, focal, principal_point)

    def _heatmaps(self, image_bytes, box):
        image_bytes, box, _ = self._checked(image_bytes, box)
        crops, _, _, _ = self._crops(image_bytes, box)
        return {"heatmaps": self.network(crops)}


def versions(export_base):
    """The numbered version directories under ``export_base`` (local or a URL),
    ascending, whether complete or not."""
    names = (os.path.basename(p.rstrip("/"))
             for p in _files.glob_files(os.path.join(export_base, "*")))
    return sorted(int(name) for name in names if name.isdigit())


def next_version(export_base):
    return max(versions(export_base), default=0) + 1


def version_directory(path):
    """The SavedModel directory ``path`` means: ``path`` itself when it holds a
    ``saved_model.pb``, else the newest version under it that holds one (``path``
    is an export base, as TF Serving's ``--model_base_path`` reads it)."""
    if _files.exists(os.path.join(path, "saved_model.pb"), "SavedModel"):
        return path
    for version in reversed(versions(path)):
        candidate = os.path.join(path, str(version))
        if _files.exists(os.path.join(candidate, "saved_model.pb"), "SavedModel"):
            return candidate
    raise ValueError(f"{path!r} holds no SavedModel (saved_model.pb), nor does any numbered "
                     f"version directory under it: give an export version such as "
                     f"exports/volpose/1, or its export base")


def load_export(path):
    """Loads a tf_volpose export: ``(the loaded SavedModel, its directory)``.

    ``path`` is a version directory or an export base (the newest version:
    :func:`version_directory`). Keep the loaded object while its signatures
    (``loaded.signatures[name]``) are in use. A SavedModel without this
    module's signatures is a ValueError naming the ones it has.
    """
    directory = version_directory(path)
    loaded = tf.saved_model.load(directory)
    missing = [name for name in SIGNATURES if name not in loaded.signatures]
    if missing:
        raise ValueError(f"{directory} is not a tf_volpose export: it lacks the signatures "
                         f"{missing} (it has {sorted(loaded.signatures)}); export one with "
                         f"tools/export.py")
    return loaded, directory


def warmup_image(size=64):
    """A small synthetic JPEG (warm-up requests, benchmarks)."""
    yy, xx = np.mgrid[0:size, 0:size]
    image = np.stack([xx * 4 % 256, yy * 4 % 256, (xx + yy) * 2 % 256], -1).astype(np.uint8)
    return cv2.imencode(".jpg", image)[1].tobytes()


def write_warmup_requests(path, model_name="volpose", count=2):
    """TF Serving warm-up file: ``count`` PredictionLogs of one small JPEG each."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = warmup_image()
    with tf.io.TFRecordWriter(path) as writer:
        for _ in range(count):
            request = predict_pb2.PredictRequest(
                model_spec=model_pb2.ModelSpec(name=model_name, signature_name="serving_default"))
            request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto([image]))
            request.inputs["box"].CopyFrom(tf.make_tensor_proto([[0.0, 0.0, 64.0, 64.0]],
                                                                dtype=tf.float32))
            log = prediction_log_pb2.PredictionLog(
                predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def build_for_precision(model, config, precision):
    """The model itself for fp32; for bf16 the same weights in a ``mixed_bfloat16`` model.

    The bf16 model's heads compute in float32: their outputs are the heatmaps
    the sub-voxel decoding reads, and rounding them to bfloat16 (8-bit
    mantissa) was about a third of the typical joint's difference from fp32
    (median 0.97 -> 0.68 mm on a trained model, README) for ~3% of the time.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "fp32":
        return model
    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        low = training.build_model(config)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    low.set_weights(model.get_weights())
    for head in hourglass.head_layers(low):
        head.dtype_policy = "float32"  # its input is cast up, its output is not rounded down
    return low


def _saveable(functions, model):
    """A ``tf.Module`` holding ``functions`` and exactly the ``tf.Variable``s they read:
    those behind ``model``'s Keras variables.

    Saving the :class:`ServingModule` itself (which holds the Keras model) wrote
    a SavedModel that ``tf.saved_model.load`` restores but whose graph, as TF
    Serving's C++ loader and ``saved_model_cli run`` use it (a TF1 session that
    runs the saver's restore op), restored Keras 3's variable wrappers into one
    set of variable handles while the signatures read another: every request
    failed with ``Could not find variable ...`` (keras-team/keras#19274,
    tensorflow/serving#2250). Tracking the backend variables the traced
    functions capture, and not the model, leaves one set, each variable stored
    once. They are taken from the model, not from tracing the functions:
    ``tf.saved_model.save`` traces them again in its own context, so a trace
    here was thrown away: 3.3-4.6 s on top of an 8.6-10.4 s export (the model
    of the comment in :class:`ServingModule`). A captured variable missing here
    fails the save (an untracked resource).
    """
    root = tf.Module()
    for name, function in functions.items():
        setattr(root, name, function)
    # outside a layer's autocast scope, a Keras variable's value is its backend tf.Variable
    root.variables_read = [variable.value for variable in model.variables]
    return root


def _temporary_name(version):
    """``.tmp-<version>-<host>-<pid>-<random>``: the host and process tell a later
    export whether this one is still being written."""
    return f".tmp-{version}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _left_by_a_dead_export(path):
    """Whether the temporary directory ``path`` belongs to no running export.

    One of a process still running on this host is another export in progress
    (removing it made that export fail); one from another host (a shared file
    system) cannot be checked from here, so it is left too: TF Serving ignores
    such names. Names without host and process are those of older versions.
    """
    match = re.fullmatch(r"\.tmp-\d+-(.+)-(\d+)-[0-9a-f]{8}", os.path.basename(path))
    if not match:
        return True
    if match.group(1) != socket.gethostname():
        return False
    try:
        os.kill(int(match.group(2)), 0)  # signal 0: only whether the process exists
    except ProcessLookupError:
        return True
    except PermissionError:  # it exists, under another user
        pass
    return False


def _publish(tmp, export_base, version, chosen, info, attempts=10):
    """Writes ``info`` (with the version) into the complete export ``tmp`` and renames
    it to its version directory; returns that.

    Another export into the same base may take the version after it was picked:
    a version left to this function moves on to the next free one, a chosen one
    is a ValueError (``tmp`` is then removed by the caller, nothing is written).
    """
    for _ in range(attempts):
        final = os.path.join(export_base, str(version))
        _files.write_text_atomically(os.path.join(tmp, "assets.extra", INFO_FILE),
                                     json.dumps({"version": version, **info}, indent=1))
        try:
            os.rename(tmp, final)  # atomic; fails onto a non-empty directory
            return final
        except OSError:
            if not os.path.isdir(final):
                raise
            if chosen:
                raise ValueError(f"export version {final} appeared while this export was "
                                 f"written (another export into {export_base}?); nothing was "
                                 f"written: choose another --version") from None
            version = next_version(export_base)
    raise ValueError(f"{attempts} versions under {export_base} were taken while this export "
                     f"was written; nothing was written: run it again")


def export_saved_model(model, config, export_base, bone_lengths, version=None, precision="fp32",
                       decode=None, fov_deg=DEFAULT_FOV_DEG, model_name="volpose",
                       provenance=None):
    """Writes ``export_base/<version>/`` atomically; returns its path.

    Args:
      version: numeric version; default one more than the highest existing (or,
        should another export into ``export_base`` take that one meanwhile, the
        next free one; a chosen version taken meanwhile is a ValueError).
      precision: ``fp32`` or ``bf16`` (weights stay float32, compute in bfloat16
        except the heads; see :func:`build_for_precision`).
      provenance: JSON-ready dict added to ``assets.extra/export_info.json``
        (e.g. the checkpoint and bone-lengths file it was made from).

    Raises:
      ValueError: ``export_base`` is a URL (``gs://...``): a version appears
        whole only through a local rename; export locally, then copy it to a
        bucket with the version pinned (serving/README.md).
    """
    _files.check_directory(_files.require_local(export_base, "export_base"), "export_base")
    # built first: settings it refuses leave no export base behind
    module = ServingModule(build_for_precision(model, config, precision), config, bone_lengths,
                           decode, fov_deg)
    os.makedirs(export_base, exist_ok=True)
    for stale in filter(_left_by_a_dead_export, glob.glob(os.path.join(export_base, ".tmp-*"))):
        shutil.rmtree(stale, ignore_errors=True)
    chosen = version is not None
    version = int(version) if chosen else next_version(export_base)
    if version < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    final = os.path.join(export_base, str(version))
    if os.path.exists(final):
        raise ValueError(f"export version {final} already exists; choose another --version")
    signatures = {name: getattr(module, name) for name in SIGNATURES}
    tmp = os.path.join(export_base, _temporary_name(version))
    try:
        try:
            tf.saved_model.save(_saveable(signatures, module.model), tmp, signatures=signatures)
            write_warmup_requests(os.path.join(tmp, "assets.extra", WARMUP_FILE), model_name)
        except tf.errors.OpError as e:  # a full disk: ResourceExhaustedError
            raise OSError(f"cannot write the export into {export_base} "
                          f"({_files.error_message(e)}); nothing was written") from e
        info = {"precision": precision, "decode": module.decode, "fov_deg": fov_deg,
                "joint_set": config.joint_set,
                "bone_lengths_mm": [float(v) for v in np.asarray(bone_lengths).ravel()],
                "config": dataclasses.asdict(config), **(provenance or {})}
        final = _publish(tmp, export_base, version, chosen, info)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final
