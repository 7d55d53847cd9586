"""VGG with BatchNorm for 32x32 CIFAR inputs (Simonyan & Zisserman 2015, configurations A, B, D, E).

`features` is one nn.Sequential of Conv2d(3x3, bias)-BatchNorm2d-ReLU triples and 2x2 max pools;
after the five pools a 32x32 input is 1x1x512, and a single Linear layer classifies it (the CIFAR
variant used by the papers, not the 4096-wide ImageNet head). Keeping every layer in one flat
Sequential lets filter-level grafting and stripe pruning walk conv -> BN -> next conv by index.
"""
import torch.nn as nn

from .registry import register_model

# Widths of the 3x3 convs and "M" for each 2x2 max pool; the stripe-wise VGG16 uses "vgg16" too.
CFGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg16": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
              512, 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
              512, 512, 512, 512, "M"),
}


def vgg_features(cfg, conv_layers):
    """The flat `features` Sequential of `cfg` and its output width; conv_layers(in, out) lists a width's layers."""
    layers = []
    in_planes = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += conv_layers(in_planes, v)
            in_planes = v
    return nn.Sequential(*layers), in_planes


def _conv_bn_relu(in_planes, planes):
    """Conv2d(3x3, bias) -> BatchNorm2d -> ReLU."""
    return [nn.Conv2d(in_planes, planes, 3, padding=1), nn.BatchNorm2d(planes), nn.ReLU()]


class VGG(nn.Module):
    """VGG-BN for CIFAR built from a list of widths and "M" (max pool) entries."""

    def __init__(self, cfg, num_classes=10):
        super().__init__()
        self.features, width = vgg_features(cfg, _conv_bn_relu)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


@register_model
def vgg11(num_classes=10):
    """VGG-11 with BatchNorm, 9.2M parameters for 10 classes."""
    return VGG(CFGS["vgg11"], num_classes)


@register_model
def vgg13(num_classes=10):
    """VGG-13 with BatchNorm, 9.4M parameters for 10 classes."""
    return VGG(CFGS["vgg13"], num_classes)


@register_model
def vgg16(num_classes=10):
    """VGG-16 with BatchNorm, 14.7M parameters for 10 classes."""
    return VGG(CFGS["vgg16"], num_classes)


@register_model
def vgg19(num_classes=10):
    """VGG-19 with BatchNorm, 20.0M parameters for 10 classes."""
    return VGG(CFGS["vgg19"], num_classes)
