"""Thresholds of one trained Filter Skeleton (SPEC §5): which ones leave every vital layer a stripe, the
ones a sweep visits, and the smallest one that reaches a FLOPs or parameter budget.

Pruning at threshold t removes every prunable stripe with |FS| ≤ t, so every t between two consecutive
distinct |FS| values prunes the same network: the distinct values are the only thresholds worth trying.
"""
import copy

import torch

from ..errors import FlagError, UserError
from .count import release_counts
from .pruning import prune
from .skeleton import stripe_pairs, threshold_skeleton, vital_convs

# Points a sweep spreads over the |FS| distribution (quantiles), before 0 and the training threshold join.
SWEEP_POINTS = 12
MIN_SWEEP_ROWS = 12
# What --target-flops / --target-params measure, as keys of release_counts.
BUDGETS = {"flops": ("flops", "flops_pruned"), "params": ("params", "params_pruned")}


def magnitudes(model):
    """|FS| of every prunable stripe, one flat tensor."""
    return torch.cat([conv.FilterSkeleton.detach().abs().flatten().cpu() for conv, _ in stripe_pairs(model)])


def alive_limit(model):
    """(limit, layer): thresholds t < limit leave every vital layer (one whose loss would leave no network)
    a stripe; `layer` is the one that loses its last stripe at t = limit (None and ∞ when none can)."""
    names = {id(m): name for name, m in model.named_modules()}
    limits = [(conv.FilterSkeleton.detach().abs().max().item(), names[id(conv)]) for conv in vital_convs(model)]
    return min(limits, default=(float("inf"), None))


def require_alive(model, threshold, flag="--threshold"):
    """A one-line UserError when pruning at `threshold` would remove every stripe of a vital layer."""
    limit, layer = alive_limit(model)
    if threshold >= limit:
        raise UserError(f"{flag} {threshold:g} removes every stripe of {layer} (its largest |FS| is {limit:.6g}), "
                        f"which would leave no network; choose a threshold below {limit:.6g}")


def check_threshold(threshold, field="threshold"):
    """Thresholds are magnitudes: a negative one is a FlagError."""
    if threshold < 0:
        raise FlagError(field, f"{{flag}} must be 0 or more (|FS| ≤ it is pruned), not {threshold:g}")


def sweep_thresholds(model, trained=None, points=SWEEP_POINTS):
    """(thresholds, limit, layer): 0, the training threshold `trained` and the |FS| quantiles at `points`
    evenly spaced probabilities, over the values below alive_limit, sorted. Where many entries share one
    value (those only the L1 term moved) and the quantiles coincide, they are the distinct values' quantiles
    instead; where there are fewer distinct values than MIN_SWEEP_ROWS, every one of them."""
    limit, layer = alive_limit(model)
    values = magnitudes(model).double()
    usable = values[values < limit]
    chosen = {0.0} | ({float(trained)} if trained is not None and trained < limit else set())
    if len(usable):
        probabilities = torch.linspace(0, 1, points, dtype=torch.float64)
        spread = set(torch.quantile(usable, probabilities).tolist())
        if len(chosen | spread) < MIN_SWEEP_ROWS:
            spread = set(torch.quantile(usable.unique(), probabilities).tolist())
        chosen |= spread
        if len(chosen) < MIN_SWEEP_ROWS:
            chosen |= set(usable.unique().tolist())
    return sorted(chosen), limit, layer


def masked_at(model, threshold):
    """A copy of `model` on the CPU, in eval mode, thresholded at `threshold` (γ, β of emptied filters zeroed);
    None: as it stands."""
    masked = copy.deepcopy(model).cpu().eval()
    if threshold is not None:
        threshold_skeleton(masked, threshold)
    return masked


def reduction(before, after):
    """(before − after)/before, a fraction."""
    return (before - after) / before


def budget_reduction(model, threshold, input_size, budget):
    """The fraction of the `budget` count (flops | params, as the release counts) pruning at `threshold` removes."""
    masked = masked_at(model, threshold)
    counts = release_counts(masked, input_size, prune(masked))
    total, kept = BUDGETS[budget]
    return reduction(counts[total], counts[kept])


def smallest_threshold(model, target, budget, input_size):
    """(threshold, fraction removed): the smallest threshold whose pruning removes at least `target` of the
    `budget` count, found by bisection over the distinct |FS| values below alive_limit (the reduction grows
    with the threshold); a one-line UserError giving the most any threshold reaches when none reaches it."""
    limit, layer = alive_limit(model)
    values = magnitudes(model).double()
    candidates = torch.cat([torch.zeros(1, dtype=torch.float64), values[values < limit].unique()]).unique().tolist()
    reached = {}

    def removed(index):
        if index not in reached:
            reached[index] = budget_reduction(model, candidates[index], input_size, budget)
        return reached[index]

    most = removed(len(candidates) - 1)
    if most < target:
        beyond = f"; above it {layer} loses its last stripe" if layer else ""
        raise UserError(f"--target-{budget} {target:g}: no threshold reaches it; the most is {most:.4f} of the "
                        f"{budget} removed, at threshold {candidates[-1]:.6g}{beyond}")
    low, high = 0, len(candidates) - 1  # removed(high) ≥ target; find the first such index
    while low < high:
        middle = (low + high) // 2
        if removed(middle) >= target:
            high = middle
        else:
            low = middle + 1
    return candidates[high], removed(high)
