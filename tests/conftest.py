"""Shared fixtures: a tiny generated dataset and tiny configs (no network, no large files)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"


def pytest_collection_modifyitems(config, items):
    """`gpu` tests run where TensorRT and an NVIDIA GPU exist, and skip with the reason elsewhere."""
    from deploy.trt_engine import TensorRTUnavailable, import_cudart, import_tensorrt

    reason = None
    try:
        import_tensorrt()
        import_cudart()
    except TensorRTUnavailable as e:  # TensorRT or cuda-python missing
        reason = str(e)
    if reason is None and shutil.which("nvidia-smi") is None:
        reason = "no NVIDIA GPU on this machine"
    if reason:
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(pytest.mark.skip(reason=reason))


def write_dataset_config(root: Path, path: Path) -> Path:
    from datasets.synthetic import SHIFTS

    splits = ["train", "val", "test", *[f"test_{s}" for s in SHIFTS]]
    cfg = {
        "name": "tiny",
        "root": str(root),
        "detection": {s: {"images": f"images/{s}", "annotations": f"annotations/instances_{s}.json"} for s in splits},
        "segmentation": {
            "classes": ["background", "wire", "lane", "crack"],
            "thin_classes": ["wire", "lane", "crack"],
            "splits": {s: {"images": f"images/{s}", "masks": f"masks/{s}"} for s in splits},
        },
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A generated synthetic set (12 train / 6 val / 4 test + shifted test splits) and its dataset config."""
    from datasets.synthetic import generate

    base = tmp_path_factory.mktemp("synthetic")
    generate(base / "data", seed=0, splits={"train": 12, "val": 6, "test": 4})
    return write_dataset_config(base / "data", base / "data.yaml")


def tiny_experiment(data_yaml: Path, path: Path, epochs: int = 1) -> Path:
    sched = {"epochs": epochs, "batch_size": 4, "lr": 0.002, "warmup_iters": 2, "augment": "flip"}
    cfg = {
        "name": "tiny",
        "data": str(data_yaml),
        "detector": {"input_size": [128, 160], "model": {"channels": 16, "head_convs": 1}, "train": sched},
        "segmenter": {"input_size": [128, 160], "model": {"channels": 16}, "train": sched},
        "export": {"calib_images": 4},
    }
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.fixture(scope="session")
def tiny_config(tiny_data, tmp_path_factory) -> Path:
    return tiny_experiment(tiny_data, tmp_path_factory.mktemp("cfg") / "tiny.yaml")


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory) -> Path:
    """Train both tiny models for one epoch and export them: the artefacts later stages read."""
    from export.__main__ import main as export_main
    from train.__main__ import main as train_main

    run = tmp_path_factory.mktemp("runs") / "tiny"
    assert train_main(["--config", str(tiny_config), "--out", str(run)]) == 0
    assert export_main(["--run", str(run)]) == 0
    return run
