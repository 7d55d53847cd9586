"""Filter statistics: L1 norms, invalid filters, and the valid/invalid split used by the papers' analyses.

The papers count the filters of the convolutions of the main path (ResNet32 on CIFAR: 1,136; MobileNetV2:
17,088) and leave out the 1×1 shortcut projections; `all_convs` counts every conv."""
import operator

import torch
from torch import fx, nn

from .checkpoint import state_dict_of
from .errors import UserError
from .models import create_model
from .models.imagenet import CROP_SIZE, arch_names, build_model

ADDITIONS = (operator.add, operator.iadd, torch.add)
NORMS = (nn.BatchNorm2d, nn.SyncBatchNorm)


def filter_l1_norms(weight):
    """L1 norm of each output filter of a conv weight (N x C x K x K -> N): Σ|w| over C, K, K."""
    return weight.detach().abs().flatten(1).sum(dim=1)


def _is_addition(node):
    return ((node.op == "call_function" and node.target in ADDITIONS)
            or (node.op == "call_method" and node.target in ("add", "add_")))


class _NormLeafTracer(fx.Tracer):
    """fx's tracer, with every BatchNorm one node, ours (parallel.GroupBatchNorm2d) included."""

    def is_leaf_module(self, module, name):
        return isinstance(module, NORMS) or super().is_leaf_module(module, name)


def traced_graph(model):
    """The fx graph of `model`, or None where it cannot be traced symbolically."""
    try:
        return _NormLeafTracer().trace(model)
    except Exception:  # any tracing failure: callers fall back to what the modules alone tell
        return None


def shortcut_projections(model):
    """Names of the 1×1 shortcut projections of `model`, found on its fx graph: a Conv2d with a 1×1 kernel
    whose input also feeds another branch and whose output reaches a residual addition through
    BatchNorms alone. An untraceable model has none."""
    modules = dict(model.named_modules())
    graph = traced_graph(model)
    if graph is None:  # every conv counts
        return set()
    found = set()
    for node in graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.Conv2d):
            continue
        source = node.args[0]
        if modules[node.target].kernel_size != (1, 1) or not isinstance(source, fx.Node) or len(source.users) < 2:
            continue
        out = node
        while len(out.users) == 1:
            (user,) = out.users
            if user.op == "call_module" and isinstance(modules[user.target], NORMS):
                out = user
                continue
            if _is_addition(user):
                found.add(node.target)
            break
    return found


def counted_convs(model, all_convs=False):
    """Names of the Conv2d modules of `model` whose filters are counted: all but the 1×1 shortcut
    projections, or all of them with `all_convs`."""
    left_out = set() if all_convs else shortcut_projections(model)
    return [name for name, module in model.named_modules() if isinstance(module, nn.Conv2d) and name not in left_out]


def _models_named(name, num_classes):
    """The models called `name`: this project's registered one, then torchvision's (a VGG16 is either)."""
    try:
        yield create_model(name, num_classes, kind=None)
    except UserError:
        pass
    if name in arch_names():
        yield build_model(name, num_classes, CROP_SIZE)


def model_of(checkpoint, source, arch=None):
    """The model (its structure; the weights are not loaded) of a checkpoint of this project, from the
    architecture it records, or of `arch` when given: the first model of that name whose tensors are the
    checkpoint's. None for a bare state dict without `arch`."""
    recorded = checkpoint.get("arch") if isinstance(checkpoint, dict) else None
    name = arch or (recorded if isinstance(recorded, str) else None)
    if name is None:
        return None
    num_classes = checkpoint.get("num_classes") if isinstance(checkpoint, dict) else None
    keys = set(state_dict_of(checkpoint, source))
    for model in _models_named(name, num_classes if isinstance(num_classes, int) else 10):
        if set(model.state_dict()) == keys:
            return model
    raise UserError(f"{source} does not hold the tensors of a {name}")


def counted_checkpoint(checkpoint, source, all_convs=False, arch=None):
    """(state dict, model) of a loaded checkpoint, the model (model_of) telling which of its convs count;
    no model with `all_convs` (every 4-D weight counts), and a UserError where one is needed but its
    architecture is neither recorded nor given (`arch`)."""
    state = state_dict_of(checkpoint, source)
    if all_convs:
        return state, None
    model = model_of(checkpoint, source, arch)
    if model is None:
        raise UserError(f"{source} records no architecture: give --model to leave out its 1×1 shortcut "
                        f"projections, or --all-convs")
    return state, model


def conv_weights(state_dict, model=None, all_convs=False):
    """(name, weight) of the counted conv layers: `model`'s (counted_convs) when given; without a model,
    every 4-D floating tensor named '*.weight' of the state dict, which takes `all_convs`."""
    if model is None:
        if not all_convs:
            raise UserError("leaving out the 1×1 shortcut projections needs the model's architecture")
        return [(key, value) for key, value in state_dict.items()
                if key.endswith("weight") and value.dim() == 4 and value.is_floating_point()]
    names = [f"{name}.weight" for name in counted_convs(model, all_convs)]
    missing = [name for name in names if name not in state_dict]
    if missing:
        raise UserError(f"the state dict lacks {len(missing)} conv weights of the architecture, e.g. {missing[0]}")
    return [(name, state_dict[name]) for name in names]


def count_invalid_filters(state_dict, threshold, model=None, all_convs=False):
    """(invalid, total) filters over the counted conv layers (conv_weights), a filter being invalid when
    its L1 norm < threshold."""
    invalid = total = 0
    for _, weight in conv_weights(state_dict, model, all_convs):
        norms = filter_l1_norms(weight)
        invalid += int((norms < threshold).sum())
        total += norms.numel()
    return invalid, total


def valid_masks(state_dict, threshold, model=None, all_convs=False):
    """Per counted conv layer (conv_weights), a boolean mask of the filters whose L1 norm is >= threshold."""
    return {name: filter_l1_norms(weight) >= threshold for name, weight in conv_weights(state_dict, model, all_convs)}


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
