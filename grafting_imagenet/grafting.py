"""Filter grafting on ImageNet (or any ImageFolder) with torchvision architectures: one network of a
grafting session (--num 1 trains the baseline). Flags follow pytorch/examples' imagenet/main.py.

    python grafting_imagenet/grafting.py --data /data/imagenet -a resnet18 --num 2 --i 1 --s runs/r18
    python grafting_imagenet/grafting.py --data /data/imagenet -a resnet18 -e --resume runs/r18/best_1.t7
"""
import argparse
import os
import pickle
import zipfile
from pathlib import Path
from urllib.parse import urlparse

import torch
import torchvision

from filtergraft import cli
from filtergraft.checkpoint import check_compatible, load_checkpoint, state_dict_of
from filtergraft.data import image_folder_datasets, make_loaders
from filtergraft.engine import LRSchedule, Trainer, difflr, every, resolve_device, sgd
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.rng import seed_everything
from filtergraft.runner import failures_announced, run_network
from filtergraft.session import Session, network_files, read_jsonl

CROP_SIZE, RESIZE_SIZE = 224, 256
# In training mode these return (logits, auxiliary logits...); the papers train the plain network.
AUX_HEADS = ("googlenet", "inception_v3")
# Architectures whose layers are built for one input size, and the constructor argument that sets it.
SIZED = {"vit_": "image_size", "maxvit_": "input_size"}


def arch_names():
    """torchvision's classification models."""
    return torchvision.models.list_models(module=torchvision.models)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Filter grafting on ImageNet (one network of the ring)")
    parser.add_argument("--data", default="imagenet", metavar="DIR", help="folder with train/ and val/ class folders")
    parser.add_argument("-a", "--arch", default="resnet18", metavar="ARCH",
                        help="any torchvision classification model (default: resnet18)")
    parser.add_argument("-j", "--workers", type=int, default=4, help="data loading processes")
    parser.add_argument("--epochs", type=int, default=90)
    parser.add_argument("--start-epoch", type=int, default=None,
                        help="begin at this epoch, schedule included (with --resume: must be the checkpoint's next)")
    parser.add_argument("-b", "--batch-size", type=cli.positive(int), default=256)
    parser.add_argument("--lr", "--learning-rate", type=cli.positive(float), default=0.1, help="initial learning rate")
    parser.add_argument("--momentum", type=float, default=0.9)
    parser.add_argument("--wd", "--weight-decay", type=float, default=1e-4, dest="weight_decay")
    parser.add_argument("-p", "--print-freq", type=cli.positive(int), default=10, help="batches between log lines")
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="PATH",
                        help="continue from PATH, or with no PATH (or 'last') from the session's last_<i>.t7")
    parser.add_argument("-e", "--evaluate", action="store_true",
                        help="only evaluate the --resume or --pretrained weights on val/: top-1 and top-5")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from torchvision's default weights (must already be in the torch hub cache)")
    parser.add_argument("--gpu", type=int, default=None, help="GPU id (default: the first GPU, else the CPU)")
    parser.add_argument("--lr-step", type=cli.positive(int), default=30, help="step schedule: ×0.1 every N epochs")
    parser.add_argument("--crop-size", type=cli.positive(int), default=None,
                        help=f"training and evaluation crop (default {CROP_SIZE}, or the pretrained weights')")
    parser.add_argument("--resize-size", type=cli.positive(int), default=None,
                        help=f"evaluation resize before the centre crop (default {RESIZE_SIZE}, or the weights')")
    cli.add_grafting_flags(parser, resume_flag=False)
    cli.add_speed_flags(parser)
    parser.set_defaults(s="checkpoint/grafting_imagenet")
    return parser.parse_args(argv)


def check_arch(name):
    names = arch_names()
    if name not in names:
        raise UserError(f"unknown --arch '{name}'; torchvision's classification models are: {', '.join(names)}")


def pretrained_weights(arch):
    """torchvision's default weights of `arch`, when their file is already in the local torch hub cache."""
    weights = torchvision.models.get_model_weights(arch).DEFAULT
    path = os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(urlparse(weights.url).path))
    if not os.path.isfile(path):
        raise UserError(f"--pretrained: {weights} is not in the torch hub cache and this run does not download; "
                        f"download {weights.url} to {path} first")
    return weights


