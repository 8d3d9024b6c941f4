"""Predictions over a split -> the paper's metric tables (``metrics.json``, ``report.md``).

The same decode/lift path serves a trained model and the *oracle*: ground-truth
voxel coordinates rendered as heatmaps (or quantised to voxel centres for
argmax) show what the grid and root-depth estimation alone cost.

Root depth: ``gt`` uses the ground-truth root depth; ``bone_lengths`` fits the
depth whose lifted skeleton best matches the mean training bone lengths
(the run's copy, else ``bone_lengths.json`` beside the training records; see
:mod:`bone_lengths`), robust to single wrong joints
(:func:`volume.estimate_root_depth`), or bone lengths calibrated to a trained
model's own skeletons (:func:`calibrate_bone_lengths`,
``tools/bone_lengths.py --checkpoint``).
"""

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from tf_volpose import _files, bone_lengths, camera, losses, metrics, skeleton, training, volume
from tf_volpose.data import pipeline
from tf_volpose.models import volumetric

ORACLES = ("none", "argmax", "local_softargmax", "quadratic")
HUMANEVA_ACTIONS = ("Walking", "Jogging")


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    decode: str = "local_softargmax"
    flip_test: bool = False
    root_depth: str = "gt"          # gt | bone_lengths
    oracle: str = "none"            # none | argmax | local_softargmax
    bone_lengths: str = ""          # a bone lengths JSON (default: the run's, else beside the
                                    # training records: bone_lengths.for_run)
    max_examples: int = 0           # 0: the whole split
    batch_size: int = 16

    def __post_init__(self):
        if self.decode not in volume.DECODE_METHODS:
            raise ValueError(f"decode must be one of {volume.DECODE_METHODS}, got {self.decode!r}")
        if self.root_depth not in ("gt", "bone_lengths"):
            raise ValueError(f"root_depth must be 'gt' or 'bone_lengths', got {self.root_depth!r}")
        if self.oracle not in ORACLES:
            raise ValueError(f"oracle must be one of {ORACLES}, got {self.oracle!r}")
        if self.max_examples < 0:  # would stop after the first batch, without a word
            raise ValueError(f"max_examples must be >= 0 (0: all), got {self.max_examples}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}")


# ------------------------------------------------ bone lengths calibrated to a model


def bone_lengths_matching_predictions(predictions, grid, joint_set=skeleton.H36M17):
    """Bone lengths that make the root-depth fit unbiased on these predictions.

    Args:
      predictions: :func:`collect_predictions` output with ``root_depth="gt"``:
        ``pred_mm`` are the decoded skeletons lifted at the true root depth
        (``root_depth_mm``); rows without 3D ground truth are skipped.
      grid: the :class:`volume.VoxelGrid` of ``pred_voxels``.

    Returns:
      ``(lengths (J-1,) mm in joint_set.bones order, poses used, scale)``:
      each bone's mean length in the predicted skeletons, times ``scale``, the
      median ratio of true to fitted root depth when fitting those lengths
      (the fit is not linear in the lengths: bones along the line of sight do
      not scale with depth, so the per-bone means alone still leave a bias).
    """
    used = predictions["has_3d"] & np.isfinite(predictions["pred_mm"]).all((1, 2))
    if not used.any():
        raise ValueError("no predictions with 3D ground truth to calibrate bone lengths on")
    lengths = volume.mean_bone_lengths(predictions["pred_mm"][used], joint_set)
    if not np.all(lengths > 0):
        raise ValueError(f"the predicted skeletons have bones of no length ({lengths.tolist()}): "
                         f"is the model trained?")
    fitted = volume.estimate_root_depth_tf(
        predictions["pred_voxels"][used], predictions["K"][used], predictions["center"][used],
        predictions["scale"][used], lengths, grid, joint_set).numpy()
    scale = float(np.median(predictions["root_depth_mm"][used] / fitted))
    return lengths * scale, int(used.sum()), scale


