"""Filter grafting on CIFAR-10/100: one network of a grafting session (--num 1 trains the baseline).

    python grafting_cifar/grafting.py --model resnet56 --cifar 10 --num 2 --i 1 --s runs/r56
"""
import argparse

from filtergraft import cli
from filtergraft.data import DATASETS
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.models import create_model, model_names
from filtergraft.runner import failures_announced, run_network


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Filter grafting on CIFAR (one network of the ring)")
    parser.add_argument("--lr", type=cli.positive(float), default=0.1, help="initial learning rate")
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--batch-size", type=cli.positive(int), default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--data", default="../data", help="CIFAR root directory")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar",
                        help="cifar, digits (scikit-learn's, offline) or fake (tests)")
    parser.add_argument("--model", default="resnet32", help=f"one of: {', '.join(model_names())}")
    parser.add_argument("--cifar", type=int, default=10, help="10 or 100 classes")
    parser.add_argument("--workers", "-j", type=int, default=2, help="data loading processes")
    parser.add_argument("--print_frequence", type=cli.positive(int), default=50, help="batches between log lines")
    parser.add_argument("--lr-step", type=cli.positive(int), default=60, help="step schedule: ×0.1 every N epochs")
    cli.add_grafting_flags(parser)
    cli.add_speed_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with failures_announced(args):
        train(args)


def train(args):
    if args.epochs < 1:
        raise UserError(f"--epochs must be at least 1, not {args.epochs}")
    if args.cifar not in (10, 100):
        raise UserError(f"--cifar must be 10 or 100, not {args.cifar}")
    if args.model not in model_names():
        create_model(args.model)  # raises the error listing the valid names
    trainer, settings = cli.cifar_network(args, args.model, args.cifar, {"script": "grafting_cifar"})
    run_network(trainer, settings, resume=args.resume, arch=args.model)


if __name__ == "__main__":
    with exit_on_user_error("grafting.py"):
        main()
