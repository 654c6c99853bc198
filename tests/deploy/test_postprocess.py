import numpy as np

from deploy.postprocess import decode_detections, decode_detector, decode_mask, decode_probs
from deploy.preprocess import PreprocessSpec, compute_letterbox


def _logit(p):
    return np.log(p / (1 - p))


def test_nms_is_class_aware_and_thresholded():
    boxes = np.array([[10, 10, 50, 50], [12, 12, 52, 52], [10, 10, 50, 50], [100, 100, 120, 120]], np.float32)
    logits = np.full((4, 3), _logit(0.01), np.float32)
    logits[0, 0], logits[1, 0] = _logit(0.9), _logit(0.8)  # overlapping, same class: one survives
    logits[2, 1] = _logit(0.7)  # same place, other class: kept
    logits[3, 2] = _logit(0.02)  # below threshold: dropped
    lb = compute_letterbox((64, 64), PreprocessSpec(input_size=(64, 64)))
    d = decode_detections(logits[None], boxes[None], lb, conf_thres=0.05, iou_thres=0.5)
    assert len(d) == 2
    np.testing.assert_allclose(d.scores, [0.9, 0.7], atol=1e-5)
    assert d.labels.tolist() == [0, 1]


def test_boxes_come_back_in_source_pixels():
    spec = PreprocessSpec(input_size=(320, 320))
    lb = compute_letterbox((240, 320), spec)  # 40 px of padding on top
    logits = np.array([[_logit(0.9)]], np.float32)
    d = decode_detections(logits, np.array([[10, 50, 30, 90]], np.float32), lb, conf_thres=0.5)
    np.testing.assert_allclose(d.boxes, [[10, 10, 30, 50]])


def test_decode_mask_argmax_and_crop():
    spec = PreprocessSpec(input_size=(8, 8))
    lb = compute_letterbox((4, 8), spec)  # pad 2 rows top and bottom
    logits = np.zeros((1, 3, 8, 8), np.float32)
    logits[0, 2, 2:6, :4] = 5.0
    m = decode_mask(logits, lb)
    assert m.shape == (4, 8) and (m[:, :4] == 2).all() and (m[:, 4:] == 0).all()


def test_decode_probs_is_the_softmax_of_the_asked_classes_in_source_pixels():
    lb = compute_letterbox((4, 8), PreprocessSpec(input_size=(8, 8)))  # pad 2 rows top and bottom
    logits = np.zeros((1, 3, 8, 8), np.float32)
    logits[0, 2, 2:6, :4] = np.log(8.0)  # p = 8 / (1 + 1 + 8) = 0.8 there, 1/3 elsewhere
    p = decode_probs(logits, lb, [2, 1])
    assert p.shape == (2, 4, 8) and p.dtype == np.uint8
    assert (p[0, :, :4] == 204).all() and (p[0, :, 4:] == 85).all() and (p[1, :, :4] == 26).all()
    big = compute_letterbox((8, 16), PreprocessSpec(input_size=(8, 8)))  # source twice the letterboxed size
    assert decode_probs(logits, big, [2]).shape == (1, 8, 16)


def test_per_class_thresholds():
    logits = np.full((2, 2), _logit(0.01), np.float32)
    logits[0, 0], logits[1, 1] = _logit(0.4), _logit(0.4)
    boxes = np.array([[0, 0, 10, 10], [20, 20, 30, 30]], np.float32)
    lb = compute_letterbox((64, 64), PreprocessSpec(input_size=(64, 64)))
    d = decode_detections(logits, boxes, lb, conf_thres=[0.5, 0.3])  # class 0 strict, class 1 lenient
    assert d.labels.tolist() == [1]


def test_yolo_raw_head_is_centre_size_with_probabilities_and_goes_through_nms():
    lb = compute_letterbox((240, 320), PreprocessSpec(input_size=(320, 320)))  # 40 px of padding on top
    pred = np.zeros((1, 4 + 3, 5), np.float32)  # (1, 4 + C, N)
    pred[0, :4, 0] = [20, 70, 20, 40]  # cx, cy, w, h -> 10, 50, 30, 90 in input pixels
    pred[0, :4, 1] = [21, 71, 20, 40]  # the same object, lower score: suppressed
    pred[0, :4, 2] = [200, 200, 10, 10]
    pred[0, 4 + 1, 0], pred[0, 4 + 1, 1], pred[0, 4 + 2, 2] = 0.9, 0.6, 0.0005  # probabilities, not logits
    d = decode_detector([pred], lb, family="yolo", conf_thres=0.001, iou_thres=0.7)
    assert d.labels.tolist() == [1] and d.scores.tolist() == [np.float32(0.9)]
    np.testing.assert_allclose(d.boxes, [[10, 10, 30, 50]])


def test_yolo_end_to_end_rows_are_corners_score_class_without_nms():
    lb = compute_letterbox((240, 320), PreprocessSpec(input_size=(320, 320)))
    rows = np.zeros((1, 300, 6), np.float32)  # (1, K, 6), best first, zero rows at the end
    rows[0, 0] = [10, 50, 30, 90, 0.8, 2]
    rows[0, 1] = [11, 51, 31, 91, 0.7, 2]  # overlapping the first: NMS-free output keeps both
    d = decode_detector([rows], lb, family="yolo-e2e", conf_thres=0.001, max_det=300)
    assert d.labels.tolist() == [2, 2] and len(d) == 2
    np.testing.assert_allclose(d.boxes[0], [10, 10, 30, 50])
    strict = decode_detector([rows], lb, family="yolo-e2e", conf_thres=[0.5, 0.5, 0.75])  # per-class thresholds
    assert strict.scores.tolist() == [np.float32(0.8)]
