"""Parts `cpu` and `agree`: the tensor data pipeline and grafting give what they should, on the CPU (every
machine) and on CUDA against the CPU (the same seed, the same two checkpoints).

The CPU side needs no GPU: the pipeline's batches are a function of its seed alone, its unaugmented
batches are torchvision's test transform, and grafting's α and weights equal the paper's formulas
computed here from scratch with NumPy."""
import copy

import numpy as np
import torch

from filtergraft.checkpoint import atomic_save, load_checkpoint
from filtergraft.data import TensorLoader, cifar_like_datasets
from filtergraft.grafting import DEFAULT_A, DEFAULT_C, Grafter
from filtergraft.models import create_model

CPU = torch.device("cpu")


def tensor_batches(dataset, device, seed, train=True, batch_size=128):
    """Every batch of one pass of the tensor pipeline over `dataset` on `device`, brought to the CPU."""
    loader = TensorLoader(dataset, batch_size, device, train=train, generator=torch.Generator().manual_seed(seed))
    return [(x.cpu(), y.cpu()) for x, y in loader]


def largest_difference(batches, others):
    """(max |x − x'| over the images, whether every target agrees) of two lists of batches."""
    images = max((a - b).abs().max().item() for (a, _), (b, _) in zip(batches, others))
    return images, all(torch.equal(a, b) for (_, a), (_, b) in zip(batches, others))


def two_checkpoints(directory):
    """Two ResNet20 state dicts of different seeds, written as checkpoints and read back as data
    (weights_only), as grafting reads its peer's."""
    paths = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        path = directory / f"resnet20_seed{seed}.t7"
        atomic_save({"net": create_model("resnet20", 10).state_dict()}, path)
        paths.append(path)
    return [load_checkpoint(p)["net"] for p in paths]


def graft_on(device, own, peer):
    """(layer records, grafted state dict on the CPU, the Grafter) of `own` grafted with `peer` on `device`."""
    model = create_model("resnet20", 10)
    model.load_state_dict(own)
    model.to(device)
    grafter = Grafter(model)
    records = grafter.graft({k: v.to(device) for k, v in peer.items()})
    return records, {k: v.cpu() for k, v in model.state_dict().items()}, grafter


def release_entropy(values, bins=10):
    """H of the release's histogram with NumPy: bins [low + k·s, low + (k+1)·s) with float32 bounds (k·s then
    + low, s = (max − low)/bins); a value on or past the last bound falls in none; p_k over all values."""
    values = np.asarray(values, dtype=np.float32).ravel()
    low = values.min()
    step = (values.max() - low) / np.float32(bins)
    bounds = np.arange(bins + 1, dtype=np.float32) * step + low
    index = np.searchsorted(bounds, values, side="right") - 1
    counts = np.bincount(index[index < bins], minlength=bins)
    p = counts[counts > 0] / values.size
    return float(-(p * np.log(p)).sum())


def formula_alpha(h_self, h_peer, a=DEFAULT_A, c=DEFAULT_C):
    """α = (A/π)·arctan(c·(H_self − H_peer)) + 0.5, to two decimals, in NumPy's float64."""
    return float(np.round(a / np.pi * np.arctan(c * (h_self - h_peer)) + 0.5, 2))


def formula_error(grafter, records, own, peer, grafted):
    """max |W_grafted − (α·W + (1 − α)·W_peer)| over the tensors the graft mixed, with each layer's α of
    `records`, in float64."""
    alpha = {r["name"]: r["alpha"] for r in records}
    return max((grafted[key].double() - alpha[unit.name] * own[key].double()
                - (1 - alpha[unit.name]) * peer[key].double()).abs().max().item()
               for unit, keys in grafter.plan for key in keys)


def alphas_agree(first, second):
    """(how many paired α are equal, whether every pair is): two computations of the entropies may differ in
    their last bits, which can move α across a rounding boundary, one step of 0.01 and never more."""
    steps = [abs(a - b) for a, b in zip(first, second)]
    return sum(step < 1e-9 for step in steps), bool(steps) and max(steps) <= 0.01 + 1e-9


