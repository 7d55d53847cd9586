"""A trained stripe network's pruning, measured and written (SPEC §5, §7): the masked and the pruned
network's accuracy, parameters and FLOPs, and the files it leaves in the run's directory: prune.json,
pruned.pth.tar and pruned.pt2 (torch.export, loadable without this project). `prune_and_report` is the one
pruning of main.py (after training, and --evaluate) and of prune.py (--threshold, --target-*)."""
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..assembly import open_session, run_loaders
from ..engine import evaluate, resolve_device
from ..models import create_model
from ..rng import seed_everything
from ..session import PRUNE_REPORT, PRUNED_CHECKPOINT, PRUNED_PROGRAM, SINGLE_RUN_FILES
from .budget import masked_at, reduction, require_alive
from .checkpoints import load_for_pruning, save_pruned
from .conv import choose_modes
from .count import count_params, module_flops, release_counts
from .pruning import export_pruned, prune
from .skeleton import FilterStripe, stripe_pairs
from .tuning import finetune, recalibrate_batchnorm

# What the counts of prune.json measure (filtergraft/stripe/count.py has the conventions in full).
COUNTING = {
    "params, params_pruned, flops, flops_pruned": "as the release counts (the paper's percentages): Filter "
    "Skeletons and BatchNorm unfolded, each conv over its kept stripes, FLOPs per image",
    "params_stored, flops_executed": "as pruned.pt2 runs: its parameters, and the FLOPs torch.utils.flop_counter "
    "counts per image in its layers' chosen stripe-wise or dense forms"}


class PruneData(NamedTuple):
    """Where a pruning is measured and tuned: the test loader, the training loader (recalibration and
    finetuning read it; None without them), the device and the training loader's generator."""
    test_loader: Any
    device: torch.device
    train_loader: Any = None
    generator: torch.Generator = None


@dataclass
class Tuning:
    """What happens between pruning and export: BatchNorm recalibration on `bn_batches` training batches,
    then `epochs` of finetuning (tuning.finetune) at `lr` (cosine or the release's steps); none by default."""
    bn_batches: int = 0
    epochs: int = 0
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    cosine: bool = False

    @property
    def changes_weights(self):
        """Whether the exported network differs from the one pruned as trained."""
        return bool(self.bn_batches or self.epochs)


def freeze_conv_weights(model):
    """Shape-only training: no gradient for the FilterStripe weights, only for their skeletons."""
    for module in model.modules():
        if isinstance(module, FilterStripe):
            module.weight.requires_grad_(False)


def freeze_skeletons(model):
    """No gradient for the Filter Skeletons: they stay at their initial ones (the shape-only run's control)."""
    for module in model.modules():
        if isinstance(module, FilterStripe):
            module.FilterSkeleton.requires_grad_(False)


def kept_stripes(model, threshold, epoch):
    """End-of-epoch metrics: the share of prunable skeleton entries that pruning would keep (|FS| > threshold),
    over the network (stripes_kept) and in each FilterStripe layer (stripes_kept_layers: {module name: share})."""
    names = {id(module): name for name, module in model.named_modules()}
    kept = {names[id(conv)]: conv.FilterSkeleton.detach().abs() > (threshold or 0.0) for conv, _ in stripe_pairs(model)}
    return {"stripes_kept": sum(int(k.sum()) for k in kept.values()) / sum(k.numel() for k in kept.values()),
            "stripes_kept_layers": {name: int(k.sum()) / k.numel() for name, k in kept.items()}}


def example_batch(test_loader):
    """(first test batch on the CPU, input size C×H×W)."""
    inputs = next(iter(test_loader))[0].cpu()
    return inputs, tuple(inputs.shape[1:])


def pruned_network(masked, example):
    """(prune(masked) with each layer in its faster form for inputs like `example`, choose_modes' summary)."""
    pruned = prune(masked.cpu().eval())
    return pruned, choose_modes(pruned, example[:2])


@torch.no_grad()
def export_error(exported, masked, inputs):
    """max |exported(x) − masked(x)| over the batch `inputs`, and max |masked(x)| (its scale); `exported` is
    the module of a torch.export program."""
    reference = masked.cpu().eval()(inputs)
    return (exported(inputs) - reference).abs().max().item(), reference.abs().max().item()


def accuracy(net, data, prefix):
    """Top-1 (%) of `net` on the test loader, the net moved back to the CPU."""
    acc = evaluate(net.to(data.device), data.test_loader, data.device, prefix=prefix)[f"{prefix}_acc"]
    net.cpu()
    return acc


