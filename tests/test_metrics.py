import numpy as np
import pytest

from tf_volpose import metrics


def test_mpjpe_by_hand():
    gt = np.zeros((1, 3, 3))
    pred = np.array([[[10, 10, 10], [13, 14, 10], [10, 10, 20]]], float)
    # after root alignment the errors are 0, 5, 10 -> mean 5
    np.testing.assert_allclose(metrics.mpjpe(pred, gt), [5.0])
    np.testing.assert_allclose(metrics.joint_errors(pred, gt), [[0.0, 5.0, 10.0]])
    # aligned at joint 2 instead: pred - pred[2] = (0,0,-10), (3,4,-10), 0
    np.testing.assert_allclose(metrics.joint_errors(pred, gt, root=2),
                               [[10.0, np.sqrt(125.0), 0.0]])


def test_pa_mpjpe_by_hand_procrustes():
    gt = np.array([[[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], float)
    # scaled by 2, rotated 90 degrees about z, shifted: alignment is exact
    Rz = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
    pred = 2 * gt @ Rz.T + 5
    np.testing.assert_allclose(metrics.pa_mpjpe(pred, gt), [0.0], atol=1e-9)
    # a mirror image is not a rotation: the reflection fix keeps an error
    mirrored = gt * np.array([-1, 1, 1])
    assert metrics.pa_mpjpe(mirrored, gt)[0] > 0.1
    # collinear-ish case by hand: pred = two points, the best similarity fit is exact for 2 points
    gt2 = np.array([[[0, 0, 0], [2, 0, 0]]], float)
    pred2 = np.array([[[1, 1, 1], [1, 1, 4]]], float)
    np.testing.assert_allclose(metrics.pa_mpjpe(pred2, gt2), [0.0], atol=1e-9)


def test_pa_mpjpe_invariant_to_similarity(rng):
    gt = rng.normal(0, 300, (8, 17, 3))
    pred = gt + rng.normal(0, 40, gt.shape)
    base = metrics.pa_mpjpe(pred, gt)
    for _ in range(5):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
        q *= np.sign(np.linalg.det(q))
        moved = rng.uniform(0.5, 2.0) * pred @ q.T + rng.normal(0, 1000, 3)
        np.testing.assert_allclose(metrics.pa_mpjpe(moved, gt), base, rtol=1e-8)
    assert (base <= metrics.mpjpe(pred, gt) + 1e-9).all()


def test_pcp_rules_by_hand():
    gt = np.array([[[0, 0, 0], [100, 0, 0]]], float)  # limb length 100, threshold 50
    pred = np.array([[[40, 0, 0], [100, 55, 0]]], float)  # errors 40 and 55
    assert not metrics.pcp3d(pred, gt, [(0, 1)], rule="both")[0, 0]
    assert metrics.pcp3d(pred, gt, [(0, 1)], rule="mean")[0, 0]  # mean 47.5 <= 50
    with pytest.raises(ValueError, match="rule"):
        metrics.pcp3d(pred, gt, [(0, 1)], rule="max")


def test_pckh_by_hand():
    gt = np.zeros((2, 2, 2))
    pred = np.array([[[3, 4], [0, 11]], [[0, 0], [0, 0]]], float)  # errors 5, 11; 0, 0
    visible = np.array([[True, True], [True, False]])
    out = metrics.pckh(pred, gt, visible, head_size=[20.0, 20.0])  # threshold 10
    np.testing.assert_allclose(out, [1.0, 0.0])


def test_action_table_merges_subactions_and_weights_average_by_frames():
    errors = np.array([10.0, 20.0, 30.0, 100.0])
    actions = ["Directions 1", "directions_2", "Directions", "WalkingDog 1"]
    table = metrics.action_table(errors, actions)
    assert list(table) == ["Directions", "WalkDog", "Average"]
    assert table["Directions"] == {"mean": 20.0, "frames": 3}
    assert table["Average"]["mean"] == 40.0  # over frames, not (20 + 100) / 2 = 60
    md = metrics.table_to_markdown({"ours": table})
    assert "| ours | 20.0 | 100.0 | 40.0 |" in md


def test_shapes_and_nan_are_rejected():
    with pytest.raises(ValueError, match="pred"):
        metrics.mpjpe(np.zeros((2, 17)), np.zeros((2, 17)))
    with pytest.raises(ValueError, match="NaN"):
        metrics.mpjpe(np.full((1, 2, 3), np.nan), np.zeros((1, 2, 3)))
    with pytest.raises(ValueError, match="same shape"):
        metrics.pa_mpjpe(np.zeros((1, 2, 3)), np.zeros((1, 3, 3)))
