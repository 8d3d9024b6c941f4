"""Joint sets: names, parents, left/right flip pairs, limbs and bones.

Each skeleton is declared once here and every other module (augmentation,
flip test, drawing, PCP, root-depth estimation) reads it from here.

Joint correspondence between sets goes through *canonical* joint names: two
joints of different sets correspond when they carry the same canonical name.
"R"/"L" always mean the subject's own right/left.
"""

import dataclasses
from typing import Dict, List, Optional, Tuple


@dataclasses.dataclass(frozen=True)
class JointSet:
    """A skeleton definition.

    Attributes:
      name: short identifier, e.g. ``"h36m17"``.
      joint_names: canonical joint names, in index order.
      parents: parent index per joint, ``-1`` for the root.
      flip_pairs: ``(left, right)`` index pairs swapped by a horizontal flip.
      limbs: limb group name -> list of ``(a, b)`` joint index pairs. Used for
        drawing and for PCP (a limb group like ``"upper_arms"`` holds both sides).
    """

    name: str
    joint_names: Tuple[str, ...]
    parents: Tuple[int, ...]
    flip_pairs: Tuple[Tuple[int, int], ...]
    limbs: Dict[str, Tuple[Tuple[int, int], ...]]

    def __post_init__(self):
        if len(self.joint_names) != len(self.parents):
            raise ValueError(
                f"{self.name}: {len(self.joint_names)} joint names but "
                f"{len(self.parents)} parents")
        roots = [i for i, p in enumerate(self.parents) if p < 0]
        if len(roots) != 1:
            raise ValueError(f"{self.name}: expected one root, got {roots}")

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def root(self) -> int:
        return self.parents.index(-1)

    @property
    def bones(self) -> List[Tuple[int, int]]:
        """``(child, parent)`` for every non-root joint, in child index order."""
        return [(j, p) for j, p in enumerate(self.parents) if p >= 0]

    @property
    def flip_index(self) -> List[int]:
        """Permutation ``perm`` such that ``joints_flipped = joints[perm]``."""
        perm = list(range(self.num_joints))
        for left, right in self.flip_pairs:
            perm[left], perm[right] = right, left
        return perm

    @property
    def left_joints(self) -> List[int]:
        return sorted(left for left, _ in self.flip_pairs)

    @property
    def right_joints(self) -> List[int]:
        return sorted(right for _, right in self.flip_pairs)

    @property
    def all_limbs(self) -> List[Tuple[int, int]]:
        return [pair for group in self.limbs.values() for pair in group]

    def side(self, joint: int) -> str:
        """``"left"``, ``"right"`` or ``"center"`` for a joint index."""
        if joint in self.left_joints:
            return "left"
        if joint in self.right_joints:
            return "right"
        return "center"


def _flip_pairs(names):
    pairs = []
    for i, name in enumerate(names):
        if name.startswith("l_"):
            pairs.append((i, names.index("r_" + name[2:])))
    return tuple(pairs)


def _joint_set(name, names, parents, limbs):
    index = {n: i for i, n in enumerate(names)}
    return JointSet(
        name=name,
        joint_names=tuple(names),
        parents=tuple(index[p] if p else -1 for p in parents),
        flip_pairs=_flip_pairs(names),
        limbs={group: tuple((index[a], index[b]) for a, b in pairs)
               for group, pairs in limbs.items()},
    )


# Limb groups shared by every set (where both endpoints exist), as in the
# 3D PCP tables of the paper (Table 7): upper/lower arms and legs.
_LIMB_GROUPS = {
    "upper_arms": [("l_shoulder", "l_elbow"), ("r_shoulder", "r_elbow")],
    "lower_arms": [("l_elbow", "l_wrist"), ("r_elbow", "r_wrist")],
    "upper_legs": [("l_hip", "l_knee"), ("r_hip", "r_knee")],
    "lower_legs": [("l_knee", "l_ankle"), ("r_knee", "r_ankle")],
}


def _limbs(extra):
    limbs = dict(_LIMB_GROUPS)
    limbs.update(extra)
    return limbs


# Human3.6M 17 joints (DESIGN.md section 2); joint 9 is the neck/nose joint.
H36M17 = _joint_set(
    "h36m17",
    ["pelvis", "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle",
     "spine", "thorax", "neck", "head", "l_shoulder", "l_elbow", "l_wrist",
     "r_shoulder", "r_elbow", "r_wrist"],
    [None, "pelvis", "r_hip", "r_knee", "pelvis", "l_hip", "l_knee",
     "pelvis", "spine", "thorax", "neck", "thorax", "l_shoulder", "l_elbow",
     "thorax", "r_shoulder", "r_elbow"],
    _limbs({
        "hips": [("pelvis", "l_hip"), ("pelvis", "r_hip")],
        "torso": [("pelvis", "spine"), ("spine", "thorax")],
        "head": [("thorax", "neck"), ("neck", "head")],
        "shoulders": [("thorax", "l_shoulder"), ("thorax", "r_shoulder")],
    }),
)

