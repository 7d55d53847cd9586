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
from filtergraft.distill import DistillationLoss, load_teachers
from filtergraft.engine import cross_entropy_loss
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.models import create_model, model_names
from filtergraft.runner import failures_announced, run_network


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Grafting+ on CIFAR (one student of the ring, with teachers)")
    parser.add_argument("--arch", default="resnet32", help=f"student: one of {', '.join(model_names())}")
    parser.add_argument("--num_classes", type=int, default=100, help="10 or 100 (CIFAR-10 / CIFAR-100)")
    parser.add_argument("--teacher_arch", nargs="+", default=[], metavar="ARCH",
                        help="architecture of each teacher (none: plain grafting)")
    parser.add_argument("--teacher_dir", nargs="+", default=[], metavar="CHECKPOINT",
                        help="checkpoint of each teacher, in the order of --teacher_arch (e.g. a best_1.t7)")
    parser.add_argument("--T", type=cli.positive(float), default=2.0, help="distillation temperature")
    cli.add_cifar_training_flags(parser)
    cli.add_grafting_flags(parser)
    cli.add_speed_flags(parser)
    return parser.parse_args(argv)


def check_args(args):
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
    teacher_record = [{"arch": arch, "checkpoint": os.path.abspath(path)}
                      for arch, path in zip(args.teacher_arch, args.teacher_dir)]
    config = {"script": "grafting_plus", "teachers": teacher_record, "T": args.T if teachers else None}

    def loss_for_device(device):
        if not teachers:
            return cross_entropy_loss
        memory_format = torch.channels_last if args.channels_last else torch.preserve_format
        return DistillationLoss([t.to(device, memory_format=memory_format) for t, _ in teachers], args.T)

    trainer, settings = cli.cifar_network(args, args.arch, args.num_classes, config, loss_for_device)
    session = trainer.session
    for record, (_, acc) in zip(teacher_record, teachers):
        recorded = "unknown" if acc is None else f"{acc:.2f}%"
        session.log(f"teacher {record['arch']} from {record['checkpoint']} (recorded test accuracy {recorded}), "
                    f"T = {args.T:g}")
    run_network(trainer, settings, resume=args.resume, arch=args.arch)


if __name__ == "__main__":
    with exit_on_user_error("grafting+.py"):
        main()
