"""Seeding and the random-generator state that --resume must restore."""
import random

import numpy as np
import torch


def seed_everything(seed):
    """Seed Python's, NumPy's and torch's global generators (CUDA's too)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(*generators):
    """Snapshot of the global generators and of the given torch.Generator objects."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state, *generators):
    """Restore a snapshot taken by rng_state, with the same generators in the same order."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
