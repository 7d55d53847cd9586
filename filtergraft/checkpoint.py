"""Checkpoint files: atomic writes, loading with clear errors, state dicts out of any of our formats.

Every file is data, never code: it is read with torch.load(weights_only=True), which builds tensors and
plain containers and refuses any other object, so a teacher, a resume file or an exchange file from anyone
can run nothing when it is read. Everything this project writes loads that way.
"""
import errno
import os
import pickle
import zipfile

import numpy as np
import torch
from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

from .errors import UserError


def temporary_path(path):
    """Where a file is written before it is renamed to `path`: beside it, named for the writing process."""
    return f"{os.fspath(path)}.tmp{os.getpid()}"


def write_error(path, err):
    """A UserError for an OSError `err` that stopped writing `path`, saying what to do about it."""
    if err.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = "free some space (the file it replaces, if any, is intact)"
    elif err.errno == errno.EFBIG:
        advice = "the file size limit (ulimit -f) is too small for it"
    elif err.errno == errno.ENOENT:
        advice = "its directory vanished while the run wrote into it"
    else:
        advice = "check the directory is writable"
    return UserError(f"cannot write {path}: {err.strerror or err}; {advice}")


def atomic_save(obj, path):
    """torch.save to a temporary file beside `path`, then rename: readers never see half a file, and a
    failed write (a full disk) leaves the previous `path` as it was; the failure is a UserError naming it."""
    path = os.fspath(path)
    tmp = temporary_path(path)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except OSError as err:
        raise write_error(path, err) from None
    except RuntimeError as err:  # torch's writer wraps the OSError of a full disk in a RuntimeError
        cause = err.__cause__ or err.__context__
        if isinstance(cause, OSError):
            raise write_error(path, cause) from None
        raise UserError(f"cannot write {path}: the write stopped short ({str(err).splitlines()[0][:80]}), as on "
                        f"a full disk or past a file size limit; free some space (the file it replaces, if any, "
                        f"is intact)") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# NumPy arrays of numbers (the random state earlier versions kept in last_<i>.t7) unpickle through these alone;
# they build an array from its bytes and run nothing else, and an object array would need further globals.
# Files of NumPy 1 name the module numpy.core, those of NumPy 2 numpy._core.
_reconstruct = np.ndarray.__reduce__(np.zeros(0))[0]
LEGACY_SAFE_GLOBALS = [_reconstruct, (_reconstruct, "numpy.core.multiarray._reconstruct"), np.ndarray, np.dtype,
                       *{type(np.dtype(code)) for code in "?bBhHiIlLqQefd"}]


def load_checkpoint(path, what="checkpoint", map_location="cpu"):
    """torch.load(weights_only=True) onto `map_location`; a missing, unreadable or corrupt file, and one
    that needs code to load (a pickled module or object), is a UserError of one line naming it."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{what} {path} does not exist")
    try:
        with torch.serialization.safe_globals(LEGACY_SAFE_GLOBALS):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        needed = code_needed(path, err)
        if needed is None:
            raise UserError(f"{what} {path} is not a readable torch checkpoint (corrupt: the unpickler stopped "
                            f"at data it cannot read)") from None
        raise UserError(f"{what} {path} is refused: it needs code to load ({needed}); this project loads only "
                        f"tensors and plain data (torch.load weights_only=True). If you trust the file, save "
                        f"its state dict alone and pass that") from None
    except (OSError, EOFError, RuntimeError, zipfile.BadZipFile, ValueError, KeyError, IndexError,
            TypeError) as err:
        raise UserError(f"{what} {path} is not a readable torch checkpoint ({type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else 'corrupt'})") from None


def code_needed(path, err):
    """What in the file at `path` weights_only loading refused as code (its pickled globals or classes), or
    None when the refusal was of damaged data instead."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) or damaged file: the unpickler's own words are all there is
        names = []
    allowed = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__qualname__}" for g in LEGACY_SAFE_GLOBALS}
    names = [n for n in names if n not in allowed]
    if names:
        return ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    words = [line.strip() for line in str(err).splitlines() if "global" in line.lower() or "can only build" in line.lower()]
    return words[0][:160] if words else None


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
