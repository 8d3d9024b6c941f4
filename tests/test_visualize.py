import cv2
import numpy as np
import pytest

from tf_volpose import skeleton, visualize
from tf_volpose.visualize import CENTER_RGB, LEFT_RGB, RIGHT_RGB
from tests.conftest import three_joint_set

TINY = three_joint_set()
BLACK = np.zeros((64, 64, 3), np.float32)
JOINTS = np.array([[32.0, 32.0], [10.0, 32.0], [54.0, 32.0]])  # (x, y) px


def test_to_uint8_scales_rounds_and_clips_floats_and_copies_uint8():
    image = np.array([[[0.0, 0.5, 1.0], [1.5, -1.0, 0.25]]], np.float32)
    np.testing.assert_array_equal(visualize.to_uint8(image), [[[0, 128, 255], [255, 0, 64]]])
    already = np.full((2, 2, 3), 7, np.uint8)
    out = visualize.to_uint8(already)
    out[:] = 0
    assert (already == 7).all()


def test_draw_skeleton_2d_colours_joints_and_bones_by_side_on_a_copy():
    out = visualize.draw_skeleton_2d(BLACK, JOINTS, TINY)
    assert out.dtype == np.uint8 and out.shape == (64, 64, 3)
    assert not BLACK.any()  # the input is left as it was
    # image[row = y, col = x]: joints and the bone halves in their side's colour
    np.testing.assert_array_equal(out[32, 32], CENTER_RGB)
    np.testing.assert_array_equal(out[32, 10], LEFT_RGB)
    np.testing.assert_array_equal(out[32, 54], RIGHT_RGB)
    np.testing.assert_array_equal(out[32, 20], LEFT_RGB)
    np.testing.assert_array_equal(out[32, 44], RIGHT_RGB)
    assert not out[10].any() and not out[:, 60].any()  # nothing far from the skeleton


def test_draw_skeleton_2d_dashed_joints_are_hollow():
    filled = visualize.draw_skeleton_2d(BLACK, JOINTS, TINY)
    hollow = visualize.draw_skeleton_2d(BLACK, JOINTS, TINY, dashed=True)
    # two pixels above the left joint: inside its radius-3 disc, off its bone
    np.testing.assert_array_equal(filled[30, 10], LEFT_RGB)
    assert hollow[30, 10, 0] < LEFT_RGB[0] // 2


def test_draw_skeleton_2d_skips_non_finite_joints_and_their_bones():
    joints = JOINTS.copy()
    joints[2] = [np.nan, 32.0]
    out = visualize.draw_skeleton_2d(BLACK, joints, TINY)
    np.testing.assert_array_equal(out[32, 10], LEFT_RGB)
    assert not out[28:37, 40:].any()  # no right bone, no right joint


def test_draw_skeleton_2d_draws_bones_to_joints_far_outside_the_image_in_their_direction():
    # Beyond 32-bit pixel coordinates OpenCV cannot take the point; the bone must still
    # leave the root along its true direction, slope 1/2: through (x=60, y=46).
    joints = JOINTS.copy()
    joints[2] = [3e9, 1.5e9]
    out = visualize.draw_skeleton_2d(BLACK, joints, TINY)
    np.testing.assert_array_equal(out[46, 60], RIGHT_RGB)
    np.testing.assert_array_equal(out[38, 44], RIGHT_RGB)
    assert not out[60, 60].any()  # where clamping each coordinate would have put it
    # a bone whose ends are both far away and which passes through the image is drawn
    joints = np.array([[32.0, 32.0], [-3e12, -3e12], [3e12, 3e12]])
    out = visualize.draw_skeleton_2d(BLACK, joints, TINY)
    np.testing.assert_array_equal(out[5, 5], LEFT_RGB)
    np.testing.assert_array_equal(out[60, 60], RIGHT_RGB)
    # ... and one that passes nowhere near it is not
    joints = np.array([[-3e12, 32.0], [-3e12, -3e12], [-3e12, 3e12]])
    assert not visualize.draw_skeleton_2d(BLACK, joints, TINY).any()


def test_colorize_maps_min_and_max_to_the_ends_of_jet_and_resizes():
    image = visualize.colorize(np.array([[0.0, 1.0], [2.0, 3.0]]))
    np.testing.assert_array_equal(image[0, 0], [0, 0, 128])  # dark blue (RGB)
    np.testing.assert_array_equal(image[1, 1], [128, 0, 0])  # dark red
    flat = visualize.colorize(np.full((3, 4), 5.0), size=(6, 8))
    assert flat.shape == (6, 8, 3) and (flat == flat[0, 0]).all()


def test_heatmap_projections_find_the_peak_in_the_joint_major_layout():
    joints, depth = 3, 4
    heatmaps = np.zeros((8, 6, joints * depth), np.float32)
    heatmaps[5, 2, 1 * depth + 3] = 1.0  # joint 1 at y=5, x=2, z=3 (joint-major channels)
    xy, xz = visualize.heatmap_projections(heatmaps, joints)
    assert xy.shape == (8, 6, 3) and xz.shape == (8, 6, 3)
    hot = visualize.colorize(np.array([[0.0, 1.0]]))[0, 1]
    np.testing.assert_array_equal(np.argwhere((xy == hot).all(axis=-1)), [[5, 2]])
    # z runs down, each of the 4 z rows stretched to 2 of the 8 image rows: z=3 -> rows 6, 7
    np.testing.assert_array_equal(np.argwhere((xz == hot).all(axis=-1)), [[6, 2], [7, 2]])


