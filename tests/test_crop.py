import cv2
import numpy as np
import pytest
import tensorflow as tf

from tf_volpose import crop
from tests.conftest import jpeg_with_exif_orientation


def _smooth_image(h=120, w=160):
    yy, xx = np.mgrid[0:h, 0:w]
    return np.stack([np.sin(xx / 7.0) + np.cos(yy / 5.0), xx / w, yy / h], -1).astype(np.float32)


def test_box_maps_to_crop_edges_by_hand():
    A = crop.crop_transform(center=[100.0, 50.0], scale=0.5, out_size=64)  # side 100 px
    pts = crop.transform_points([[50.0, 0.0], [150.0, 100.0], [100.0, 50.0]], A)
    np.testing.assert_allclose(pts, [[0, 0], [64, 64], [32, 32]], atol=1e-12)


def test_rotation_and_flip_by_hand():
    # 90 degrees counter-clockwise on screen: a point right of the centre goes up.
    A = crop.crop_transform([0.0, 0.0], 1.0, 200, rotation_deg=90.0)
    np.testing.assert_allclose(crop.transform_points([[10.0, 0.0]], A), [[100, 90]], atol=1e-9)
    F = crop.crop_transform([0.0, 0.0], 1.0, 200, flip=True)
    np.testing.assert_allclose(crop.transform_points([[10.0, 5.0]], F), [[90, 105]], atol=1e-9)


def test_points_round_trip(rng):
    A = crop.crop_transform([321.0, 210.0], 1.7, 256, rotation_deg=-33.0, flip=True)
    pts = rng.uniform(0, 600, (30, 2))
    back = crop.transform_points(crop.transform_points(pts, A), np.linalg.inv(A))
    np.testing.assert_allclose(back, pts, atol=1e-9)


@pytest.mark.parametrize("rotation,flip", [(0.0, False), (25.0, True), (-50.0, False)])
def test_numpy_and_tf_agree(rotation, flip):
    A = crop.crop_transform([80.0, 60.0], 0.5, 64, rotation_deg=rotation, flip=flip)
    A_tf = crop.crop_transform_tf(tf.constant([80.0, 60.0]), 0.5, 64, rotation, flip)
    np.testing.assert_allclose(A_tf.numpy(), A, atol=1e-4)
    image = _smooth_image()
    # OpenCV quantises sub-pixel positions to 1/32 px; this image's slope bounds the gap.
    np.testing.assert_allclose(crop.warp_image_tf(image, A, 64).numpy(),
                               crop.warp_image(image, A, 64), atol=2e-2)
    pts = np.array([[70.0, 50.0], [90.0, 75.0]])
    np.testing.assert_allclose(crop.transform_points_tf(pts, A_tf).numpy(),
                               crop.transform_points(pts, A), atol=1e-3)


def test_flip_warp_is_a_pixel_mirror():
    image = _smooth_image()
    A = crop.crop_transform([80.0, 60.0], 0.4, 40)
    F = crop.crop_transform([80.0, 60.0], 0.4, 40, flip=True)
    np.testing.assert_allclose(crop.warp_image(image, F, 40), crop.warp_image(image, A, 40)[:, ::-1],
                               atol=1e-2)
    np.testing.assert_allclose(crop.warp_image_tf(image, F, 40).numpy(),
                               crop.warp_image_tf(image, A, 40).numpy()[:, ::-1], atol=1e-5)


def test_warp_works_inside_dataset_map():
    image = _smooth_image()
    A = crop.crop_transform([80.0, 60.0], 0.5, 32, rotation_deg=10.0)

    def fn(img):
        M = crop.crop_transform_tf(tf.constant([80.0, 60.0]), 0.5, 32, 10.0, False)
        return crop.warp_image_tf(img, M, 32)

    out = next(iter(tf.data.Dataset.from_tensors(image).map(fn))).numpy()
    np.testing.assert_allclose(out, crop.warp_image(image, A, 32), atol=2e-2)


def test_bad_box_raises():
    with pytest.raises(ValueError, match="scale"):
        crop.crop_transform([0, 0], 0.0, 64)
    with pytest.raises(ValueError, match="center"):
        crop.crop_transform([0, np.nan], 1.0, 64)
    with pytest.raises(ValueError, match="w"):
        crop.box_from_xywh(0, 0, 0, 10)


def test_xywh_from_box_inverts_box_from_xywh_for_squares():
    center, scale = crop.box_from_xywh(30.0, 40.0, 100.0, 100.0)
    np.testing.assert_allclose(crop.xywh_from_box(center, scale), [30.0, 40.0, 100.0, 100.0])
    # by hand: centre (50, 60), side 200 * 0.25 = 50 px
    np.testing.assert_allclose(crop.xywh_from_box([50.0, 60.0], 0.25), [25.0, 35.0, 50.0, 50.0])
    with pytest.raises(ValueError, match="scale"):
        crop.xywh_from_box([0.0, 0.0], -1.0)