# MPII 16 joints in the dataset's own index order (root = pelvis, index 6).
MPII16 = _joint_set(
    "mpii16",
    ["r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "pelvis",
     "thorax", "neck", "head", "r_wrist", "r_elbow", "r_shoulder",
     "l_shoulder", "l_elbow", "l_wrist"],
    ["r_knee", "r_hip", "pelvis", "pelvis", "l_hip", "l_knee", None,
     "pelvis", "thorax", "neck", "r_elbow", "r_shoulder", "thorax",
     "thorax", "l_shoulder", "l_elbow"],
    _limbs({
        "hips": [("pelvis", "l_hip"), ("pelvis", "r_hip")],
        "torso": [("pelvis", "thorax")],
        "head": [("thorax", "neck"), ("neck", "head")],
        "shoulders": [("thorax", "l_shoulder"), ("thorax", "r_shoulder")],
    }),
)

# HumanEva-I 15 joints, in the order of the widely used prepared .npz files.
HUMANEVA15 = _joint_set(
    "humaneva15",
    ["pelvis", "thorax", "l_shoulder", "l_elbow", "l_wrist", "r_shoulder",
     "r_elbow", "r_wrist", "l_hip", "l_knee", "l_ankle", "r_hip", "r_knee",
     "r_ankle", "head"],
    [None, "pelvis", "thorax", "l_shoulder", "l_elbow", "thorax",
     "r_shoulder", "r_elbow", "pelvis", "l_hip", "l_knee", "pelvis", "r_hip",
     "r_knee", "thorax"],
    _limbs({
        "hips": [("pelvis", "l_hip"), ("pelvis", "r_hip")],
        "torso": [("pelvis", "thorax")],
        "head": [("thorax", "head")],
        "shoulders": [("thorax", "l_shoulder"), ("thorax", "r_shoulder")],
    }),
)

# KTH Football II 14 joints in the dataset's order (the LSP order; "neck" is its
# "bottom head", "head" its "top head"). It has no pelvis, so the tree hangs from
# the neck and the torso sides (shoulder -> hip) stand in for the spine.
KTH14 = _joint_set(
    "kth14",
    ["r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle", "r_wrist", "r_elbow",
     "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head"],
    ["r_knee", "r_hip", "r_shoulder", "l_shoulder", "l_hip", "l_knee", "r_elbow",
     "r_shoulder", "neck", "neck", "l_shoulder", "l_elbow", None, "neck"],
    _limbs({
        "torso": [("l_shoulder", "l_hip"), ("r_shoulder", "r_hip")],
        "head": [("neck", "head")],
    }),
)

JOINT_SETS = {s.name: s for s in (H36M17, MPII16, HUMANEVA15, KTH14)}


def joint_set_with(num_joints: int) -> JointSet:
    """The joint set of ``num_joints`` joints (each set has its own count)."""
    for joint_set in JOINT_SETS.values():
        if joint_set.num_joints == num_joints:
            return joint_set
    raise ValueError(f"no joint set has {num_joints} joints; the sets are "
                     f"{ {s.name: s.num_joints for s in JOINT_SETS.values()} }")


def get_joint_set(name: str) -> JointSet:
    """Looks up a joint set by name (``h36m17``, ``mpii16``, ``humaneva15``, ``kth14``)."""
    try:
        return JOINT_SETS[name]
    except KeyError:
        raise ValueError(
            f"Unknown joint set {name!r}; expected one of {sorted(JOINT_SETS)}"
        ) from None


def joint_mapping(source: JointSet, target: JointSet) -> List[Tuple[int, int]]:
    """``(source_index, target_index)`` pairs of corresponding joints.

    Joints correspond when they have the same canonical name. Pairs are in
    target index order; target joints with no counterpart are left out.
    """
    src = {n: i for i, n in enumerate(source.joint_names)}
    return [(src[n], t) for t, n in enumerate(target.joint_names) if n in src]


def convert_joints(joints, source: JointSet, target: JointSet,
                   fill_value: Optional[float] = float("nan")):
    """Reorders ``(..., J_source, C)`` joints into ``target``'s order.

    Target joints with no source counterpart are filled with ``fill_value``.
    """
    import numpy as np
    joints = np.asarray(joints)
    if joints.shape[-2] != source.num_joints:
        raise ValueError(
            f"joints has {joints.shape[-2]} joints on axis -2, "
            f"{source.name} has {source.num_joints}")
    out = np.full(joints.shape[:-2] + (target.num_joints, joints.shape[-1]),
                  fill_value, dtype=np.result_type(joints.dtype, np.float32))
    for s, t in joint_mapping(source, target):
        out[..., t, :] = joints[..., s, :]
    return out
