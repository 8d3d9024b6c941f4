import dataclasses
import glob
import os

import numpy as np
import tensorflow as tf

from tf_volpose import summaries, visualize
from tests.conftest import three_joint_set

TINY = three_joint_set()


def _events(logdir):
    """tag -> [(step, value as NumPy, plugin data)] of the event files in ``logdir``."""
    found = {}
    for path in glob.glob(os.path.join(logdir, "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                found.setdefault(value.tag, []).append(
                    (event.step, tf.make_ndarray(value.tensor), value.metadata.plugin_data))
    return found


def test_training_images_draw_joints_and_project_every_stack():
    batch = 4
    images = np.zeros((batch, 32, 32, 3), np.float32)
    predicted = np.tile([[16.0, 16.0], [6.0, 16.0], [26.0, 16.0]], (batch, 1, 1))
    truth = predicted + [0.0, 10.0]
    coarse = np.zeros((batch, 8, 8, 3 * 1), np.float32)
    fine = np.zeros((batch, 8, 8, 3 * 4), np.float32)
    fine[:, 1, 6, 2 * 4 + 3] = 1.0  # joint 2 at y=1, x=6, z=3
    named = summaries.training_images(images, predicted, truth, [coarse, fine], TINY,
                                      max_images=2)
    assert sorted(named) == ["heatmaps_xy/stack0", "heatmaps_xy/stack1", "heatmaps_xz/stack0",
                             "heatmaps_xz/stack1", "input_skeletons"]
    crops = named["input_skeletons"]
    assert crops.shape == (2, 32, 32, 3) and crops.dtype == np.uint8
    # two pixels above each root, inside its radius-3 circle and off its bones: the
    # prediction's is filled, the truth's (10 px lower) hollow, its outline a pixel higher
    np.testing.assert_array_equal(crops[:, 14, 16], [visualize.CENTER_RGB] * 2)
    assert (crops[:, 24, 16] < 64).all()
    assert (crops[:, 23, 16, 2] > 128).all()
    hot = visualize.colorize(np.array([[0.0, 1.0]]))[0, 1]
    xy, xz = named["heatmaps_xy/stack1"], named["heatmaps_xz/stack1"]
    assert xy.shape == (2, 8, 8, 3) and xz.shape == (2, 8, 8, 3)
    np.testing.assert_array_equal(np.argwhere((xy[0] == hot).all(axis=-1)), [[1, 6]])
    np.testing.assert_array_equal(np.argwhere((xz[1] == hot).all(axis=-1)), [[6, 6], [7, 6]])
    # a model without heatmaps (the regression baseline): the skeletons only
    only = summaries.training_images(images, predicted, truth, [], TINY)
    assert list(only) == ["input_skeletons"] and only["input_skeletons"].shape[0] == 3


def test_scalars_and_validation_are_written_under_their_tags(tmp_path):
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=7):
        summaries.write_step_scalars(0.5, [0.2, 0.3], np.float32(1e-3), 2.5, 8)
        summaries.write_validation({"mpjpe_voxels": 1.5, "mpjpe_mm": None, "examples": 4})
    with writer.as_default(step=9):
        summaries.write_validation({"mpjpe_voxels": 1.25, "mpjpe_mm": 80.0, "examples": 4})
    writer.flush()
    found = _events(str(tmp_path))
    expected = {"loss/total": [(7, 0.5)], "loss/stack0": [(7, 0.2)], "loss/stack1": [(7, 0.3)],
                "learning_rate": [(7, 1e-3)], "perf/steps_per_sec": [(7, 2.5)],
                "perf/images_per_sec": [(7, 20.0)], "val/mpjpe_voxels": [(7, 1.5), (9, 1.25)],
                "val/mpjpe_mm_gt_root": [(9, 80.0)]}  # none at step 7: no 3D ground truth
    assert sorted(found) == sorted(expected)
    for tag, values in expected.items():
        got = sorted((step, float(value)) for step, value, _ in found[tag])
        np.testing.assert_allclose(got, values, rtol=1e-6, err_msg=tag)


def test_images_round_trip_through_the_event_file(tmp_path):
    rng = np.random.default_rng(0)
    named = {"input_skeletons": rng.integers(0, 256, (2, 5, 7, 3), dtype=np.uint8),
             "heatmaps_xy/stack0": rng.integers(0, 256, (3, 4, 4, 3), dtype=np.uint8)}
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=3):
        summaries.write_images(named)
    writer.flush()
    found = _events(str(tmp_path))
    for tag, images in named.items():
        (step, encoded, _), = found[tag]
        assert step == 3
        # width, height, then one PNG per image: every image of the batch, unchanged
        height, width = images.shape[1:3]
        assert encoded[:2].tolist() == [str(width).encode(), str(height).encode()]
        decoded = [tf.io.decode_png(png).numpy() for png in encoded[2:]]
        np.testing.assert_array_equal(np.stack(decoded), images)


@dataclasses.dataclass
class _Config:
    depths: tuple = (1, 2, 64)
    learning_rate: float = 2.5e-4
    deterministic: bool = False
    model_dir: str = "runs/x"
    extra: dict = dataclasses.field(default_factory=dict)


def test_hparams_hold_scalars_as_they_are_and_tuples_joined(tmp_path):
    assert summaries.hparam_values(_Config()) == {
        "depths": "1,2,64", "learning_rate": 2.5e-4, "deterministic": False,
        "model_dir": "runs/x"}  # no representation for the dict: left out
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default():
        summaries.write_hparams(_Config())
    writer.flush()
    plugins = {plugin.plugin_name for values in _events(str(tmp_path)).values()
               for _, _, plugin in values}
    assert plugins == {"hparams"}
