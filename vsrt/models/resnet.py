"""ResNet with torchvision's module and parameter names (``conv1``, ``bn1``, ``layer1..4`` of ``Bottleneck`` blocks
with ``conv1..3``/``bn1..3``/``downsample.0/1``, stride on the 3×3 conv, ``fc``), written here because torchvision
cannot be installed beside our torch build.

DSRAN's checkpoints hold a full torchvision-layout ResNet-152 under ``img_enc.cnn.*`` (including the unused
``fc (1000, 2048)`` classifier); with the same names, those weights — and torchvision's own
``resnet152-b121ed2d.pth`` — load unchanged. :meth:`ResNet.forward` returns the ``layer4`` map, the only output DSRAN
uses (its ``resnet.py`` returns ``(x1, x2, x3, x4)`` and keeps ``x4``); :func:`grid_tokens` turns it into tokens.
"""

from __future__ import annotations

import torch
from torch import nn

#: blocks per stage of ResNet-152 (torchvision ``resnet152``)
RESNET152_LAYERS = (3, 8, 36, 3)


class Bottleneck(nn.Module):
    """torchvision's ``Bottleneck`` (v1.5: the stride sits on the 3×3 ``conv2``)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """A Bottleneck ResNet in torchvision's layout.

    Args:
        layers: blocks per stage (``(3, 8, 36, 3)`` = ResNet-152).
        base_width: channels of the stem (64 in every torchvision model; smaller values only for fast tests).
            The output has ``base_width * 8 * 4`` channels (2048 for 64).
        num_classes: rows of the (unused) ``fc`` classifier kept for the state-dict layout.
    """

    def __init__(self, layers: tuple[int, ...] | list[int] = RESNET152_LAYERS, base_width: int = 64,
                 num_classes: int = 1000) -> None:
        super().__init__()
        if len(layers) != 4 or min(layers) < 1:
            raise ValueError(f"ResNet needs 4 stages of >= 1 block, got {list(layers)}")
        self.inplanes = base_width
        self.conv1 = nn.Conv2d(3, base_width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(base_width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(base_width, layers[0])
        self.layer2 = self._make_layer(base_width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(base_width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(base_width * 8, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.out_channels = base_width * 8 * Bottleneck.expansion
        self.fc = nn.Linear(self.out_channels, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.weight.device.type != "meta":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        mods = [Bottleneck(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * Bottleneck.expansion
        mods += [Bottleneck(self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalised pixels → ``layer4`` map ``(B, C, H/32, W/32)``."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def grid_tokens(feature_map: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w)`` → ``(B, h·w, C)``, row-major over the grid (DSRAN's ``view(B, C, -1).transpose(2, 1)``)."""
    return feature_map.flatten(2).transpose(1, 2)


def resnet152() -> ResNet:
    """An (untrained) ResNet-152 in torchvision's layout; load weights with ``load_state_dict``."""
    return ResNet(RESNET152_LAYERS, 64)
