"""Checkpoint files: atomic writes, loading with clear errors, state dicts out of any of our formats."""
import os
import pickle
import zipfile

import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .errors import UserError


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file."""
    path = os.fspath(path)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load_checkpoint(path, what="checkpoint"):
    """torch.load onto the CPU; a missing, unreadable or corrupt file is a UserError naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, ValueError) as err:
        raise UserError(f"{what} {path} is not a readable torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'corrupt'})") from None


def state_dict_of(obj, path="checkpoint"):
    """The model state dict inside any checkpoint this project writes ({'net': ...}, {'state_dict': ...})
    or a bare state dict, with DataParallel's 'module.' prefixes removed."""
    if isinstance(obj, dict):
        for key in ("net", "state_dict", "model"):
            if key in obj and isinstance(obj[key], dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise UserError(f"{path} holds no model state dict")
    state = dict(obj)
    consume_prefix_in_state_dict_if_present(state, "module.")
    return state


def check_compatible(state, reference, source):
    """Raise a UserError when `state` has other tensor names or shapes than the `reference` state dict."""
    missing = sorted(set(reference) - set(state))
    extra = sorted(set(state) - set(reference))
    if missing or extra:
        raise UserError(f"{source} has a different architecture: missing {missing[:3]}, unexpected {extra[:3]}")
    for key, tensor in reference.items():
        if state[key].shape != tensor.shape:
            raise UserError(f"{source} has a different architecture: {key} is {tuple(state[key].shape)}, "
                            f"expected {tuple(tensor.shape)}")


RESUMABLE = {"net", "epoch", "optimizer"}


def check_matching(state, model, meta, source):
    """Raise a UserError when checkpoint `state` was written for another run (an `arch` or `num_classes` of
    `meta` it records differently) or holds other tensor names or shapes than `model`."""
    for key, value in meta.items():
        if isinstance(state, dict) and key in state and state[key] != value:
            raise UserError(f"{source} was written for {key}={state[key]!r}, not {value!r}")
    check_compatible(state_dict_of(state, source), model.state_dict(), source)


def load_matching(path, model, meta, resumable, source):
    """The checkpoint at `path`, checked against `model` and `meta` (check_matching) before anything is
    written; with `resumable`, it must also hold the training state that --resume continues from."""
    state = load_checkpoint(path, source)
    if resumable and not (isinstance(state, dict) and RESUMABLE <= set(state)):
        raise UserError(f"{source} is not a resumable checkpoint of this project: training continues from a "
                        f"last_<i>.t7 (best_<i>.t7 and bare state dicts are for -e)")
    check_matching(state, model, meta, source)
    return state
