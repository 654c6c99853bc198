"""The comparison scripts train torchvision's models through the same `fit` as ours."""

import csv

import pytest

from experiments.compare_lraspp import train_lraspp
from experiments.compare_ssdlite import train_ssdlite
from tests.conftest import REPO
from train.config import load_config


def test_ssdlite_and_lraspp_train_through_fit(tiny_config, tmp_path):
    cfg = load_config(tiny_config)
    ssd = train_ssdlite(cfg, tmp_path / "ssdlite" / "detector")
    lraspp = train_lraspp(cfg, tmp_path / "lraspp" / "segmenter")
    for model, folder, loss in ((ssd, "ssdlite/detector", "classification"), (lraspp, "lraspp/segmenter", "dice")):
        assert not model.training and (tmp_path / folder / "best.pt").is_file()
        with open(tmp_path / folder / "log.csv") as f:
            row = next(csv.DictReader(f))
        assert loss in row and float(row["loss"]) > 0  # the model's own loss terms, logged by fit
        assert ("map" if folder.endswith("detector") else "thin_iou") in row  # validated by fit every epoch
    assert {"ods_f1", "ois_f1"} <= set(row)  # the segmenter's threshold-sweep F1s are in its training log


def test_yolo_layout_holds_the_coco_boxes_normalised_and_empty_files_for_background(tiny_config, tmp_path):
    import json

    from datasets.coco import CocoDetection, read_split
    from datasets.formats import write_yolo
    from deploy.preprocess import read_image

    cfg = load_config(tiny_config)
    data_yaml = write_yolo({k: read_split(cfg.dataset(), k) for k in ("train", "val")}, tmp_path)
    spec = json.loads(data_yaml.read_text())
    s = cfg.dataset().detection_split("train")
    coco = CocoDetection(cfg.dataset().path(s.images), cfg.dataset().path(s.annotations))
    assert spec["names"] == dict(enumerate(coco.class_names)) or spec["names"] == {
        str(k): v for k, v in enumerate(coco.class_names)}
    for rec in coco.records:
        h, w = read_image(rec.path).shape[:2]
        rows = [r.split() for r in (tmp_path / "labels" / "train" / f"{rec.path.stem}.txt").read_text().splitlines()]
        assert (tmp_path / "images" / "train" / rec.path.name).resolve() == rec.path.resolve()
        keep = ~rec.crowd
        assert len(rows) == int(keep.sum())
        for (c, cx, cy, bw, bh), box, label in zip(rows, rec.boxes[keep], rec.labels[keep], strict=True):
            assert int(c) == label
            centre_size = [(box[0] + box[2]) / 2 / w, (box[1] + box[3]) / 2 / h, (box[2] - box[0]) / w,
                           (box[3] - box[1]) / h]
            assert [float(v) for v in (cx, cy, bw, bh)] == pytest.approx(centre_size, abs=1e-5)


