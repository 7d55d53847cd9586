"""From a run record and a method script's own pieces to a ready Trainer: seed, data, model, session
directory, loaders, optimizer, schedule, speed options and the point it resumes from.

Every method script goes through `build_trainer`; what is specific to a script reaches it as callables
(how to make its datasets and its model, its training objective, its step after backward), so the order
in which random numbers are drawn, files are written and mistakes are refused is the same everywhere:
nothing is written before the data, the model and a checkpoint to resume from have all been checked.
"""
import os
from pathlib import Path

import torch

from .board import EpochWriter, summary_writer
from .checkpoint import load_matching
from .data import check_cifar_like, cifar_like_datasets, describe_loader, make_loaders
from .engine import LRSchedule, Trainer, cross_entropy_loss, difflr, resolve_device, sgd
from .errors import UserError
from .models import canonical_model_name, create_model
from .record import environment
from .parallel import network_group, sync_batchnorm
from .rng import rank_seed, seed_everything
from .session import CONFIG_FILE, RankSession, Session, claim_run, network_files, tensorboard_dir


def network_seed(record):
    """Network i's seed in a grafting session: --seed + i, or None for a fresh random one."""
    return None if record.seed is None else record.seed + record.index


def speed_options(record, device):
    """Trainer keyword arguments for the speed flags, checked against the device."""
    amp = "bf16" if record.amp is True else record.amp or None  # sessions before fp16 recorded True for bf16
    if amp and device.type != "cuda":
        kind = "float16 autocast with a gradient scaler" if amp == "fp16" else "bfloat16 autocast"
        raise UserError(f"--amp {amp} ({kind}) needs a CUDA device; drop --amp on the CPU")
    if record.compile is not None:
        backends = torch._dynamo.list_backends(exclude_tags=())
        if record.compile not in backends:
            raise UserError(f"--compile {record.compile}: unknown backend; choose one of: {', '.join(backends)}")
    return {"amp": amp, "channels_last": bool(record.channels_last), "compile": record.compile}


def set_determinism(record, device, log):
    """cuDNN autotuning on CUDA (the release's ImageNet scripts set cudnn.benchmark), or with
    --deterministic PyTorch's deterministic algorithms and no autotuning, said in the log with its cost."""
    if record.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be deterministic
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        log("--deterministic: PyTorch's deterministic algorithms, cuDNN autotuning off; on CUDA convolutions "
            "may run markedly slower, and an operation without a deterministic version stops the run")
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def network_lr(record):
    """The initial learning rate of this network: --lr, its --difflr share of it, or its --lr-per-network."""
    if record.lr_per_network:
        return record.lr_per_network[record.index - 1]
    return difflr(record.lr, record.index, record.num) if record.difflr else record.lr


def open_session(record, files, device, resume=False):
    """The run's session directory, claimed for this process (session.claim_run, if the run was not claimed
    when it started) and opened with its run record written, where it runs (environment) included. A
    network's ranks but its leader write nothing there (session.RankSession)."""
    record.environment = environment([device])
    if record.rank:
        return RankSession(record.session_dir, files, f"network {record.index} rank {record.rank}")
    claim_run(record.session_dir, files, f"network {record.index} of {record.session_dir}")
    return Session(record.session_dir, files, record=record, resume=resume)


def run_loaders(record, train_set, test_set, seed, device, group=None):
    """(train loader, test loader, generator) with the record's batch size, workers and data pipeline; with
    a parallel.NetworkGroup, this rank's part of every batch."""
    shard = (group.rank, group.size) if group is not None else None
    return make_loaders(train_set, test_set, record.batch_size, record.workers, seed,
                        pin_memory=device.type == "cuda", loader=record.loader, device=device, shard=shard)


def _resume_point(record, files, model, meta):
    """(state, source, resume own files): what the run continues from. `--resume` alone (or 'last')
    continues the session's own last checkpoint; a path elsewhere starts a new session from that
    checkpoint, which is checked (and refused with one line) before anything is written."""
    own = Path(record.session_dir) / files.last
    if not record.resume:
        return None, None, False
    if record.resume is True or record.resume == "last":
        if own.exists():
            return load_matching(own, model, meta, True, f"--resume {own}"), own, True
        if (Path(record.session_dir) / CONFIG_FILE).exists():
            return None, None, False  # stopped before its first checkpoint: it starts the session's epoch 1
        if not Path(record.session_dir).is_dir():
            raise UserError(f"--resume: {record.session_dir} does not exist; nothing to resume (start without "
                            f"--resume)")
        raise UserError(f"--resume: {record.session_dir} holds no run to resume (no {CONFIG_FILE}, no "
                        f"{files.last}); start without --resume")
    path = Path(record.resume)
    if path.resolve() != own.resolve() and own.exists():
        raise UserError(f"--resume {path}: {record.session_dir} already holds this network's own run "
                        f"({files.last}); continue that with --resume alone, or choose another directory")
    state = load_matching(path, model, meta, True, f"--resume {path}")
    if state["epoch"] >= record.epochs:
        raise UserError(f"--resume {path} has finished all {record.epochs} epochs (it is at epoch "
                        f"{state['epoch']}); raise --epochs to train longer")
    if record.start_epoch not in (None, state["epoch"] + 1):
        raise UserError(f"--start-epoch {record.start_epoch} disagrees with --resume {path}, which continues "
                        f"at epoch {state['epoch'] + 1}; drop --start-epoch")
    return state, path, path.resolve() == own.resolve()


