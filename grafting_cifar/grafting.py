"""Filter grafting on CIFAR-10/100: one network of a grafting session (--num 1 trains the baseline), or with
--pack the whole ring (or --members of it) in this one process.

    python grafting_cifar/grafting.py --model resnet56 --cifar 10 --num 2 --i 1 --s runs/r56
    python grafting_cifar/grafting.py --model resnet56 --cifar 10 --num 6 --pack --s runs/r56x6
"""
from filtergraft import cli
from filtergraft.assembly import check_cifar_network, cifar_trainer
from filtergraft.errors import exit_on_user_error
from filtergraft.models import model_names
from filtergraft.pack import run_networks
from filtergraft.runner import running_network


def build_parser():
    parser = cli.script_parser(__doc__)
    cli.add_cifar_training_flags(parser)
    parser.add_argument("--model", dest="arch", default="resnet32", help=f"one of: {', '.join(model_names())}")
    parser.add_argument("--cifar", dest="num_classes", type=int, default=10, help="10 or 100 classes")
    cli.add_grafting_flags(parser)
    cli.add_pack_flags(parser)
    cli.add_speed_flags(parser)
    cli.add_logging_flags(parser)
    return parser


def run(args):
    record = cli.grafting_record(args, "grafting_cifar")
    with running_network(record):
        check_cifar_network(record)
        run_networks(record, cifar_trainer)


def main(argv=None):
    return cli.run(build_parser(), run, argv)


if __name__ == "__main__":
    with exit_on_user_error("grafting.py"):
        main()
