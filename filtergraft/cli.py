"""Command-line pieces shared by the method scripts: the grafting and speed flags, their checks, and the
wiring from parsed flags to a ready Trainer for the CIFAR-style scripts."""
import argparse
import os

import torch

from .dist_exchange import torchrun_rank
from .data import DATASETS, LOADERS, cifar_like_datasets, describe_loader, make_loaders
from .engine import LRSchedule, Trainer, cross_entropy_loss, difflr, every, resolve_device, sgd
from .errors import UserError
from .models import create_model
from .rng import seed_everything
from .session import Session, network_files
from .runner import EXCHANGES, LEVELS, SOURCES, GraftSettings


def add_cifar_training_flags(parser):
    """The training flags of the CIFAR-style scripts (grafting_cifar, grafting_plus)."""
    parser.add_argument("--lr", type=positive(float), default=0.1, help="initial learning rate")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=positive(int), default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--data", default="../data", help="CIFAR root directory")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar",
                        help="cifar, digits (scikit-learn's, offline) or fake (tests)")
    parser.add_argument("--workers", "-j", type=int, default=2, help="data loading processes")
    parser.add_argument("--print_frequence", type=positive(int), default=50, help="batches between log lines")
    parser.add_argument("--lr-step", type=positive(int), default=60, help="step schedule: ×0.1 every N epochs")


def add_grafting_flags(parser, resume_flag=True):
    """The flags every grafting script has (SPEC §6)."""
    g = parser.add_argument_group("grafting")
    g.add_argument("--s", default="checkpoint/grafting", metavar="DIR", help="session directory")
    g.add_argument("--num", type=int, default=1, help="number of networks in the ring (1: baseline)")
    g.add_argument("--i", type=int, default=1, help="index of this network, 1..num (--exchange dist: RANK + 1)")
    g.add_argument("--a", type=float, default=0.4, help="A in α = (A/π)·arctan(c·ΔH) + 0.5")
    g.add_argument("--c", type=float, default=500.0, help="c in α = (A/π)·arctan(c·ΔH) + 0.5")
    g.add_argument("--cos", action="store_true", help="cosine learning rate, annealed every iteration")
    g.add_argument("--difflr", action="store_true",
                   help="network i starts at lr·(1 + cos(π·(num − i)/num))/2 instead of lr")
    g.add_argument("--level", choices=LEVELS, default="layer", help="graft whole layers or single filters")
    g.add_argument("--criterion", choices=("entropy", "l1"), default="entropy", help="information of a layer")
    g.add_argument("--source", choices=SOURCES, default="external",
                   help="scion: the previous network (external), Gaussian noise, or the network itself")
    g.add_argument("--noise-decay", type=float, default=0.9,
                   help="noise source: σ_t = noise_decay^epoch, 0 < noise_decay < 1")
    g.add_argument("--invalid-threshold", type=float, default=0.1,
                   help="noise/internal sources: a filter with L1 norm below this is invalid")
    g.add_argument("--graft-timeout", type=float, default=7200.0,
                   help="seconds to wait for the previous network's weights before giving up")
    g.add_argument("--heartbeat-timeout", type=float, default=30.0,
                   help="seconds without a heartbeat after which a network on another host counts as dead")
    g.add_argument("--exchange", choices=EXCHANGES, default="file",
                   help="how the networks swap weights: files in <s>/exchange (one shared filesystem), or "
                        "torch.distributed under torchrun (--i and --num from RANK and WORLD_SIZE)")
    g.add_argument("--seed", type=int, default=None, help="network i uses seed + i")
    if resume_flag:
        g.add_argument("--resume", action="store_true", help="continue from the session's last_<i>.t7")
    return g


def positive(kind):
    """An argparse type: a number of `kind` that must be > 0."""
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value
    return parse


def _networks_from_torchrun(args):
    """--exchange dist: torchrun numbers the networks, rank r is network r + 1 of WORLD_SIZE; with several
    visible GPUs and no --device, network r uses GPU LOCAL_RANK."""
    rank, world = torchrun_rank()
    if args.num != world:
        raise UserError(f"--num {args.num} does not match the {world} processes torchrun started (WORLD_SIZE); "
                        f"pass --num {world}")
    args.i = rank + 1
    if getattr(args, "device", "") is None and torch.cuda.device_count() > 1:
        args.device = f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"


