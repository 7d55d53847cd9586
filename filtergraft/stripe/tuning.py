"""After pruning, before export (SPEC §5 prunes without either): BatchNorm statistics re-estimated on training
batches, and finetuning the masked network with its stripes held where pruning left them."""
import functools
import itertools

import torch
import torch.nn as nn

from ..engine import LRSchedule, Trainer, sgd
from .skeleton import FilterStripe, threshold_skeleton


def release_milestones(epochs):
    """The release's step schedule: ×0.1 after 50 % and after 75 % of the epochs (epoch numbers > 0)."""
    return [m for m in (epochs // 2, epochs * 3 // 4) if m > 0]


@torch.no_grad()
def recalibrate_batchnorm(model, loader, batches, device):
    """BatchNorm running statistics re-estimated: μ, σ² ← the mean over `batches` training batches of the batch
    means and unbiased batch variances. Procedure: every BatchNorm's running stats reset and its momentum set to
    None (PyTorch's cumulative average), `batches` batches of `loader` forwarded in train mode under no_grad,
    then the momenta restored and the model put in eval mode. No weight changes: γ and β of emptied filters stay
    0, so pruning removes the same filters after it. Returns the number of batches used (fewer when the loader
    has fewer)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    model.to(device).train()
    used = 0
    try:
        for inputs, _ in itertools.islice(loader, batches):
            model(inputs.to(device, non_blocking=True))
            used += 1
    finally:
        for bn, momentum in zip(norms, momenta):
            bn.momentum = momentum
        model.eval()
    return used


def hold_stripes(model):
    """Finetuning keeps the pruned structure: the Filter Skeletons get no gradient (a zero entry keeps its
    stripe's weights out of every gradient, and the kept entries keep their scale)."""
    for module in model.modules():
        if isinstance(module, FilterStripe):
            module.FilterSkeleton.requires_grad_(False)


class _Lines:
    """What Trainer.train_epoch needs of a session: a log (its file-only lines, for a live progress bar, dropped)."""

    def __init__(self, log):
        self._log = log

    def log(self, message, console=True):
        if console:
            self._log(message)


def finetune(model, threshold, train_loader, test_loader, device, log, *, epochs, lr, momentum, weight_decay,
             cosine, generator=None):
    """Train the masked `model` (pruned at `threshold`) for `epochs` with SGD, its stripes held (hold_stripes)
    and after every backward γ, β of emptied filters and their gradients zeroed (threshold_skeleton), so
    pruning it again removes exactly what it removed before; lr·0.5·(1 + cos(π·t/T)) per iteration with
    `cosine`, else ×0.1 at 50 % and 75 % of the epochs; `log(line)` gets a line per epoch. Returns one
    metrics dict per epoch."""
    hold_stripes(model)
    model.to(device)
    schedule = LRSchedule(epochs, len(train_loader), cosine=cosine, milestones=release_milestones(epochs))
    trainer = Trainer(model, sgd(model, lr, momentum, weight_decay), train_loader, test_loader, _Lines(log),
                      device=device, epochs=epochs, schedule=schedule, print_freq=len(train_loader),
                      after_backward=functools.partial(threshold_skeleton, threshold=threshold), generator=generator)
    history = []
    for epoch in range(1, epochs + 1):
        record = {"epoch": epoch, "lr": trainer.lr, **trainer.train_epoch(epoch), **trainer.evaluate()}
        log(f"finetune epoch {epoch}/{epochs} lr {record['lr']:.5f} | train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.2f}% | test acc {record['test_acc']:.2f}%")
        history.append(record)
    model.eval()
    return history
