import numpy as np
import pytest
import torch

from train.assign import assign_fcos
from train.checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from train.losses import SegmentationLoss
from train.models import Detector, Segmenter, conv_bn_relu


def test_detector_takes_uint8_and_returns_points_in_forward_order():
    m = Detector(num_classes=4, channels=16, head_convs=1).eval()
    torch.nn.init.zeros_(m.reg_out.weight)  # equal l, t, r, b: every box is centred on its point
    x = torch.randint(0, 256, (2, 3, 128, 160), dtype=torch.uint8)
    logits, boxes = m(x)
    pts, strides = m.points((128, 160))
    n = sum((128 // s) * (160 // s) for s in (8, 16, 32))
    assert logits.shape == (2, n, 4) and boxes.shape == (2, n, 4) and pts.shape == (n, 2)
    centre = (boxes[..., :2] + boxes[..., 2:]) / 2
    torch.testing.assert_close(centre[0], pts, atol=1e-3, rtol=0)
    assert strides[0] == 8 and strides[-1] == 32


def test_detector_decodes_every_level_at_each_location_in_channels_last_order():
    m = Detector(num_classes=3, channels=16, head_convs=1).eval()
    x = torch.randint(0, 256, (2, 3, 96, 130), dtype=torch.uint8)  # 130: levels of 17, 9 and 5 columns
    with torch.no_grad():
        logits, boxes = m(x)
        feats = m.fpn(m.backbone(m.normalize(x)))
    i = 0
    for f, s in zip(feats, m.strides, strict=True):  # level by level, location (y, x) at row-major index
        y, xx = f.shape[2] - 1, f.shape[3] // 2
        k = i + y * f.shape[3] + xx
        with torch.no_grad():
            cls = m.cls_out(m.cls_tower(f))[:, :, y, xx]
            dist = torch.nn.functional.softplus(m.reg_out(m.reg_tower(f))[:, :, y, xx]) * s  # (B, 4)
        centre = torch.tensor([(xx + 0.5) * s, (y + 0.5) * s])
        torch.testing.assert_close(logits[:, k], cls)
        torch.testing.assert_close(boxes[:, k], torch.cat([centre - dist[:, :2], centre + dist[:, 2:]], 1))
        i += f.shape[2] * f.shape[3]
    assert i == logits.shape[1] == boxes.shape[1]


def test_a_distribution_box_head_decodes_the_expected_bin_and_trains_on_its_logits():
    m = Detector(num_classes=3, channels=16, head_convs=1, box_bins=16)
    x = torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8)
    cls, boxes, bins = m.train()(x)
    assert bins.shape == (*boxes.shape, 16)  # (B, N, 4, bins) beside the decoded boxes, in training only
    with torch.no_grad():
        out = m.eval()(x)
        feats = m.fpn(m.backbone(m.normalize(x)))
        logits = m.reg_out(m.reg_tower(feats[0]))[:, :, 0, 0].view(2, 4, 16)  # first location, stride 8
    assert len(out) == 2  # what the export and every runner see: cls_logits, boxes
    dist = (logits.softmax(-1) * torch.arange(16.0)).sum(-1) * 8
    torch.testing.assert_close(out[1][:, 0], torch.cat([4 - dist[:, :2], 4 + dist[:, 2:]], 1))
    with pytest.raises(ValueError, match="box_bins"):
        Detector(num_classes=3, box_bins=1)


def test_segmenter_logits_at_stride_2_decode_as_the_in_graph_upsampling_did():
    import torch.nn.functional as F

    from deploy.postprocess import logits_to_input
    from deploy.preprocess import PreprocessSpec, compute_letterbox

    m = Segmenter(num_classes=4, channels=16).eval()
    with torch.no_grad():
        out = m(torch.randint(0, 256, (1, 3, 96, 128), dtype=torch.uint8))
    assert out.shape == (1, 4, 48, 64)
    lb = compute_letterbox((60, 128), PreprocessSpec(input_size=(96, 128)))
    up = F.interpolate(out, size=(96, 128), mode="bilinear")  # what forward() did before it moved to deploy/
    np.testing.assert_allclose(logits_to_input(out.numpy(), lb), up[0].numpy(), atol=1e-5)


@pytest.mark.parametrize("decoder", ["concat", "subpixel", "subpixel8"])
def test_segmenter_decoders_give_stride_2_logits(decoder):
    m = Segmenter(num_classes=3, channels=16, decoder=decoder).eval()
    with torch.no_grad():
        assert m(torch.randint(0, 256, (2, 3, 96, 128), dtype=torch.uint8)).shape == (2, 3, 48, 64)


@pytest.mark.parametrize("decoder, r", [("subpixel", 2), ("subpixel8", 4)])
def test_subpixel_decoders_put_each_location_in_its_own_block(decoder, r):
    m = Segmenter(num_classes=2, channels=16, decoder=decoder).eval()
    with torch.no_grad():
        m.classifier.weight.zero_()
        m.classifier.bias.copy_(torch.arange(2.0 * r * r))  # channel k * r * r + dy * r + dx: class k at (dy, dx)
        out = m(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))  # (1, 2, 32, 32)
    block = out[0, :, 3 * r:4 * r, 2 * r:3 * r]  # any r x r block on the stride-2r grid
    torch.testing.assert_close(block, torch.arange(2.0 * r * r).view(2, r, r))


