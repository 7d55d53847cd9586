"""Filter statistics: L1 norms, invalid filters, and the valid/invalid split used by the papers' analyses."""
import torch
from torch import nn


def filter_l1_norms(weight):
    """L1 norm of each output filter of a conv weight (N x C x K x K -> N): Σ|w| over C, K, K."""
    return weight.detach().abs().flatten(1).sum(dim=1)


def conv_weights(state_dict, model=None):
    """(name, weight) of every conv layer: the Conv2d modules of `model` when given, otherwise every
    4-D floating tensor named '*.weight' in the state dict."""
    if model is not None:
        return [(f"{name}.weight", state_dict[f"{name}.weight"]) for name, module in model.named_modules()
                if isinstance(module, nn.Conv2d)]
    return [(key, value) for key, value in state_dict.items()
            if key.endswith("weight") and value.dim() == 4 and value.is_floating_point()]


def count_invalid_filters(state_dict, threshold, model=None):
    """(invalid, total) filters over all conv layers, a filter being invalid when its L1 norm < threshold."""
    invalid = total = 0
    for _, weight in conv_weights(state_dict, model):
        norms = filter_l1_norms(weight)
        invalid += int((norms < threshold).sum())
        total += norms.numel()
    return invalid, total


def valid_masks(state_dict, threshold):
    """Per conv layer, a boolean mask of the filters whose L1 norm is >= threshold."""
    return {name: filter_l1_norms(weight) >= threshold for name, weight in conv_weights(state_dict)}


def mean_l1_by_mask(state_dict, masks):
    """Average L1 norm of the filters marked valid and of those marked invalid by `masks`
    (nan where a set is empty)."""
    valid, invalid = [], []
    for name, mask in masks.items():
        norms = filter_l1_norms(state_dict[name])
        valid.append(norms[mask])
        invalid.append(norms[~mask])
    valid, invalid = torch.cat(valid), torch.cat(invalid)
    mean = lambda t: float(t.mean()) if t.numel() else float("nan")  # noqa: E731
    return mean(valid), mean(invalid)
