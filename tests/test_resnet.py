"""ResNet in torchvision's layout: names, shapes, strides, grid tokens."""

from __future__ import annotations

import torch

from vsrt.models.resnet import Bottleneck, ResNet, grid_tokens, resnet152


def test_resnet152_layout_equals_torchvision() -> None:
    with torch.device("meta"):
        m = resnet152()
    sd = m.state_dict()
    assert len(sd) == 932 and sum(p.numel() for p in m.parameters()) == 60_192_808
    assert sd["conv1.weight"].shape == (64, 3, 7, 7) and sd["fc.weight"].shape == (1000, 2048)
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer3.35.bn3.running_var"].shape == (1024,) and "layer4.2.bn2.num_batches_tracked" in sd
    assert [len(getattr(m, f"layer{i}")) for i in range(1, 5)] == [3, 8, 36, 3]
    # ResNet v1.5 (torchvision): the stride sits on the 3×3 conv of the first block of layers 2–4
    for i in (2, 3, 4):
        block: Bottleneck = getattr(m, f"layer{i}")[0]
        assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)
        assert block.downsample[0].stride == (2, 2)


def test_grid_tokens_are_row_major_positions() -> None:
    torch.manual_seed(0)
    m = ResNet([1, 1, 1, 1], base_width=4).eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        fmap = m(x)
    assert fmap.shape == (2, 128, 7, 7)
    tokens = grid_tokens(fmap)
    assert tokens.shape == (2, 49, 128)
    assert torch.equal(tokens, fmap.view(2, 128, -1).transpose(2, 1))  # DSRAN's view + transpose
    assert torch.equal(tokens[:, 7 * 2 + 3], fmap[:, :, 2, 3])
