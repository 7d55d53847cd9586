"""Checkpoints of stripe pruning (SPEC §5): the trained ones brought for pruning (this project's best.pth.tar
and the release's state dicts), and the pruned network's own file, pruned.pth.tar.

The stripe models name their tensors as the release does (`FilterSkeleton`, ResNet56's `layerL.B.*`,
`downsample.{0,1}`, `fc`), so both kinds hold the same keys: a checkpoint loads when its state dict,
unwrapped from {"net" | "state_dict" | "model": ...} and stripped of DataParallel's "module." prefixes,
has exactly the model's keys and shapes.

pruned.pth.tar holds plain data only (it loads with torch.load(path, weights_only=True)): the pruned
network's state dict `net`, `arch`, `num_classes`, `threshold`, `acc`, each layer's stripe-wise or dense
`modes`, and `structure`: the masked network's Filter Skeletons and BatchNorm tensors. Pruning's choices
depend on those alone (which stripes, filters and blocks go; a removed block's constant), never on the
conv weights, so pruning any network of that architecture carrying them rebuilds the pruned architecture,
into which `net` then loads (`load_pruned`).
"""
import torch.nn as nn

from ..checkpoint import atomic_save, load_checkpoint, state_dict_of
from ..errors import FlagError, UserError
from ..models import canonical_model_name, create_model
from .conv import stripe_convs
from .pruning import prune
from .skeleton import FilterStripe

SKELETON = "FilterSkeleton"


def _mismatch(state, reference):
    """What keeps `state` from loading into a model whose state dict is `reference`, or None."""
    missing = [k for k in reference if k not in state]
    unexpected = [k for k in state if k not in reference]
    if missing or unexpected:
        return (f"{len(missing)} key(s) missing, e.g. {missing[:2]}, and {len(unexpected)} unexpected, "
                f"e.g. {unexpected[:2]}")
    for key, tensor in reference.items():
        if state[key].shape != tensor.shape:
            return f"{key} is {tuple(state[key].shape)}, the model's {tuple(tensor.shape)}"
    return None


def _load_state(model, raw, what):
    """Load the state dict inside checkpoint `raw` into the stripe `model`, or a one-line UserError."""
    state = state_dict_of(raw, what)
    written = f" (written for arch {raw['arch']})" if isinstance(raw, dict) and "arch" in raw else ""
    if not any(key.endswith(SKELETON) for key in state):
        raise UserError(f"{what} holds no Filter Skeleton{written}: it is no stripe network; train one with "
                        "stripe_pruning/main.py --sr --threshold")
    problem = _mismatch(state, model.state_dict())
    if problem:
        raise UserError(f"{what} is no {type(model).__name__} state dict in this project's naming nor the "
                        f"release's{written}: {problem}")
    model.load_state_dict(state)


def load_for_pruning(model, path, what):
    """Load the checkpoint at `path` (named `what` in errors) into the stripe `model`; a UserError of one
    line when it holds no state dict of this architecture in this project's or the release's naming."""
    raw = load_checkpoint(path, what)
    _load_state(model, raw, what)
    return raw


def _recorded(raw, key, given, field, what):
    """The checkpoint's recorded `key`, else the flag's value `given`; a FlagError when both are there and
    differ (architectures compared by their registered names)."""
    recorded = raw.get(key) if isinstance(raw, dict) else None
    if recorded is None:
        return given
    same = given is None or (canonical_model_name(given, "stripe") == canonical_model_name(recorded, "stripe")
                             if key == "arch" else given == recorded)
    if not same:
        raise FlagError(field, f"{what} was trained as {key} {recorded!r}, not {{flag}} {given!r}; drop {{flag}} "
                               "or choose the matching checkpoint")
    return recorded


def trained_stripe_model(path, arch, num_classes, what):
    """(model, meta) of the stripe checkpoint at `path`, loaded: meta holds its `arch` and `num_classes`
    (recorded in the checkpoint, else the given ones) and the `threshold` it was trained with (None when
    not recorded). Everything is checked before anything is written; each mistake is one UserError line."""
    raw = load_checkpoint(path, what)
    arch = _recorded(raw, "arch", arch, "arch", what)
    if arch is None:
        raise FlagError("arch", f"{what} records no architecture; name it with {{flag}} (VGG, ResNet56, ResNet18)")
    # The release's CIFAR-10 class count where neither the checkpoint nor the flag says.
    num_classes = _recorded(raw, "num_classes", num_classes, "num_classes", what) or 10
    model = create_model(arch, num_classes, kind="stripe")
    _load_state(model, raw, what)
    threshold = raw.get("threshold") if isinstance(raw, dict) else None
    return model, {"arch": arch, "num_classes": num_classes, "threshold": threshold}


def _structure(masked):
    """The masked network's tensors that pruning's choices depend on: Filter Skeletons and BatchNorms."""
    names = {name for name, m in masked.named_modules() if isinstance(m, (FilterStripe, nn.BatchNorm2d))}
    return {key: value.detach().cpu().clone() for key, value in masked.state_dict().items()
            if key.rpartition(".")[0] in names}


def save_pruned(path, masked, pruned, meta, acc, threshold):
    """Write pruned.pth.tar (the module docstring's format) of `pruned` = prune(`masked`)."""
    atomic_save({"net": {k: v.cpu() for k, v in pruned.state_dict().items()}, "structure": _structure(masked),
                 "modes": {name: conv.mode for name, conv in stripe_convs(pruned)}, "arch": meta["arch"],
                 "num_classes": meta["num_classes"], "threshold": threshold, "acc": acc}, path)


def load_pruned(path, what="pruned checkpoint"):
    """The pruned network (eval mode, each layer in its recorded mode) of a pruned.pth.tar that
    `save_pruned` wrote; a one-line UserError for any other file."""
    raw = load_checkpoint(path, what)
    if not isinstance(raw, dict) or not {"net", "structure", "arch", "num_classes"} <= set(raw):
        raise UserError(f"{what} {path} is no pruned network of stripe_pruning (it needs net, structure, arch "
                        "and num_classes)")
    template = create_model(raw["arch"], raw["num_classes"], kind="stripe")
    state = template.state_dict()
    unknown = set(raw["structure"]) - set(state)
    if unknown:
        raise UserError(f"{what} {path} does not fit {raw['arch']}: {sorted(unknown)[:2]}")
    state.update(raw["structure"])
    template.load_state_dict(state)
    pruned = prune(template.eval())
    problem = _mismatch(raw["net"], pruned.state_dict())
    if problem:
        raise UserError(f"{what} {path} does not match the network its structure prunes to: {problem}")
    pruned.load_state_dict(raw["net"])
    for name, conv in stripe_convs(pruned):
        conv.mode = raw.get("modes", {}).get(name, conv.mode)
    return pruned.eval()
