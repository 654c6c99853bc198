import numpy as np
import torch

from datasets.config import load_dataset_config
from datasets.masks import IGNORE_INDEX
from deploy.preprocess import PreprocessSpec, read_image
from deploy.runtime import OrtModel
from tests.conftest import SHARED
from train.data import DetectionDataset, SegmentationDataset


def test_training_path_and_runtime_give_identical_input_tensors(tiny_run, tiny_data):
    """The preprocessing contract: a sample from the training data path is bit-identical to the tensor
    the deployed runtime builds from the same file, using only the ONNX file's own metadata."""
    data = load_dataset_config(tiny_data)
    for task in ("detector", "segmenter"):
        rt = OrtModel(tiny_run / "export" / f"{task}.onnx")
        spec = rt.contract.preprocess
        ds = DetectionDataset(data, "val", spec) if task == "detector" else SegmentationDataset(data, "val", spec)
        paths = [r.path for r in ds.coco.records] if task == "detector" else [a for a, _ in ds.pairs]
        for i in range(3):
            train_tensor = ds[i][0].numpy()
            runtime_tensor, _ = rt.prepare(read_image(paths[i]))
            np.testing.assert_array_equal(train_tensor, runtime_tensor)


def test_real_photo_through_training_path_matches_runtime_preprocess(tiny_run):
    from tests.conftest import REPO

    if not SHARED.is_dir():
        import pytest

        pytest.skip("../shared/data is not present")
    data = load_dataset_config(REPO / "configs/data/coco128.yaml")
    rt = OrtModel(tiny_run / "export" / "detector.onnx")
    ds = DetectionDataset(data, "train", rt.contract.preprocess)
    for i in (0, 7):  # 640x480 and portrait photos: real downscaling letterbox
        np.testing.assert_array_equal(ds[i][0].numpy(), rt.prepare(read_image(ds.coco.records[i].path))[0])


def test_boxes_follow_the_letterbox(tiny_data):
    data = load_dataset_config(tiny_data)
    spec = PreprocessSpec(input_size=(320, 320))
    ds = DetectionDataset(data, "train", spec)
    rec = ds.coco.records[0]
    _, t = ds[0]
    np.testing.assert_allclose(t["boxes"].numpy(), rec.boxes + np.array([0, 40, 0, 40], np.float32))


def _fg_share(mask: torch.Tensor) -> float:
    return float(((mask > 0) & (mask != IGNORE_INDEX)).float().mean())


def test_balanced_crops_are_exact_windows_replayed_from_the_seed(tiny_data):
    """Crops are cut from the input-size sample (no resampling of 1 px lines), an epoch of them covers as
    many pixels as the whole samples, crop_fg=1 puts foreground in every window, and (seed, index) fixes
    each window, so a resumed epoch replays them."""
    data = load_dataset_config(tiny_data)
    spec = PreprocessSpec(input_size=(160, 240))
    whole = SegmentationDataset(data, "train", spec)
    ds = SegmentationDataset(data, "train", spec, crop=(40, 60), crop_fg=1.0)
    assert len(ds) == 16 * len(whole)
    ds.set_random_seed(5)
    windows = [ds[i] for i in range(len(ds))]
    assert all(x.shape == (3, 40, 60) and m.shape == (40, 60) and _fg_share(m) > 0 for x, m in windows)
    for i in (0, 13, 50, 191):
        x, m = windows[i]
        full = whole[i % len(whole)][0].numpy()
        views = np.lib.stride_tricks.sliding_window_view(full, (3, 40, 60))[0]  # (121, 181, 3, 40, 60)
        assert (views == x.numpy()).all(axis=(2, 3, 4)).any(), f"crop {i} is not a window of its sample"
    assert all(torch.equal(ds[i][1], windows[i][1]) for i in (0, 7, 31))
    ds.set_random_seed(6)
    assert not all(torch.equal(ds[i][1], windows[i][1]) for i in range(8))
    uniform = SegmentationDataset(data, "train", spec, crop=(40, 60), crop_fg=0.0)
    uniform.set_random_seed(5)
    assert np.mean([_fg_share(uniform[i][1]) for i in range(96)]) < np.mean([_fg_share(m) for _, m in windows[:96]])
