"""VGG16 for 32×32 inputs built from FilterStripe convs, and its stripe-wise pruning (SPEC §5)."""
import torch
import torch.nn as nn

from ..stripe import (ChannelMajorMaxPool, FilterStripe, StripeConv, fold_batchnorm, prune,
                      require_silent_removal, stripe_batchnorm, stripe_classifier)
from .registry import register_model
from .vgg import CFGS, vgg_features


def _stripe_bn_relu(in_ch, out_ch):
    """FilterStripe 3×3 → BatchNorm (γ = 0.5) → ReLU."""
    return [FilterStripe(in_ch, out_ch), stripe_batchnorm(out_ch), nn.ReLU(inplace=True)]


class StripeVGG(nn.Module):
    """VGG16 (CIFAR): [FilterStripe 3×3 → BN → ReLU]×13 with 5 max-pools down to 1×1, then Linear.

    State-dict keys are the release's (`features.N.{weight,FilterSkeleton}`, `classifier`).
    """

    # The release's VGG has its ReLUs and max-pools as modules, which its FLOPs counter sees.
    release_counts_activations = True

    def __init__(self, num_classes=10, cfg=CFGS["vgg16"]):
        super().__init__()
        self.features, width = vgg_features(cfg, _stripe_bn_relu)
        self.classifier = stripe_classifier(width, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.features(x), 1))

    def stripe_pairs(self):
        """(FilterStripe, its BatchNorm) in forward order: the release zeroes every BatchNorm of an emptied filter."""
        mods = list(self.features)
        return [(m, mods[i + 1]) for i, m in enumerate(mods) if isinstance(m, FilterStripe)]


@prune.register
def _prune_vgg(model: StripeVGG) -> nn.Module:
    """Drop empty filters with their BN channels and the matching inputs of the next conv/classifier.

    Each conv → BN → ReLU becomes one StripeConv with the BN folded and the ReLU fused.
    """
    layers, kept_in = [], None
    mods = list(model.features)
    for i, m in enumerate(mods):
        if isinstance(m, FilterStripe):
            weight, bias = fold_batchnorm(m.masked_weight(), mods[i + 1])
            keep = m.stripe_mask()
            alive = keep.flatten(1).any(1)
            require_silent_removal(bias, alive, f"features.{i}")
            if kept_in is not None:
                weight = weight[:, kept_in]
            layers.append(StripeConv(weight[alive], keep[alive], bias[alive], m.stride, m.padding, relu=True))
            kept_in = alive
        elif isinstance(m, nn.MaxPool2d):
            layers.append(ChannelMajorMaxPool(m.kernel_size, m.stride))
    fc = model.classifier
    classifier = nn.Linear(int(kept_in.sum()), fc.out_features).to(fc.weight.device)
    with torch.no_grad():
        classifier.weight.copy_(fc.weight[:, kept_in])
        classifier.bias.copy_(fc.bias)
    return nn.Sequential(*layers, nn.Flatten(1), classifier).eval()


@register_model(aliases=("VGG",), kind="stripe")
def stripe_vgg16(num_classes=10):
    """StripeVGG: the stripe-wise release's `VGG`, 14.76M parameters for 10 classes (skeletons included)."""
    return StripeVGG(num_classes)
