"""Stripe-wise pruning (Pruning Filter in Filter): train with a Filter Skeleton, prune, run stripe-wise.

    python stripe_pruning/main.py --arch VGG --sr 1e-5 --threshold 0.01 --save runs/vgg_sr    # pruned
    python stripe_pruning/main.py --arch ResNet56 --save runs/r56_base                       # baseline

After training it loads the best checkpoint, removes the pruned stripes, filters and blocks, evaluates the
stripe-wise network, and writes into --save: metrics.jsonl, best.pth.tar, pruned.pth.tar, prune.json and
pruned.pt2 (torch.export, dynamic batch size: torch.export.load(path).module()(x), no project code needed).
"""
import argparse
import functools
import json

import torch

from filtergraft import cli
from filtergraft.assembly import build_trainer
from filtergraft.checkpoint import atomic_save, load_checkpoint, state_dict_of
from filtergraft.data import DATASETS, cifar_like_datasets, image_folder_datasets
from filtergraft.engine import evaluate
from filtergraft.errors import FlagError, UserError, exit_on_user_error
from filtergraft.models import canonical_model_name, create_model
from filtergraft.record import RunRecord
from filtergraft.session import PRUNE_REPORT, PRUNED_CHECKPOINT, PRUNED_PROGRAM, SINGLE_RUN_FILES
from filtergraft.stripe import (FilterStripe, choose_modes, count_flops, count_params, export_pruned, prune,
                                stripe_flops, threshold_skeleton, update_skeleton)

# The release's names of the architectures (its --arch), as the model registry knows them.
ARCHS = ("VGG", "ResNet56", "ResNet18")


def build_parser():
    parser = argparse.ArgumentParser(description="Stripe-wise pruning with a learnable Filter Skeleton")
    parser.add_argument("--arch", choices=ARCHS, default="VGG")
    parser.add_argument("--dataset", choices=(*DATASETS, "imagefolder"), default="cifar",
                        help="cifar, digits, fake, or imagefolder (--data_path holds train/ and val/)")
    parser.add_argument("--data_path", dest="data", default="../data")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch-size", type=cli.positive(int), default=64)
    parser.add_argument("--epochs", type=cli.positive(int), default=160)
    parser.add_argument("--lr", type=cli.positive(float), default=0.1, help="×0.1 at 50 %% and 75 %% of the epochs")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--save", dest="session_dir", default="checkpoint/stripe", help="output directory")
    parser.add_argument("--sr", type=float, default=None, help="L1 strength on the Filter Skeleton (pruning)")
    parser.add_argument("--threshold", type=float, default=None, help="skeleton entries at or below it are pruned")
    parser.add_argument("--freeze-weights", action="store_true",
                        help="shape only: conv weights stay at their random initialisation; the skeleton, "
                             "BatchNorm and classifier train")
    parser.add_argument("--crop-size", type=cli.positive(int), default=224, help="imagefolder: training crop")
    parser.add_argument("--resize-size", type=cli.positive(int), default=256, help="imagefolder: eval resize")
    parser.add_argument("--workers", "-j", type=int, default=2)
    parser.add_argument("--device", default=None)
    parser.add_argument("--print-freq", type=cli.positive(int), default=100)
    parser.add_argument("--resume", action="store_true", help="continue from --save's last.pth.tar")
    cli.add_speed_flags(parser)
    return parser


