"""Training-time stripe layers (SPEC §5): Filter Skeleton conv, its BatchNorm and classifier, skeleton update.

A K×K filter of a `FilterStripe` conv is K·K stripes (1×1 filters over all input channels), each
scaled by one entry of the Filter Skeleton FS; `update_skeleton` drives FS entries to zero.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class FilterStripe(nn.Module):
    """K×K conv with a Filter Skeleton: y = conv(x, W ⊙ FS[:, None]), W: N×C×K×K, FS: N×K×K.

    W starts as nn.Conv2d's default (kaiming uniform, a = √5: U(±1/√(C·K²))) and FS at 1, as the release;
    the skeleton is the attribute `FilterSkeleton`, the release's name, so its state dicts load unchanged.
    """

    def __init__(self, in_ch, out_ch, kernel_size=3, stride=1, padding=1):
        super().__init__()
        self.in_channels, self.out_channels = in_ch, out_ch
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.weight = nn.Parameter(torch.empty(out_ch, in_ch, kernel_size, kernel_size))
        self.FilterSkeleton = nn.Parameter(torch.ones(out_ch, kernel_size, kernel_size))
        # The same call, on the same random stream, as nn.Conv2d.reset_parameters for a bias-free conv.
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x):
        return F.conv2d(x, self.weight * self.FilterSkeleton[:, None], stride=self.stride, padding=self.padding)

    def stripe_mask(self):
        """Kept stripes, N×K×K: FS ≠ 0."""
        return self.FilterSkeleton.detach() != 0

    def masked_weight(self):
        """The effective kernel W ⊙ FS[:, None], detached."""
        return (self.weight * self.FilterSkeleton[:, None]).detach()

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}")


def stripe_batchnorm(num_features):
    """The BatchNorm after a FilterStripe: γ = 0.5, β = 0 (SPEC §5)."""
    bn = nn.BatchNorm2d(num_features)
    nn.init.constant_(bn.weight, 0.5)
    nn.init.zeros_(bn.bias)
    return bn


def stripe_classifier(in_features, num_classes):
    """The classifier of a stripe network: W ~ N(0, 0.01), b as nn.Linear's default U(±1/√in) (SPEC §5)."""
    fc = nn.Linear(in_features, num_classes)
    nn.init.normal_(fc.weight, 0.0, 0.01)
    return fc


def stripe_pairs(model):
    """The (FilterStripe, BatchNorm2d or None) pairs of a stripe model's prunable convs, in forward order.

    The BatchNorm is the one whose γ and β the skeleton update zeroes for a filter with no stripe left,
    None where the release leaves the BatchNorm after that conv alone (SPEC §5). Convs the release never
    penalises nor prunes (ResNet56's 1×1 shortcuts) are not listed.
    """
    if not hasattr(model, "stripe_pairs"):
        raise TypeError(f"{type(model).__name__} does not list its FilterStripe/BatchNorm pairs "
                        "(it needs a stripe_pairs() method)")
    return model.stripe_pairs()


def vital_convs(model):
    """The prunable FilterStripe convs that must keep a stripe: pruning all of one leaves no network (a VGG
    layer without filters cuts the path), unlike a ResNet block's, which its shortcut replaces. A model
    lists them with a vital_convs() method; without one, every prunable conv is vital."""
    if hasattr(model, "vital_convs"):
        return model.vital_convs()
    return [conv for conv, _ in stripe_pairs(model)]


@torch.no_grad()
def update_skeleton(model, sr, threshold):
    """Sparsity step between backward and optimizer.step: FS.grad += sr·sign(FS), then threshold_skeleton."""
    skeletons = [conv.FilterSkeleton for conv, _ in stripe_pairs(model)]
    grads = [fs.grad for fs in skeletons]
    if any(g is None for g in grads):
        raise RuntimeError("update_skeleton runs after loss.backward(): a Filter Skeleton has no gradient")
    torch._foreach_add_(grads, torch._foreach_sign(skeletons), alpha=sr)
    threshold_skeleton(model, threshold)


@torch.no_grad()
def threshold_skeleton(model, threshold):
    """Project onto the pruned skeleton: FS ← FS·[|FS| > t]; γ, β ← 0 for filters with no stripe left.

    γ and β are zeroed only in the BatchNorms `stripe_pairs` names (VGG: all; ResNets: each block's bn1).
    Gradients of everything zeroed are zeroed too. Runs as a handful of batched tensor ops with no
    host synchronisation.
    """
    pairs = stripe_pairs(model)
    skeletons = [conv.FilterSkeleton for conv, _ in pairs]
    # keep = 1 where |FS| > t, else 0, computed as max(sign(|FS| - t), 0) to stay in batched ops.
    keep = torch._foreach_abs(skeletons)
    torch._foreach_sub_(keep, threshold)
    torch._foreach_sign_(keep)
    torch._foreach_clamp_min_(keep, 0.0)
    _multiply_with_grads(skeletons, keep)
    zeroed = [(bn, k) for (_, bn), k in zip(pairs, keep) if bn is not None]
    if zeroed:
        bn_params = [p for bn, _ in zeroed for p in (bn.weight, bn.bias)]
        alive = [k.flatten(1).amax(1) for _, k in zeroed for _ in range(2)]
        _multiply_with_grads(bn_params, alive)


def _multiply_with_grads(params, factors):
    """p ← p·f and p.grad ← p.grad·f for each pair, skipping missing gradients."""
    torch._foreach_mul_(params, factors)
    with_grad = [(p.grad, f) for p, f in zip(params, factors) if p.grad is not None]
    if with_grad:
        grads, grad_factors = zip(*with_grad)
        torch._foreach_mul_(list(grads), list(grad_factors))
