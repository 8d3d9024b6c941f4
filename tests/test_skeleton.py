import numpy as np
import pytest

from tf_volpose import skeleton


def test_h36m_order_and_parents_match_design():
    s = skeleton.H36M17
    assert s.num_joints == 17
    assert list(s.parents) == [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 9, 8, 11, 12, 8, 14, 15]
    assert s.joint_names[0] == "pelvis" and s.joint_names[10] == "head"
    assert s.bones[0] == (1, 0) and s.bones[-1] == (16, 15) and len(s.bones) == 16


@pytest.mark.parametrize("joint_set", list(skeleton.JOINT_SETS.values()), ids=str)
def test_flip_pairs_are_left_right_of_the_same_part(joint_set):
    names = joint_set.joint_names
    for left, right in joint_set.flip_pairs:
        assert names[left].startswith("l_") and names[right] == "r_" + names[left][2:]
    perm = joint_set.flip_index
    assert sorted(perm) == list(range(joint_set.num_joints))
    assert [perm[p] for p in perm] == list(range(joint_set.num_joints))  # an involution
    # every bone connects a joint to its parent
    for child, parent in joint_set.bones:
        assert joint_set.parents[child] == parent
    for a, b in joint_set.all_limbs:
        assert 0 <= a < joint_set.num_joints and 0 <= b < joint_set.num_joints


def test_mapping_h36m_to_mpii_and_back():
    h36m, mpii = skeleton.H36M17, skeleton.MPII16
    pairs = skeleton.joint_mapping(h36m, mpii)
    assert len(pairs) == 16  # every MPII joint has an H36M counterpart
    assert (3, 0) in pairs  # r_ankle
    assert (16, 10) in pairs  # r_wrist
    joints = np.arange(17 * 2, dtype=float).reshape(17, 2)
    mpii_joints = skeleton.convert_joints(joints, h36m, mpii)
    back = skeleton.convert_joints(mpii_joints, mpii, h36m)
    assert np.isnan(back[7]).all()  # spine has no MPII counterpart
    keep = [i for i in range(17) if i != 7]
    np.testing.assert_array_equal(back[keep], joints[keep])


def test_humaneva_mapping_is_complete():
    pairs = skeleton.joint_mapping(skeleton.H36M17, skeleton.HUMANEVA15)
    assert len(pairs) == 15
    assert dict((t, s) for s, t in pairs)[14] == 10  # head


def test_unknown_joint_set_raises():
    with pytest.raises(ValueError, match="nope"):
        skeleton.get_joint_set("nope")
    with pytest.raises(ValueError, match="joints"):
        skeleton.convert_joints(np.zeros((5, 2)), skeleton.H36M17, skeleton.MPII16)


def test_joint_set_with_a_count():
    assert [skeleton.joint_set_with(n).name for n in (17, 16, 15, 14)] == \
        ["h36m17", "mpii16", "humaneva15", "kth14"]
    with pytest.raises(ValueError, match="no joint set has 13 joints"):
        skeleton.joint_set_with(13)


def test_kth_order_and_mapping_from_h36m():
    kth = skeleton.KTH14
    assert kth.joint_names[0] == "r_ankle" and kth.joint_names[13] == "head"
    assert kth.joint_names[kth.root] == "neck"
    pairs = dict((t, s) for s, t in skeleton.joint_mapping(skeleton.H36M17, kth))
    assert len(pairs) == 14  # every KTH joint has an H36M counterpart
    assert pairs[0] == 3 and pairs[6] == 16 and pairs[11] == 13  # r_ankle, r_wrist, l_wrist
    # the PCP groups of Table 7 pair each side with itself
    assert kth.limbs["upper_legs"] == ((3, 4), (2, 1))
