"""ResNet-56 (CIFAR) and ResNet-18 (ImageNet) built from FilterStripe convs, and their pruning (SPEC §5).

Module names are the release's (`conv1 bn1 layerL.B.{conv1,bn1,conv2,bn2} layerL.0.downsample.{0,1} fc`,
skeletons `FilterSkeleton`), so its checkpoints load as they are. Pruning keeps every block's output
channels (they feed the residual stream) and removes the inner filters: conv1 filters with no stripe
left, their bn1 channels and the matching conv2 inputs. A block whose conv1 or conv2 lost every stripe
computes relu(shortcut(x) + c), c = bn2 applied to zero, and is replaced by exactly that. Shortcuts are
never pruned.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..stripe import (FilterStripe, StripeConv, fold_batchnorm, prune, require_silent_removal,
                      stripe_batchnorm, stripe_classifier)
from .registry import register_model


def stripe_shortcut(in_planes, planes, stride):
    """Option B as the release's ResNet56: a 1×1 FilterStripe with `stride`, then BatchNorm (γ = 0.5)."""
    return nn.Sequential(FilterStripe(in_planes, planes, 1, stride, 0), stripe_batchnorm(planes))


def plain_shortcut(in_planes, planes, stride):
    """torchvision's ResNet-18 shortcut: a 1×1 nn.Conv2d with `stride` (kaiming normal, fan-out), then BatchNorm."""
    conv = nn.Conv2d(in_planes, planes, 1, stride, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    return nn.Sequential(conv, nn.BatchNorm2d(planes))


class StripeBasicBlock(nn.Module):
    """y = relu(bn2(conv2(relu(bn1(conv1 x)))) + downsample(x)) with FilterStripe 3×3 convs.

    `shortcut(in_planes, planes, stride)` builds `downsample` where the shape changes, after the convs
    (the release's order of construction, so the same random stream gives the same weights); elsewhere
    it is the identity. Names follow the release and torchvision's BasicBlock.
    """

    def __init__(self, in_planes, planes, stride, shortcut):
        super().__init__()
        self.conv1 = FilterStripe(in_planes, planes, 3, stride, 1)
        self.bn1 = stripe_batchnorm(planes)
        self.conv2 = FilterStripe(planes, planes, 3, 1, 1)
        self.bn2 = stripe_batchnorm(planes)
        changes = stride != 1 or in_planes != planes
        self.downsample = shortcut(in_planes, planes, stride) if changes else nn.Identity()

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.downsample(x))

    def stripe_pairs(self):
        """(conv1, bn1) and (conv2, None): the release zeroes bn1 of an emptied filter, never bn2."""
        return [(self.conv1, self.bn1), (self.conv2, None)]


def _stages(model, widths, blocks_per_stage, first_stride, shortcut):
    """Set model.layer1.. : stage L has `blocks_per_stage` blocks of width widths[L-1]; returns the last width."""
    in_planes = model.conv1.out_channels
    for stage, planes in enumerate(widths, start=1):
        blocks = []
        for i in range(blocks_per_stage):
            stride = (first_stride if stage == 1 else 2) if i == 0 else 1
            blocks.append(StripeBasicBlock(in_planes, planes, stride, shortcut))
            in_planes = planes
        setattr(model, f"layer{stage}", nn.Sequential(*blocks))
    return in_planes


class _StripeResNet(nn.Module):
    """What both ResNets share: their blocks in forward order and their prunable pairs."""

    # The release applies a ResNet's ReLUs and pooling as functions, which its FLOPs counter does not see.
    release_counts_activations = False

    def blocks(self):
        """Every StripeBasicBlock, in forward order."""
        return [m for m in self.modules() if isinstance(m, StripeBasicBlock)]

    def stripe_pairs(self):
        """(FilterStripe, BatchNorm zeroed with it or None) of every block, in forward order."""
        return [p for block in self.blocks() for p in block.stripe_pairs()]

    def vital_convs(self):
        """None in the blocks: a block whose conv loses every stripe becomes its shortcut."""
        return []


class StripeResNet56(_StripeResNet):
    """The release's CIFAR ResNet-56: FilterStripe 3×3 stem, 3 stages of 9 blocks (16/32/64 channels),
    option-B shortcuts (1×1 FilterStripe + BN) where the shape changes, global average pool, fc."""

    def __init__(self, num_classes=10, blocks_per_stage=9):
        super().__init__()
        self.conv1 = FilterStripe(3, 16)
        self.bn1 = stripe_batchnorm(16)
        width = _stages(self, (16, 32, 64), blocks_per_stage, 1, stripe_shortcut)
        self.fc = stripe_classifier(width, num_classes)

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        for stage in (self.layer1, self.layer2, self.layer3):
            out = stage(out)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))

    def stripe_pairs(self):
        """The stem (its bn1 never zeroed, as the release), then every block's pairs."""
        return [(self.conv1, None)] + super().stripe_pairs()

    def vital_convs(self):
        """The stem: every block reads its output."""
        return [self.conv1]


class StripeResNet18(_StripeResNet):
    """ImageNet ResNet-18 in torchvision's layout; the 3×3 convs are FilterStripe, stem and 1×1 plain."""

    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        nn.init.kaiming_normal_(self.conv1.weight, mode="fan_out", nonlinearity="relu")
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        width = _stages(self, (64, 128, 256, 512), 2, 1, plain_shortcut)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = stripe_classifier(width, num_classes)

    def forward(self, x):
        out = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for stage in (self.layer1, self.layer2, self.layer3, self.layer4):
            out = stage(out)
        return self.fc(torch.flatten(self.avgpool(out), 1))


# ----------------------------------------------------------------------------- pruned networks


