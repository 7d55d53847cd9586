"""A trained stripe network's pruning, measured and written (SPEC §5, §7): the masked and the pruned
network's accuracy, parameters and FLOPs, and the files it leaves in the run's directory: prune.json,
pruned.pth.tar and pruned.pt2 (torch.export, loadable without this project)."""
import json
from pathlib import Path

import torch

from ..checkpoint import atomic_save
from ..engine import evaluate
from ..session import PRUNE_REPORT, PRUNED_CHECKPOINT, PRUNED_PROGRAM
from .conv import choose_modes
from .count import count_flops, count_params, stripe_flops
from .pruning import export_pruned, prune
from .skeleton import FilterStripe, stripe_pairs, threshold_skeleton


def freeze_conv_weights(model):
    """Shape-only training: no gradient for the FilterStripe weights, only for their skeletons."""
    for module in model.modules():
        if isinstance(module, FilterStripe):
            module.weight.requires_grad_(False)


def kept_stripes(model, threshold, epoch):
    """End-of-epoch metrics: the share of prunable skeleton entries that pruning would keep (|FS| > threshold)."""
    skeletons = [conv.FilterSkeleton.detach() for conv, _ in stripe_pairs(model)]
    kept = sum(int((fs.abs() > (threshold or 0.0)).sum()) for fs in skeletons)
    return {"stripes_kept": kept / sum(fs.numel() for fs in skeletons)}


def reduction(before, after):
    """100·(before − after)/before, in percent."""
    return 100.0 * (before - after) / before


def prune_and_report(model, threshold, test_loader, device, directory, meta, log=print):
    """Prune `model` (its trained weights loaded) at `threshold` (None: as it stands), check it on
    `test_loader`, choose each layer's stripe or dense form on the CPU, and write prune.json,
    pruned.pth.tar (with `meta`: arch, num_classes) and pruned.pt2 into `directory`; returns the report."""
    directory = Path(directory)
    if threshold is not None:
        threshold_skeleton(model, threshold)
    input_size = tuple(next(iter(test_loader))[0].shape[1:])
    masked = evaluate(model.to(device), test_loader, device, prefix="masked")
    model.cpu().eval()
    pruned = prune(model)
    example = torch.randn(2, *input_size)
    modes = choose_modes(pruned, example)
    acc_pruned = evaluate(pruned.to(device), test_loader, device, prefix="pruned")["pruned_acc"]
    pruned.cpu()
    report = {"params": count_params(model), "params_pruned": count_params(pruned),
              "flops": count_flops(model, input_size), "flops_pruned": stripe_flops(pruned, input_size),
              "acc": masked["masked_acc"], "acc_pruned": acc_pruned, "input_size": list(input_size),
              "stripe_layers": modes["stripe"], "dense_layers": modes["dense"], "layers": modes["layers"]}
    report["params_reduction"] = reduction(report["params"], report["params_pruned"])
    report["flops_reduction"] = reduction(report["flops"], report["flops_pruned"])
    atomic_save({"model": pruned, "net": pruned.state_dict(), **meta, "acc": acc_pruned},
                directory / PRUNED_CHECKPOINT)
    (directory / PRUNE_REPORT).write_text(json.dumps(report, indent=1))
    export_pruned(pruned, directory / PRUNED_PROGRAM, example)
    log(f"parameters {report['params']:,} -> {report['params_pruned']:,} (-{report['params_reduction']:.2f}%), "
        f"FLOPs {report['flops']:,} -> {report['flops_pruned']:,} (-{report['flops_reduction']:.2f}%)")
    log(f"accuracy {report['acc']:.2f}% masked, {acc_pruned:.2f}% stripe-wise; {modes['stripe']} layers "
        f"stripe-wise, {modes['dense']} dense; files in {directory}")
    return report
