"""Model presets and the recipe keys of the experiment config."""

import dataclasses

import pytest
import yaml

from train.config import ConfigError, load_config


def write(tmp_path, name, data) -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return str(path)


def test_a_preset_fills_the_section_and_the_section_overrides_it_key_by_key(tmp_path, tiny_data):
    preset = write(tmp_path, "p.yaml", {"input_size": [256, 256], "model": {"channels": 96, "head_convs": 3}})
    cfg = load_config(write(tmp_path, "c.yaml", {"name": "c", "data": str(tiny_data),
                                                 "detector": {"preset": preset, "model": {"head_convs": 1}}}))
    d = cfg.detector
    assert d.input_size == [256, 256] and d.model.channels == 96 and d.model.head_convs == 1
    assert d.model.backbone == "mobilenet_v3_small"  # a key neither sets keeps its default


def test_the_shipped_presets_load_and_the_s_model_is_wider(tmp_path, tiny_data):
    scales = {k: load_config(write(tmp_path, f"{k}.yaml", {"name": k, "data": str(tiny_data), "detector": {
        "preset": f"configs/models/detector-{k}.yaml"}})).detector.model for k in ("n", "s", "s-fused")}
    assert scales["s"].channels > scales["n"].channels
    assert scales["s-fused"] == dataclasses.replace(scales["s"], fused_blocks=3)  # the s model, fused blocks only
    assert all(m.channels % 16 == 0 and m.backbone.endswith("_minimal") for m in scales.values())  # INT8-friendly


def test_a_bad_preset_or_recipe_key_is_one_error_naming_its_file(tmp_path, tiny_data):
    bad = write(tmp_path, "bad.yaml", {"model": {"chanels": 96}})
    with pytest.raises(ConfigError, match=r"bad\.yaml.*chanels"):
        load_config(write(tmp_path, "c.yaml", {"name": "c", "data": str(tiny_data), "detector": {"preset": bad}}))
    with pytest.raises(ConfigError, match="model preset not found"):
        load_config(write(tmp_path, "c.yaml", {"name": "c", "data": str(tiny_data),
                                               "detector": {"preset": str(tmp_path / "missing.yaml")}}))
    with pytest.raises(ConfigError, match="assigner"):
        load_config(write(tmp_path, "c.yaml", {"name": "c", "data": str(tiny_data),
                                               "detector": {"loss": {"assigner": "atss"}}}))
    with pytest.raises(ConfigError, match=r"c\.yaml.*train\.ema_tau > 0"):
        load_config(write(tmp_path, "c.yaml", {"name": "c", "data": str(tiny_data),
                                               "segmenter": {"train": {"ema_tau": 0}}}))


def test_the_segmenter_decoder_is_checked_and_stored_only_when_set(tmp_path, tiny_data):
    from train.loop import model_args

    def cfg(section, decoder):
        return write(tmp_path, f"{section}-{decoder}.yaml", {"name": "c", "data": str(tiny_data),
                                                            section: {"model": {"decoder": decoder}}})
    with pytest.raises(ConfigError, match="detector.model.decoder is a segmenter option"):
        load_config(cfg("detector", "subpixel"))
    with pytest.raises(ConfigError, match="must be one of .*got 'shuffle'"):
        load_config(cfg("segmenter", "shuffle"))
    assert model_args(load_config(cfg("segmenter", "subpixel")).segmenter, 2)["decoder"] == "subpixel"
    unset = load_config(write(tmp_path, "u.yaml", {"name": "c", "data": str(tiny_data), "segmenter": {}}))
    assert "decoder" not in model_args(unset.segmenter, 2)  # older checkpoints' model_args still match


