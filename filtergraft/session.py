"""The session directory (SPEC §7), the contract between processes, tools and users: every file name in
it, a run's writer (log, metrics, best and last checkpoints, the run record), and reading metrics back.

    <dir>/session.json                  the run record (record.RunRecord), written by the first network
    <dir>/<i>.log  metrics_<i>.jsonl  best_<i>.t7  last_<i>.t7      network i of a grafting session
    <dir>/<i>.out                       network i's console, written by the launchers
    <dir>/exchange/net<i>_epoch<e>.t7   network i's pre-graft weights of epoch e
    <dir>/exchange/net<i>.alive|.done|.failed   its heartbeat and end markers
    <dir>/train.log  metrics.jsonl  best.pth.tar  last.pth.tar      a single run (stripe pruning)
    <dir>/prune.json  pruned.pth.tar  pruned.pt2                    what stripe pruning leaves
    <dir>/plots/                        figures made by scripts/summarize.py
"""
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_save, load_checkpoint
from .errors import UserError
from .record import RunRecord

CONFIG_FILE = "session.json"
EXCHANGE_DIR = "exchange"
PLOTS_DIR = "plots"
PRUNE_REPORT = "prune.json"
PRUNED_CHECKPOINT = "pruned.pth.tar"
PRUNED_PROGRAM = "pruned.pt2"
MARKERS = ("alive", "done", "failed")


@dataclass(frozen=True)
class SessionFiles:
    """File names of one run inside its directory."""

    log: str
    metrics: str
    best: str
    last: str


def network_files(index):
    """Grafting sessions: one set of files per network i."""
    return SessionFiles(f"{index}.log", f"metrics_{index}.jsonl", f"best_{index}.t7", f"last_{index}.t7")


SINGLE_RUN_FILES = SessionFiles("train.log", "metrics.jsonl", "best.pth.tar", "last.pth.tar")


def console_file(index):
    """Where a launcher sends network i's console."""
    return f"{index}.out"


def exchange_dir(root):
    return Path(root) / EXCHANGE_DIR


def exchange_weights(directory, index, epoch):
    """Network `index`'s pre-graft weights of `epoch` inside the exchange directory."""
    return Path(directory) / f"net{index}_epoch{epoch}.t7"


def exchange_marker(directory, index, kind):
    """Network `index`'s marker of `kind` (alive, done or failed) inside the exchange directory."""
    assert kind in MARKERS, kind
    return Path(directory) / f"net{index}.{kind}"


def _check_writable(root):
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise UserError(f"cannot write to session directory {root} ({err.strerror}); "
                        f"choose a writable directory") from None


def _record_run(root, record):
    """Write the run record once; refuse a later run (another network, a resume) whose identity differs."""
    path = root / CONFIG_FILE
    tmp = root / f".{CONFIG_FILE}.{os.getpid()}"
    tmp.write_text(record.to_json())
    try:
        os.link(tmp, path)  # atomic create-if-absent: a peer never reads a half-written file
        return
    except FileExistsError:
        pass
    finally:
        tmp.unlink()
    try:
        raw = json.loads(path.read_text())
        recorded, present = RunRecord.from_dict(raw).identity(), RunRecord.fields_in(raw)
    except (OSError, ValueError, TypeError, AttributeError):
        raise UserError(f"{path} is unreadable; remove it or choose another session directory") from None
    # a session written before a field was recorded is compared on the fields it has
    diff = {k: (recorded[k], v) for k, v in record.identity().items() if k in present and recorded[k] != v}
    if diff:
        what = ", ".join(f"{k}={new!r} (session has {old!r})" for k, (old, new) in diff.items())
        raise UserError(f"session directory {root} holds another run: {what}; choose another directory")


def read_record(root):
    """The run record of session directory `root`, or None when it has none or it is unreadable."""
    try:
        raw = json.loads((Path(root) / CONFIG_FILE).read_text())
        return RunRecord.from_dict(raw) if isinstance(raw, dict) else None
    except (OSError, ValueError, TypeError):
        return None


class Session:
    """One run's files in a session directory, its log and its metrics."""

    def __init__(self, root, files, record=None, resume=False):
        self.root = Path(root)
        self.files = files
        _check_writable(self.root)
        if record is not None:
            _record_run(self.root, record)
        if resume and not self.last_path.exists():
            raise UserError(f"--resume: {self.last_path} does not exist; start without --resume")
        if not resume and self.last_path.exists():
            raise UserError(f"{self.root} already holds this run ({self.files.last}); "
                            f"pass --resume to continue it or choose another directory")
        self._log = open(self.root / files.log, "a", buffering=1)

    @property
    def metrics_path(self):
        return self.root / self.files.metrics

    @property
    def best_path(self):
        return self.root / self.files.best

    @property
    def last_path(self):
        return self.root / self.files.last

    def log(self, message, console=True):
        """Append one line to the log file and, unless told otherwise, print it."""
        if console:
            print(message, flush=True)
        self._log.write(message + "\n")

    def close(self):
        self._log.close()

    def append_metrics(self, record):
        """One JSON object per epoch."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def sync_metrics(self, last_epoch, record=None):
        """Make the metrics file end at `last_epoch`: drop later (and half-written) lines, and append that
        epoch's `record` (kept in the last checkpoint) when a kill struck between checkpoint and metrics."""
        kept = [line for line in read_jsonl(self.metrics_path) if line.get("epoch", 0) <= last_epoch] \
            if self.metrics_path.exists() else []
        if record is not None and (not kept or kept[-1].get("epoch") != last_epoch):
            kept.append(record)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def save_best(self, checkpoint):
        atomic_save(checkpoint, self.best_path)

    def save_last(self, checkpoint):
        atomic_save(checkpoint, self.last_path)

    def load_last(self):
        state = load_checkpoint(self.last_path, "--resume checkpoint")
        if not isinstance(state, dict) or not {"net", "epoch", "optimizer"} <= set(state):
            raise UserError(f"--resume: {self.last_path} is not a resumable checkpoint of this project")
        return state


def read_jsonl(path):
    """The JSON objects of a .jsonl file; an unparsable line (a write cut by a kill) is skipped."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def is_terminal():
    """True when progress bars make sense (stderr is a terminal)."""
    return sys.stderr.isatty()