def calibrate_bone_lengths(config, model, file_pattern=None, max_examples=1000, decode=None):
    """Bone lengths calibrated to ``model``'s own skeletons, for its root-depth fit.

    The fit (:func:`volume.estimate_root_depth_tf`) reads a skeleton that is
    too small as one that is far away. A model's decoded skeletons are not the
    true ones: where it is unsure it pulls joints toward the mean pose, which
    shortens limbs (``synthetic_f256nf16``: lower arms at 0.45x their length),
    so fitting them to the true bone lengths puts people too far away. This
    runs the model over records with 3D ground truth (default: the training
    records, so the validation split stays unseen; as many from each file) and
    returns the lengths its skeletons have at the true depth, scaled so that the
    fit is unbiased on those records (:func:`bone_lengths_matching_predictions`).

    Args:
      config: the run's :class:`training.TrainConfig`. model: its trained model.
      file_pattern: records with 3D joints (default ``config.train_pattern``).
      max_examples: how many records to run, at most (0: all).
      decode: heatmap decoding (default ``config.decode``); use the one that
        will read the heatmaps when the lengths are used (the export's).

    Returns:
      ``(lengths (J-1,) mm in joint_set.bones order, poses used, scale)``.
    """
    file_pattern = file_pattern or config.train_pattern
    options = EvalOptions(decode=decode or config.decode, root_depth="gt",
                          max_examples=max_examples)
    # the same number from every file: the first records alone would be the first
    # subjects and actions (converters write in sequence order), with their bone lengths
    files = len(pipeline.list_files(file_pattern))
    per_file = max(1, max_examples // files) if max_examples else 0
    predictions = collect_predictions(config, options, model, file_pattern, per_file)
    return bone_lengths_matching_predictions(predictions, config.grid,
                                             skeleton.get_joint_set(config.joint_set))


def write_model_bone_lengths(config, checkpoint, output=None, file_pattern=None,
                             max_examples=1000, decode=None):
    """Calibrates bone lengths to a trained checkpoint and stores them as JSON.

    The default ``output`` is ``model_bone_lengths.json`` in the run directory.
    Returns ``(path, scale)``; the file says which checkpoint, records and
    decoding it was calibrated with.
    """
    model, source = load_trained_model(config, checkpoint)
    file_pattern, decode = file_pattern or config.train_pattern, decode or config.decode
    lengths, poses, scale = calibrate_bone_lengths(config, model, file_pattern, max_examples,
                                                   decode)
    output = output or os.path.join(training.run_directory(checkpoint), bone_lengths.MODEL_FILE)
    path = bone_lengths.save(output, skeleton.get_joint_set(config.joint_set), lengths, poses,
                             source="model", checkpoint=source, records=file_pattern,
                             decode=decode, scale=scale)
    return path, scale


# ------------------------------------------------------------ predictions


def oracle_heatmaps(joints_voxel, grid, method):
    """Ground-truth heatmaps on the fine grid (``argmax``: peaks at the voxel centres)."""
    if method == "argmax":
        joints_voxel = tf.floor(joints_voxel) + 0.5
    return losses.render_targets(joints_voxel, grid.xy_res, grid.xy_res, grid.depth,
                                 fine_depth=grid.depth)


def _check_flip_test(config, options):
    if options.flip_test and config.model == "lifting":
        raise ValueError(
            "flip_test mirrors the input image, and network B alone (model='lifting') takes "
            "2D heatmaps, not an image: evaluate it without flip_test (or flip-test the "
            "decoupled model initialised from it)")
    if options.flip_test and config.flip_prob == 0:
        raise ValueError(
            "flip_test averages each image with its mirror, which assumes a mirrored image is "
            "a valid one with left and right swapped; this config trains with flip_prob=0 (for "
            "images that mark left and right, like the synthetic data's colours), where the "
            "mirror would swap the joints the colours identify. Evaluate without flip_test.")


def collect_predictions(config, options, model=None, file_pattern=None, records_per_file=0):
    """Runs the model (or the oracle) over a split (or the first ``records_per_file``
    records of each of its files).

    ``root_depth="bone_lengths"`` fits the lengths in ``options.bone_lengths``
    (default: beside the training records; :func:`evaluate` passes the run's).

    Returns:
      dict of NumPy arrays: ``pred_voxels``, ``gt_voxels`` (F, J, 3);
      ``pred_mm``, ``gt_mm`` (F, J, 3) camera frame (NaN rows where there is no
      3D ground truth); ``pred_px``, ``gt_px`` (F, J, 2); ``mask`` (F, J);
      ``has_3d`` (F,); ``root_depth_mm`` (F,); ``action``, ``subject`` (F,) str;
      the crops' cameras: ``K`` (F, 3, 3), ``center`` (F, 2) px, ``scale`` (F,).
    """
    _check_flip_test(config, options)
    joint_set = skeleton.get_joint_set(config.joint_set)
    grid = config.grid
    ds = pipeline.make_dataset(file_pattern or config.val_pattern, training=False,
                               batch_size=options.batch_size, records_per_file=records_per_file,
                               **training.pipeline_options(config))
    lengths = None
    if options.root_depth == "bone_lengths":
        lengths = bone_lengths.for_run(config.train_pattern, path=options.bone_lengths,
                                       joint_set=joint_set)[0]

    @tf.function
    def run_model(images):
        if config.model == "regression":
            return training.predict_voxels(config, model(images, training=False))
        last = f"stack{len(config.stack_depths) - 1}"
        if options.flip_test:
            heatmaps = volumetric.flip_average(lambda x: model(x, training=False)[last], images,
                                               joint_set)
        else:
            heatmaps = model(images, training=False)[last]
        return volume.decode_heatmaps_tf(heatmaps, joint_set.num_joints, grid.depth,
                                         options.decode)[0]

    out = {k: [] for k in ("pred_voxels", "gt_voxels", "pred_mm", "gt_mm", "pred_px", "gt_px",
                           "mask", "has_3d", "root_depth_mm", "action", "subject", "K", "center",
                           "scale")}
    seen = 0
    for inputs, targets in ds:
        gt_voxels = targets["joints_voxel"]
        if options.oracle != "none":
            heatmaps = oracle_heatmaps(gt_voxels, grid, options.oracle)
            voxels = volume.decode_heatmaps_tf(heatmaps, joint_set.num_joints, grid.depth,
                                               options.oracle)[0]
        else:
            voxels = run_model(inputs[config.input_name])
        K = camera.intrinsics_matrix_tf(targets["focal"], targets["principal"])
        if lengths is not None:
            root = volume.estimate_root_depth_tf(voxels, K, targets["center"], targets["scale"],
                                                 lengths, grid, joint_set)
        else:
            root = targets["root_depth"]
        has_3d = targets["has_3d"].numpy() > 0
        root = tf.where(has_3d, root, tf.ones_like(root) * 1000.0)  # any positive depth for 2D data
        lifted = volume.lift_tf(voxels, K, targets["center"], targets["scale"], root, grid).numpy()
        lifted[~has_3d] = np.nan
        gt_mm = targets["joints_3d"].numpy().copy()
        gt_mm[~has_3d] = np.nan
        out["pred_voxels"].append(voxels.numpy())
        out["gt_voxels"].append(gt_voxels.numpy())
        out["pred_mm"].append(lifted)
        out["gt_mm"].append(gt_mm)
        out["pred_px"].append(volume.voxels_to_image_tf(voxels[..., :2], targets["center"],
                                                        targets["scale"], grid.xy_res).numpy())
        out["gt_px"].append(targets["joints_2d"].numpy())
        out["mask"].append(targets["mask"].numpy())
        out["has_3d"].append(has_3d)
        out["root_depth_mm"].append(root.numpy())
        out["action"].append(targets["action"].numpy().astype(str))
        out["subject"].append(targets["subject"].numpy().astype(str))
        out["K"].append(K.numpy())
        out["center"].append(targets["center"].numpy())
        out["scale"].append(targets["scale"].numpy())
        seen += len(has_3d)
        if options.max_examples and seen >= options.max_examples:
            break
    if not seen:
        raise ValueError(f"no usable records in {file_pattern or config.val_pattern!r}")
    result = {k: np.concatenate(v) for k, v in out.items()}
    if options.max_examples:
        result = {k: v[:options.max_examples] for k, v in result.items()}
    return result


# ------------------------------------------------------------ tables


def compute_metrics(predictions, joint_set=skeleton.H36M17):
    """Metric tables from :func:`collect_predictions` output (pure NumPy).

    Returns a JSON-ready dict: ``mpjpe_mm`` and ``pa_mpjpe_mm`` per action
    (Table 4/5 layout, Average over all frames), ``humaneva_pa_mpjpe_mm``
    (Walking/Jogging x subjects, when present), ``pcp3d`` per limb group,
    ``pckh`` (2D), and debugging errors in voxels and pixels.
    """
    p = predictions
    frames = len(p["has_3d"])
    result = {"frames": int(frames), "frames_3d": int(p["has_3d"].sum())}
    voxel_err = np.linalg.norm(p["pred_voxels"] - p["gt_voxels"], axis=-1)
    pixel_err = np.linalg.norm(p["pred_px"] - p["gt_px"], axis=-1)
    mask = p["mask"] > 0
    result["voxel_error"] = float(voxel_err[mask].mean())
    result["pixel_error"] = float(pixel_err[mask].mean())
    result["voxel_error_per_joint"] = dict(zip(joint_set.joint_names,
                                               map(float, _masked_mean(voxel_err, mask))))
    has_3d = p["has_3d"]
    if has_3d.any():
        pred, gt = p["pred_mm"][has_3d], p["gt_mm"][has_3d]
        actions = p["action"][has_3d]
        per_frame = metrics.mpjpe(pred, gt, root=joint_set.root)
        pa = metrics.pa_mpjpe(pred, gt)
        result["mpjpe_mm"] = metrics.action_table(per_frame, actions)
        result["pa_mpjpe_mm"] = metrics.action_table(pa, actions)
        root_err = np.abs(p["root_depth_mm"][has_3d] - gt[:, joint_set.root, 2])
        result["root_depth_error_mm"] = float(root_err.mean())
        aligned = pred - pred[:, joint_set.root:joint_set.root + 1] + gt[:, joint_set.root:joint_set.root + 1]
        result["pcp3d"] = {group: float(metrics.pcp3d(aligned, gt, limbs).mean())
                           for group, limbs in joint_set.limbs.items()}
        result["pcp3d"]["all"] = float(metrics.pcp3d(aligned, gt, joint_set.all_limbs).mean())
        he = _humaneva_table(pa, actions, p["subject"][has_3d])
        if he:
            result["humaneva_pa_mpjpe_mm"] = he
    head = _head_size(p["gt_px"], joint_set)
    if head is not None:
        pck = metrics.pckh(p["pred_px"], p["gt_px"], mask, head)
        result["pckh"] = dict(zip(joint_set.joint_names, (None if np.isnan(v) else float(v)
                                                          for v in pck)))
        result["pckh"]["mean"] = float(np.nanmean(pck))
    return result


def _masked_mean(values, mask):
    counts = mask.sum(0)
    return np.where(counts > 0, (values * mask).sum(0) / np.maximum(counts, 1), np.nan)


def _head_size(joints_2d, joint_set):
    """Head segment length (neck -> head) per frame; PCKh's normaliser where no head box exists."""
    names = joint_set.joint_names
    if "neck" not in names or "head" not in names:
        return None
    neck, head = names.index("neck"), names.index("head")
    size = np.linalg.norm(joints_2d[:, head] - joints_2d[:, neck], axis=-1)
    return np.where(np.isfinite(size) & (size > 0), size, 1.0)


def _humaneva_table(errors, actions, subjects):
    table = {}
    canonical = np.array([metrics.canonical_action(a) for a in actions])
    for action in HUMANEVA_ACTIONS:
        for subject in ("S1", "S2", "S3"):
            chosen = (canonical == action) & (subjects == subject)
            if chosen.any():
                table.setdefault(action, {})[subject] = float(errors[chosen].mean())
    return table


def _root_depth_line(result):
    """The report's line on the root depth: its error, unless it was the ground truth's
    (an error of 0.0 mm that reads like a result)."""
    if result.get("options", {}).get("root_depth") == "gt":
        return "Root depth: the ground truth's (`--root_depth=bone_lengths` estimates it)."
    return f"Root depth error: {result['root_depth_error_mm']:.1f} mm"


def report_markdown(result, title):
    """``report.md`` text for a :func:`compute_metrics` result."""
    lines = [f"# {title}", "", f"Frames: {result['frames']} ({result['frames_3d']} with 3D).", ""]
    if "mpjpe_mm" in result:
        lines += ["## MPJPE (mm), per action (Table 4 layout)", "",
                  metrics.table_to_markdown({"MPJPE": result["mpjpe_mm"]}), "",
                  "## PA-MPJPE / reconstruction error (mm) (Table 5)", "",
                  metrics.table_to_markdown({"PA-MPJPE": result["pa_mpjpe_mm"]}), "",
                  _root_depth_line(result), ""]
        lines += ["## 3D PCP (Table 7)", "", "| limbs | PCP |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in result["pcp3d"].items()] + [""]
    if "humaneva_pa_mpjpe_mm" in result:
        lines += ["## HumanEva-I reconstruction error (mm) (Table 6)", "",
                  "| action | S1 | S2 | S3 |", "|---|---|---|---|"]
        for action, row in result["humaneva_pa_mpjpe_mm"].items():
            lines.append(f"| {action} | " + " | ".join(
                f"{row[s]:.1f}" if s in row else "-" for s in ("S1", "S2", "S3")) + " |")
        lines.append("")
    if "pckh" in result:
        lines += [f"## PCKh@0.5 (2D): {result['pckh']['mean']:.3f}", ""]
    lines += ["## Debugging units", "", f"- voxel error: {result['voxel_error']:.3f} voxels",
              f"- pixel error: {result['pixel_error']:.2f} px (original image)", ""]
    return "\n".join(lines)


def write_report(result, output_dir, title):
    """Writes ``metrics.json`` and ``report.md`` (atomically) and returns their paths."""
    try:
        tf.io.gfile.makedirs(output_dir)
    except tf.errors.OpError as e:  # a file in the way, no permission
        raise OSError(f"cannot make the report directory {output_dir}: "
                      f"{_files.error_message(e)}") from e
    paths = []
    for name, text in (("metrics.json", json.dumps(result, indent=2)),
                       ("report.md", report_markdown(result, title))):
        paths.append(_files.write_text_atomically(os.path.join(output_dir, name), text))
    return paths


def load_trained_model(config, checkpoint):
    """Builds the config's model and restores weights from a checkpoint or model dir."""
    path = training.checkpoint_path(checkpoint)
    model = training.build_model(config)
    # expect_partial() below skips the optimizer state, but would also skip weights the model
    # lacks, silently changing the function (e.g. biases of older runs): checked first
    training.check_checkpoint_matches(model, path, config)
    ckpt = tf.train.Checkpoint(model=model, weights_by_name={w.path: w for w in model.weights})
    try:
        ckpt.restore(path).expect_partial().assert_existing_objects_matched()
    except (tf.errors.NotFoundError, AssertionError, ValueError) as e:
        raise ValueError(f"checkpoint {path!r} does not match the model of this config: {e}") from e
    return model, path


def evaluate(config, options, checkpoint=None, output_dir=None, file_pattern=None):
    """Evaluates a checkpoint (or the oracle) and writes ``metrics.json`` and ``report.md``.

    Returns:
      ``(result dict, [written paths])``.
    """
    _check_flip_test(config, options)  # before the (slow) model load
    model, source = None, f"oracle ({options.oracle})"
    if options.oracle == "none":
        if not checkpoint:
            raise ValueError("checkpoint is required unless oracle is set")
        model, source = load_trained_model(config, checkpoint)
    if output_dir is None:
        output_dir = (os.path.dirname(source) if model is not None else config.model_dir)
    _files.check_directory(output_dir, "output_dir")  # before the predictions, not after
    if options.root_depth == "bone_lengths":  # the report names the file the fit used
        run_dir = checkpoint and training.run_directory(checkpoint)
        used = bone_lengths.for_run(config.train_pattern, run_dir, options.bone_lengths,
                                    skeleton.get_joint_set(config.joint_set))[1]
        options = dataclasses.replace(options, bone_lengths=used)
    predictions = collect_predictions(config, options, model, file_pattern)
    result = compute_metrics(predictions, skeleton.get_joint_set(config.joint_set))
    result["options"] = dataclasses.asdict(options)
    result["source"] = source
    return result, write_report(result, output_dir, report_title(result))


def report_title(result):
    """The title of ``report.md``: what was evaluated, how it was decoded and where
    its root depth came from (``result`` as :func:`evaluate` returns it)."""
    options = result["options"]
    return (f"tf_volpose evaluation: {result['source']}, decode={options['decode']}"
            f"{', flip test' if options['flip_test'] else ''}, "
            f"root depth={options['root_depth']}")
