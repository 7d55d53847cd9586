"""A trained stripe network's pruning, measured and written (SPEC §5, §7): the masked and the pruned
network's accuracy, parameters and FLOPs, and the files it leaves in the run's directory: prune.json,
pruned.pth.tar and pruned.pt2 (torch.export, loadable without this project)."""
import json
from pathlib import Path

import torch

from ..assembly import open_session, run_loaders
from ..checkpoint import atomic_save
from ..engine import evaluate, resolve_device
from ..models import create_model
from ..rng import seed_everything
from ..session import PRUNE_REPORT, PRUNED_CHECKPOINT, PRUNED_PROGRAM, SINGLE_RUN_FILES
from .checkpoints import load_for_pruning
from .conv import choose_modes
from .count import count_params, program_flops, release_counts
from .pruning import export_pruned, prune
from .skeleton import FilterStripe, stripe_pairs, threshold_skeleton

# What the counts of prune.json measure (filtergraft/stripe/count.py has the conventions in full).
COUNTING = {
    "params, params_pruned, flops, flops_pruned": "as the release counts (the paper's percentages): Filter "
    "Skeletons and BatchNorm unfolded, each conv over its kept stripes, FLOPs per image",
    "params_stored, flops_executed": "as pruned.pt2 runs: its parameters, and the FLOPs torch.utils.flop_counter "
    "counts per image in its layers' chosen stripe-wise or dense forms"}


def freeze_conv_weights(model):
    """Shape-only training: no gradient for the FilterStripe weights, only for their skeletons."""
    for module in model.modules():
        if isinstance(module, FilterStripe):
            module.weight.requires_grad_(False)


def kept_stripes(model, threshold, epoch):
    """End-of-epoch metrics: the share of prunable skeleton entries that pruning would keep (|FS| > threshold),
    over the network (stripes_kept) and in each FilterStripe layer (stripes_kept_layers: {module name: share})."""
    names = {id(module): name for name, module in model.named_modules()}
    kept = {names[id(conv)]: conv.FilterSkeleton.detach().abs() > (threshold or 0.0) for conv, _ in stripe_pairs(model)}
    return {"stripes_kept": sum(int(k.sum()) for k in kept.values()) / sum(k.numel() for k in kept.values()),
            "stripes_kept_layers": {name: int(k.sum()) / k.numel() for name, k in kept.items()}}


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
    atomic_save({"model": pruned, "net": pruned.state_dict(), **meta, "acc": acc_pruned},
                directory / PRUNED_CHECKPOINT)
    program = export_pruned(pruned, directory / PRUNED_PROGRAM, example)
    report = {**release_counts(model, input_size, pruned), "params_stored": count_params(pruned),
              "flops_executed": program_flops(program, input_size), "acc": masked["masked_acc"],
              "acc_pruned": acc_pruned, "input_size": list(input_size), "counting": COUNTING,
              "stripe_layers": modes["stripe"], "dense_layers": modes["dense"], "layers": modes["layers"]}
    report["params_reduction"] = reduction(report["params"], report["params_pruned"])
    report["flops_reduction"] = reduction(report["flops"], report["flops_pruned"])
    (directory / PRUNE_REPORT).write_text(json.dumps(report, indent=1))
    log(f"as the release counts: parameters {report['params']:,} -> {report['params_pruned']:,} "
        f"(-{report['params_reduction']:.2f}%), FLOPs {report['flops']:,} -> {report['flops_pruned']:,} "
        f"(-{report['flops_reduction']:.2f}%)")
    log(f"as pruned.pt2 runs: {report['flops_executed']:,} FLOPs executed, {report['params_stored']:,} "
        f"parameters stored; {modes['stripe']} layers stripe-wise, {modes['dense']} dense")
    log(f"accuracy {report['acc']:.2f}% masked, {acc_pruned:.2f}% pruned; files in {directory}")
    return report


def prune_checkpoint(record, datasets):
    """--evaluate CHECKPOINT: the run `record` describes without training. The checkpoint and the data
    (`datasets()`: train, test) are checked before anything is written, then the network is evaluated,
    pruned and reported as after training (prune_and_report)."""
    device = resolve_device(record.device)
    if record.seed is not None:
        seed_everything(record.seed)
    model = create_model(record.arch, record.num_classes, kind="stripe")
    load_for_pruning(model, record.evaluate, f"--evaluate {record.evaluate}")
    train_set, test_set = datasets()
    session = open_session(record, SINGLE_RUN_FILES, device)
    _, test_loader, _ = run_loaders(record, train_set, test_set, record.seed, device)
    threshold = "as it stands" if record.threshold is None else f"at threshold {record.threshold:g}"
    session.log(f"{record.arch} from {record.evaluate}, no training; {record.dataset} ({len(test_set)} test "
                f"images), device {device}, pruned {threshold}")
    prune_and_report(model, record.threshold, test_loader, device, session.root,
                     {"arch": record.arch, "num_classes": record.num_classes}, session.log)
    session.close()
