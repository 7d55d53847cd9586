"""MobileNetV2 (Sandler et al. 2018) adapted to 32x32 CIFAR inputs.

The standard inverted-residual configuration, with two strides changed from the ImageNet network so
that the last feature map is 4x4 instead of 1x1: the stem is a 3x3 stride-1 conv to 32 channels and
the second stage (24 channels) keeps stride 1. As in the widely used CIFAR version (kuangliu's
pytorch-cifar, which the papers' reference results come from), every block has its 1x1 expansion
conv, even at t = 1, and a stride-1 block that changes width gets a 1x1 conv-BN shortcut.

Every Conv2d is registered immediately before the BatchNorm2d that normalises its output.
"""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

# (expansion t, output channels c, blocks n, first stride s)
CIFAR_CFG = [
    (1, 16, 1, 1),
    (6, 24, 2, 1),  # stride 2 in the ImageNet network
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


class InvertedResidual(nn.Module):
    """1x1 expand, 3x3 depthwise, 1x1 linear projection; residual only at stride 1."""

    def __init__(self, in_planes, out_planes, expansion, stride):
        super().__init__()
        planes = expansion * in_planes
        self.stride = stride
        self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, groups=planes,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        if stride == 1 and in_planes != out_planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, out_planes, 1, bias=False),
                nn.BatchNorm2d(out_planes),
            )
        else:
            self.shortcut = nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        # No activation after the projection: the bottleneck is linear (paper §3.2).
        out = self.bn3(self.conv3(out))
        if self.stride == 1:
            out = out + self.shortcut(x)
        return out


class MobileNetV2(nn.Module):
    """MobileNetV2 for 32x32 inputs; `cfg` is a list of (t, c, n, s) stages."""

    def __init__(self, num_classes=10, cfg=CIFAR_CFG):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 32, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(32)
        blocks = []
        in_planes = 32
        for expansion, out_planes, n, stride in cfg:
            for s in [stride] + [1] * (n - 1):
                blocks.append(InvertedResidual(in_planes, out_planes, expansion, s))
                in_planes = out_planes
        self.layers = nn.Sequential(*blocks)
        self.conv2 = nn.Conv2d(in_planes, 1280, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(1280)
        self.relu = nn.ReLU()
        self.linear = nn.Linear(1280, num_classes)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layers(out)
        out = self.relu(self.bn2(self.conv2(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def mobilenetv2(num_classes=10):
    """MobileNetV2 for CIFAR, 2.3M parameters for 10 classes."""
    return MobileNetV2(num_classes)
