"""Exact pruning of a trained stripe model into its stripe-wise network, and its export (SPEC §5)."""
import functools

import torch
import torch.nn as nn
from torch.nn.utils.fusion import fuse_conv_bn_weights

from ..errors import UserError


@functools.singledispatch
def prune(model) -> nn.Module:
    """The stripe-wise network of a trained stripe model (SPEC §5), in eval mode; same outputs in eval.

    Each model module registers its own rule (filtergraft.models.stripe_vgg / stripe_resnet).
    """
    raise TypeError(f"no stripe-wise pruning rule for {type(model).__name__}")


@torch.no_grad()
def fold_batchnorm(weight, bn):
    """Fold eval-mode BN into a bias-free conv: W' = W·γ/√(σ²+ε), b' = β − μ·γ/√(σ²+ε) (torch's fusion)."""
    weight, bias = fuse_conv_bn_weights(weight, None, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    return weight.detach(), bias.detach()


def require_silent_removal(bias, alive, name):
    """Removing an empty filter is exact only if it outputs relu(b') = 0; say how to fix it otherwise."""
    loud = (~alive) & (bias > 0)
    if loud.any():
        raise UserError(
            f"{name}: {int(loud.sum())} filter(s) have no stripe left but their BatchNorm outputs a "
            "positive constant, so removing them would change the network; run "
            "threshold_skeleton(model, threshold) (it zeroes their γ and β) before pruning")


def export_pruned(pruned, path, example_input):
    """torch.export the pruned network with a dynamic batch dimension, saved to `path` (None: not saved)."""
    pruned.eval()
    # A batch of 1 would be specialised to the constant 1, so trace with at least two samples.
    if example_input.shape[0] < 2:
        example_input = example_input.expand(2, *example_input.shape[1:]).contiguous()
    batch = torch.export.Dim("batch", min=1)
    with torch.no_grad():
        program = torch.export.export(pruned, (example_input,), dynamic_shapes=({0: batch},))
    if path is not None:
        torch.export.save(program, path)
    return program