def graft_settings(args):
    """GraftSettings from parsed flags, after checking them."""
    if args.exchange == "dist":
        _networks_from_torchrun(args)
    if args.num < 1:
        raise UserError(f"--num must be at least 1, not {args.num}")
    if not 1 <= args.i <= args.num:
        raise UserError(f"--i must be between 1 and --num ({args.num}), not {args.i}")
    if args.level == "filter" and args.num < 2:
        raise UserError("--level filter grafts between networks; use --num 2 or more")
    if not 0 < args.noise_decay < 1:
        raise UserError(f"--noise-decay must be between 0 and 1, not {args.noise_decay}")
    if args.graft_timeout <= 0 or args.heartbeat_timeout <= 0:
        raise UserError("--graft-timeout and --heartbeat-timeout must be positive")
    return GraftSettings(index=args.i, num=args.num, a=args.a, c=args.c, level=args.level,
                         criterion=args.criterion, source=args.source, noise_decay=args.noise_decay,
                         invalid_threshold=args.invalid_threshold, timeout=args.graft_timeout,
                         heartbeat_timeout=args.heartbeat_timeout, exchange=args.exchange)


def network_seed(args):
    """Network i's seed: --seed + i, or None for a fresh random one."""
    return None if args.seed is None else args.seed + args.i


def add_speed_flags(parser):
    """Flags that change how fast a network trains, not what it learns."""
    g = parser.add_argument_group("speed")
    g.add_argument("--loader", choices=LOADERS, default="auto",
                   help="data pipeline: torchvision transforms in DataLoader workers (torch), or the whole "
                        "dataset on the device with batched augmentation (tensor); auto: tensor for in-memory data")
    g.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA only; off keeps fp32 as the papers)")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (backend: inductor when not named; e.g. aot_eager, cudagraphs)")
    return g


def speed_options(args, device):
    """Trainer keyword arguments for the speed flags, checked against the device."""
    if args.amp and device.type != "cuda":
        raise UserError("--amp (bfloat16 autocast) needs a CUDA device; drop --amp on the CPU")
    if args.compile is not None:
        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.compile not in backends:
            raise UserError(f"--compile {args.compile}: unknown backend; choose one of: {', '.join(backends)}")
    return {"amp": args.amp, "channels_last": args.channels_last, "compile": args.compile}


def cifar_network(args, arch, num_classes, config, loss_for_device=None):
    """Network --i of a CIFAR-style grafting session from its flags: seeds, data, the session directory
    (recording `config` beside the grafting settings), model, loaders, learning rate and schedule.
    `loss_for_device(device)` gives the training objective (plain cross entropy by default).
    Returns (trainer, graft settings)."""
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}")
    settings = graft_settings(args)
    device = resolve_device(args.device)
    speed = speed_options(args, device)
    seed = network_seed(args)
    if seed is not None:
        seed_everything(seed)
    train_set, test_set = cifar_like_datasets(args.dataset, args.data, num_classes)
    config = {"model": arch, "num": args.num, "num_classes": num_classes, "dataset": args.dataset,
              "level": args.level, "criterion": args.criterion, "source": args.source, "difflr": args.difflr,
              "cos": args.cos, **config}
    details = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "a": args.a, "c": args.c}
    session = Session(args.s, network_files(args.i), config=config, resume=args.resume, details=details)
    model = create_model(arch, num_classes).to(device)
    train_loader, test_loader, generator = make_loaders(
        train_set, test_set, args.batch_size, args.workers, seed, pin_memory=device.type == "cuda",
        loader=args.loader, device=device)
    lr = difflr(args.lr, args.i, args.num) if args.difflr else args.lr
    schedule = LRSchedule(args.epochs, len(train_loader), cosine=args.cos, milestones=every(args.lr_step, args.epochs))
    loss_fn = loss_for_device(device) if loss_for_device is not None else cross_entropy_loss
    trainer = Trainer(model, sgd(model, lr), train_loader, test_loader, session, device=device,
                      epochs=args.epochs, schedule=schedule, loss_fn=loss_fn, print_freq=args.print_frequence,
                      generator=generator, meta={"arch": arch, "num_classes": num_classes}, **speed)
    session.log(f"{arch} on {args.dataset} ({num_classes} classes), network {args.i}/{args.num}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, lr {lr:g}, device {device}, "
                f"{describe_loader(train_loader)} data pipeline, torch {torch.__version__}")
    return trainer, settings
