"""stripe_pruning/prune.py's run: a trained stripe checkpoint pruned at a threshold, at the smallest threshold
that meets a FLOPs or parameter budget, or swept over its skeleton's thresholds; and the datasets both stripe
scripts read."""
from pathlib import Path

from ..assembly import run_loaders
from ..data import cifar_like_datasets, image_folder_datasets
from ..engine import resolve_device
from ..errors import FlagError, UserError
from ..logs import close_logger, run_logger
from ..rng import seed_everything
from ..session import PRUNE_LOG
from .budget import check_threshold, require_alive, smallest_threshold
from .checkpoints import trained_stripe_model
from .report import PruneData, Tuning, example_batch, prune_and_report
from .sweep import run_sweep


def stripe_datasets(settings):
    """(train, test) datasets of `settings` (a RunRecord or prune.py's flags: dataset, data, num_classes,
    crop_size, resize_size); an image folder must hold num_classes classes."""
    if settings.dataset == "imagefolder":
        train_set, test_set = image_folder_datasets(settings.data, settings.crop_size, settings.resize_size)
        if len(train_set.classes) != settings.num_classes:
            raise FlagError("num_classes", f"{settings.data} has {len(train_set.classes)} classes; pass {{flag}} "
                                           f"{len(train_set.classes)}")
        return train_set, test_set
    return cifar_like_datasets(settings.dataset, settings.data, settings.num_classes)


def check_flags(args):
    """prune.py's flags that argparse cannot check alone."""
    if args.threshold is not None:
        check_threshold(args.threshold)
    if args.train_threshold is not None:
        check_threshold(args.train_threshold, "train_threshold")
    for field in ("target_flops", "target_params"):
        value = getattr(args, field)
        if value is not None and not 0 < value < 1:
            raise FlagError(field, f"{{flag}} is the fraction removed, between 0 and 1, not {value:g}")
    if args.sweep and args.finetune_epochs:
        raise UserError("--finetune-epochs tunes the one network that is exported; the sweep exports none: "
                        "choose it with --threshold or --target-flops/--target-params, then finetune")


def tuning_of(args):
    """The Tuning (recalibration, finetuning) the flags ask for."""
    return Tuning(bn_batches=args.bn_recalibrate or 0, epochs=args.finetune_epochs or 0, lr=args.finetune_lr,
                  momentum=args.momentum, weight_decay=args.weight_decay, cosine=args.finetune_cos)


def run_prune(args):
    """prune.py with parsed flags `args`: the checkpoint, its architecture and class count, the data and the
    threshold are checked before anything is written into args.save; then one of --sweep, --target-flops /
    --target-params, --threshold (default: the training threshold the checkpoint records)."""
    check_flags(args)
    device = resolve_device(args.device)
    seed_everything(args.seed)
    model, meta = trained_stripe_model(args.checkpoint, args.arch, args.num_classes, f"checkpoint {args.checkpoint}")
    # What the checkpoint records wins; the datasets read the class count from args, as from a RunRecord.
    args.arch, args.num_classes = meta["arch"], meta["num_classes"]
    trained = args.train_threshold if args.train_threshold is not None else meta["threshold"]
    train_set, test_set = stripe_datasets(args)
    train_loader, test_loader, generator = run_loaders(args, train_set, test_set, args.seed, device)
    data = PruneData(test_loader, device, train_loader, generator)
    threshold, target = _chosen_threshold(args, model, trained, example_batch(test_loader)[1])
    directory = Path(args.save)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        logger = run_logger(directory / PRUNE_LOG)
    except OSError as err:
        raise UserError(f"--save {directory}: cannot write there ({err.strerror}); choose another directory") from None
    try:
        log = logger.info
        log(f"{meta['arch']} ({meta['num_classes']} classes) from {args.checkpoint}, trained at threshold "
            f"{'unrecorded' if trained is None else f'{trained:g}'}; {args.dataset} ({len(test_set)} test images), "
            f"device {device}")
        if args.sweep:
            return run_sweep(model, trained, data, directory, log, args.bn_recalibrate or 0, args.latency_batches,
                             args.latency_time)
        if target:
            log(f"--target-{target['budget']} {target['fraction']:g}: threshold {threshold:.6g} is the smallest that "
                f"reaches it (removes {target['reached']:.4f} of the {target['budget']}, as the release counts)")
        report = prune_and_report(model, threshold, data, directory, meta, log, tuning_of(args),
                                  notes={"target": target} if target else None)
        if target:
            log(f"at threshold {threshold:.6g} the pruned network keeps {report['acc_exported']:.2f}% test "
                f"accuracy (unpruned {report['acc_unpruned']:.2f}%)")
        return report
    finally:
        close_logger(logger)


def _chosen_threshold(args, model, trained, input_size):
    """(threshold to prune at, the budget it meets or None); every refusal happens here, before any file."""
    for budget in ("flops", "params"):
        fraction = getattr(args, f"target_{budget}")
        if fraction is not None:
            threshold, reached = smallest_threshold(model, fraction, budget, input_size)
            return threshold, {"budget": budget, "fraction": fraction, "reached": reached}
    if args.sweep:
        return None, None
    threshold = args.threshold if args.threshold is not None else trained
    if threshold is None:
        raise UserError(f"checkpoint {args.checkpoint} records no training threshold: give --threshold, --sweep "
                        "or --target-flops/--target-params")
    require_alive(model, threshold)
    return threshold, None
