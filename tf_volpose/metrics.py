"""Pose metrics (pure NumPy functions) and per-action tables.

* :func:`mpjpe`: mean per-joint position error after aligning the roots
  (joint 0), averaged over all joints including the root (the paper's
  Human3.6M protocol).
* :func:`pa_mpjpe`: the same after a similarity Procrustes alignment
  (rotation, translation, scale; reflections excluded) -- "reconstruction
  error" (Table 5, HumanEva Table 6).
* :func:`pcp3d`: 3D percentage of correct parts (Table 7).
* :func:`pckh`: 2D PCKh (MPII).
* :func:`action_table`: per-action means; "Average" is the mean over all frames.
"""

import json
import re

import numpy as np

from tf_volpose import _checks

# The 15 Human3.6M actions in the column order of the paper's Table 4.
H36M_ACTIONS = ("Directions", "Discussion", "Eating", "Greeting", "Phoning", "Photo",
                "Posing", "Purchases", "Sitting", "SittingDown", "Smoking", "Waiting",
                "WalkDog", "Walking", "WalkTogether")

_ACTION_ALIASES = {a.lower(): a for a in H36M_ACTIONS}
_ACTION_ALIASES.update({"takingphoto": "Photo", "walkingdog": "WalkDog",
                        "walkingtogether": "WalkTogether"})


def canonical_action(name):
    """Merges subactions: ``"Directions 1"``, ``"directions_2"`` -> ``"Directions"``.

    Names that are not Human3.6M actions come back without their subaction suffix.
    """
    if isinstance(name, bytes):
        name = name.decode()
    base = re.sub(r"[\s_]*\d+$", "", str(name).strip())
    return _ACTION_ALIASES.get(base.replace(" ", "").replace("_", "").lower(), base)


def _pair(pred, gt, last):
    pred = _checks.as_array("pred", pred, shape=(None, None, last))
    gt = _checks.as_array("gt", gt, shape=(None, None, last))
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return pred, gt


def joint_errors(pred, gt, root=0):
    """Per-joint Euclidean error after root alignment.

    Args:
      pred, gt: (F, J, 3) mm.
      root: index of the joint aligned before measuring.

    Returns:
      (F, J) mm (0 at the root).
    """
    pred, gt = _pair(pred, gt, 3)
    pred = pred - pred[:, root:root + 1]
    gt = gt - gt[:, root:root + 1]
    return np.linalg.norm(pred - gt, axis=-1)


def mpjpe(pred, gt, root=0):
    """Per-frame MPJPE after root alignment: (F,) mean of :func:`joint_errors` over all J
    joints (root included), mm."""
    return joint_errors(pred, gt, root).mean(-1)


def procrustes_align(pred, gt):
    """Similarity transform of ``pred`` (F, J, 3) that best matches ``gt`` (least squares).

    Solves ``min_{s, R, t} |s R pred + t - gt|^2`` per frame with ``det R = +1``
    (Umeyama), so a mirrored prediction is not "fixed" by a reflection.
    """
    pred, gt = _pair(pred, gt, 3)
    mu_p = pred.mean(1, keepdims=True)
    mu_g = gt.mean(1, keepdims=True)
    p0, g0 = pred - mu_p, gt - mu_g
    cov = np.einsum("fji,fjk->fik", g0, p0)  # (F, 3, 3) = sum g p^T
    U, S, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(U @ Vt))
    D = np.ones_like(S)
    D[:, -1] = sign
    R = U @ (D[..., None] * Vt)
    var_p = (p0 ** 2).sum((1, 2))
    s = (S * D).sum(-1) / np.where(var_p > 0, var_p, 1.0)
    return s[:, None, None] * np.einsum("fik,fjk->fji", R, p0) + mu_g


def pa_mpjpe(pred, gt):
    """Per-frame MPJPE after similarity Procrustes alignment: (F, J, 3) mm -> (F,) mm."""
    pred, gt = _pair(pred, gt, 3)
    return np.linalg.norm(procrustes_align(pred, gt) - gt, axis=-1).mean(-1)


