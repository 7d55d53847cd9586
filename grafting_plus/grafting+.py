"""Grafting+ on CIFAR: one student of a grafting session that also learns from trained teachers.

Students graft among themselves exactly as grafting_cifar/grafting.py; each also minimises
CE(student, y) + T²·CE(p̄_teacher(T), p_student(T)) against the average of the teachers' softened outputs.
Without --teacher_arch it is plain grafting (--num 1: the baseline). --pack trains the students together
in one process, each with the teachers' targets of its own batches.

    python grafting_plus/grafting+.py --arch resnet32 --num_classes 100 --num 2 --i 1 --s runs/gp \\
        --teacher_arch resnet56 --teacher_dir runs/teacher/best_1.t7
"""
import os

import torch

from filtergraft import cli
from filtergraft.assembly import check_cifar_network, cifar_trainer
from filtergraft.distill import DistillationLoss, load_teachers
from filtergraft.errors import exit_on_user_error
from filtergraft.models import model_names
from filtergraft.pack import run_networks
from filtergraft.runner import running_network

GRAFTING_PLUS_C = 10.0  # the grafting+ release's --c (SPEC §4), not the grafting paper's 500


def build_parser():
    parser = cli.script_parser(__doc__)
    parser.add_argument("--arch", default="resnet32", help=f"student: one of {', '.join(model_names())}")
    parser.add_argument("--num_classes", type=int, default=100, help="10 or 100 (CIFAR-10 / CIFAR-100)")
    parser.add_argument("--teacher_arch", nargs="+", default=[], metavar="ARCH",
                        help="architecture of each teacher (none: plain grafting)")
    parser.add_argument("--teacher_dir", nargs="+", default=[], metavar="CHECKPOINT",
                        help="checkpoint of each teacher, in the order of --teacher_arch (e.g. a best_1.t7)")
    parser.add_argument("--T", type=cli.positive(float), default=2.0, help="distillation temperature")
    cli.add_cifar_training_flags(parser)
    cli.add_grafting_flags(parser)
    cli.add_pack_flags(parser)
    cli.add_speed_flags(parser)
    cli.add_logging_flags(parser)
    parser.set_defaults(c=GRAFTING_PLUS_C)
    return parser


def run(args):
    record = cli.grafting_record(args, "grafting_plus")
    check_cifar_network(record)
    # Teachers are checked before anything is written (every network of a ring gets the same teacher flags
    # and refuses them alike), and built before seeding: a student's initialisation does not depend on them.
    teachers = load_teachers(args.teacher_arch, args.teacher_dir, record.num_classes)
    record.teachers = [{"arch": arch, "checkpoint": os.path.abspath(path)}
                       for arch, path in zip(args.teacher_arch, args.teacher_dir)]
    record.T = args.T if teachers else None

    def loss_for_device(device):
        memory_format = torch.channels_last if record.channels_last else torch.preserve_format
        return DistillationLoss([t.to(device, memory_format=memory_format) for t, _ in teachers], record.T)

    def student(member):
        trainer = cifar_trainer(member, loss_for_device if teachers else None)
        for teacher, (_, acc) in zip(record.teachers, teachers):
            recorded = "unknown" if acc is None else f"{acc:.2f}%"
            trainer.session.log(f"teacher {teacher['arch']} from {teacher['checkpoint']} (recorded test accuracy "
                                f"{recorded}), T = {record.T:g}")
        return trainer

    with running_network(record):
        run_networks(record, student)


def main(argv=None):
    return cli.run(build_parser(), run, argv)


if __name__ == "__main__":
    with exit_on_user_error("grafting+.py"):
        main()
