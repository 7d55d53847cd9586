"""Filter grafting on CIFAR-10/100: one network of a grafting session (--num 1 trains the baseline).

    python grafting_cifar/grafting.py --model resnet56 --cifar 10 --num 2 --i 1 --s runs/r56
"""
import argparse

from filtergraft import cli
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.models import create_model, model_names
from filtergraft.runner import failures_announced, run_network


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Filter grafting on CIFAR (one network of the ring)")
    cli.add_cifar_training_flags(parser)
    parser.add_argument("--model", default="resnet32", help=f"one of: {', '.join(model_names())}")
    parser.add_argument("--cifar", type=int, default=10, help="10 or 100 classes")
    cli.add_grafting_flags(parser)
    cli.add_speed_flags(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    with failures_announced(args):
        train(args)


def train(args):
    if args.cifar not in (10, 100):
        raise UserError(f"--cifar must be 10 or 100, not {args.cifar}")
    if args.model not in model_names():
        create_model(args.model)  # raises the error listing the valid names
    trainer, settings = cli.cifar_network(args, args.model, args.cifar, {"script": "grafting_cifar"})
    run_network(trainer, settings, resume=args.resume, arch=args.model)


if __name__ == "__main__":
    with exit_on_user_error("grafting.py"):
        main()