class PrunedBlock(nn.Module):
    """y = relu(conv2(relu(conv1 x)) + shortcut(x)); BNs folded, ReLUs and the sum fused into the convs."""

    def __init__(self, conv1, conv2, shortcut):
        super().__init__()
        self.conv1, self.conv2, self.shortcut = conv1, conv2, shortcut

    def forward(self, x):
        return self.conv2(self.conv1(x), residual=self.shortcut(x))


class ShortcutBlock(nn.Module):
    """A block whose residual branch is a constant: y = relu(shortcut(x) + c[:, None, None])."""

    def __init__(self, shortcut, const):
        super().__init__()
        self.shortcut = shortcut
        self.const = nn.Parameter(const.detach().clone())

    def forward(self, x):
        return F.relu(self.shortcut(x) + self.const[:, None, None])


class PrunedResNet(nn.Module):
    """stem → blocks → global average pool → fc."""

    def __init__(self, stem, blocks, fc):
        super().__init__()
        self.stem, self.layers, self.fc = stem, nn.Sequential(*blocks), fc

    def forward(self, x):
        # A mean over H, W reads any memory layout in place, unlike adaptive_avg_pool2d.
        return self.fc(self.layers(self.stem(x)).mean(dim=(2, 3)))


def _folded_conv(conv, bn):
    """A plain Conv2d with `bn` folded in as its bias."""
    weight, bias = fold_batchnorm(conv.weight.detach(), bn)
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                       conv.padding, bias=True).to(weight.device)
    with torch.no_grad():
        folded.weight.copy_(weight)
        folded.bias.copy_(bias)
    return folded


def _stripe_conv(conv, bn, keep=None, relu=True):
    """bn(conv x), then ReLU when `relu`, as one StripeConv over the stripes in `keep` (default: the kept ones)."""
    weight, bias = fold_batchnorm(conv.masked_weight(), bn)
    keep = conv.stripe_mask() if keep is None else keep
    return StripeConv(weight, keep, bias, conv.stride, conv.padding, relu=relu)


def _pruned_shortcut(shortcut):
    """The shortcut of a pruned block: the identity, or its 1×1 conv with the BN folded, all stripes kept
    (a StripeConv that runs dense or stripe-wise for an option-B FilterStripe, an nn.Conv2d for a plain one)."""
    if isinstance(shortcut, nn.Identity):
        return nn.Identity()
    conv, bn = shortcut
    if isinstance(conv, FilterStripe):
        return _stripe_conv(conv, bn, torch.ones_like(conv.stripe_mask()), relu=False)
    return _folded_conv(conv, bn)


def _prune_block(block, name):
    """Pruned form of one block: PrunedBlock, or its shortcut when a conv lost every stripe."""
    keep1, keep2 = block.conv1.stripe_mask(), block.conv2.stripe_mask()
    weight1, bias1 = fold_batchnorm(block.conv1.masked_weight(), block.bn1)
    weight2, bias2 = fold_batchnorm(block.conv2.masked_weight(), block.bn2)
    alive = keep1.flatten(1).any(1)
    shortcut = _pruned_shortcut(block.downsample)
    if not keep2.any():
        return _shortcut_block(shortcut, bias2)
    require_silent_removal(bias1, alive, f"{name}.conv1")
    if not alive.any():
        return _shortcut_block(shortcut, bias2)
    conv1 = StripeConv(weight1[alive], keep1[alive], bias1[alive], block.conv1.stride,
                       block.conv1.padding, relu=True)
    conv2 = StripeConv(weight2[:, alive], keep2, bias2, block.conv2.stride, block.conv2.padding, relu=True)
    return PrunedBlock(conv1, conv2, shortcut)


def _shortcut_block(shortcut, const):
    """relu(shortcut(x) + c); just the shortcut when it is the identity and c = 0.

    Block inputs are ReLU outputs in both ResNets, so the identity passes values ≥ 0 that relu keeps.
    """
    if isinstance(shortcut, nn.Identity) and not const.any():
        return shortcut
    return ShortcutBlock(shortcut, const)


def _copied_linear(fc):
    """A new nn.Linear with the weights of `fc`, on its device."""
    copy = nn.Linear(fc.in_features, fc.out_features)
    copy.load_state_dict(fc.state_dict())
    return copy.to(fc.weight.device)


def _pruned_blocks(model):
    """The pruned form of every StripeBasicBlock of `model`, in forward order."""
    return [_prune_block(m, name) for name, m in model.named_modules() if isinstance(m, StripeBasicBlock)]


@prune.register
def _prune_resnet56(model: StripeResNet56) -> nn.Module:
    """Stem kept whole (it feeds the residual stream), blocks pruned, classifier unchanged."""
    stem = _stripe_conv(model.conv1, model.bn1)
    return PrunedResNet(stem, _pruned_blocks(model), _copied_linear(model.fc)).eval()


@prune.register
def _prune_resnet18(model: StripeResNet18) -> nn.Module:
    """Plain 7×7 stem with its BN folded, blocks pruned, classifier unchanged."""
    stem = nn.Sequential(_folded_conv(model.conv1, model.bn1), nn.ReLU(),
                         nn.MaxPool2d(model.maxpool.kernel_size, model.maxpool.stride, model.maxpool.padding))
    return PrunedResNet(stem, _pruned_blocks(model), _copied_linear(model.fc)).eval()


@register_model(aliases=("ResNet56",), kind="stripe")
def stripe_resnet56(num_classes=10):
    """StripeResNet56: the stripe-wise release's `ResNet56`, 874,154 parameters for 10 classes (skeletons included)."""
    return StripeResNet56(num_classes)


@register_model(aliases=("ResNet18",), kind="stripe")
def stripe_resnet18(num_classes=1000):
    """StripeResNet18 (ImageNet): the stripe-wise release's `ResNet18`."""
    return StripeResNet18(num_classes)
