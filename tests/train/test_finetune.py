"""python -m train --init: fine-tuning starts from a trained model of ours."""

import pytest
import torch

from train.checkpoint import CheckpointError, load_checkpoint
from train.config import load_config
from train.finetune import init_from
from train.loop import build_training
from train.models import build_model
from train.run_dir import RunDir


def test_same_classes_start_from_the_weights_exactly(tiny_run, tiny_config, capsys):
    cfg = load_config(tiny_config)
    cfg.detector.model.init = str(tiny_run)  # a run folder: its detector/best.pt
    tr = build_training("detector", cfg.detector, cfg)
    src = load_checkpoint(RunDir.of(tiny_run).checkpoint("detector"))["state_dict"]
    got = tr.model.state_dict()
    assert set(got) == set(src) and all(torch.equal(got[k], src[k]) for k in src)
    assert tr.ema is None or all(torch.equal(v, src[k]) for k, v in tr.ema.module.state_dict().items())
    assert f"{len(src)} tensors loaded, 0 new" in capsys.readouterr().out


@pytest.mark.parametrize("classes", ["one more", "same count, other names"])
def test_other_classes_rebuild_the_classification_head_only(tiny_run, capsys, classes):
    ck = load_checkpoint(RunDir.of(tiny_run).checkpoint("detector"))
    names = list(ck["class_names"])
    names = names + ["extra"] if classes == "one more" else [f"other{i}" for i in range(len(names))]
    torch.manual_seed(1)
    model = build_model("detector", {**ck["model_args"], "num_classes": len(names)})
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    out = init_from(model, RunDir.of(tiny_run).checkpoint("detector"), "detector", names)
    assert sorted(out["new"]) == ["cls_out.bias", "cls_out.weight"]
    got = model.state_dict()
    assert all(torch.equal(got[k], ck["state_dict"][k]) for k in out["loaded"])
    assert all(torch.equal(got[k], fresh[k]) for k in out["new"])  # the rebuilt head keeps its fresh init
    assert "the classification head (cls_out) is rebuilt" in capsys.readouterr().out


def test_a_checkpoint_of_the_other_task_or_a_missing_one_is_refused(tiny_run, tiny_config, tmp_path, capsys):
    from train.__main__ import main

    seg = RunDir.of(tiny_run).checkpoint("segmenter")
    model = build_model("detector", load_checkpoint(RunDir.of(tiny_run).checkpoint("detector"))["model_args"])
    with pytest.raises(CheckpointError, match="a segmenter checkpoint; --init for the detector needs a detector"):
        init_from(model, seg, "detector", ["a"])
    assert main(["--config", str(tiny_config), "--out", str(tmp_path / "r"), "--init", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1 and not (tmp_path / "r").exists()
    assert main(["--config", str(tiny_config), "--out", str(tmp_path / "r"), "--init", str(tiny_run),
                 "--resume"]) == 2
