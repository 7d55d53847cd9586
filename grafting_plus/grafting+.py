"""Grafting+ on CIFAR: one student of a grafting session that also learns from trained teachers.

Students graft among themselves exactly as grafting_cifar/grafting.py; each also minimises
CE(student, y) + T²·CE(p̄_teacher(T), p_student(T)) against the average of the teachers' softened outputs.
Without --teacher_arch it is plain grafting (--num 1: the baseline).

    python grafting_plus/grafting+.py --arch resnet32 --num_classes 100 --num 2 --i 1 --s runs/gp \\
        --teacher_arch resnet56 --teacher_dir runs/teacher/best_1.t7
"""
import argparse
import os

import torch

from filtergraft import cli
from filtergraft.data import DATASETS, cifar_like_datasets, describe_loader, make_loaders
from filtergraft.distill import DistillationLoss, load_teachers
from filtergraft.engine import LRSchedule, Trainer, cross_entropy_loss, difflr, every, resolve_device, sgd
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.models import create_model, model_names
from filtergraft.rng import seed_everything
from filtergraft.runner import failures_announced, run_network
from filtergraft.session import Session, network_files


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Grafting+ on CIFAR (one student of the ring, with teachers)")
    parser.add_argument("--arch", default="resnet32", help=f"student: one of {', '.join(model_names())}")
    parser.add_argument("--num_classes", type=int, default=100, help="10 or 100 (CIFAR-10 / CIFAR-100)")
    parser.add_argument("--teacher_arch", nargs="+", default=[], metavar="ARCH",
                        help="architecture of each teacher (none: plain grafting)")
    parser.add_argument("--teacher_dir", nargs="+", default=[], metavar="CHECKPOINT",
                        help="checkpoint of each teacher, in the order of --teacher_arch (e.g. a best_1.t7)")
    parser.add_argument("--T", type=cli.positive(float), default=2.0, help="distillation temperature")
    parser.add_argument("--lr", type=cli.positive(float), default=0.1, help="initial learning rate")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=cli.positive(int), default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--data", default="../data", help="CIFAR root directory")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar",
                        help="cifar, digits (scikit-learn's, offline) or fake (tests)")
    parser.add_argument("--workers", "-j", type=int, default=2, help="data loading processes")
    parser.add_argument("--print_frequence", type=cli.positive(int), default=50, help="batches between log lines")
    parser.add_argument("--lr-step", type=cli.positive(int), default=60, help="step schedule: ×0.1 every N epochs")
    cli.add_grafting_flags(parser)
    cli.add_speed_flags(parser)
    return parser.parse_args(argv)


def check_args(args):
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}")
    if args.num_classes not in (10, 100):
        raise UserError(f"--num_classes must be 10 or 100, not {args.num_classes}")
    if args.dataset == "digits" and args.num_classes != 10:
        raise UserError("the digits dataset has 10 classes; use --num_classes 10 with --dataset digits")
    if args.arch not in model_names():
        create_model(args.arch)  # raises the error listing the valid names


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    # Teachers are checked before anything is written (every network of a ring gets the same teacher flags
    # and refuses them alike), and built before seeding: a student's initialisation does not depend on them.
    teachers = load_teachers(args.teacher_arch, args.teacher_dir, args.num_classes)
    with failures_announced(args):
        train(args, teachers)


def train(args, teachers):
    """Train student --i of the session; `teachers` are the frozen (model, recorded accuracy) pairs."""
    settings = cli.graft_settings(args)
    device = resolve_device(args.device)
    speed = cli.speed_options(args, device)
    seed = cli.network_seed(args)
    if seed is not None:
        seed_everything(seed)
    train_set, test_set = cifar_like_datasets(args.dataset, args.data, args.num_classes)
    teacher_record = [{"arch": arch, "checkpoint": os.path.abspath(path)}
                      for arch, path in zip(args.teacher_arch, args.teacher_dir)]
    config = {"script": "grafting_plus", "model": args.arch, "num": args.num, "num_classes": args.num_classes,
              "dataset": args.dataset, "level": args.level, "criterion": args.criterion, "source": args.source,
              "difflr": args.difflr, "cos": args.cos, "teachers": teacher_record,
              "T": args.T if teachers else None}
    details = {"epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size, "a": args.a, "c": args.c}
    session = Session(args.s, network_files(args.i), config=config, resume=args.resume, details=details)
    model = create_model(args.arch, args.num_classes).to(device)
    train_loader, test_loader, generator = make_loaders(
        train_set, test_set, args.batch_size, args.workers, seed, pin_memory=device.type == "cuda",
        loader=args.loader, device=device)
    lr = difflr(args.lr, args.i, args.num) if args.difflr else args.lr
    schedule = LRSchedule(args.epochs, len(train_loader), cosine=args.cos, milestones=every(args.lr_step, args.epochs))
    teacher_models = [teacher.to(device) for teacher, _ in teachers]
    if args.channels_last:
        for teacher in teacher_models:
            teacher.to(memory_format=torch.channels_last)
    loss_fn = DistillationLoss(teacher_models, args.T) if teachers else cross_entropy_loss
    meta = {"arch": args.arch, "num_classes": args.num_classes}
    trainer = Trainer(model, sgd(model, lr), train_loader, test_loader, session, device=device,
                      epochs=args.epochs, schedule=schedule, loss_fn=loss_fn, print_freq=args.print_frequence,
                      generator=generator, meta=meta, **speed)
    session.log(f"{args.arch} on {args.dataset} ({args.num_classes} classes), student {args.i}/{args.num}, "
                f"{sum(p.numel() for p in model.parameters()):,} parameters, lr {lr:g}, device {device}, "
                f"{describe_loader(train_loader)} data pipeline, torch {torch.__version__}")
    for record, (_, acc) in zip(teacher_record, teachers):
        recorded = "unknown" if acc is None else f"{acc:.2f}%"
        session.log(f"teacher {record['arch']} from {record['checkpoint']} (recorded test accuracy {recorded}), "
                    f"T = {args.T:g}")
    run_network(trainer, settings, resume=args.resume, arch=args.arch)


if __name__ == "__main__":
    with exit_on_user_error("grafting+.py"):
        main()
