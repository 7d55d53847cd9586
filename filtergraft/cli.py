"""Flags only: the argument groups the method scripts share, their checks, and the run record they fill.

Every flag's destination is a RunRecord field, whatever the script calls the flag (`--model` and `--arch`
both fill `arch`), so a setting has one name from the command line to session.json; errors about a
setting are worded with the running script's own flag for it (`run`).
"""
import argparse
import math
import os
import sys

import torch

from .data import DATASETS, LOADERS
from .engine import AMP_DTYPES, every, is_out_of_memory
from .errors import FlagError, UserError, handle_interrupts
from .grafting import DEFAULT_A, DEFAULT_C, ENTROPY_BINS
from .record import RunRecord
from .ring import EXCHANGES, announce_failure, place_in_ring
from .pack import pack_members
from .parallel import check_batch, place_ranks
from .runner import LEVELS, SOURCES
from .session import claim_run, network_files, release_run

# Every script evaluates each epoch's network before it grafts, as the releases (SPEC §3); recorded so that
# sessions of earlier versions, which evaluated after the graft, are told apart.
EVAL_ORDER = "pre-graft"
# The CIFAR-style scripts' training settings as the release's: batch 128, a log line every 50 batches, 2
# loading workers, and the SGD momentum and weight decay it hard-codes.
CIFAR_TRAINING = {"batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4, "workers": 2, "print_freq": 50}


def shown_default(action):
    """The default --help adds to a flag's help, or None where it adds none: switches (their help says what
    giving them does), flags without a value of their own (None, an empty list: their help says what happens
    then), and help that already says its default."""
    if action.nargs == 0 or action.default in (None, [], argparse.SUPPRESS):
        return None
    if "(default" in (action.help or "").lower():
        return None
    return action.default


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every method script's --help: its description (the script's docstring) with its own line breaks, and
    each flag's default after its help, where `shown_default` gives one."""

    def _get_help_string(self, action):
        if shown_default(action) is None:
            return action.help
        return super()._get_help_string(action)


class ScriptParser(argparse.ArgumentParser):
    """A method script's parser: a refused command line is one line on stderr (`prog: error: ...`), exit 2,
    and the refusal is kept (`refusal`) for the ring to be told (run)."""

    refusal = None

    def error(self, message):
        self.refusal = message
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def script_parser(description):
    """The ArgumentParser of a method script, `description` being its docstring."""
    return ScriptParser(description=description, formatter_class=HelpFormatter)


