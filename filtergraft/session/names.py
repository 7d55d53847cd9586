"""Every file name of a session directory (the layout is in the package's docstring)."""
from dataclasses import dataclass
from pathlib import Path

CONFIG_FILE = "session.json"
EXCHANGE_DIR = "exchange"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tb"
PRUNE_REPORT = "prune.json"
PRUNED_CHECKPOINT = "pruned.pth.tar"
PRUNED_PROGRAM = "pruned.pt2"
PRUNE_LOG = "prune.log"
SWEEP_CSV = "sweep.csv"
SWEEP_TABLE = "sweep.md"
SWEEP_PLOT = "sweep.png"
MARKERS = ("alive", "done", "failed")


@dataclass(frozen=True)
class SessionFiles:
    """File names of one run inside its directory."""

    log: str
    metrics: str
    best: str
    last: str
    lock: str  # held by the one process that runs it (claim.py)


def network_files(index):
    """Grafting sessions: one set of files per network i (a string index gives patterns: "*", "<i>")."""
    return SessionFiles(f"{index}.log", f"metrics_{index}.jsonl", f"best_{index}.t7", f"last_{index}.t7",
                        f"{index}.lock")


SINGLE_RUN_FILES = SessionFiles("train.log", "metrics.jsonl", "best.pth.tar", "last.pth.tar", "run.lock")


def console_file(index, rank=0):
    """Where a launcher sends network i's console (of its rank k > 0, with several ranks per network)."""
    return f"{index}.out" if rank == 0 else f"{index}.rank{rank}.out"


def exchange_dir(root):
    return Path(root) / EXCHANGE_DIR


def tensorboard_dir(root, index):
    """Network `index`'s TensorBoard event files (--tensorboard); a single run (stripe pruning) is network 1."""
    return Path(root) / TENSORBOARD_DIR / str(index)


def exchange_weights(directory, index, epoch):
    """Network `index`'s pre-graft weights of `epoch` inside the exchange directory."""
    return Path(directory) / f"net{index}_epoch{epoch}.t7"


def exchange_marker(directory, index, kind):
    """Network `index`'s marker of `kind` (alive, done or failed) inside the exchange directory."""
    assert kind in MARKERS, kind
    return Path(directory) / f"net{index}.{kind}"


def pack_commit(root, first, last):
    """The marker a pack of networks first..last leaves while it moves its members' new last checkpoints
    into place: present, the epoch's checkpoints are all written and a resume finishes moving them."""
    return Path(root) / f"pack_{first}-{last}.commit"


def pending(path):
    """Where a pack writes a member's checkpoint `path` before the pack's commit moves it into place."""
    return Path(f"{path}.pending")


def pack_console_file(first, last):
    """Where a launcher sends the console of the pack of networks first..last."""
    return f"pack_{first}-{last}.out"