@pytest.mark.parametrize("k", [2, 4])
def test_space_to_depth_convs_tile_the_input_without_overlap(k):
    conv = conv_bn_relu(1, 1, k, stride=k)[0]
    torch.nn.init.ones_(conv.weight)
    for i, j in [(0, 0), (k - 1, k), (2 * k - 1, 2 * k - 1), (3 * k - 1, 0)]:
        x = torch.zeros(1, 1, 4 * k, 4 * k)
        x[0, 0, i, j] = 1
        with torch.no_grad():
            out = conv(x)[0, 0]  # (4, 4): one cell per k x k window
        assert out.shape == (4, 4) and out[i // k, j // k] == 1 and out.sum() == 1


def test_unknown_segmenter_decoder_is_refused():
    with pytest.raises(ValueError, match="decoder 'pixelshuffle' is not one of"):
        Segmenter(num_classes=2, decoder="pixelshuffle")


def test_assignment_gives_every_box_positives_even_tiny_ones():
    pts, strides = Detector(num_classes=1, channels=16, head_convs=1).points((128, 128))
    gt = torch.tensor([[10.0, 10, 90, 90], [100, 100, 104, 104]])  # big, and smaller than a stride
    match = assign_fcos(pts, strides, gt)
    assert (match == 0).sum() > 0 and (match == 1).sum() == 1
    assert set(match.unique().tolist()) == {-1, 0, 1}


def test_segmentation_loss_is_finite_when_every_pixel_is_ignored():
    seg_loss = SegmentationLoss(3)(torch.randn(1, 3, 8, 8), torch.full((1, 8, 8), 255))
    assert torch.isfinite(seg_loss["loss"])


def test_checkpoint_is_self_describing_and_weights_only(tmp_path):
    args = dict(num_classes=3, channels=16, head_convs=1)
    m = Detector(**args).eval()
    save_checkpoint(tmp_path / "a.pt", m, {"task": "detector", "model_args": args, "class_names": ["a", "b", "c"]})
    ck = torch.load(tmp_path / "a.pt", weights_only=True)  # no pickled code
    m2 = model_from_checkpoint(ck)
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    torch.testing.assert_close(m(x)[0], m2(x)[0])
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")


def test_minimal_backbone_is_relu_without_squeeze_excitation():
    from torchvision.ops.misc import SqueezeExcitation

    m = Detector(num_classes=2, backbone="mobilenet_v3_large_minimal", channels=16, head_convs=1)
    tasks = {type(mod) for mod in m.modules()}
    assert torch.nn.Hardswish not in tasks and SqueezeExcitation not in tasks and torch.nn.ReLU in tasks
    assert torch.nn.Hardswish in {type(mod) for mod in Detector(num_classes=2, channels=16).modules()}


def test_minimal_variant_is_laid_out_for_fast_int8_kernels():
    m = Detector(num_classes=2, backbone="mobilenet_v3_small_minimal", channels=16, head_convs=1)
    depthwise = [c for c in m.backbone.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]
    assert depthwise and all(c.groups % 16 == 0 for c in depthwise)  # ORT's int8 depthwise kernel
    stem = m.backbone.stages[0][0][0]
    assert stem.in_channels == 4 and not stem.weight[:, 3].any()  # the zero padding channel has no weight
    x = torch.randint(0, 256, (1, 3, 64, 64), dtype=torch.uint8)
    unit = m.normalize(x)
    assert unit.shape == (1, 4, 64, 64) and torch.equal((unit[:, :3] * 255).round(), x.float()) and not unit[:, 3].any()


@pytest.mark.parametrize("task", [Detector, Segmenter])
def test_fused_blocks_replace_the_leading_depthwise_blocks_with_full_convs(task):
    from train.models import FusedInvertedResidual

    def depthwise(m):
        return [c for c in m.backbone.modules() if isinstance(c, torch.nn.Conv2d) and c.groups > 1]

    plain = task(num_classes=2, backbone="mobilenet_v3_small_minimal", channels=16).eval()
    fused = task(num_classes=2, backbone="mobilenet_v3_small_minimal", channels=16, fused_blocks=3).eval()
    blocks = [b for b in fused.backbone.modules() if isinstance(b, FusedInvertedResidual)]
    assert len(blocks) == 3 and len(depthwise(fused)) == len(depthwise(plain)) - 3
    conv = blocks[1].block[0][0]  # stride-2 16 -> 24 block: a full 3x3 conv at half its 80-channel expansion
    assert (conv.kernel_size, conv.stride, conv.groups, conv.out_channels) == ((3, 3), (2, 2), 1, 48)
    assert [b.use_res_connect for b in blocks] == [False, False, True]  # the stride-1 24 -> 24 block adds
    with torch.no_grad():
        blocks[2].block[2].weight.zero_()  # its projection's BN outputs 0: the block is its skip connection
        blocks[2].block[2].bias.zero_()
        z = torch.randn(1, 24, 8, 8)
        assert torch.equal(blocks[2](z), z)
    assert fused.backbone.out_channels == plain.backbone.out_channels
    x = torch.randint(0, 256, (1, 3, 64, 96), dtype=torch.uint8)
    def shapes(out):
        return [t.shape for t in (out if isinstance(out, tuple) else (out,))]
    assert shapes(fused(x)) == shapes(plain(x))
    with pytest.raises(ValueError, match="_minimal backbones"):
        task(num_classes=2, backbone="mobilenet_v3_small", fused_blocks=1)


def test_softplus_matches_torch():
    from train.models import softplus

    x = torch.linspace(-60, 60, 2001)
    torch.testing.assert_close(softplus(x), torch.nn.functional.softplus(x), rtol=1e-6, atol=1e-6)


def test_backbone_weights_load_from_a_local_torchvision_checkpoint(tmp_path):
    from torchvision.models import mobilenet_v3_small

    ref = mobilenet_v3_small()  # stands in for an ImageNet checkpoint file; nothing is downloaded
    path = tmp_path / "mnv3s.pth"
    torch.save(ref.state_dict(), path)
    m = Detector(num_classes=2, channels=16, backbone_weights=str(path))
    first = m.backbone.stages[0][0][0].weight
    torch.testing.assert_close(first, ref.features[0][0].weight)
    minimal = Detector(num_classes=2, backbone="mobilenet_v3_small_minimal", backbone_weights=str(path))
    torch.testing.assert_close(minimal.backbone.stages[0][3].block[2][0].weight[:, :88],  # 88 -> 96 channels
                               ref.features[3].block[2][0].weight)  # (tests/train/test_imagenet.py: the mapping)
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        Detector(num_classes=2, backbone_weights=str(tmp_path / "missing.pth"))


def test_per_class_thresholds_in_config_are_checked_and_aligned():
    from train.config import ConfigError, PostprocessConfig

    p = PostprocessConfig(conf_thres=0.1, class_conf_thres={"cone": 0.4})
    assert p.for_classes(["car", "cone"])["conf_thres"] == [0.1, 0.4]
    assert PostprocessConfig().for_classes(["car"])["conf_thres"] == 0.05
    with pytest.raises(ConfigError, match="truck"):
        PostprocessConfig(class_conf_thres={"truck": 0.5}).for_classes(["car"])


def test_soft_skeleton_thins_a_thick_line_and_cldice_loss_rewards_the_centreline():
    from train.losses import SegmentationLoss, soft_skeleton

    x = torch.zeros(1, 1, 32, 32)
    x[..., 4:28, 12:19] = 1.0  # a 7 px wide bar
    sk = soft_skeleton(x, iterations=5)
    assert sk[..., 8:24, 15].min() > 0.9 and sk[..., 10:22, 12].max() < 0.1  # centre kept, edge removed
    target = torch.zeros(1, 32, 32, dtype=torch.long)
    target[:, 4:28, 15] = 1  # a 1 px wire
    good = torch.full((1, 2, 32, 32), -8.0)
    good[:, 0] = 8.0
    good[:, 1, 4:28, 15], good[:, 0, 4:28, 15] = 8.0, -8.0
    shifted = torch.roll(good, 3, dims=3)  # the wire 3 px off
    loss = SegmentationLoss(2, cldice_weight=1.0)
    lg, ls = loss(good, target), loss(shifted, target)
    assert lg["cldice"] < 0.05 < 0.9 < ls["cldice"]
    logits = torch.randn(2, 2, 32, 32, requires_grad=True)
    loss(logits.half().float(), target.expand(2, -1, -1))["loss"].backward()
    assert torch.isfinite(logits.grad).all()
