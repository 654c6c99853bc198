"""An ImageNet MobileNetV3 state dict maps onto the _minimal backbone: exact where the shapes allow, zero-padded
where our channel rounding widens a layer, the input normalisation folded into the stem."""

import pytest
import torch
from torchvision.models import mobilenet_v3_small

from train.imagenet import IMAGENET_MEAN, IMAGENET_STD
from train.models import MobileNetV3Backbone, UnitInput


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A torchvision mobilenet_v3_small with random weights and BatchNorm statistics (nothing downloaded)."""
    torch.manual_seed(0)
    net = mobilenet_v3_small(weights=None).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    path = tmp_path_factory.mktemp("imagenet") / "mobilenet_v3_small.pth"
    torch.save(net.state_dict(), path)
    return net, path


def layers(backbone: MobileNetV3Backbone) -> list[torch.nn.Module]:
    return [m for stage in backbone.stages for m in stage]


def test_padded_blocks_compute_what_the_source_blocks_compute(source, capsys):
    net, path = source
    ours = layers(MobileNetV3Backbone("mobilenet_v3_small_minimal", 1.0, (32,), weights=str(path)).eval())
    printed = capsys.readouterr().out
    assert "zero-padded" in printed and "2 folded" in printed
    # blocks 2 and 3 use ReLU and no squeeze-excitation in the source too; their expansions 72 and 88 are
    # 80 and 96 in ours: the padded channels must change nothing
    assert ours[2].block[0][0].out_channels == 80 and net.features[2].block[0][0].out_channels == 72
    x = torch.randn(1, 16, 32, 32)
    with torch.no_grad():
        y_src = net.features[3](net.features[2](x))
        y_ours = ours[3](ours[2](x))
    torch.testing.assert_close(y_ours, y_src, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("order", ["RGB", "BGR"])
def test_the_stem_on_camera_bytes_equals_the_source_stem_on_normalised_rgb(source, order):
    net, path = source
    ours = layers(MobileNetV3Backbone("mobilenet_v3_small_minimal", 1.0, (32,), weights=str(path),
                                      channel_order=order).eval())
    rgb = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    fed = rgb.flip(1) if order == "BGR" else rgb
    with torch.no_grad():
        y_src = net.features[0][1](net.features[0][0]((rgb.float() / 255 - mean) / std))  # conv + BN
        y_ours = ours[0][1](ours[0][0](UnitInput()(fed)))
    # exact away from the top row and left column, where zero padding means another pixel in each input
    torch.testing.assert_close(y_ours[..., 1:, 1:], y_src[..., 1:, 1:], atol=1e-4, rtol=1e-4)


def test_squeeze_excitation_is_left_out_and_a_foreign_file_is_refused(source, tmp_path):
    net, path = source
    from train.imagenet import map_features, read_state_dict

    features = MobileNetV3Backbone("mobilenet_v3_small_minimal", 1.0, (32,)).stages  # to count on
    flat = torch.nn.Sequential(*[m for stage in features for m in stage])
    counts = map_features(flat, read_state_dict(path), "RGB")
    se = sum(".fc1." in k or ".fc2." in k for k in net.state_dict() if k.startswith("features."))
    assert counts["unused"] == se > 0 and counts["new"] == 0 and counts["loaded"] > counts["padded"] > 0
    bad = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="resnet.pth: no MobileNetV3 feature tensors"):
        MobileNetV3Backbone("mobilenet_v3_small_minimal", 1.0, (32,), weights=str(bad))


def test_the_standard_variant_loads_every_tensor(source):
    net, path = source
    ours = layers(MobileNetV3Backbone("mobilenet_v3_small", 1.0, (32,), weights=str(path)))
    got = torch.nn.Sequential(*ours).state_dict()
    want = {k[len("features."):]: v for k, v in net.state_dict().items() if k.startswith("features.")}
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_a_timm_state_dict_maps_like_the_torchvision_one(source, tmp_path):
    """timm names the same tensors conv_stem / bn1 / blocks.<stage>.<block>.*, in the same order."""
    net, path = source
    stages = [1, 2, 3, 2, 3, 1]  # timm's mobilenetv3_small_100: blocks per stage, torchvision's features 1-12
    where = [(s, b) for s, n in enumerate(stages) for b in range(n)]
    timm = {}
    for k, v in net.state_dict().items():
        if not k.startswith("features."):
            timm[k.replace("classifier.0", "conv_head")] = v
            continue
        layer, rest = k[len("features."):].split(".", 1)
        if layer == "0":
            timm[("conv_stem." if rest.startswith("0.") else "bn1.") + rest.split(".", 1)[1]] = v
        else:
            rest = rest.replace(".fc1.", ".conv_reduce.").replace(".fc2.", ".conv_expand.")
            rest = rest.replace("block.2.conv_", "se.conv_").replace("block.1.conv_", "se.conv_")
            s, b = where[int(layer) - 1]
            timm[f"blocks.{s}.{b}.{rest}"] = v
    timm_path = tmp_path / "mobilenetv3_small_100.pth"
    torch.save({"state_dict": timm}, timm_path)

    def built(weights=None):  # the same fresh init each time: padded channels keep theirs
        torch.manual_seed(0)
        backbone = MobileNetV3Backbone("mobilenet_v3_small_minimal", 1.0, (32,), weights=weights)
        return torch.nn.Sequential(*layers(backbone)).state_dict()

    a, b, fresh = built(str(path)), built(str(timm_path)), built()
    loaded = [k for k in a if not torch.equal(a[k], fresh[k])]
    assert len(loaded) > 100 and all(torch.equal(a[k], b[k]) for k in a)


def test_another_variant_is_refused_naming_the_file(tmp_path):
    from torchvision.models import mobilenet_v3_large

    path = tmp_path / "large.pth"
    torch.save(mobilenet_v3_large(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match="large.pth: the file has 17 feature layers and this backbone 13"):
        MobileNetV3Backbone("mobilenet_v3_small_minimal", 1.0, (32,), weights=str(path))