def _tune(masked, threshold, data, tuning, log, report):
    """Recalibrate and finetune the masked network as `tuning` says, the accuracies into `report`."""
    if tuning.bn_batches:
        used = recalibrate_batchnorm(masked, data.train_loader, tuning.bn_batches, data.device)
        report.update(bn_recalibrate_batches=used, acc_recalibrated=accuracy(masked, data, "recalibrated"))
        log(f"BatchNorm statistics re-estimated on {used} training batches: {report['acc_recalibrated']:.2f}%")
    if tuning.epochs:
        history = finetune(masked, threshold or 0.0, data.train_loader, data.test_loader, data.device, log,
                           epochs=tuning.epochs, lr=tuning.lr, momentum=tuning.momentum,
                           weight_decay=tuning.weight_decay, cosine=tuning.cosine, generator=data.generator)
        masked.cpu()
        report.update(finetune={**asdict(tuning), "history": history}, acc_finetuned=history[-1]["test_acc"])


def prune_and_report(model, threshold, data, directory, meta, log=print, tuning=None, notes=None):
    """Prune `model` (its trained weights loaded; left as it is) at `threshold` (None: as it stands), check it
    on the test loader of `data` (a PruneData), recalibrate and finetune it as `tuning` says, choose each
    layer's stripe or dense form on the CPU, and write prune.json (with `notes` merged in), pruned.pth.tar
    (with `meta`: arch, num_classes) and pruned.pt2 into `directory`; returns the report. A threshold that
    would empty a vital layer is refused before anything is written."""
    directory, tuning = Path(directory), tuning or Tuning()
    require_alive(model, threshold or 0.0)
    inputs, input_size = example_batch(data.test_loader)
    masked = masked_at(model, threshold)
    report = {"threshold": threshold, "acc_unpruned": accuracy(masked_at(model, None), data, "unpruned"),
              "acc": accuracy(masked, data, "masked")}
    pruned, modes = pruned_network(masked, inputs)
    report.update(release_counts(masked, input_size, pruned), acc_pruned=accuracy(pruned, data, "pruned"),
                  **(notes or {}))
    _tune(masked, threshold, data, tuning, log, report)
    acc_final = report["acc_pruned"]
    if tuning.changes_weights:
        pruned, modes = pruned_network(masked, inputs)
        acc_final = accuracy(pruned, data, "final")
    save_pruned(directory / PRUNED_CHECKPOINT, masked, pruned, meta, acc_final, threshold)
    exported = export_pruned(pruned, directory / PRUNED_PROGRAM, inputs).module()
    error, scale = export_error(exported, masked, inputs)
    report.update(acc_exported=acc_final, params_stored=count_params(pruned),
                  flops_executed=module_flops(exported, input_size), export_max_error=error, output_scale=scale,
                  input_size=list(input_size), counting=COUNTING, stripe_layers=modes["stripe"],
                  dense_layers=modes["dense"], layers=modes["layers"])
    report["params_reduction"] = 100 * reduction(report["params"], report["params_pruned"])
    report["flops_reduction"] = 100 * reduction(report["flops"], report["flops_pruned"])
    (directory / PRUNE_REPORT).write_text(json.dumps(report, indent=1))
    log(f"as the release counts: parameters {report['params']:,} -> {report['params_pruned']:,} "
        f"(-{report['params_reduction']:.2f}%), FLOPs {report['flops']:,} -> {report['flops_pruned']:,} "
        f"(-{report['flops_reduction']:.2f}%)")
    log(f"as pruned.pt2 runs: {report['flops_executed']:,} FLOPs executed, {report['params_stored']:,} "
        f"parameters stored; {modes['stripe']} layers stripe-wise, {modes['dense']} dense")
    tuned = f", {acc_final:.2f}% after {_tuning_words(tuning)}" if tuning.changes_weights else ""
    log(f"accuracy {report['acc']:.2f}% masked, {report['acc_pruned']:.2f}% pruned{tuned}; files in {directory}")
    return report


def _tuning_words(tuning):
    """'BatchNorm recalibration and 3 finetuning epochs', for the log."""
    words = (["BatchNorm recalibration"] if tuning.bn_batches else []) + (
        [f"{tuning.epochs} finetuning epoch{'s' * (tuning.epochs > 1)}"] if tuning.epochs else [])
    return " and ".join(words)


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
    prune_and_report(model, record.threshold, PruneData(test_loader, device), session.root,
                     {"arch": record.arch, "num_classes": record.num_classes}, session.log)
    session.close()
