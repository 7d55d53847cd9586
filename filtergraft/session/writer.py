"""A run's writer in its session directory: the run record, the log, metrics lines, best and last
checkpoints."""
import json
import os
from pathlib import Path

from ..errors import UserError
from ..logs import close_logger, label_console, run_logger
from ..record import RunRecord
from .names import CONFIG_FILE
from .reader import read_jsonl, read_object


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
    raw = read_object(path, [])
    if raw is None:
        raise UserError(f"{path} is unreadable; remove it or choose another session directory")
    recorded, present = RunRecord.from_dict(raw).identity(), RunRecord.fields_in(raw)
    # a session written before a field was recorded is compared on the fields it has
    diff = {k: (recorded[k], v) for k, v in record.identity().items() if k in present and recorded[k] != v}
    if diff:
        what = ", ".join(f"{k}={new!r} (session has {old!r})" for k, (old, new) in diff.items())
        raise UserError(f"session directory {root} holds another run: {what}; choose another directory")


class Session:
    """One run's files in a session directory, its log and its metrics."""

    def __init__(self, root, files, record=None, resume=False):
        self.root = Path(root)
        self.files = files
        self.metrics_path, self.best_path, self.last_path = (
            self.root / files.metrics, self.root / files.best, self.root / files.last)
        _check_writable(self.root)
        if record is not None:
            _record_run(self.root, record)
        if resume and not self.last_path.exists():
            raise UserError(f"--resume: {self.last_path} does not exist; start without --resume")
        if not resume and self.last_path.exists():
            raise UserError(f"{self.root} already holds this run ({self.files.last}); "
                            f"pass --resume to continue it or choose another directory")
        self._logger = run_logger(self.root / files.log)

    def log(self, message, console=True):
        """One timestamped line in the log file and, unless told otherwise, on the console."""
        self._logger.info(message, extra={"console": console})

    def label_console(self, label):
        """Begin this run's console lines with `label` (its log file is its own and needs none)."""
        label_console(self._logger, label)

    def close(self):
        close_logger(self._logger)

    def append_metrics(self, record):
        """One JSON object per epoch."""
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def sync_metrics(self, last_epoch, record=None):
        """Make the metrics file end at `last_epoch`: drop later (and half-written) lines, and append that
        epoch's `record` (kept in the last checkpoint) when a kill struck between checkpoint and metrics."""
        kept = [line for line in read_jsonl(self.metrics_path) if line["epoch"] <= last_epoch] \
            if self.metrics_path.exists() else []
        if record is not None and (not kept or kept[-1].get("epoch") != last_epoch):
            kept.append(record)
        tmp = self.metrics_path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(line) + "\n" for line in kept))
        os.replace(tmp, self.metrics_path)

    def save_best(self, checkpoint):
        _checkpoint().atomic_save(checkpoint, self.best_path)

    def save_last(self, checkpoint):
        _checkpoint().atomic_save(checkpoint, self.last_path)

    def load_last(self):
        state = _checkpoint().load_checkpoint(self.last_path, "--resume checkpoint")
        if not isinstance(state, dict) or not _checkpoint().RESUMABLE <= set(state):
            raise UserError(f"--resume: {self.last_path} is not a resumable checkpoint of this project")
        return state


class RankSession:
    """What a network's ranks other than its leader (parallel.py) do with its session: read the leader's
    last checkpoint to resume, write nothing, and say their log lines on their console only."""

    def __init__(self, root, files, label):
        self.root = Path(root)
        self.files = files
        self.metrics_path, self.best_path, self.last_path = (
            self.root / files.metrics, self.root / files.best, self.root / files.last)
        self.label = label

    def log(self, message, console=True):
        if console:
            print(f"{self.label}: {message}", flush=True)

    def label_console(self, label):
        self.label = label

    def close(self):
        pass

    def append_metrics(self, record):
        pass

    def sync_metrics(self, last_epoch, record=None):
        pass

    def save_best(self, checkpoint):
        pass

    def save_last(self, checkpoint):
        pass

    load_last = Session.load_last


def _checkpoint():
    """checkpoint.py, imported when first needed: it imports torch, which reading a session does without."""
    from .. import checkpoint
    return checkpoint