def build_model(arch, num_classes, crop_size, weights=None):
    """The torchvision model `arch`: with `weights` (and their classes), or freshly initialised."""
    kwargs = {"aux_logits": False} if arch in AUX_HEADS else {}
    sized = next((arg for prefix, arg in SIZED.items() if arch.startswith(prefix)), None)
    if weights is not None:
        if num_classes != len(weights.meta["categories"]):
            raise UserError(f"--pretrained: {weights} classifies {len(weights.meta['categories'])} classes but "
                            f"--data has {num_classes}; drop --pretrained or use data with those classes")
        expected = weights.transforms().crop_size[0]
        if sized and crop_size != expected:
            raise UserError(f"--pretrained: {arch} with {weights} takes {expected}x{expected} inputs; "
                            f"use --crop-size {expected}")
        try:
            return torchvision.models.get_model(arch, weights=weights, **kwargs)
        except (RuntimeError, OSError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as err:
            raise UserError(f"--pretrained: the cached file of {weights} could not be loaded "
                            f"({str(err).splitlines()[0]}); download it again") from None
    if arch in AUX_HEADS:
        kwargs["init_weights"] = True
    if sized:
        kwargs[sized] = crop_size if sized == "image_size" else (crop_size, crop_size)
    try:
        return torchvision.models.get_model(arch, num_classes=num_classes, **kwargs)
    except (AssertionError, ValueError) as err:
        raise UserError(f"{arch} cannot be built for {num_classes} classes at --crop-size {crop_size}: {err}") from None


def check_input_size(model, arch, crop_size):
    """One forward pass of a blank crop in eval mode (running statistics untouched): a crop too small for
    the architecture is refused with one line before anything is written."""
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, crop_size, crop_size))
    except RuntimeError as err:
        raise UserError(f"{arch} cannot take {crop_size}x{crop_size} inputs ({str(err).splitlines()[0]}); "
                        f"use a larger --crop-size") from None
    finally:
        model.train()


def resume_path(args):
    """The checkpoint --resume names: PATH, or the session's own last_<i>.t7 for 'last'."""
    if args.resume is None:
        return None
    if args.resume == "last":
        return Path(args.s) / network_files(args.i).last
    return Path(args.resume)


def load_weights(path, model, arch, num_classes, resumable):
    """The checkpoint at `path`, refused with one line when it is missing, unreadable, written for another
    architecture or class count, has other tensor shapes, or (when `resumable`) lacks the training state."""
    source = f"--resume {path}"
    state = load_checkpoint(path, "--resume checkpoint")
    if resumable and not (isinstance(state, dict) and {"net", "epoch", "optimizer"} <= set(state)):
        raise UserError(f"{source} is not a resumable checkpoint of this project: training continues from a "
                        f"last_<i>.t7 (best_<i>.t7 and bare state dicts are for -e)")
    for key, value in (("arch", arch), ("num_classes", num_classes)):
        if isinstance(state, dict) and key in state and state[key] != value:
            raise UserError(f"{source} was written for {key}={state[key]!r}, not {value!r}")
    check_compatible(state_dict_of(state, source), model.state_dict(), source)
    return state


def prepare(args):
    """What both training and -e need: the device, speed options, crop sizes, the datasets and the model."""
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}")
    if args.workers < 0:
        raise UserError(f"-j/--workers must be 0 or more, not {args.workers}")
    check_arch(args.arch)
    if args.pretrained and args.resume is not None:
        raise UserError("--pretrained and --resume both give the starting weights; use one of them")
    device = resolve_device(args.device)
    speed = cli.speed_options(args, device)
    weights = pretrained_weights(args.arch) if args.pretrained else None
    transforms = weights.transforms() if weights is not None else None
    crop = args.crop_size or (transforms.crop_size[0] if transforms else CROP_SIZE)
    resize = args.resize_size or (transforms.resize_size[0] if transforms else RESIZE_SIZE)
    train_set, val_set = image_folder_datasets(args.data, crop, resize)
    model = build_model(args.arch, len(train_set.classes), crop, weights)
    if crop != CROP_SIZE:  # every torchvision model takes 224x224; smaller crops may vanish inside some
        check_input_size(model, args.arch, crop)
    return device, speed, weights, (crop, resize), train_set, val_set, model


def evaluate(args):
    """-e: top-1 and top-5 of the --resume or --pretrained weights on val/."""
    device, speed, _, _, _, val_set, model = prepare(args)
    path = resume_path(args)
    if path is None and not args.pretrained:
        raise UserError("-e evaluates given weights: add --resume PATH (a best_<i>.t7 or last_<i>.t7) or --pretrained")
    if path is not None:
        model.load_state_dict(state_dict_of(load_weights(path, model, args.arch, len(val_set.classes), False), path))
    _, val_loader, _ = make_loaders(val_set, val_set, args.batch_size, args.workers,
                                    pin_memory=device.type == "cuda")
    topk = (1, 5) if len(val_set.classes) >= 5 else (1,)
    evaluator = Trainer(model.to(device), sgd(model, args.lr), None, val_loader, None, device=device, epochs=0,
                        schedule=lambda iteration: 1.0, topk=topk, **speed)
    result = evaluator.evaluate()
    top5 = f" top-5 {result['test_acc5']:.2f}%" if "test_acc5" in result else ""
    print(f"{args.arch} {path or 'pretrained'} on {args.data}/val ({len(val_set)} images): loss "
          f"{result['test_loss']:.4f} top-1 {result['test_acc']:.2f}%{top5}", flush=True)


