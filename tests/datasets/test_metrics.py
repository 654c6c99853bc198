import numpy as np

from datasets.coco import CocoDetection
from datasets.config import load_dataset_config
from datasets.metrics import SegMeter, coco_map
from deploy.postprocess import Detections


def test_coco_map_is_one_for_ground_truth_and_drops_for_shifted_boxes(tiny_data):
    cfg = load_dataset_config(tiny_data)
    s = cfg.detection_split("val")
    coco = CocoDetection(cfg.path(s.images), cfg.path(s.annotations))
    perfect = {r.image_id: Detections(r.boxes, np.ones(len(r.boxes), np.float32), r.labels) for r in coco.records}
    m = coco_map(coco, perfect)
    assert m["map"] > 0.99 and m["map50"] > 0.99
    shifted = {k: Detections(d.boxes + 30, d.scores, d.labels) for k, d in perfect.items()}
    assert coco_map(coco, shifted)["map"] < 0.2
    assert coco_map(coco, {})["map"] == 0.0


def test_seg_meter_on_a_hand_made_thin_line():
    truth = np.zeros((10, 10), np.uint8)
    truth[5, :] = 1  # a 1 px wire
    pred = np.zeros_like(truth)
    pred[5, :5] = 1  # half found
    meter = SegMeter(["background", "wire"], ["wire"])
    meter.update(pred, truth)
    r = meter.compute()
    assert r["thin_iou"] == 0.5
    assert abs(r["iou"]["background"] - 90 / 95) < 1e-9
    ignored = truth.copy()
    ignored[5, 5:] = 255  # unscored pixels do not count
    meter = SegMeter(["background", "wire"], ["wire"])
    meter.update(pred, ignored)
    assert meter.compute()["thin_iou"] == 1.0


def test_gate_blames_the_stage_whose_checks_fail():
    from evaluate.gate import blame, check

    def result(q, p, psnr):
        return {"checks": [check("m", "quantization drop", q, 0.02, "max", "quantization"),
                           check("m", "preprocessing drop", p, 0.005, "max", "preprocessing"),
                           check("m", "input PSNR", psnr, 40, "min", "preprocessing"),
                           check("m", "size", 99.0, 10, "max")]}  # a failing check with no stage blames none

    assert blame(result(0.05, 0.0, 99)) == "quantization"
    assert blame(result(0.0, 0.01, 99)) == "preprocessing"
    assert blame(result(0.0, 0.0, 31.5)) == "preprocessing"  # tensors differ even where accuracy did not move
    assert blame(result(0.05, 0.01, 99)) == "quantization + preprocessing"
    assert blame(result(0.01, -0.002, 99)) == "none"


def test_agreement_scores_predictions_against_reference_predictions(tiny_data):
    from datasets.metrics import agreement_map

    cfg = load_dataset_config(tiny_data)
    s = cfg.detection_split("val")
    coco = CocoDetection(cfg.path(s.images), cfg.path(s.annotations))
    ref = {r.image_id: Detections(r.boxes + 3, np.full(len(r.boxes), 0.9, np.float32), r.labels)
           for r in coco.records}  # "fp32 predictions": not the labels
    assert agreement_map(coco, ref, ref)["map50"] > 0.99
    moved = {k: Detections(d.boxes + 25, d.scores, d.labels) for k, d in ref.items()}
    assert agreement_map(coco, ref, moved)["map50"] < 0.3
