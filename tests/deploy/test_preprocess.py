import numpy as np
import pytest

from deploy.preprocess import (
    ImageReadError,
    PreprocessSpec,
    boxes_to_image,
    boxes_to_input,
    compute_letterbox,
    mask_to_image,
    preprocess,
    preprocess_mask,
    read_image,
)


def test_letterbox_centres_and_keeps_aspect():
    spec = PreprocessSpec(input_size=(320, 320))
    lb = compute_letterbox((240, 320), spec)
    assert (lb.scale_x, lb.scale_y, lb.pad_x, lb.pad_y) == (1.0, 1.0, 0, 40)
    img = np.full((240, 320, 3), 7, np.uint8)
    t, _ = preprocess(img, spec)
    assert t.shape == (3, 320, 320) and t.dtype == np.uint8
    assert (t[:, :40] == 114).all() and (t[:, 280:] == 114).all() and (t[:, 40:280] == 7).all()


def test_boxes_round_trip_through_a_downscaling_letterbox():
    spec = PreprocessSpec(input_size=(128, 160))
    lb = compute_letterbox((480, 640), spec)
    boxes = np.array([[10, 20, 300, 400], [0, 0, 640, 480]], np.float32)
    back = boxes_to_image(boxes_to_input(boxes, lb), lb)
    np.testing.assert_allclose(back, boxes, atol=1e-3)


def test_channel_order_rgb_swaps_and_bgr_does_not():
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 200  # blue in OpenCV's BGR
    rgb, _ = preprocess(img, PreprocessSpec(input_size=(32, 32), channel_order="RGB"))
    bgr, _ = preprocess(img, PreprocessSpec(input_size=(32, 32), channel_order="BGR"))
    assert (rgb[2] == 200).all() and (rgb[0] == 0).all()
    assert (bgr[0] == 200).all()


def test_stretch_and_nhwc_layout():
    spec = PreprocessSpec(input_size=(64, 64), resize="stretch", layout="NHWC")
    t, lb = preprocess(np.zeros((100, 50, 3), np.uint8), spec)
    assert t.shape == (64, 64, 3) and lb.pad_x == lb.pad_y == 0 and lb.scale_x == 64 / 50


def test_mask_letterbox_pads_with_ignore_and_inverts_exactly():
    spec = PreprocessSpec(input_size=(320, 320))
    mask = np.random.default_rng(0).integers(0, 4, (240, 320)).astype(np.uint8)
    m = preprocess_mask(mask, spec)
    assert m.shape == (320, 320) and (m[:40] == 255).all()
    lb = compute_letterbox(mask.shape, spec)
    np.testing.assert_array_equal(mask_to_image(m, lb), mask)


def test_spec_validates_and_round_trips_json():
    spec = PreprocessSpec(input_size=(256, 320), channel_order="BGR", interpolation="area", pad_value=0)
    assert PreprocessSpec.from_json(spec.to_json()) == spec
    with pytest.raises(ValueError, match="channel_order"):
        PreprocessSpec(input_size=(32, 32), channel_order="RGBA")


def test_corrupt_and_missing_images_name_the_file(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(ImageReadError, match="broken.jpg: cannot decode"):
        read_image(bad)
    with pytest.raises(ImageReadError, match="nope.jpg: no such image"):
        read_image(tmp_path / "nope.jpg")


def test_nchw_tensor_is_the_resized_frame_in_contract_channel_order():
    import cv2

    from deploy.preprocess import fit_to_input

    img = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    for order in ("RGB", "BGR"):
        spec = PreprocessSpec(input_size=(320, 320), channel_order=order)
        t, _ = preprocess(img, spec)
        ref, _ = fit_to_input(img, spec)
        ref = cv2.cvtColor(ref, cv2.COLOR_BGR2RGB) if order == "RGB" else ref
        assert t.flags.c_contiguous and np.array_equal(t, ref.transpose(2, 0, 1)), order
