"""Seeding and the random-generator state that --resume must restore."""
import random

import numpy as np
import torch


def seed_everything(seed):
    """Seed Python's, NumPy's and torch's global generators (CUDA's too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rank_seed(seed, rank):
    """The global generators' seed of rank `rank` > 0 of a network seeded `seed` (its own augmentation)."""
    return (seed * 1_000_003 + rank) % 2**63


def numpy_state():
    """NumPy's global generator state as plain data and a tensor (its MT19937 key), so that a checkpoint
    holding it loads with weights_only=True."""
    state = np.random.get_state(legacy=False)
    inner = state["state"]
    return {**state, "state": {"key": torch.from_numpy(inner["key"].astype(np.int64)), "pos": int(inner["pos"])}}


def set_numpy_state(state):
    """Restore a numpy_state() snapshot (or the tuple np.random.get_state gives, kept by earlier versions)."""
    if isinstance(state, dict):
        inner = state["state"]
        key = inner["key"].numpy() if torch.is_tensor(inner["key"]) else np.asarray(inner["key"])
        state = {**state, "state": {"key": key.astype(np.uint32), "pos": inner["pos"]}}
    np.random.set_state(state)


def rng_state(*generators):
    """Snapshot of the global generators and of the given torch.Generator objects (tensors and plain data)."""
    state = {"python": random.getstate(), "numpy": numpy_state(),
             "torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, *generators):
    """Restore a snapshot taken by rng_state, with the same generators in the same order."""
    random.setstate(state["python"])
    set_numpy_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