LINE_3D = np.array([[0.0, 0.0, 3000.0], [500.0, 0.0, 3000.0], [-500.0, 0.0, 3000.0]])  # mm


def test_render_skeleton_3d_centres_on_the_root_scales_to_fit_and_rotates():
    image = visualize.render_skeleton_3d(LINE_3D, TINY, size=256)
    # x = +-500 mm is the extent: 0.42 * 256 px from the centre, 128 +- 107.5
    np.testing.assert_array_equal(image[128, 128], CENTER_RGB)
    np.testing.assert_array_equal(image[128, 236], LEFT_RGB)
    np.testing.assert_array_equal(image[128, 20], RIGHT_RGB)
    np.testing.assert_array_equal(image[20, 128], [255, 255, 255])
    # seen from behind (180 degrees about the vertical axis) left and right swap sides
    behind = visualize.render_skeleton_3d(LINE_3D, TINY, size=256, azimuth_deg=180.0)
    np.testing.assert_array_equal(behind[128, 236], RIGHT_RGB)
    np.testing.assert_array_equal(behind[128, 20], LEFT_RGB)


def test_render_skeleton_3d_leaves_out_non_finite_joints():
    joints = LINE_3D.copy()
    joints[2] = np.nan
    image = visualize.render_skeleton_3d(joints, TINY, size=256)
    np.testing.assert_array_equal(image[128, 236], LEFT_RGB)  # the extent of what is finite
    assert (image[:, :120] == 255).all()
    # without a root, the view centres on the others' mean, and no bone can be drawn
    joints = LINE_3D.copy()
    joints[0] = np.inf
    image = visualize.render_skeleton_3d(joints, TINY, size=256)
    np.testing.assert_array_equal(image[128, 236], LEFT_RGB)
    np.testing.assert_array_equal(image[128, 20], RIGHT_RGB)
    assert (image[:, 30:226] == 255).all()
    empty = visualize.render_skeleton_3d(np.full((3, 3), np.nan), TINY, size=32,
                                         background=(1, 2, 3))
    assert (empty == [1, 2, 3]).all()


def test_pose_figure_lays_out_image_camera_view_and_novel_view():
    image = np.zeros((100, 50, 3), np.float32)
    joints_2d = np.array([[20.0, 40.0], [10.0, 40.0], [30.0, 40.0]])  # in the 100 x 50 image
    figure = visualize.pose_figure(image, joints_2d, LINE_3D, TINY, height=200)
    # the image doubled to 200 x 100, a 6-px gap, two 200 x 200 views with a gap between
    assert figure.shape == (200, 100 + 6 + 200 + 6 + 200, 3) and figure.dtype == np.uint8
    np.testing.assert_array_equal(figure[80, 40], CENTER_RGB)  # (20, 40) px, zoomed 2x
    np.testing.assert_array_equal(figure[:, 100:106], 255)
    front = visualize.render_skeleton_3d(LINE_3D, TINY, 200)
    np.testing.assert_array_equal(figure[:, 106:306], front)


@pytest.mark.parametrize("joint_set", [skeleton.H36M17, skeleton.MPII16])
def test_every_joint_of_the_real_skeletons_gets_its_side_colour(joint_set):
    colours = {"left": LEFT_RGB, "right": RIGHT_RGB, "center": CENTER_RGB}
    for j in range(joint_set.num_joints):
        assert visualize.limb_color(joint_set, j, j) == colours[joint_set.side(j)]
    left, right = joint_set.flip_pairs[0]
    assert visualize.limb_color(joint_set, joint_set.root, left) == LEFT_RGB
    assert visualize.limb_color(joint_set, joint_set.root, right) == RIGHT_RGB


def test_write_image_round_trips_makes_its_directory_and_names_what_fails(tmp_path, rng):
    image = rng.integers(0, 256, (20, 30, 3)).astype(np.uint8)
    path = tmp_path / "new" / "dir" / "figure.png"
    assert visualize.write_image(str(path), image) == str(path)
    np.testing.assert_array_equal(cv2.imread(str(path))[..., ::-1], image)  # lossless, RGB
    assert [p.name for p in path.parent.iterdir()] == ["figure.png"]  # no temporary left
    red = np.zeros((16, 16, 3), np.uint8) + np.array(LEFT_RGB, np.uint8)
    jpeg = visualize.write_image(str(tmp_path / "figure.JPG"), red)  # lossy, RGB too
    np.testing.assert_allclose(cv2.imread(jpeg)[..., ::-1].mean((0, 1)), LEFT_RGB, atol=3)
    for name in ("figure.xyz", "figure"):  # before: cv2.imwrite raised cv2.error
        with pytest.raises(ValueError, match=f"cannot write the image '.*{name}': OpenCV"):
            visualize.check_image_path(str(tmp_path / name))
        with pytest.raises(ValueError, match="name it .png or .jpg"):
            visualize.write_image(str(tmp_path / name), image)
    for directory in (str(tmp_path), f"{tmp_path}/new.png/"):  # before: a cv2.error traceback
        with pytest.raises(ValueError, match="it is a directory; name a file in it, e.g. "):
            visualize.write_image(directory, image)
    (tmp_path / "a_file").write_text("")
    # before: cv2.imwrite returned False into a directory that cannot exist, and the
    # predict tool printed "wrote ..."
    with pytest.raises(OSError, match="a_file"):
        visualize.write_image(str(tmp_path / "a_file" / "figure.png"), image)