def number(kind, text):
    """`text` as a number of `kind`; a float must be finite (nan and inf would train nothing sensible)."""
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a{'n integer' if kind is int else ' number'}, not {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, not {text}")
    return value


def finite(text):
    """An argparse type: a finite float."""
    return number(float, text)


def positive(kind):
    """An argparse type: a number of `kind` that must be > 0."""
    def parse(text):
        value = number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return value
    return parse


def non_negative(kind):
    """An argparse type: a number of `kind` that must be ≥ 0."""
    def parse(text):
        value = number(kind, text)
        if value < 0:
            raise argparse.ArgumentTypeError(f"must be 0 or more, not {text}")
        return value
    return parse


def gpu_device(text):
    """An argparse type: a GPU id N, as the device cuda:N."""
    return f"cuda:{non_negative(int)(text)}"


# torch.manual_seed takes 0 ≤ seed < 2^64; network i of a ring adds i to the seed.
SEED_LIMIT = 2**63


def seed(text):
    """An argparse type: a random seed, 0 ≤ seed < 2^63."""
    value = number(int, text)
    if not 0 <= value < SEED_LIMIT:
        raise argparse.ArgumentTypeError(f"must be between 0 and 2**63 - 1, not {text}")
    return value


def add_training_flags(parser, *, batch_size, momentum, weight_decay, workers, print_freq, print_aliases=()):
    """-b/--batch-size, --momentum, --wd/--weight-decay, -j/--workers and -p/--print-freq, with the running
    script's release defaults; `print_aliases` are further spellings of -p its release had."""
    parser.add_argument("-b", "--batch-size", type=positive(int), default=batch_size,
                        help="images per batch, training and evaluation")
    parser.add_argument("--momentum", type=non_negative(float), default=momentum, help="SGD momentum")
    parser.add_argument("--wd", "--weight-decay", dest="weight_decay", type=non_negative(float), default=weight_decay,
                        help="SGD weight decay")
    parser.add_argument("-j", "--workers", type=non_negative(int), default=workers,
                        help="data loading processes; 0 loads in the main process")
    parser.add_argument("-p", "--print-freq", *print_aliases, dest="print_freq", type=positive(int),
                        default=print_freq, help="batches between log lines")


def add_cifar_training_flags(parser):
    """The training flags of the CIFAR-style scripts (grafting_cifar, grafting_plus)."""
    parser.add_argument("--lr", type=positive(float), default=0.1, help="initial learning rate")
    parser.add_argument("--epochs", type=int, default=200, help="epochs to train")
    add_training_flags(parser, **CIFAR_TRAINING, print_aliases=("--print_frequence",))
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--data", default="../data", help="CIFAR root directory")
    parser.add_argument("--dataset", choices=DATASETS, default="cifar",
                        help="cifar, digits (scikit-learn's, offline) or fake (tests)")
    parser.add_argument("--lr-step", type=positive(int), default=60, help="step schedule: ×0.1 every N epochs")


def add_grafting_flags(parser, resume_flag=True):
    """The flags every grafting script has (SPEC §6)."""
    g = parser.add_argument_group("grafting")
    g.add_argument("--s", dest="session_dir", default="checkpoint/grafting", metavar="DIR", help="session directory")
    g.add_argument("--num", type=int, default=1, help="number of networks in the ring (1: baseline)")
    g.add_argument("--i", dest="index", type=int, default=None,
                   help="index of this network, 1..num (default 1; --exchange dist: RANK + 1)")
    g.add_argument("--a", type=finite, default=DEFAULT_A, help="A in α = (A/π)·arctan(c·ΔH) + 0.5")
    g.add_argument("--c", type=finite, default=DEFAULT_C, help="c in α = (A/π)·arctan(c·ΔH) + 0.5")
    g.add_argument("--cos", action="store_true", help="cosine learning rate, annealed every iteration")
    g.add_argument("--difflr", action="store_true",
                   help="network i starts at lr·(1 + cos(π·(num − i)/num))/2 instead of lr")
    g.add_argument("--lr-per-network", type=positive(float), nargs="+", default=None, metavar="LR",
                   help="network i starts at the i-th of these rates instead of --lr (the grafting+ release's "
                        "launcher: 0.1 0.05)")
    g.add_argument("--level", choices=LEVELS, default="layer", help="graft whole layers or single filters")
    g.add_argument("--criterion", choices=("entropy", "l1"), default="entropy", help="information of a layer")
    g.add_argument("--entropy-bins", choices=ENTROPY_BINS, default="release",
                   help="release: the released code's histogram (half-open float32 bins, the maximum often in "
                        "none); closed: every value in a bin, the maximum in the last, float64")
    g.add_argument("--conv-only", action="store_true",
                   help="graft only conv weights and the BatchNorms after them; conv biases and the classifier "
                        "stay each network's own (the release's VGG script; always so at --level filter)")
    g.add_argument("--eval-grafted", action="store_true",
                   help="also evaluate the grafted network every epoch (test_acc_grafted); the reported "
                        "accuracy and the best checkpoint stay the pre-graft network's, as the release")
    g.add_argument("--source", choices=SOURCES, default="external",
                   help="scion: the previous network (external), Gaussian noise, or the network itself")
    g.add_argument("--noise-decay", type=finite, default=0.9,
                   help="noise source: σ_t = noise_decay^epoch, 0 < noise_decay < 1")
    g.add_argument("--invalid-threshold", type=non_negative(float), default=0.1,
                   help="noise/internal sources: a filter with L1 norm below this is invalid")
    g.add_argument("--graft-timeout", type=positive(float), default=7200.0,
                   help="seconds to wait for the previous network's weights before giving up")
    g.add_argument("--heartbeat-timeout", type=positive(float), default=30.0,
                   help="seconds without a heartbeat after which a network on another host counts as dead")
    g.add_argument("--exchange", choices=EXCHANGES, default="file",
                   help="how the networks swap weights: files in <s>/exchange (one shared filesystem), or "
                        "torch.distributed under torchrun (--i and --num from RANK and WORLD_SIZE)")
    g.add_argument("--seed", type=seed, default=None,
                   help="network i uses seed + i (none: each network a random seed of its own)")
    if resume_flag:
        g.add_argument("--resume", action="store_true", help="continue from the session's last_<i>.t7")
    parser.set_defaults(eval_order=EVAL_ORDER)
    p = parser.add_argument_group("data parallel (under torchrun)")
    p.add_argument("--ranks-per-network", type=positive(int), default=None, metavar="M",
                   help="torchrun ranks training each network with DistributedDataParallel, -b being the network's "
                        "batch over all of them (default: WORLD_SIZE / --num under torchrun, else 1)")
    p.add_argument("--sync-bn", action="store_true",
                   help="BatchNorm statistics over the whole batch of a network's ranks, not each rank's part")
    return g


def add_pack_flags(parser):
    """--pack and --members: several networks of a ring in one process on one device."""
    g = parser.add_argument_group("pack")
    g.add_argument("--pack", action="store_true",
                   help="train the ring's networks together in this one process on one device, each exactly the "
                        "network --i would train alone; the graft happens in memory")
    g.add_argument("--members", default=None, metavar="FIRST-LAST",
                   help="with --pack: the contiguous networks this process trains (default: all; --exchange dist: "
                        "this rank's share); the other packs of the ring exchange with it through --exchange")
    return g


def add_speed_flags(parser):
    """Flags that change how fast a network trains, not what it learns."""
    g = parser.add_argument_group("speed")
    g.add_argument("--loader", choices=LOADERS, default="auto",
                   help="data pipeline: torchvision transforms in DataLoader workers (torch), or the whole "
                        "dataset on the device with batched augmentation (tensor); auto: tensor for in-memory data")
    g.add_argument("--amp", nargs="?", const="bf16", choices=AMP_DTYPES, default=None,
                   help="mixed precision on CUDA: bf16 autocast (--amp alone), or fp16 autocast with a gradient "
                        "scaler for GPUs without bfloat16 (V100, T4); off keeps fp32 as the papers")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format")
    g.add_argument("--compile", nargs="?", const="inductor", default=None, metavar="BACKEND",
                   help="torch.compile the model (backend: inductor when not named; e.g. aot_eager, cudagraphs)")
    g.add_argument("--deterministic", action="store_true",
                   help="PyTorch's deterministic algorithms, cuDNN autotuning off (default on CUDA: autotuned)")
    return g


def add_logging_flags(parser):
    """Flags for what a run records beside its log and metrics, not how it trains."""
    g = parser.add_argument_group("logging")
    g.add_argument("--tensorboard", action="store_true",
                   help="also write TensorBoard event files into <session>/tb/<i>/ every epoch (needs the "
                        "tensorboard package); view with: tensorboard --logdir <session>/tb")
    return g


def check_training(record):
    """The checks every method script's training settings get."""
    if not str(record.session_dir or "").strip():
        raise FlagError("session_dir", "{flag} is empty: give the directory the run writes into")
    if record.epochs is not None and record.epochs < 1:
        raise FlagError("epochs", f"{{flag}} must be at least 1, not {record.epochs}")
    if record.workers is not None and record.workers < 0:
        raise FlagError("workers", f"{{flag}} must be 0 or more, not {record.workers}")


def grafting_record(args, script=None):
    """The checked run record of a grafting script's flags: its place in the ring (from torchrun with
    --exchange dist) and its step schedule's milestones included."""
    record = RunRecord.from_flags(script, args)
    check_training(record)
    if record.num < 1:
        raise UserError(f"--num must be at least 1, not {record.num}")
    place_networks(record, getattr(args, "members", None))
    if not 1 <= record.index <= record.num:
        raise UserError(f"--i must be between 1 and --num ({record.num}), not {record.index}")
    if record.level == "filter" and record.num < 2:
        raise UserError("--level filter grafts between networks; use --num 2 or more")
    if not 0 < record.noise_decay < 1:
        raise UserError(f"--noise-decay must be between 0 and 1, not {record.noise_decay}")
    if record.lr_per_network is not None and len(record.lr_per_network) != record.num:
        raise UserError(f"--lr-per-network gives {len(record.lr_per_network)} rate(s) for --num {record.num} "
                        f"networks; give one per network")
    if record.lr_per_network is not None and record.difflr:
        raise UserError("--lr-per-network and --difflr both set each network's rate; use one of them")
    if record.graft_timeout <= 0 or record.heartbeat_timeout <= 0:
        raise UserError("--graft-timeout and --heartbeat-timeout must be positive")
    if record.lr_step is not None and record.epochs is not None:
        record.milestones = every(record.lr_step, record.epochs)
    if record.network_ranks > 1:
        check_batch(record.batch_size, record.ranks_per_network)
    return record


def place_networks(record, members):
    """Which networks this process trains: record.pack under --pack (`members`, or all), else network --i
    (or torchrun's rank with --exchange dist, or with several ranks per network); record.index is the first
    of them."""
    if not record.pack:
        if members is not None:
            raise UserError("--members chooses the networks of a pack; add --pack, or use --i for one network")
        if place_ranks(record):
            return
        place_in_ring(record)
        record.index = 1 if record.index is None else record.index
        record.pack = None
        return
    place_ranks(record)  # refuses --ranks-per-network with --pack
    if record.index is not None:
        raise UserError(f"--pack trains several networks, not network --i {record.index}: drop --i (--members "
                        f"FIRST-LAST trains a part of the ring)")
    record.pack = pack_members(record, members)
    record.index = record.pack[0]


def flag_of(parser, field):
    """How `parser` spells the flag that fills `field`: its first long option (`--arch` of `-a/--arch`)."""
    for action in parser._actions:
        if action.dest == field and action.option_strings:
            return next((o for o in action.option_strings if o.startswith("--")), action.option_strings[0])
    return f"--{field}"


def run(parser, main, argv=None):
    """Parse `argv` with `parser` and call main(args). Ctrl-C and SIGTERM stop the script cleanly (even in a
    background job); a FlagError comes out worded with this parser's flag; running out of memory is one line
    naming the batch size; a network of a ring whose command line is refused tells its peers."""
    handle_interrupts()
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:
        if stop.code:
            announce_refused_flags(parser, sys.argv[1:] if argv is None else list(map(str, argv)),
                                   getattr(parser, "refusal", None))
        raise
    args.command = list(sys.argv) if argv is None else [parser.prog, *map(str, argv)]
    try:
        return main(args)
    except FlagError as err:
        raise UserError(err.worded(flag_of(parser, err.field))) from None
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        raise UserError(out_of_memory(parser, args, err)) from None


def out_of_memory(parser, args, err):
    """The one line for a run that ran out of memory, with the batch size to lower."""
    where = "GPU" if isinstance(err, torch.OutOfMemoryError) else "host"
    batch = getattr(args, "batch_size", None)
    lower = f"lower {flag_of(parser, 'batch_size')} (now {batch})" if batch else "use a smaller model or input"
    detail = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
    return f"out of {where} memory ({detail}): {lower}"


def announce_refused_flags(parser, argv, refusal):
    """When a refused command line still says which network of which ring it was (--s, --i, --num), leave
    that network's failed marker, so that its peers stop instead of waiting for it. Only a process that can
    claim the network writes its marker: a duplicate of a running network leaves none."""
    where = argparse.ArgumentParser(add_help=False)
    for action in parser._actions:
        if action.dest in ("session_dir", "index", "num") and action.option_strings:
            where.add_argument(*action.option_strings, dest=action.dest, default=action.default)
    try:
        known, _ = where.parse_known_args(argv)
        record = RunRecord(session_dir=known.session_dir, index=int(known.index), num=int(known.num),
                           source="external")
    except (SystemExit, ValueError, TypeError, AttributeError):
        return
    if record.num < 2 or not 1 <= record.index <= record.num or not os.path.isdir(record.session_dir or ""):
        return
    files = network_files(record.index)
    try:
        claim_run(record.session_dir, files, f"network {record.index}")
    except (UserError, OSError):
        return
    try:
        announce_failure(record, f"its command line was refused: {refusal}")
    finally:
        release_run(record.session_dir, files)
