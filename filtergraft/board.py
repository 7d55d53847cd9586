"""TensorBoard event files of a run (--tensorboard) and of a session already written (scripts/summarize.py
--tensorboard): one directory per network, session.tensorboard_dir (<session>/tb/<i>/), so that
`tensorboard --logdir <session>/tb` shows the networks of a session side by side.

Every epoch is one step, its number, with
    scalars    every number of the epoch's metrics line: `train_<x>` and `test_<x>` as train/<x> and test/<x>
               (train/loss, test/acc, test/acc5, test/acc_grafted, train/kd, ...), the others by their own
               name (lr, best_acc, epoch_time, stripes_kept); the graft's own numbers as graft/<field>
               (peer, time, wait_time) and its layers' as graft/<field>/<layer> (alpha, h_self, h_peer; a
               noise or internal scion's invalid, sigma, grafted); stripe pruning's share of the stripes
               kept in each FilterStripe layer as stripes_kept/<layer>
    histogram  filters/l1_norm: the L1 norm of every conv filter the papers count (analysis.counted_convs:
               the 1×1 shortcut projections left out), a FilterStripe conv's from its effective kernel W ⊙ FS,
               of the network as training goes on from it (after the epoch's graft)
A session converted afterwards has the scalars of every metrics line and two histograms per network, each
at its checkpoint's epoch: filters/l1_norm from the last checkpoint (the weights of a live run's last
histogram) and filters/l1_norm_best from the best checkpoint (the network before its graft, whose
accuracy the metrics report).

tensorboard is an optional dependency: it is imported when event files are asked for, not before, and
its absence is one line naming the fix. This module knows nothing of the trainer or the ring: the trainer
calls an EpochWriter after each epoch's metrics line (Trainer.on_epoch, wired by assembly.build_trainer).
"""
from pathlib import Path

import torch
from torch import nn

from .analysis import counted_convs, filter_l1_norms, model_of
from .checkpoint import check_compatible, load_checkpoint, state_dict_of
from .errors import UserError
from .session import SINGLE_RUN_FILES, network_files, tensorboard_dir
from .stripe.skeleton import FilterStripe

FILTERS_TAG = "filters/l1_norm"
BEST_FILTERS_TAG = "filters/l1_norm_best"
SPLITS = ("train", "test")  # metrics fields `<split>_<x>` become the tags <split>/<x>
# Fields of the metrics line holding {layer name: number}, and the prefix of their tags.
LAYER_FIELDS = {"stripes_kept_layers": "stripes_kept"}
EVENT_FILE_PREFIX = "events.out.tfevents."  # how TensorBoard's writers name their files


def summary_writer():
    """torch.utils.tensorboard's SummaryWriter class, imported only now; a UserError naming the fix when
    tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package, which is not installed: "
                        "pip install tensorboard (or pip install -e '.[tensorboard]')") from None
    return SummaryWriter


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def tag_of(field):
    """The scalar tag of a numeric field of the metrics line: test_acc -> test/acc, lr -> lr."""
    split, _, rest = field.partition("_")
    return f"{split}/{rest}" if split in SPLITS and rest else field


def _graft_scalars(entry):
    """graft/<field> for the graft entry's numbers, graft/<field>/<layer> for each of its layers'."""
    scalars = {f"graft/{key}": value for key, value in entry.items() if _is_number(value)}
    for layer in entry.get("layers") or []:
        scalars.update({f"graft/{key}/{layer['name']}": value for key, value in layer.items()
                        if key != "name" and _is_number(value)})
    return scalars


def scalars_of(record):
    """{tag: value} of one metrics line (a dict, as session.read_jsonl gives it); its epoch is the step."""
    scalars = {}
    for field, value in record.items():
        if field in ("epoch", "time"):  # the step, and the events' own wall time
            continue
        if field == "graft" and isinstance(value, dict):
            scalars.update(_graft_scalars(value))
        elif isinstance(value, dict):
            prefix = LAYER_FIELDS.get(field, field)
            scalars.update({f"{prefix}/{name}": v for name, v in value.items() if _is_number(v)})
        elif _is_number(value):
            scalars[tag_of(field)] = value
    return scalars


def filter_layers(model):
    """The conv modules of `model` whose filters the histogram counts, in module order: the Conv2d layers
    the papers count (analysis.counted_convs; found once, it traces the model) and every FilterStripe."""
    counted = set(counted_convs(model))
    return [module for name, module in model.named_modules()
            if isinstance(module, FilterStripe) or (isinstance(module, nn.Conv2d) and name in counted)]


@torch.no_grad()
def filter_norms(layers):
    """The L1 norms of the filters of `layers` (filter_layers), one 1-D float tensor on the CPU."""
    weights = [m.masked_weight() if isinstance(m, FilterStripe) else m.weight for m in layers]
    if not weights:
        return torch.zeros(0)
    return torch.cat([filter_l1_norms(w.float()) for w in weights]).cpu()


class Board:
    """The event files of one network in `directory`. `purge_step`: a run that continues at that epoch
    (--resume); TensorBoard hides what earlier files hold for it and after it."""

    def __init__(self, directory, purge_step=None):
        self.writer = summary_writer()(log_dir=str(directory), purge_step=purge_step)

    def write(self, record, norms=None):
        """The scalars of metrics line `record`, and the histogram of filter L1 norms `norms` when given, at
        the line's epoch; on disk on return."""
        walltime = record.get("time") if _is_number(record.get("time")) else None  # when the epoch ended
        for tag, value in scalars_of(record).items():
            self.writer.add_scalar(tag, value, record["epoch"], walltime=walltime)
        if norms is not None:
            self.histogram(norms, record["epoch"], walltime=walltime)
        self.writer.flush()

    def histogram(self, norms, step, tag=FILTERS_TAG, walltime=None):
        """The histogram `tag` of filter L1 norms `norms` at `step`; none for a model without filters."""
        if norms.numel():
            self.writer.add_histogram(tag, norms, step, walltime=walltime)

    def close(self):
        self.writer.close()