def _check_start_epoch(record):
    if record.start_epoch is not None and not 1 <= record.start_epoch <= record.epochs:
        raise UserError(f"--start-epoch must be between 1 and --epochs ({record.epochs}), not {record.start_epoch}")


def build_trainer(record, *, datasets, build_model, files, seed, loss_for_device=None, after_backward=None,
                  topk=(1,), describe=""):
    """The Trainer of the run `record` describes, its session directory opened and its record written.

    `datasets()` gives (train, test) datasets; `build_model(num_classes)` the model on the CPU (num_classes
    from the record, or from the training set's classes when the record has none); `loss_for_device(device)`
    the training objective (cross entropy by default); `seed` is drawn from before the model is built;
    `topk` the accuracies evaluated (those above the class count left out); `describe` ends the first log
    line. A resumed run is at its checkpoint's next epoch on return. With record.tensorboard, a board.EpochWriter
    records every epoch into the session's tb/<record.index>/ (session.tensorboard_dir)."""
    _check_start_epoch(record)
    device = resolve_device(record.device)
    speed = speed_options(record, device)
    if record.tensorboard:
        summary_writer()  # a missing tensorboard package is refused before anything is written
    if seed is not None:
        seed_everything(seed)
    train_set, test_set = datasets()
    if record.num_classes is None:
        record.num_classes = len(train_set.classes)
    model = build_model(record.num_classes)
    meta = {"arch": record.arch, "num_classes": record.num_classes}
    state, source, own = _resume_point(record, files, model, meta)
    group = network_group(record, device)
    if group is not None and record.sync_bn:
        model = sync_batchnorm(model, group.group, device)
    if group is not None and group.rank and seed is not None:
        seed_everything(rank_seed(seed, group.rank))  # augmentation of its own; the batches stay the network's
    session = open_session(record, files, device, resume=own)
    model.to(device)
    train_loader, test_loader, generator = run_loaders(record, train_set, test_set, seed, device, group)
    lr = network_lr(record)
    schedule = LRSchedule(record.epochs, len(train_loader), cosine=record.cos, milestones=record.milestones or ())
    loss_fn = loss_for_device(device) if loss_for_device is not None else cross_entropy_loss
    trainer = Trainer(model, sgd(model, lr, record.momentum, record.weight_decay), train_loader, test_loader,
                      session, device=device, epochs=record.epochs, schedule=schedule, loss_fn=loss_fn,
                      print_freq=record.print_freq, topk=tuple(k for k in topk if k <= record.num_classes),
                      after_backward=after_backward, generator=generator, meta=meta, group=group, **speed)
    set_determinism(record, device, session.log)
    ring = f", network {record.index}/{record.num}" if record.in_ring else ""
    if group is not None:
        ring += (f" on {group.size} ranks ({record.batch_size // group.size} images each"
                 f"{', synced BatchNorm' * bool(record.sync_bn)}{', across machines' * group.across_machines})")
    session.log(f"{record.arch} on {record.dataset} ({record.num_classes} classes, {len(train_set)} train / "
                f"{len(test_set)} test images){ring}, {sum(p.numel() for p in model.parameters()):,} parameters, "
                f"lr {lr:g}, device {device}, {describe_loader(train_loader)} data pipeline, torch "
                f"{torch.__version__}" + (f", {describe}" if describe else ""))
    if state is not None:
        trainer.resume(state, source=source)
    elif record.resume is True or record.resume == "last":
        session.log(f"--resume: no {files.last} yet (the network stopped before its first epoch ended), so it "
                    f"starts at epoch 1")
    elif record.start_epoch is not None:
        trainer.start_at(record.start_epoch)
    if record.tensorboard and not record.rank:
        board = tensorboard_dir(record.session_dir, record.index)
        trainer.on_epoch.append(EpochWriter(board, record.epochs, start_epoch=trainer.start_epoch))
        session.log(f"TensorBoard event files in {board} (tensorboard --logdir {board.parent})")
    return trainer


def check_cifar_network(record):
    """The CIFAR-style scripts' early checks (before teachers load or anything is written): dataset,
    class count and architecture."""
    check_cifar_like(record.dataset, record.num_classes)
    canonical_model_name(record.arch)


def cifar_trainer(record, loss_for_device=None, describe=""):
    """build_trainer for network --i of a CIFAR-style grafting session (grafting_cifar, grafting_plus), its
    record checked by check_cifar_network."""
    return build_trainer(record, datasets=lambda: cifar_like_datasets(record.dataset, record.data, record.num_classes),
                         build_model=lambda num_classes: create_model(record.arch, num_classes),
                         files=network_files(record.index), seed=network_seed(record),
                         loss_for_device=loss_for_device, describe=describe)