def test_compare_yolo_names_the_missing_yolo_command(tiny_config, tmp_path, capsys):
    from experiments.compare_yolo import main

    code = main(["--config", str(tiny_config), "--out", str(tmp_path), "--models", "yolo11n",
                 "--yolo", str(tmp_path / "no-yolo")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no-yolo" in err and "make compare-yolo" in err and len(err.splitlines()) == 1


def test_ablation_arms_are_the_base_detector_with_their_keys_on_top(tiny_config, tmp_path):
    import yaml

    from experiments.ablate_recipe import arm_configs
    from train.config import ConfigError

    spec = tmp_path / "ablate.yaml"
    spec.write_text(yaml.safe_dump({"base": str(tiny_config), "arms": {
        "plain": {}, "tal": {"loss": {"assigner": "tal", "cls_loss": "vfl"}, "train": {"augment": "flip+mosaic"}}}}))
    paths = arm_configs(spec, tmp_path / "out")
    plain, tal = load_config(paths["plain"]), load_config(paths["tal"])
    assert plain.segmenter is None and tal.detector.loss.assigner == "tal"
    assert tal.detector.train.augment == "flip+mosaic" and tal.detector.train.epochs == plain.detector.train.epochs
    assert tal.detector.model == plain.detector.model
    spec.write_text(yaml.safe_dump({"base": str(tiny_config), "detector": {"train": {"epochs": 3}},
                                    "arms": {"plain": {}, "longer": {"train": {"epochs": 5}}}}))
    paths = arm_configs(spec, tmp_path / "out")  # the file's detector keys sit under every arm's own
    assert [load_config(paths[k]).detector.train.epochs for k in ("plain", "longer")] == [3, 5]
    spec.write_text(yaml.safe_dump({"base": str(tiny_config), "arms": {"typo": {"loss": {"asigner": "tal"}}}}))
    with pytest.raises(ConfigError, match="arm 'typo'.*asigner"):
        arm_configs(spec, tmp_path / "out")


def test_an_ablation_data_key_replaces_the_base_dataset_and_the_shipped_files_validate(tiny_config, tmp_path,
                                                                                      monkeypatch):
    import yaml

    from experiments.ablate_recipe import arm_configs

    spec = tmp_path / "ablate.yaml"
    spec.write_text(yaml.safe_dump({"base": str(tiny_config), "data": "configs/data/synthetic-150.yaml",
                                    "arms": {"plain": {}}}))
    assert yaml.safe_load(arm_configs(spec, tmp_path / "out")["plain"].read_text())["data"] == \
        "configs/data/synthetic-150.yaml"
    monkeypatch.chdir(REPO)  # the shipped files name their configs relative to the repo root
    for shipped in ("ablate-recipe", "ablate-coco128", "ablate-demo150", "ablate-family"):
        # every arm passes load_config
        assert arm_configs(REPO / "experiments" / "configs" / f"{shipped}.yaml", tmp_path / shipped)


def test_budgets_train_each_model_per_budget_with_curves_a_plot_and_a_doc_table(tiny_config, tmp_path, capsys):
    import json

    import yaml

    from experiments.compare_yolo import main, trained
    from experiments.results import render, take
    from train.checkpoint import load_checkpoint

    raw = yaml.safe_load(tiny_config.read_text())
    raw["detector"]["train"]["lr"] = 0.001  # the long-run recipe: another schedule, same data and input
    long = tmp_path / "long.yaml"
    long.write_text(yaml.safe_dump(raw))
    out = tmp_path / "compare-yolo"
    assert main(["--config", str(tiny_config), "--out", str(out), "--models", "ours", "--epochs", "2,1",
                 "--long-recipe", str(long), "--repeats", "3"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r["budgets"]) == {"1", "2"} and r["setup"]["epochs"] == [1, 2]
    assert r["setup"]["ours_recipe"] == {"1": str(tiny_config), "2": str(long)}
    lrs = [load_checkpoint(out / f"{e}ep" / "ours" / "detector" / "best.pt")["config"]["detector"]["train"]["lr"]
           for e in (1, 2)]
    assert lrs == [0.002, 0.001]
    assert [e for e, _ in r["curves"]["2"]["ours"]] == [1, 2] and (out / "2ep" / "ours" / "model.json").is_file()
    assert r["budgets"]["2"]["ours"]["best_val_map"] == max(m for _, m in r["curves"]["2"]["ours"])
    assert (out / "curves.png").stat().st_size > 0
    # ours is reused only when its checkpoint was trained from the config as it is now
    assert trained("ours", out / "2ep", False, "0" * 16) is None and trained("ours", out / "2ep", False) is not None
    take(out / "results.json", None, None, root=tmp_path / "filed")
    doc = render(tmp_path / "filed")
    assert "| model | epochs |" in doc and "| ours | 1 |" in doc and "| ours | 2 |" in doc
    assert f"2 epochs: ours trained with the long-run recipe `{long}`" in doc
    raw["detector"]["input_size"] = [64, 96]
    long.write_text(yaml.safe_dump(raw))
    assert main(["--config", str(tiny_config), "--out", str(out), "--models", "ours", "--epochs", "2,1",
                 "--long-recipe", str(long)]) == 2
    assert "--long-recipe" in capsys.readouterr().err


def test_curves_read_ultralytics_padded_columns_and_say_when_a_model_has_flattened(tmp_path):
    from experiments.curves import flattened, model_curve

    (tmp_path / "train").mkdir()
    rows = ["{:>10},{:>20}".format("epoch", "metrics/mAP50-95(B)")]
    maps = [0.1, 0.3, 0.5, 0.6, 0.61, 0.612, 0.612, 0.613, 0.613, 0.613, 0.614]
    rows += [f"{e:>10},{m:>20}" for e, m in enumerate(maps, 1)]
    (tmp_path / "train" / "results.csv").write_text("\n".join(rows) + "\n")
    curve = model_curve("yolo11n", tmp_path)
    assert curve[0] == (1, 0.1) and len(curve) == 11
    assert flattened(curve) is True and flattened(curve[:6]) is False and flattened(curve[:3]) is None


def test_ablation_peers_are_timed_only_named_checked_and_shown_with_the_latency_ratio(tiny_config, tmp_path):
    from experiments.compare_yolo import PeerError, latency_peers
    from experiments.tables import ablate_recipe

    cfg = load_config(tiny_config)
    with pytest.raises(PeerError, match=r"--peers: \['yolo9'\] unknown; choose from yolo11n,yolo26n"):
        latency_peers(["yolo9"], "yolo", cfg, tmp_path)
    with pytest.raises(PeerError, match="no/such/yolo: Ultralytics' `yolo` command not found"):
        latency_peers(["yolo11n"], "no/such/yolo", cfg, tmp_path)
    arm = {"map": 0.7, "map50": 0.9, "latency_ms": {"1t": 4.0, "2t": 3.0}, "params": 7e5, "gflops": 0.8,
           "seconds": 10, "per_seed": [{"map": 0.7}]}
    peer = {"latency_ms": {"1t": 10.0, "2t": 5.0}, "params": 2.6e6, "gflops": 1.6, "input_size": [320, 320]}
    lines = ablate_recipe({"kind": "ablate-recipe", "name": "ablate-family", "source": "x", "taken": "2026-12-07",
                           "results": {"arms": {"m": arm}, "peers": {"yolo11n": peer}, "setup": {}}})
    assert "| yolo11n (latency only) | - | - | 10.00 | 5.00 | 2.60 | 1.60 | - |" in lines
    assert "m / yolo11n latency: 0.40 (1 thread), 0.60 (2 threads)" in lines


def test_presets_train_one_model_of_ours_each_scored_and_timed_at_its_own_input(tiny_config, tmp_path):
    import json

    import yaml

    from experiments.compare_yolo import main
    from experiments.results import render, take

    small, wide = tmp_path / "detector-small.yaml", tmp_path / "detector-wide.yaml"
    small.write_text(yaml.safe_dump({"input_size": [96, 128], "model": {"channels": 16, "head_convs": 1}}))
    wide.write_text(yaml.safe_dump({"input_size": [128, 160], "model": {"channels": 32, "head_convs": 1,
                                                                        "box_bins": 8}}))
    out = tmp_path / "presets"
    assert main(["--config", str(tiny_config), "--out", str(out), "--models", "ours", "--presets",
                 f"{small},{wide}", "--repeats", "3", "--int8"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert set(r) - {"setup", "curves"} == {"ours-small", "ours-wide", "ours-small-int8", "ours-wide-int8"}
    assert r["ours-wide-int8"]["input_size"] == [128, 160]
    assert (out / "ours-wide" / "export" / "manifest.json").is_file()
    assert [r[n]["input_size"] for n in ("ours-small", "ours-wide")] == [[96, 128], [128, 160]]
    assert r["ours-wide"]["params"] > r["ours-small"]["params"] and r["setup"]["presets"] == [str(small), str(wide)]
    assert (out / "pareto.png").stat().st_size > 0 and (out / "ours-wide" / "detector.onnx").is_file()
    take(out / "results.json", None, None, root=tmp_path / "filed")
    assert "| ours-small |" in render(tmp_path / "filed") and "| ours-wide |" in render(tmp_path / "filed")
