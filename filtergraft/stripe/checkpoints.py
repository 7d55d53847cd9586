"""Checkpoints brought for pruning (SPEC §5): this project's best.pth.tar and the release's state dicts.

The stripe models name their tensors as the release does (`FilterSkeleton`, ResNet56's `layerL.B.*`,
`downsample.{0,1}`, `fc`), so both kinds hold the same keys: a checkpoint loads when its state dict,
unwrapped from {"net" | "state_dict" | "model": ...} and stripped of DataParallel's "module." prefixes,
has exactly the model's keys and shapes.
"""
from ..checkpoint import load_checkpoint, state_dict_of
from ..errors import UserError


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


def load_for_pruning(model, path, what):
    """Load the checkpoint at `path` (named `what` in errors) into the stripe `model`; a UserError of one
    line when it holds no state dict of this architecture in this project's or the release's naming."""
    raw = load_checkpoint(path, what)
    state = state_dict_of(raw, what)
    problem = _mismatch(state, model.state_dict())
    if problem:
        written = f" (written for arch {raw['arch']})" if isinstance(raw, dict) and "arch" in raw else ""
        raise UserError(f"{what} is no {type(model).__name__} state dict in this project's naming nor the "
                        f"release's{written}: {problem}")
    model.load_state_dict(state)
    return raw
