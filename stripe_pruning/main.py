"""Stripe-wise pruning (Pruning Filter in Filter): train with a Filter Skeleton, prune, run stripe-wise.

    python stripe_pruning/main.py --arch VGG --sr 1e-5 --threshold 0.01 --save runs/vgg_sr    # pruned
    python stripe_pruning/main.py --arch ResNet56 --save runs/r56_base                       # baseline
    python stripe_pruning/main.py --arch VGG --evaluate release_vgg.pth --threshold 0.01 --save runs/vgg_rel

After training it loads the best checkpoint, removes the pruned stripes, filters and blocks, evaluates the
stripe-wise network, and writes into --save: metrics.jsonl, best.pth.tar, pruned.pth.tar, prune.json and
pruned.pt2 (torch.export, dynamic batch size: torch.export.load(path).module()(x), no project code needed).
--evaluate CHECKPOINT skips training: this project's best.pth.tar or a state dict saved by the release is
loaded, evaluated, pruned at --threshold (as it stands without one) and written the same way.
stripe_pruning/prune.py prunes a trained checkpoint further: other thresholds, a FLOPs or parameter budget,
a sweep, BatchNorm recalibration and finetuning.
"""
import functools

from filtergraft import cli
from filtergraft.assembly import build_trainer
from filtergraft.checkpoint import load_checkpoint, state_dict_of
from filtergraft.data import DATASETS
from filtergraft.errors import FlagError, UserError, exit_on_user_error
from filtergraft.models import create_model, model_names
from filtergraft.record import RunRecord
from filtergraft.runner import running_network
from filtergraft.session import SINGLE_RUN_FILES
from filtergraft.stripe import update_skeleton
from filtergraft.stripe.job import stripe_datasets
from filtergraft.stripe.report import (PruneData, freeze_conv_weights, freeze_skeletons, kept_stripes,
                                       prune_and_report, prune_checkpoint)
from filtergraft.stripe.tuning import release_milestones

# The release's training defaults.
TRAINING = {"batch_size": 64, "momentum": 0.9, "weight_decay": 1e-4, "workers": 2, "print_freq": 100}


def build_parser():
    parser = cli.script_parser(__doc__)
    parser.add_argument("--arch", choices=model_names("stripe", aliases=True), default="ResNet56",
                        help="the release's VGG, ResNet56, ResNet18, or their registry names")
    parser.add_argument("--dataset", choices=(*DATASETS, "imagefolder"), default="cifar",
                        help="cifar, digits, fake, or imagefolder (--data_path holds train/ and val/)")
    parser.add_argument("--data_path", dest="data", default="../data", help="dataset root directory")
    parser.add_argument("--num_classes", type=int, default=10, help="classes of the dataset")
    parser.add_argument("--epochs", type=cli.positive(int), default=160, help="epochs to train")
    parser.add_argument("--lr", type=cli.positive(float), default=0.1,
                        help="initial learning rate, ×0.1 at 50 %% and 75 %% of the epochs")
    cli.add_training_flags(parser, **TRAINING)
    parser.add_argument("--seed", type=cli.seed, default=1, help="random seed, as the release")
    parser.add_argument("--save", dest="session_dir", default="checkpoint/stripe", help="output directory")
    parser.add_argument("--sr", type=cli.finite, default=None, help="L1 strength on the Filter Skeleton (none: baseline)")
    parser.add_argument("--threshold", type=cli.finite, default=None, help="skeleton entries at or below it are pruned")
    parser.add_argument("--freeze-weights", action="store_true",
                        help="shape only: conv weights stay at their random initialisation; the skeleton, "
                             "BatchNorm and classifier train")
    parser.add_argument("--freeze-skeleton", action="store_true",
                        help="the Filter Skeleton stays at its initial ones; with --freeze-weights, the control "
                             "of the shape-only run: only BatchNorm and the classifier train")
    parser.add_argument("--crop-size", type=cli.positive(int), default=224, help="imagefolder: training crop")
    parser.add_argument("--resize-size", type=cli.positive(int), default=256, help="imagefolder: eval resize")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--resume", action="store_true", help="continue from --save's last.pth.tar")
    parser.add_argument("--evaluate", metavar="CHECKPOINT", default=None,
                        help="no training: load CHECKPOINT (this project's best.pth.tar or a state dict of the "
                             "release), evaluate it, prune it at --threshold and write the files into --save")
    cli.add_speed_flags(parser)
    cli.add_logging_flags(parser)
    return parser


