"""Parameters and FLOPs of stripe models and their pruned networks, as executed (FlopCounterMode)."""
import torch
from torch.utils.flop_counter import FlopCounterMode

from .conv import forced_mode
from .skeleton import FilterStripe


def count_params(model):
    """Stored parameters, Filter Skeletons excluded (training-only; pruning folds them into weights)."""
    skeletons = {id(m.FilterSkeleton) for m in model.modules() if isinstance(m, FilterStripe)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skeletons)


def count_flops(model, input_size):
    """FLOPs (FlopCounterMode: 2 per multiply-add) of one eval forward of a batch of one input_size."""
    was_training = model.training
    model.eval()
    param = next(model.parameters())
    x = torch.zeros(1, *input_size, dtype=param.dtype, device=param.device)
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops()


def stripe_flops(pruned, input_size):
    """FLOPs of the stripe-wise network: every StripeConv counted over its kept stripes only."""
    with forced_mode(pruned, "stripe"):
        return count_flops(pruned, input_size)