def start_at(trainer, epoch, schedule):
    """--start-epoch without --resume: begin at `epoch` as if epochs 1..epoch−1 had run, learning rate included."""
    done = (epoch - 1) * len(trainer.train_loader)
    trainer.start_epoch = epoch
    trainer.scheduler.last_epoch = done
    for group, base in zip(trainer.optimizer.param_groups, trainer.scheduler.base_lrs):
        group["lr"] = base * schedule(done)


def main(argv=None):
    args = parse_args(argv)
    args.device = None if args.gpu is None else f"cuda:{args.gpu}"
    if args.evaluate:
        return evaluate(args)
    with failures_announced(args):
        train(args)


def train(args):
    settings = cli.graft_settings(args)
    seed = cli.network_seed(args)
    if seed is not None:
        seed_everything(seed)
    device, speed, weights, (crop, resize), train_set, val_set, model = prepare(args)
    num_classes = len(train_set.classes)
    files = network_files(args.i)
    path = resume_path(args)
    own = path is not None and path.resolve() == (Path(args.s) / files.last).resolve()
    if path is not None and not own and (Path(args.s) / files.last).exists():
        raise UserError(f"--resume {path}: {args.s} already holds network {args.i}'s own run ({files.last}); "
                        f"continue that with --resume alone, or choose another --s")
    state = load_weights(path, model, args.arch, num_classes, True) if path is not None else None
    if state is not None:
        if state["epoch"] >= args.epochs:
            raise UserError(f"--resume {path} has finished all {args.epochs} epochs (it is at epoch "
                            f"{state['epoch']}); raise --epochs to train longer")
        if args.start_epoch not in (None, state["epoch"] + 1):
            raise UserError(f"--start-epoch {args.start_epoch} disagrees with --resume {path}, which continues at "
                            f"epoch {state['epoch'] + 1}; drop --start-epoch")
    elif args.start_epoch is not None and not 1 <= args.start_epoch <= args.epochs:
        raise UserError(f"--start-epoch must be between 1 and --epochs ({args.epochs}), not {args.start_epoch}")

    config = {"script": "grafting_imagenet", "arch": args.arch, "num": args.num, "num_classes": num_classes,
              "level": args.level, "criterion": args.criterion, "source": args.source, "difflr": args.difflr,
              "cos": args.cos}
    details = {"data": os.path.abspath(args.data), "epochs": args.epochs, "lr": args.lr,
               "batch_size": args.batch_size, "crop_size": crop, "resize_size": resize, "a": args.a, "c": args.c,
               "pretrained": args.pretrained}
    session = Session(args.s, files, config=config, resume=own, details=details)
    model = model.to(device)
    train_loader, val_loader, generator = make_loaders(
        train_set, val_set, args.batch_size, args.workers, seed, pin_memory=device.type == "cuda",
        loader=args.loader, device=device)
    lr = difflr(args.lr, args.i, args.num) if args.difflr else args.lr
    schedule = LRSchedule(args.epochs, len(train_loader), cosine=args.cos, milestones=every(args.lr_step, args.epochs))
    topk = (1, 5) if num_classes >= 5 else (1,)
    trainer = Trainer(model, sgd(model, lr, args.momentum, args.weight_decay), train_loader, val_loader, session,
                      device=device, epochs=args.epochs, schedule=schedule, print_freq=args.print_freq, topk=topk,
                      generator=generator, meta={"arch": args.arch, "num_classes": num_classes}, **speed)
    session.log(f"{args.arch} on {args.data} ({num_classes} classes, {len(train_set)} train / {len(val_set)} val "
                f"images, crop {crop}), network {args.i}/{args.num}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, lr {lr:g}, device {device}, "
                f"torch {torch.__version__}" + (f", {weights}" if weights is not None else ""))
    if state is not None:
        trainer.resume(state, source=path)
    elif args.start_epoch is not None:
        start_at(trainer, args.start_epoch, schedule)
    run_network(trainer, settings, arch=args.arch)
    last = read_jsonl(session.metrics_path)[-1]
    top5 = f" top-5 {last['test_acc5']:.2f}%" if "test_acc5" in last else ""
    print(f"network {args.i}: epoch {last['epoch']} top-1 {last['test_acc']:.2f}%{top5} "
          f"(best top-1 {trainer.best_acc:.2f}%)", flush=True)


if __name__ == "__main__":
    with exit_on_user_error("grafting.py"):
        main()
