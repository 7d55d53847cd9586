"""Parameters and FLOPs of stripe models and their pruned networks, counted two ways (SPEC §5).

As the release counts (`release_counts`; the paper's percentages are in these units). Parameters: every
value of model.parameters(), Filter Skeletons and BatchNorm γ, β included. FLOPs of one image, per module:
    conv (FilterStripe, nn.Conv2d)  2·K²·C·N·Ho·Wo; after pruning 2·S·C·Ho·Wo over its S kept stripes
    BatchNorm                       2 per element
    ReLU, max / average pool        1 per input element where the network holds them as modules (the
                                    release's VGG); the release's ResNets call them as functions, which
                                    its counter never saw: 0
    Linear                          2·in·out + out (its bias)
    residual and constant additions 0
These give the release's unpruned figures exactly. VGG16 (CIFAR-10): 627.36 M = convs 626.39 M + BN 0.55 M
+ ReLU 0.28 M + pools 0.12 M + classifier 10,250; 14,762,058 parameters. ResNet56: 252.59 M = 3×3 convs
250.97 M + shortcut 1×1 convs 0.52 M + BN 1.09 M + classifier 1,290; 874,154 parameters (855,770 without
skeletons). Counting ResNet56's ReLUs would give 253.12 M and its residual additions 0.26 M more, so the
figure rules both out; its 8×8 average pool (4,096) is below the rounding and is left out with the ReLUs.
A pruned network is counted as the release would hold it: each conv over its kept stripes and surviving
input channels, with its skeleton (N·K²) and its BatchNorm (2N parameters, 2 FLOPs per output element)
unfolded, though the pruned network folds them; removed filters, channels and blocks not at all; a removed
block's constant (N) as parameters.

As the network runs (`count_flops`, `program_flops`, `count_params`): the FLOPs torch.utils.flop_counter
counts in one forward (2 per multiply-add of convolutions and matrix products, each layer in the form it
runs: stripe-wise or dense), and the parameters stored (no skeletons: pruning folds them into the weights).
"""
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from .conv import ChannelMajorMaxPool, StripeConv, forced_mode
from .skeleton import FilterStripe

_ACTIVATIONS = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, ChannelMajorMaxPool)


def count_params(model):
    """Stored parameters, Filter Skeletons excluded (training-only; pruning folds them into weights)."""
    skeletons = {id(m.FilterSkeleton) for m in model.modules() if isinstance(m, FilterStripe)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skeletons)


def _example(model, input_size):
    """A zero batch of one `input_size` image in the dtype and on the device of `model`'s parameters."""
    param = next(model.parameters())
    return torch.zeros(1, *input_size, dtype=param.dtype, device=param.device)


def _counted(run, x):
    """FLOPs (FlopCounterMode: 2 per multiply-add) of run(x) without autograd."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        run(x)
    return counter.get_total_flops()


def count_flops(model, input_size):
    """FLOPs (FlopCounterMode: 2 per multiply-add) of one eval forward of a batch of one input_size."""
    was_training = model.training
    model.eval()
    try:
        return _counted(model, _example(model, input_size))
    finally:
        model.train(was_training)


def program_flops(program, input_size):
    """FLOPs (FlopCounterMode) that a torch.export program executes on a batch of one input_size."""
    return module_flops(program.module(), input_size)


def module_flops(module, input_size):
    """FLOPs (FlopCounterMode) of module(x) as it is, for a batch of one input_size: for a torch.export
    program's module(), which each call of program.module() makes anew (and slowly)."""
    return _counted(module, _example(module, input_size))


def stripe_flops(pruned, input_size):
    """FLOPs of the stripe-wise network: every StripeConv counted over its kept stripes only."""
    with forced_mode(pruned, "stripe"):
        return count_flops(pruned, input_size)


def _release_module_flops(module, inputs, output, activations, folded):
    """FLOPs of one module call under the release's convention (module docstring); 0 for containers.

    `folded`: `module` is part of a pruned network, where every conv carries its BatchNorm folded in.
    """
    if isinstance(module, StripeConv):
        relu = module.relu and activations
        per_position = 2 * module.num_stripes * module.in_channels + (2 + relu) * module.out_channels
        return per_position * output.shape[-2] * output.shape[-1]
    if isinstance(module, (FilterStripe, nn.Conv2d)):
        per_filter = 2 * module.weight[0].numel() + (2 if folded else 0)
        return per_filter * output[0].numel()
    if isinstance(module, nn.BatchNorm2d):
        return 2 * inputs[0].numel()
    if isinstance(module, _ACTIVATIONS):
        return inputs[0].numel() if activations else 0
    if isinstance(module, nn.Linear):
        return (2 * module.in_features + (module.bias is not None)) * module.out_features
    return 0


@torch.no_grad()
def _release_flops(net, input_size, activations, folded):
    """Σ over module calls of `_release_module_flops` in one eval forward of a batch of one input_size."""
    total = []
    hooks = [m.register_forward_hook(lambda m, i, o: total.append(
        _release_module_flops(m, i, o, activations, folded))) for m in net.modules()]
    was_training = net.training
    net.eval()
    try:
        net(_example(net, input_size))
    finally:
        net.train(was_training)
        for h in hooks:
            h.remove()
    return sum(total)


def _pruned_release_params(pruned):
    """Parameters of a pruned network as the release would hold them: skeletons and BatchNorms unfolded."""
    total = 0
    for m in pruned.modules():
        if isinstance(m, StripeConv):
            total += m.num_stripes * m.in_channels + m.out_channels * (m.kernel_size ** 2 + 2)
        elif isinstance(m, nn.Conv2d):
            total += m.weight.numel() + 2 * m.out_channels
        else:  # Linear, a removed block's constant, anything else: what it stores
            total += sum(p.numel() for p in m.parameters(recurse=False))
    return total


def release_counts(model, input_size, pruned=None):
    """{params, flops} of the masked stripe `model` as the release counts them, and with `pruned`
    (prune(model)) its {params_pruned, flops_pruned}: the kept stripes' count, whatever form each layer runs in."""
    activations = getattr(model, "release_counts_activations", True)
    counts = {"params": sum(p.numel() for p in model.parameters()),
              "flops": _release_flops(model, input_size, activations, folded=False)}
    if pruned is not None:
        counts["params_pruned"] = _pruned_release_params(pruned)
        counts["flops_pruned"] = _release_flops(pruned, input_size, activations, folded=True)
    return counts
