"""ResNets for CIFAR (He et al. 2016, "Deep Residual Learning for Image Recognition", §4.2).

Three stages of n basic blocks each (16, 32 and 64 channels on 32x32, 16x16 and 8x8 maps), so the
depth is 6n + 2. Shortcuts are option A: identity, or, where a stage halves the map and doubles the
channels, a parameter-free subsample-and-zero-pad. The `_leaky` variants are the same networks with
every ReLU replaced by LeakyReLU with PyTorch's default slope 0.01, as the release.

Module order matters to the rest of the library: every Conv2d is registered immediately before the
BatchNorm2d that normalises its output, so conv->bn pairs can be found from `named_modules()`.
"""
import functools

import torch.nn as nn
import torch.nn.functional as F

from .registry import register_model

LEAKY_SLOPE = 0.01  # PyTorch's default, as the release's nn.LeakyReLU()


class DownsampleA(nn.Module):
    """Option-A shortcut: keep every other pixel and zero-pad the new channels (no parameters)."""

    def __init__(self, in_planes, out_planes):
        super().__init__()
        self.in_planes = in_planes
        self.out_planes = out_planes

    def forward(self, x):
        extra = self.out_planes - self.in_planes
        # Split the padding between both ends of the channel axis, as in the paper's code.
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, extra // 2, extra - extra // 2))

    def extra_repr(self):
        return f"{self.in_planes}, {self.out_planes}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and an option-A shortcut; `act` builds the activation module."""

    def __init__(self, in_planes, planes, stride=1, act=nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut = DownsampleA(in_planes, planes)
        else:
            self.shortcut = nn.Identity()
        self.act = act()

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet with `num_blocks` blocks in each of its three stages."""

    def __init__(self, num_blocks, num_classes=10, act=nn.ReLU):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.act = act()
        self.in_planes = 16
        self.layer1 = self._make_layer(16, num_blocks, 1, act)
        self.layer2 = self._make_layer(32, num_blocks, 2, act)
        self.layer3 = self._make_layer(64, num_blocks, 2, act)
        self.linear = nn.Linear(64, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def _make_layer(self, planes, num_blocks, stride, act):
        blocks = []
        for s in [stride] + [1] * (num_blocks - 1):
            blocks.append(BasicBlock(self.in_planes, planes, s, act))
            self.in_planes = planes
        return nn.Sequential(*blocks)

    def forward(self, x):
        out = self.act(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return self.linear(out)


_leaky = functools.partial(nn.LeakyReLU, LEAKY_SLOPE)


@register_model
def resnet20(num_classes=10):
    """ResNet-20 (n = 3), 0.27M parameters."""
    return ResNetCifar(3, num_classes)


@register_model
def resnet32(num_classes=10):
    """ResNet-32 (n = 5), 0.46M parameters."""
    return ResNetCifar(5, num_classes)


@register_model
def resnet44(num_classes=10):
    """ResNet-44 (n = 7), 0.66M parameters."""
    return ResNetCifar(7, num_classes)


@register_model
def resnet56(num_classes=10):
    """ResNet-56 (n = 9), 0.85M parameters."""
    return ResNetCifar(9, num_classes)


@register_model
def resnet110(num_classes=10):
    """ResNet-110 (n = 18), 1.7M parameters."""
    return ResNetCifar(18, num_classes)


@register_model
def resnet1202(num_classes=10):
    """ResNet-1202 (n = 200), 19.4M parameters."""
    return ResNetCifar(200, num_classes)


@register_model
def resnet20_leaky(num_classes=10):
    """ResNet-20 with LeakyReLU(0.01) in place of every ReLU."""
    return ResNetCifar(3, num_classes, act=_leaky)


@register_model
def resnet32_leaky(num_classes=10):
    """ResNet-32 with LeakyReLU(0.01) in place of every ReLU."""
    return ResNetCifar(5, num_classes, act=_leaky)


@register_model
def resnet44_leaky(num_classes=10):
    """ResNet-44 with LeakyReLU(0.01) in place of every ReLU."""
    return ResNetCifar(7, num_classes, act=_leaky)


@register_model
def resnet56_leaky(num_classes=10):
    """ResNet-56 with LeakyReLU(0.01) in place of every ReLU."""
    return ResNetCifar(9, num_classes, act=_leaky)


@register_model
def resnet110_leaky(num_classes=10):
    """ResNet-110 with LeakyReLU(0.01) in place of every ReLU."""
    return ResNetCifar(18, num_classes, act=_leaky)