class EpochWriter:
    """A Trainer.on_epoch callback writing a run's epochs, from `start_epoch` on, into `directory` (a Board);
    the last of its `epochs` closes it."""

    def __init__(self, directory, epochs, start_epoch=1):
        self.board = Board(directory, purge_step=start_epoch)
        self.epochs = epochs
        self.layers = None  # the model's filter_layers, found at the first epoch (tracing it once)

    def __call__(self, epoch, record, model):
        if self.layers is None:
            self.layers = filter_layers(model)
        self.board.write(record, filter_norms(self.layers))
        if epoch >= self.epochs:
            self.board.close()


def has_events(directory):
    """Whether `directory` holds a TensorBoard event file."""
    directory = Path(directory)
    return directory.is_dir() and any(p.name.startswith(EVENT_FILE_PREFIX) for p in directory.iterdir())


def checkpoint_norms(path, what):
    """(epoch, filter L1 norms) of checkpoint `path` (`what` names it in errors) of this project: its
    recorded architecture built, its weights loaded, and filter_norms of its filter_layers."""
    checkpoint = load_checkpoint(path, what)
    model = model_of(checkpoint, str(path))
    epoch = checkpoint.get("epoch") if isinstance(checkpoint, dict) else None
    if model is None or not isinstance(epoch, int):
        raise UserError(f"{what} {path} records no architecture or no epoch: no filter L1 norms from it")
    state = state_dict_of(checkpoint, str(path))
    check_compatible(state, model.state_dict(), str(path))
    model.load_state_dict(state)
    return epoch, filter_norms(filter_layers(model))


def convert_session(session):
    """Event files for a session read back (session.StoredSession) that has none: every metrics line of
    every network, and the histograms of its last and best checkpoints (module docstring). A network whose
    directory holds event files already is left alone (converting again would show its epochs twice);
    that, and a checkpoint that cannot be read, are added to session.problems. Returns the directories
    written."""
    written = []
    for network in session.networks:
        directory = tensorboard_dir(session.path, network.index)
        if not network.records:
            continue
        if has_events(directory):
            session.problems.append(f"{directory} already holds event files; remove it to convert again")
            continue
        board = Board(directory)
        for record in network.records:
            board.write(record)
        files = SINGLE_RUN_FILES if session.kind == "stripe" else network_files(network.index)
        for path, what, tag in ((session.path / files.last, "last checkpoint", FILTERS_TAG),
                                (network.best_path, "best checkpoint", BEST_FILTERS_TAG)):
            if path is None or not path.is_file():
                continue
            try:
                epoch, norms = checkpoint_norms(path, what)
            except UserError as err:
                session.problems.append(str(err))
            else:
                board.histogram(norms, epoch, tag)
        board.close()
        written.append(directory)
    return written