def stripe_record(args):
    """The checked run record: sr and threshold together, the registry's name of --arch, the release's
    ×0.1 steps at 50 % and 75 % of the epochs."""
    record = RunRecord.from_flags("stripe_pruning", args)
    cli.check_training(record)
    if (record.sr is None) != (record.threshold is None):
        raise UserError("--sr and --threshold go together: give both to prune, neither for the baseline")
    if record.sr is not None and (record.sr < 0 or record.threshold < 0):
        raise UserError(f"--sr and --threshold must be non-negative, not {record.sr} and {record.threshold}")
    if record.num_classes < 2:
        raise FlagError("num_classes", f"{{flag}} must be at least 2, not {record.num_classes}")
    record.arch = canonical_model_name(record.arch)
    record.milestones = [m for m in (record.epochs // 2, record.epochs * 3 // 4) if m > 0]
    return record


def datasets_for(record):
    if record.dataset == "imagefolder":
        train_set, test_set = image_folder_datasets(record.data, record.crop_size, record.resize_size)
        if len(train_set.classes) != record.num_classes:
            raise FlagError("num_classes", f"{record.data} has {len(train_set.classes)} classes; pass {{flag}} "
                                           f"{len(train_set.classes)}")
        return train_set, test_set
    return cifar_like_datasets(record.dataset, record.data, record.num_classes)


def freeze_conv_weights(model):
    """Shape-only training: no gradient for the FilterStripe weights, only for their skeletons."""
    for module in model.modules():
        if isinstance(module, FilterStripe):
            module.weight.requires_grad_(False)


def kept_stripes(model, threshold, epoch):
    """End-of-epoch metrics: the share of skeleton entries that pruning would keep (|FS| > threshold)."""
    skeletons = [m.FS.detach() for m in model.modules() if isinstance(m, FilterStripe)]
    kept = sum(int((fs.abs() > (threshold or 0.0)).sum()) for fs in skeletons)
    return {"stripes_kept": kept / sum(fs.numel() for fs in skeletons)}


def reduction(before, after):
    return 100.0 * (before - after) / before


def prune_best(record, trainer, session, input_size):
    """Load the best checkpoint, prune it, check and time it, and write pruned.pth.tar, prune.json and pruned.pt2."""
    model = trainer.model
    model.load_state_dict(state_dict_of(load_checkpoint(session.best_path, "best checkpoint")))
    if record.threshold is not None:
        threshold_skeleton(model, record.threshold)
    masked = evaluate(model, trainer.test_loader, trainer.device, prefix="masked")
    model.cpu().eval()
    pruned = prune(model)
    example = torch.randn(2, *input_size)
    modes = choose_modes(pruned, example)
    device = trainer.device
    acc_pruned = evaluate(pruned.to(device), trainer.test_loader, device, prefix="pruned")["pruned_acc"]
    pruned.cpu()
    report = {"params": count_params(model), "params_pruned": count_params(pruned),
              "flops": count_flops(model, input_size), "flops_pruned": stripe_flops(pruned, input_size),
              "acc": masked["masked_acc"], "acc_pruned": acc_pruned, "input_size": list(input_size),
              "stripe_layers": modes["stripe"], "dense_layers": modes["dense"], "layers": modes["layers"]}
    report["params_reduction"] = reduction(report["params"], report["params_pruned"])
    report["flops_reduction"] = reduction(report["flops"], report["flops_pruned"])
    atomic_save({"model": pruned, "net": pruned.state_dict(), "arch": record.arch,
                 "num_classes": record.num_classes, "acc": acc_pruned}, session.root / PRUNED_CHECKPOINT)
    (session.root / PRUNE_REPORT).write_text(json.dumps(report, indent=1))
    export_pruned(pruned, session.root / PRUNED_PROGRAM, example)
    session.log(f"parameters {report['params']:,} -> {report['params_pruned']:,} "
                f"(-{report['params_reduction']:.2f}%), FLOPs {report['flops']:,} -> {report['flops_pruned']:,} "
                f"(-{report['flops_reduction']:.2f}%)")
    session.log(f"accuracy {report['acc']:.2f}% masked, {acc_pruned:.2f}% stripe-wise; "
                f"{modes['stripe']} layers stripe-wise, {modes['dense']} dense; files in {session.root}")


def run(args):
    record = stripe_record(args)

    def build_model(num_classes):
        model = create_model(record.arch, num_classes)
        if record.freeze_weights:
            freeze_conv_weights(model)
        return model

    after_backward = None if record.sr is None else functools.partial(
        update_skeleton, sr=record.sr, threshold=record.threshold)
    method = "baseline" if record.sr is None else f"sr {record.sr:g}, threshold {record.threshold:g}"
    trainer = build_trainer(record, datasets=lambda: datasets_for(record), build_model=build_model,
                            files=SINGLE_RUN_FILES, seed=record.seed, after_backward=after_backward,
                            describe=method + (", conv weights frozen" if record.freeze_weights else ""))
    trainer.fit(functools.partial(kept_stripes, trainer.model, record.threshold))
    input_size = tuple(next(iter(trainer.test_loader))[0].shape[1:])
    prune_best(record, trainer, trainer.session, input_size)
    trainer.session.close()


def main(argv=None):
    return cli.run(build_parser(), run, argv)


if __name__ == "__main__":
    with exit_on_user_error("main.py"):
        main()