def cpu(part):
    """The CPU-side checks."""
    train_set, test_set = cifar_like_datasets("digits", None)
    first, again, other = (tensor_batches(train_set, CPU, seed) for seed in (0, 0, 1))
    images, targets = largest_difference(first, again)
    moved, _ = largest_difference(first, other)
    part.check("tensor pipeline: one seed, one sequence of batches", images == 0 and targets and moved > 0,
               f"{len(first)} batches of {len(train_set)} digits equal over two passes of seed 0 "
               f"(max |Δ| {images:g}); seed 1 gives other crops and order (max |Δ| {moved:.2f})")
    ordered = tensor_batches(test_set, CPU, 0, train=False)
    reference = torch.stack([test_set[i][0] for i in range(len(test_set))])
    error = (torch.cat([x for x, _ in ordered]) - reference).abs().max().item()
    labels = torch.cat([y for _, y in ordered]).tolist() == list(test_set.targets)
    part.check("tensor pipeline without augmentation = torchvision's ToTensor + Normalize", error < 1e-5 and labels,
               f"{len(test_set)} test digits, max |Δ| {error:.2e}")

    own, peer = two_checkpoints(part.work)
    records, grafted, grafter = graft_on(CPU, own, peer)
    alphas = {}
    for unit, _ in grafter.plan:
        alphas[unit.name] = formula_alpha(release_entropy(own[unit.weight].numpy()),
                                          release_entropy(peer[unit.weight].numpy()))
    equal, agree = alphas_agree([r["alpha"] for r in records], [alphas[r["name"]] for r in records])
    part.check("grafting α = the formula from a NumPy histogram", agree,
               f"{equal} of {len(records)} layers equal, the others within one rounding step; "
               f"α from {min(alphas.values()):.2f} to {max(alphas.values()):.2f}")
    error = formula_error(grafter, records, own, peer, grafted)
    part.check("grafted weights = α·W + (1 − α)·W_peer", error < 1e-6,
               f"{len(grafter.mixed)} tensors, max |Δ| {error:.2e}")


def agree(part):
    """The same batches and the same graft on CUDA as on the CPU."""
    device = part.device
    train_set, _ = cifar_like_datasets("digits", None)
    on_cpu, on_device = (tensor_batches(train_set, d, 0) for d in (CPU, device))
    images, targets = largest_difference(on_cpu, on_device)
    part.check(f"tensor pipeline: the same batches on {device} as on the CPU (seed 0)",
               targets and images < 1e-5 and len(on_cpu) == len(on_device),
               f"{len(on_cpu)} batches, targets equal, max |Δ| of the images {images:.2e}")
    own, peer = two_checkpoints(part.work)
    cpu_records, cpu_state, _ = graft_on(CPU, copy.deepcopy(own), peer)
    dev_records, dev_state, grafter = graft_on(device, copy.deepcopy(own), peer)
    same_alpha, agree = alphas_agree([r["alpha"] for r in cpu_records], [r["alpha"] for r in dev_records])
    entropy = max(abs(a[k] - b[k]) for a, b in zip(cpu_records, dev_records) for k in ("h_self", "h_peer"))
    weights = max((cpu_state[k].double() - dev_state[k].double()).abs().max().item()
                  for k in cpu_state if cpu_state[k].is_floating_point())
    part.check(f"grafting: the same α on {device} as on the CPU",
               len(cpu_records) == len(dev_records) and agree and entropy < 1e-5,
               f"{same_alpha} of {len(cpu_records)} layers equal, the others within one rounding step; "
               f"max |ΔH| {entropy:.2e}")
    # Where α moved by a rounding step the weights differ by 0.01·(W − W_peer): each device's must be its α's.
    error = formula_error(grafter, dev_records, own, peer, dev_state)
    part.check(f"grafting: the grafted weights on {device} = α·W + (1 − α)·W_peer with its α", error < 1e-6,
               f"max |Δ| {error:.2e}; against the CPU's grafted weights max |Δ| {weights:.2e}")
