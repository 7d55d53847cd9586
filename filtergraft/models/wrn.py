"""Wide Residual Networks for CIFAR (Zagoruyko & Komodakis 2016).

WRN-d-k has three groups of (d - 4) / 6 pre-activation wide basic blocks (BN-ReLU-conv3x3 twice) of
widths 16k, 32k and 64k after a 16-channel stem, a 1x1 conv shortcut where the shape changes, and a
final BN-ReLU, global average pool and Linear layer. WRN-28-10 has 36.5M parameters.

Pre-activation puts each BatchNorm before its conv, so the "conv followed by the BN that consumes
it" order of the other models holds only up to the adds: a block's conv2 is registered right before
the next BN (which normalises conv2 + shortcut), and a downsampling block's shortcut conv,
registered before conv2, has no BatchNorm of its own.
"""
import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model


class WideBasicBlock(nn.Module):
    """Pre-activation block: BN-ReLU-conv3x3(stride)-BN-ReLU-dropout-conv3x3, plus shortcut."""

    def __init__(self, in_planes, planes, stride=1, dropout=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.dropout = nn.Dropout(dropout)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False)
        else:
            self.shortcut = None
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.relu = nn.ReLU()

    def forward(self, x):
        pre = self.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(self.relu(self.bn2(out))))
        # A projection shortcut takes the pre-activated input, the identity one the raw input.
        return out + (self.shortcut(pre) if self.shortcut is not None else x)


class WideResNet(nn.Module):
    """WRN-`depth`-`widen` with optional dropout between the two convs of each block."""

    def __init__(self, depth, widen, num_classes=10, dropout=0.0):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.conv1 = nn.Conv2d(3, widths[0], 3, stride=1, padding=1, bias=False)
        self.in_planes = widths[0]
        self.layer1 = self._make_layer(widths[1], n, 1, dropout)
        self.layer2 = self._make_layer(widths[2], n, 2, dropout)
        self.layer3 = self._make_layer(widths[3], n, 2, dropout)
        self.bn = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU()
        self.linear = nn.Linear(widths[3], num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes, n, stride, dropout):
        blocks = []
        for s in [stride] + [1] * (n - 1):
            blocks.append(WideBasicBlock(self.in_planes, planes, s, dropout))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.conv1(x)
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.relu(self.bn(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


@register_model
def wrn28_10(num_classes=10):
    """WRN-28-10 without dropout, 36.5M parameters."""
    return WideResNet(28, 10, num_classes)
