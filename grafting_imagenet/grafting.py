"""Filter grafting on ImageNet (or any ImageFolder) with torchvision architectures: one network of a
grafting session (--num 1 trains the baseline). Flags follow pytorch/examples' imagenet/main.py.

    python grafting_imagenet/grafting.py --data /data/imagenet -a resnet18 --num 2 --i 1 --s runs/r18
    python grafting_imagenet/grafting.py --data /data/imagenet -a resnet18 -e --resume runs/r18/best_1.t7
"""
from pathlib import Path

import torch

from filtergraft import cli
from filtergraft.assembly import build_trainer, network_seed, run_loaders, speed_options
from filtergraft.checkpoint import load_matching, state_dict_of
from filtergraft.data import image_folder_datasets
from filtergraft.engine import evaluate, resolve_device
from filtergraft.errors import UserError, exit_on_user_error
from filtergraft.models.imagenet import (CROP_SIZE, RESIZE_SIZE, check_arch, crop_sizes, imagenet_model,
                                         pretrained_weights)
from filtergraft.record import RunRecord
from filtergraft.runner import running_network, run_network
from filtergraft.session import network_files, read_jsonl

SCRIPT = "grafting_imagenet"
TOPK = (1, 5)
# pytorch/examples' imagenet/main.py defaults, which the release kept.
TRAINING = {"batch_size": 256, "momentum": 0.9, "weight_decay": 1e-4, "workers": 4, "print_freq": 10}


def build_parser():
    parser = cli.script_parser(__doc__)
    parser.add_argument("--data", default="imagenet", metavar="DIR", help="folder with train/ and val/ class folders")
    parser.add_argument("-a", "--arch", default="resnet18", metavar="ARCH",
                        help="any torchvision classification model")
    parser.add_argument("--epochs", type=int, default=90, help="epochs to train")
    parser.add_argument("--start-epoch", type=int, default=None,
                        help="begin at this epoch, schedule included (with --resume: must be the checkpoint's next)")
    parser.add_argument("--lr", "--learning-rate", type=cli.positive(float), default=0.1, help="initial learning rate")
    cli.add_training_flags(parser, **TRAINING)
    parser.add_argument("--resume", nargs="?", const="last", default=None, metavar="PATH",
                        help="continue from PATH, or with no PATH (or 'last') from the session's last_<i>.t7")
    parser.add_argument("-e", "--evaluate", action="store_true",
                        help="only evaluate the --resume or --pretrained weights on val/: top-1 and top-5")
    parser.add_argument("--pretrained", action="store_true",
                        help="start from torchvision's default weights (must already be in the torch hub cache)")
    parser.add_argument("--gpu", dest="device", type=cli.gpu_device, default=None,
                        help="GPU id (default: the first GPU, else the CPU)")
    parser.add_argument("--steplr", dest="cos", action="store_false",
                        help="×0.1 every --lr-step epochs (the release's baseline script) instead of the grafting "
                             "script's per-iteration cosine (the default; --cos is accepted)")
    parser.add_argument("--lr-step", type=cli.positive(int), default=30, help="--steplr: ×0.1 every N epochs")
    parser.add_argument("--crop-size", type=cli.positive(int), default=None,
                        help=f"training and evaluation crop (default {CROP_SIZE}, or the pretrained weights')")
    parser.add_argument("--resize-size", type=cli.positive(int), default=None,
                        help=f"evaluation resize before the centre crop (default {RESIZE_SIZE}, or the weights')")
    cli.add_grafting_flags(parser, resume_flag=False)
    cli.add_speed_flags(parser)
    cli.add_logging_flags(parser)
    parser.set_defaults(session_dir="checkpoint/grafting_imagenet", dataset="imagefolder", cos=True)
    return parser


def starting_weights(record):
    """The pretrained weights (or None), checked against --resume, and the crop sizes they imply."""
    check_arch(record.arch)
    if record.pretrained and record.resume is not None:
        raise UserError("--pretrained and --resume both give the starting weights; use one of them")
    weights = pretrained_weights(record.arch) if record.pretrained else None
    record.crop_size, record.resize_size = crop_sizes(record.crop_size, record.resize_size, weights)
    return weights


def evaluate_only(record):
    """-e: top-1 and top-5 of the --resume or --pretrained weights on val/."""
    cli.check_training(record)
    weights = starting_weights(record)
    device = resolve_device(record.device)
    speed = speed_options(record, device)
    _, val_set = image_folder_datasets(record.data, record.crop_size, record.resize_size)
    num_classes = len(val_set.classes)
    model = imagenet_model(record.arch, num_classes, record.crop_size, weights)
    path = None
    if record.resume is not None:
        path = Path(record.session_dir) / network_files(record.index).last if record.resume == "last" else Path(record.resume)
    elif not record.pretrained:
        raise UserError("-e evaluates given weights: add --resume PATH (a best_<i>.t7 or last_<i>.t7) or --pretrained")
    if path is not None:
        meta = {"arch": record.arch, "num_classes": num_classes}
        model.load_state_dict(state_dict_of(load_matching(path, model, meta, False, f"--resume {path}"), path))
    memory_format = torch.channels_last if speed["channels_last"] else torch.contiguous_format
    model.to(device, memory_format=memory_format)
    _, val_loader, _ = run_loaders(record, val_set, val_set, None, device)
    result = evaluate(model, val_loader, device, tuple(k for k in TOPK if k <= num_classes), amp=speed["amp"],
                      memory_format=memory_format)
    top5 = f" top-5 {result['test_acc5']:.2f}%" if "test_acc5" in result else ""
    print(f"{record.arch} {path or 'pretrained'} on {record.data}/val ({len(val_set)} images): loss "
          f"{result['test_loss']:.4f} top-1 {result['test_acc']:.2f}%{top5}", flush=True)


def train(record):
    weights = starting_weights(record)
    trainer = build_trainer(
        record, datasets=lambda: image_folder_datasets(record.data, record.crop_size, record.resize_size),
        build_model=lambda num_classes: imagenet_model(record.arch, num_classes, record.crop_size, weights),
        files=network_files(record.index), seed=network_seed(record), topk=TOPK,
        describe=f"crop {record.crop_size}" + (f", {weights}" if weights is not None else ""))
    run_network(trainer, record)
    if record.rank:
        return  # the network's leader writes its metrics and says how it ended
    last = read_jsonl(trainer.session.metrics_path)[-1]
    top5 = f" top-5 {last['test_acc5']:.2f}%" if "test_acc5" in last else ""
    print(f"network {record.index}: epoch {last['epoch']} top-1 {last['test_acc']:.2f}%{top5} "
          f"(best top-1 {trainer.best_acc:.2f}%)", flush=True)


def run(args):
    if args.evaluate:
        return evaluate_only(RunRecord.from_flags(SCRIPT, args))
    record = cli.grafting_record(args, SCRIPT)
    with running_network(record):
        train(record)


def main(argv=None):
    return cli.run(build_parser(), run, argv)


if __name__ == "__main__":
    with exit_on_user_error("grafting.py"):
        main()