def test_upright_image_bytes_applies_the_exif_orientation_for_tf_decoders():
    stored = (_smooth_image(40, 60) * 80 + 100).clip(0, 255).astype(np.uint8)  # 40 x 60, BGR
    rotated = jpeg_with_exif_orientation(stored, 6)  # 6: displayed turned 90 deg clockwise
    assert tf.io.decode_image(rotated, channels=3).shape == (40, 60, 3)  # TF ignores EXIF
    data, image = crop.upright_image_bytes(rotated)
    expected = cv2.rotate(stored, cv2.ROTATE_90_CLOCKWISE)[..., ::-1]  # RGB, 60 x 40
    assert image.shape == (60, 40, 3)
    assert np.abs(image.astype(int) - expected).mean() < 3  # JPEG rounding only
    decoded = tf.io.decode_image(data, channels=3).numpy()  # what the exported graph sees
    assert decoded.shape == (60, 40, 3) and np.abs(decoded.astype(int) - expected).mean() < 3
    # orientation 1 and PNGs are sent as they are
    upright = jpeg_with_exif_orientation(stored, 1)
    assert crop.upright_image_bytes(upright)[0] is upright
    png = cv2.imencode(".png", stored)[1].tobytes()
    data, image = crop.upright_image_bytes(png)
    assert data is png and np.array_equal(image, stored[..., ::-1])
    for bad in (b"", b"\x00\x01 not an image" * 4):
        with pytest.raises(ValueError, match="not a JPEG or PNG"):
            crop.upright_image_bytes(bad)


def test_read_upright_image_names_the_file(tmp_path):
    stored = (_smooth_image(40, 60) * 80 + 100).clip(0, 255).astype(np.uint8)
    photo = tmp_path / "phone.jpg"
    photo.write_bytes(jpeg_with_exif_orientation(stored, 6))
    data, image = crop.read_upright_image(str(photo))
    want_data, want_image = crop.upright_image_bytes(photo.read_bytes())
    assert data == want_data and np.array_equal(image, want_image) and image.shape == (60, 40, 3)
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=f"^{text} is not a JPEG or PNG image$"):
        crop.read_upright_image(str(text))
    with pytest.raises(OSError, match="missing.jpg"):
        crop.read_upright_image(str(tmp_path / "missing.jpg"))


def test_xywh_or_whole_image():
    assert crop.xywh_or_whole_image(None, (640, 480)) == [0.0, 0.0, 640.0, 480.0]
    assert crop.xywh_or_whole_image([], (640, 480)) == [0.0, 0.0, 640.0, 480.0]
    assert crop.xywh_or_whole_image(["10", "20.5", "30", "40"], (640, 480)) == [10, 20.5, 30, 40]
    # partly outside is allowed (the crop pads): one pixel in at either end
    assert crop.xywh_or_whole_image([639, 479, 50, 50], (640, 480)) == [639, 479, 50, 50]
    assert crop.xywh_or_whole_image([-49, -49, 50, 50], (640, 480)) == [-49, -49, 50, 50]
    # the TF check (the exported signatures') agrees, at the edges too
    for box in ([639, 479, 50, 50], [-49, -49, 50, 50], [640, 0, 10, 10], [0, 480, 10, 10],
                [-10, 0, 10, 10], [0, -10, 10, 10], [100, 100, 5, 5]):
        expected = crop.box_overlaps_image(box, (640, 480))
        assert expected == (box not in ([640, 0, 10, 10], [0, 480, 10, 10], [-10, 0, 10, 10],
                                        [0, -10, 10, 10]))
        assert bool(crop.box_overlaps_image_tf(tf.constant(box, tf.float32),
                                               tf.constant([640.0, 480.0]))) == expected
    for bad, message in ((["1", "2"], r"x,y,w,h\) must have shape \(4,\)"),
                         (["a", "0", "1", "1"], "must be numeric"),
                         ([0, 0, 0, 10], "width and height must be positive"),
                         ([0, 0, 10, -1], "width and height must be positive"),
                         ([0, float("nan"), 10, 10], "NaN or Inf"),
                         ([0, 0, float("inf"), 10], "NaN or Inf"),
                         ([640, 0, 10, 10], r"lies outside the 640x480 image"),
                         ([0, -10, 10, 10], r"\[0.0, -10.0, 10.0, 10.0\] lies outside")):
        with pytest.raises(ValueError, match=message):
            crop.xywh_or_whole_image(bad, (640, 480))


def test_warping_the_source_window_equals_warping_the_whole_image(rng):
    # The input pipeline decodes only source_window_tf's region and warps it with
    # shift_origin_tf's transform: for any crop (rotated, flipped, partly or wholly outside
    # the image) that must be the crop of the whole image, bilinear neighbours included.
    image = _smooth_image()
    height, width = image.shape[:2]
    for _ in range(60):
        A = tf.constant(crop.crop_transform(
            rng.uniform([-60, -60], [width + 60, height + 60]), rng.uniform(0.05, 1.5), 32,
            rotation_deg=rng.uniform(-60, 60), flip=bool(rng.integers(2))), tf.float32)
        x0, y0, x1, y1 = (int(v) for v in crop.source_window_tf(A, 32, height, width))
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height  # inside, never empty
        window = crop.warp_image_tf(image[y0:y1, x0:x1], crop.shift_origin_tf(A, x0, y0), 32)
        np.testing.assert_allclose(window, crop.warp_image_tf(image, A, 32), atol=1e-4)
    # a small crop deep inside needs only its own neighbourhood
    A = tf.constant(crop.crop_transform([80.0, 60.0], 0.1, 32), tf.float32)  # 20 px square
    assert [int(v) for v in crop.source_window_tf(A, 32, height, width)] == [69, 49, 92, 72]


def test_box_from_xywh_numpy_and_tf_agree():
    boxes = np.array([[10.0, 20.0, 30.0, 60.0], [-5.0, 0.0, 200.0, 50.0]])
    center, scale = crop.box_from_xywh_tf(tf.constant(boxes), padding=1.25)
    for i, box in enumerate(boxes):
        c, s = crop.box_from_xywh(*box, padding=1.25)
        np.testing.assert_allclose(center[i], c, rtol=1e-6)
        np.testing.assert_allclose(scale[i], s, rtol=1e-6)
    np.testing.assert_allclose(center[0], [25.0, 50.0])  # by hand: x + w/2, y + h/2