def stripe_record(args):
    """The checked run record: sr and threshold together, the release's ×0.1 steps at 50 % and 75 % of the
    epochs."""
    record = RunRecord.from_flags("stripe_pruning", args)
    cli.check_training(record)
    if record.evaluate is not None:
        trained = [flag for flag, on in (("--sr", record.sr is not None), ("--resume", record.resume),
                                         ("--freeze-weights", record.freeze_weights),
                                         ("--freeze-skeleton", record.freeze_skeleton),
                                         ("--tensorboard", record.tensorboard)) if on]
        if trained:
            raise UserError(f"--evaluate trains nothing: drop {' and '.join(trained)} (--threshold alone "
                            "sets what is pruned)")
    elif record.freeze_skeleton and record.sr is not None:
        raise UserError("--freeze-skeleton keeps the skeleton at 1, where --sr cannot prune it: drop --sr and "
                        "--threshold, or --freeze-skeleton")
    elif (record.sr is None) != (record.threshold is None):
        raise UserError("--sr and --threshold go together: give both to prune, neither for the baseline")
    if (record.sr or 0) < 0 or (record.threshold or 0) < 0:
        raise UserError(f"--sr and --threshold must be non-negative, not {record.sr} and {record.threshold}")
    if record.num_classes < 2:
        raise FlagError("num_classes", f"{{flag}} must be at least 2, not {record.num_classes}")
    if record.evaluate is not None:
        record.epochs = None  # nothing is trained
    else:
        record.milestones = release_milestones(record.epochs)
    return record


def run(args):
    record = stripe_record(args)
    with running_network(record, SINGLE_RUN_FILES):
        if record.evaluate is not None:
            return prune_checkpoint(record, lambda: stripe_datasets(record))
        return train_and_prune(record)


def train_and_prune(record):
    def build_model(num_classes):
        model = create_model(record.arch, num_classes, kind="stripe")
        if record.freeze_weights:
            freeze_conv_weights(model)
        if record.freeze_skeleton:
            freeze_skeletons(model)
        return model

    after_backward = None if record.sr is None else functools.partial(
        update_skeleton, sr=record.sr, threshold=record.threshold)
    method = "baseline" if record.sr is None else f"sr {record.sr:g}, threshold {record.threshold:g}"
    trainer = build_trainer(record, datasets=lambda: stripe_datasets(record), build_model=build_model,
                            files=SINGLE_RUN_FILES, seed=record.seed, after_backward=after_backward,
                            describe=method + "".join(note for note, on in (
                                (", conv weights frozen", record.freeze_weights),
                                (", skeleton frozen", record.freeze_skeleton)) if on))
    session = trainer.session
    # Recorded in best.pth.tar, so that prune.py knows the threshold the skeleton was trained at.
    trainer.meta.update(sr=record.sr, threshold=record.threshold)
    trainer.fit(functools.partial(kept_stripes, trainer.model, record.threshold))
    trainer.model.load_state_dict(state_dict_of(load_checkpoint(session.best_path, "best checkpoint")))
    # The same pruning as stripe_pruning/prune.py --threshold.
    prune_and_report(trainer.model, record.threshold, PruneData(trainer.test_loader, trainer.device), session.root,
                     trainer.meta, session.log)
    session.close()


def main(argv=None):
    return cli.run(build_parser(), run, argv)


if __name__ == "__main__":
    with exit_on_user_error("main.py"):
        main()
