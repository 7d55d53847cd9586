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
from filtergraft.checkpoint import atomic_save, load_checkpoint, state_dict_of
from filtergraft.data import DATASETS, cifar_like_datasets, describe_loader, image_folder_datasets, make_loaders
from filtergraft.engine import LRSchedule, Trainer, evaluate, resolve_device, sgd
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.models.stripe_resnet import StripeResNet18, StripeResNet56
from filtergraft.models.stripe_vgg import StripeVGG
from filtergraft.rng import seed_everything
from filtergraft.session import SINGLE_RUN_FILES, Session
from filtergraft.stripe import (FilterStripe, choose_modes, count_flops, count_params, export_pruned, prune,
                                stripe_flops, threshold_skeleton, update_skeleton)

ARCHS = {"VGG": StripeVGG, "ResNet56": StripeResNet56, "ResNet18": StripeResNet18}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Stripe-wise pruning with a learnable Filter Skeleton")
    parser.add_argument("--arch", choices=ARCHS, default="VGG")
    parser.add_argument("--dataset", choices=(*DATASETS, "imagefolder"), default="cifar",
                        help="cifar, digits, fake, or imagefolder (--data_path holds train/ and val/)")
    parser.add_argument("--data_path", default="../data")
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch-size", type=cli.positive(int), default=64)
    parser.add_argument("--epochs", type=cli.positive(int), default=160)
    parser.add_argument("--lr", type=cli.positive(float), default=0.1, help="×0.1 at 50 %% and 75 %% of the epochs")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--save", default="checkpoint/stripe", help="output directory")
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
    return parser.parse_args(argv)


def check_args(args):
    if (args.sr is None) != (args.threshold is None):
        raise UserError("--sr and --threshold go together: give both to prune, neither for the baseline")
    if args.sr is not None and (args.sr < 0 or args.threshold < 0):
        raise UserError(f"--sr and --threshold must be non-negative, not {args.sr} and {args.threshold}")
    if args.num_classes < 2:
        raise UserError(f"--num_classes must be at least 2, not {args.num_classes}")


def datasets_for(args):
    if args.dataset == "imagefolder":
        train_set, test_set = image_folder_datasets(args.data_path, args.crop_size, args.resize_size)
        if len(train_set.classes) != args.num_classes:
            raise UserError(f"{args.data_path} has {len(train_set.classes)} classes; pass --num_classes "
                            f"{len(train_set.classes)}")
        return train_set, test_set
    return cifar_like_datasets(args.dataset, args.data_path, args.num_classes)


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


def prune_best(args, trainer, session, input_size):
    """Load the best checkpoint, prune it, check and time it, and write pruned.pth.tar, prune.json and pruned.pt2."""
    model = trainer.model
    model.load_state_dict(state_dict_of(load_checkpoint(session.best_path, "best checkpoint")))
    if args.threshold is not None:
        threshold_skeleton(model, args.threshold)
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
    atomic_save({"model": pruned, "net": pruned.state_dict(), "arch": args.arch, "num_classes": args.num_classes,
                 "acc": acc_pruned}, session.root / "pruned.pth.tar")
    (session.root / "prune.json").write_text(json.dumps(report, indent=1))
    export_pruned(pruned, session.root / "pruned.pt2", example)
    session.log(f"parameters {report['params']:,} -> {report['params_pruned']:,} "
                f"(-{report['params_reduction']:.2f}%), FLOPs {report['flops']:,} -> {report['flops_pruned']:,} "
                f"(-{report['flops_reduction']:.2f}%)")
    session.log(f"accuracy {report['acc']:.2f}% masked, {acc_pruned:.2f}% stripe-wise; "
                f"{modes['stripe']} layers stripe-wise, {modes['dense']} dense; files in {session.root}")


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    device = resolve_device(args.device)
    speed = cli.speed_options(args, device)
    if args.seed is not None:
        seed_everything(args.seed)
    train_set, test_set = datasets_for(args)
    config = {"script": "stripe_pruning", "arch": args.arch, "dataset": args.dataset, "num_classes": args.num_classes,
              "sr": args.sr, "threshold": args.threshold, "freeze_weights": args.freeze_weights}
    session = Session(args.save, SINGLE_RUN_FILES, config=config, resume=args.resume,
                      details={"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size})
    model = ARCHS[args.arch](num_classes=args.num_classes).to(device)
    if args.freeze_weights:
        freeze_conv_weights(model)
    train_loader, test_loader, generator = make_loaders(
        train_set, test_set, args.batch_size, args.workers, args.seed, pin_memory=device.type == "cuda",
        loader=args.loader, device=device)
    milestones = [m for m in (args.epochs // 2, args.epochs * 3 // 4) if m > 0]  # none before the first epoch
    schedule = LRSchedule(args.epochs, len(train_loader), milestones=milestones)
    after_backward = None if args.sr is None else functools.partial(
        update_skeleton, sr=args.sr, threshold=args.threshold)
    trainer = Trainer(model, sgd(model, args.lr, args.momentum, args.weight_decay), train_loader, test_loader,
                      session, device=device, epochs=args.epochs, schedule=schedule, print_freq=args.print_freq,
                      after_backward=after_backward, generator=generator,
                      meta={"arch": args.arch, "num_classes": args.num_classes}, **speed)
    method = "baseline" if args.sr is None else f"sr {args.sr:g}, threshold {args.threshold:g}"
    frozen = ", conv weights frozen" if args.freeze_weights else ""
    session.log(f"{args.arch} on {args.dataset} ({args.num_classes} classes), {method}{frozen}, device {device}, "
                f"{describe_loader(train_loader)} data pipeline")
    if args.resume:
        trainer.resume()
    trainer.fit(functools.partial(kept_stripes, model, args.threshold))
    input_size = tuple(next(iter(test_loader))[0].shape[1:])
    prune_best(args, trainer, session, input_size)
    session.close()


if __name__ == "__main__":
    with exit_on_user_error("main.py"):
        main()