def test_fused_blocks_are_checked_and_stored_only_when_set(tmp_path, tiny_data):
    from train.loop import model_args

    def cfg(model):
        return write(tmp_path, "f.yaml", {"name": "c", "data": str(tiny_data), "detector": {"model": model}})
    with pytest.raises(ConfigError, match=r"f\.yaml.*fused_blocks .*_minimal backbone.*got 2 with mobilenet_v3_small$"):
        load_config(cfg({"backbone": "mobilenet_v3_small", "fused_blocks": 2}))
    with pytest.raises(ConfigError, match="fused_blocks must be >= 0"):
        load_config(cfg({"backbone": "mobilenet_v3_small_minimal", "fused_blocks": -1}))
    fused = load_config(cfg({"backbone": "mobilenet_v3_small_minimal", "fused_blocks": 3}))
    assert model_args(fused.detector, 2)["fused_blocks"] == 3
    assert "fused_blocks" not in model_args(load_config(cfg({})).detector, 2)  # older checkpoints still match


def test_crops_are_a_segmenter_option_within_the_input_size(tmp_path, tiny_data):
    def cfg(section, train):
        return write(tmp_path, "k.yaml", {"name": "c", "data": str(tiny_data),
                                          section: {"input_size": [160, 240], "train": train}})
    with pytest.raises(ConfigError, match=r"k\.yaml: detector\.train\.crop is a segmenter option"):
        load_config(cfg("detector", {"crop": [64, 64]}))
    for bad in ({"crop": [64, 320]}, {"crop": [64]}, {"crop": [0, 64]}, {"crop": [64, 64], "crop_fg": 1.5}):
        with pytest.raises(ConfigError, match=r"k\.yaml: segmenter\.train\.crop must be \[h, w\] within \[160, 240\]"):
            load_config(cfg("segmenter", bad))
    assert load_config(cfg("segmenter", {"crop": [64, 96]})).segmenter.train.crop == [64, 96]


@pytest.mark.parametrize("text, words", [("name: a\nname: b\n", "line 2: key 'name' is given twice (first on line 1)"),
                                         ("name: a\nseed: .inf\n", "line 2: '.inf' is not a finite number")])
def test_every_yaml_refuses_duplicate_keys_and_non_finite_numbers(tmp_path, text, words):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words.replace("(", r"\(").replace(")", r"\)")) as e:
        load_config(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)


def test_an_unset_init_keeps_the_config_hash_and_a_set_one_changes_it(monkeypatch):
    import hashlib
    import json

    from tests.conftest import REPO

    monkeypatch.chdir(REPO)
    cfg = load_config("configs/demo.yaml")
    # the hash runs were made with before `model.init` existed: the same payload without the key
    payload = {"experiment": dataclasses.asdict(cfg), "dataset": dataclasses.asdict(cfg.dataset())}
    payload["dataset"].pop("source")
    for task in ("detector", "segmenter"):
        del payload["experiment"][task]["model"]["init"]
        del payload["experiment"][task]["model"]["box_bins"]
        del payload["experiment"][task]["loss"]["dfl_weight"]
    assert cfg.hash() == hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    before = cfg.hash()
    for change in ({"init": "runs/demo"}, {"box_bins": 16}):
        changed = load_config("configs/demo.yaml")
        changed.detector.model = dataclasses.replace(changed.detector.model, **change)
        assert changed.hash() != before, change


def test_box_bins_are_a_detector_option_stored_only_when_set(tmp_path, tiny_data):
    from train.loop import build_criterion, model_args
    from train.models import build_model

    def cfg(section, model):
        return write(tmp_path, "b.yaml", {"name": "c", "data": str(tiny_data), section: {"model": model}})
    with pytest.raises(ConfigError, match=r"b\.yaml: model\.box_bins is a detector option.*got 1$"):
        load_config(cfg("detector", {"box_bins": 1}))
    with pytest.raises(ConfigError, match="box_bins is a detector option.*in the segmenter section"):
        load_config(cfg("segmenter", {"box_bins": 16}))
    dfl = load_config(cfg("detector", {"box_bins": 16})).detector
    args = model_args(dfl, 2)
    assert args["box_bins"] == 16 and "box_bins" not in model_args(load_config(cfg("detector", {})).detector, 2)
    dfl.loss.dfl_weight = 0.5
    assert build_criterion("detector", dfl, build_model("detector", args), 2).dfl_weight == 0.5