def pcp3d(pred, gt, limbs, alpha=0.5, rule="both"):
    """3D percentage of correct parts.

    A limb ``(a, b)`` is correct when its endpoints are within ``alpha`` times
    the ground-truth limb length of their ground-truth positions:
    ``rule="both"`` requires each endpoint within it (Ferrari et al.),
    ``rule="mean"`` requires the mean of the two endpoint errors within it
    (Burenius et al., used for KTH Football II).

    Args:
      pred, gt: (F, J, 3) mm, in the same frame (no alignment is done).
      limbs: list of ``(a, b)`` joint index pairs.

    Returns:
      (F, L) boolean, per frame and limb.
    """
    pred, gt = _pair(pred, gt, 3)
    if rule not in ("both", "mean"):
        raise ValueError(f"rule must be 'both' or 'mean', got {rule!r}")
    limbs = np.asarray(limbs, dtype=int).reshape(-1, 2)
    err = np.linalg.norm(pred - gt, axis=-1)  # (F, J)
    length = np.linalg.norm(gt[:, limbs[:, 0]] - gt[:, limbs[:, 1]], axis=-1)
    ea, eb = err[:, limbs[:, 0]], err[:, limbs[:, 1]]
    if rule == "both":
        return (ea <= alpha * length) & (eb <= alpha * length)
    return (ea + eb) / 2.0 <= alpha * length


def pckh(pred, gt, visible, head_size, alpha=0.5):
    """2D PCKh: a joint is correct within ``alpha`` times the head segment length.

    Args:
      pred, gt: (F, J, 2) px. visible: (F, J) bool, only these count.
      head_size: (F,) head segment length px (MPII: 0.6 x the head box diagonal).

    Returns:
      (J,) fraction of correct visible joints (NaN for a joint never visible).
    """
    pred, gt = _pair(pred, gt, 2)
    visible = np.asarray(visible, dtype=bool)
    head_size = _checks.as_array("head_size", head_size, shape=(pred.shape[0],))
    correct = np.linalg.norm(pred - gt, axis=-1) <= alpha * head_size[:, None]
    counts = visible.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, (correct & visible).sum(0) / counts, np.nan)


def action_table(errors, actions, columns=H36M_ACTIONS, merge_subactions=True):
    """Per-action mean of per-frame errors, plus the frame-weighted Average.

    Args:
      errors: (F,) per-frame error.
      actions: (F,) action names; subactions merged when ``merge_subactions``.
      columns: action order; actions outside it are appended, sorted.

    Returns:
      dict action -> {"mean": float, "frames": int}, ending with "Average"
      (mean over all frames, not over actions, as the paper).
    """
    errors = _checks.as_array("errors", errors, shape=(None,))
    actions = [canonical_action(a) if merge_subactions else str(a) for a in actions]
    if len(actions) != len(errors):
        raise ValueError(f"actions has {len(actions)} entries, errors has {len(errors)}")
    actions = np.array(actions)
    present = list(dict.fromkeys(actions))
    order = [c for c in columns if c in present] + sorted(a for a in present if a not in columns)
    table = {a: {"mean": float(errors[actions == a].mean()), "frames": int((actions == a).sum())}
             for a in order}
    table["Average"] = {"mean": float(errors.mean()) if len(errors) else float("nan"),
                        "frames": int(len(errors))}
    return table


def table_to_markdown(tables, digits=1):
    """Renders ``{row_name: action_table(...)}`` as a markdown table, one row per entry."""
    columns = list(dict.fromkeys(c for t in tables.values() for c in t))
    if "Average" in columns:
        columns = [c for c in columns if c != "Average"] + ["Average"]
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, table in tables.items():
        cells = [f"{table[c]['mean']:.{digits}f}" if c in table else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_to_json(tables):
    """JSON text of ``{row_name: action_table(...)}``."""
    return json.dumps(tables, indent=2, sort_keys=False)
