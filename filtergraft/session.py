"""The session directory (SPEC §7), the contract between processes, tools and users: every file name in
it, a run's writer (log, metrics, best and last checkpoints, the run record), and reading a whole session
back (StoredSession), for the summaries, the plots and the launch scripts.

    <dir>/session.json                  the run record (record.RunRecord), written by the first network
    <dir>/<i>.log  metrics_<i>.jsonl  best_<i>.t7  last_<i>.t7      network i of a grafting session
    <dir>/<i>.out                       network i's console, written by the launchers
    <dir>/exchange/net<i>_epoch<e>.t7   network i's pre-graft weights of epoch e
    <dir>/exchange/net<i>.alive|.done|.failed   its heartbeat and end markers
    <dir>/train.log  metrics.jsonl  best.pth.tar  last.pth.tar      a single run (stripe pruning)
    <dir>/prune.json  pruned.pth.tar  pruned.pt2                    what stripe pruning leaves
    <dir>/plots/                        figures made by scripts/summarize.py
    <dir>/tb/<i>/                       network i's TensorBoard event files (a single run's: tb/1/)

Reading needs no torch (the launch scripts' checks start fast): the writer imports checkpoint.py when saving.
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UserError
from .logs import close_logger, run_logger
from .record import RunRecord

CONFIG_FILE = "session.json"
EXCHANGE_DIR = "exchange"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tb"
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
    """Grafting sessions: one set of files per network i (a string index gives patterns: "*", "<i>")."""
    return SessionFiles(f"{index}.log", f"metrics_{index}.jsonl", f"best_{index}.t7", f"last_{index}.t7")


SINGLE_RUN_FILES = SessionFiles("train.log", "metrics.jsonl", "best.pth.tar", "last.pth.tar")


def console_file(index):
    """Where a launcher sends network i's console."""
    return f"{index}.out"


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


def _read_object(path, problems):
    """The JSON object in file `path`, or None with the reason added to `problems`."""
    name = Path(path).name
    try:
        value = json.loads(Path(path).read_text())
    except OSError as err:
        problems.append(f"{name} unreadable ({err.strerror})")
        return None
    except ValueError:
        problems.append(f"{name} is not valid JSON")
        return None
    if not isinstance(value, dict):
        problems.append(f"{name} does not hold a JSON object")
        return None
    return value


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
    raw = _read_object(path, [])
    if raw is None:
        raise UserError(f"{path} is unreadable; remove it or choose another session directory")
    recorded, present = RunRecord.from_dict(raw).identity(), RunRecord.fields_in(raw)
    # a session written before a field was recorded is compared on the fields it has
    diff = {k: (recorded[k], v) for k, v in record.identity().items() if k in present and recorded[k] != v}
    if diff:
        what = ", ".join(f"{k}={new!r} (session has {old!r})" for k, (old, new) in diff.items())
        raise UserError(f"session directory {root} holds another run: {what}; choose another directory")


def read_record(root):
    """The run record of session directory `root`, or None when it has none or it is unreadable."""
    raw = _read_object(Path(root) / CONFIG_FILE, [])
    return None if raw is None else RunRecord.from_dict(raw)


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


def _checkpoint():
    """checkpoint.py, imported when first needed: it imports torch, which reading a session does without."""
    from . import checkpoint
    return checkpoint


# Reading a session back, while it runs or after it ended: anything missing or half-written becomes a
# problem noted on the session (a list of one-line descriptions), never an exception.

NOT_SESSIONS = {EXCHANGE_DIR, PLOTS_DIR, TENSORBOARD_DIR}  # directories inside a session, never sessions of their own
SEARCH_DEPTH = 3
_WHAT_A_SESSION_HAS = f"{CONFIG_FILE}, {network_files('<i>').metrics} or {SINGLE_RUN_FILES.metrics}"


class NotASession(Exception):
    """A directory that cannot be read as a session; the message says why."""


def read_jsonl(path, problems=None):
    """The epoch records of a metrics file (one JSON object per line). A line that does not parse (a write
    cut short by a kill) or has no integer epoch is skipped; given a `problems` list, every skipped line is
    described there, and so is an unreadable file, which otherwise raises OSError."""
    path, records = Path(path), []
    notes = [] if problems is None else problems
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        if problems is None:
            raise
        problems.append(f"{path.name} unreadable ({err.strerror})")
        return records
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            what = "the last line" if number == len(lines) else f"line {number}"
            notes.append(f"{path.name}: {what} is not complete JSON (a write cut short?); skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            notes.append(f"{path.name}: line {number} has no epoch; skipped")
            continue
        records.append(record)
    return records


@dataclass
class StoredNetwork:
    """One network's epochs (the records of its metrics file) and its best checkpoint, None when missing."""

    index: int
    records: list
    best_path: Path = None

    def accuracies(self, key="test_acc"):
        return [r[key] for r in self.records if isinstance(r.get(key), (int, float))]

    @property
    def epochs(self):
        return max((r["epoch"] for r in self.records), default=0)

    @property
    def best(self):
        """Best top-1 over the epochs so far (the value the best checkpoint holds), None before any."""
        return max(self.accuracies(), default=None)

    @property
    def final(self):
        return (self.accuracies() or [None])[-1]

    @property
    def grafted(self):
        """The last epoch's accuracy of the network right after its graft (--eval-grafted), or None."""
        return (self.accuracies("test_acc_grafted") or [None])[-1]

    @property
    def best5(self):
        """Top-5 of the best top-1 epoch (ImageNet), or None."""
        scored = [r for r in self.records if "test_acc5" in r and "test_acc" in r]
        return max(scored, key=lambda r: r["test_acc"])["test_acc5"] if scored else None


def read_network(root, files, index, problems, prefix=""):
    """Network `index` of session `root`, its run's files named by `files` (a SessionFiles); what is missing
    or cut short is added to `problems`, each line starting with `prefix`."""
    metrics, best = Path(root) / files.metrics, Path(root) / files.best
    records = read_jsonl(metrics, problems) if metrics.is_file() else []
    if not records:
        problems.append(f"{prefix}no finished epoch yet")
    elif not best.is_file():
        problems.append(f"{prefix}{files.best} missing")
    return StoredNetwork(index, records, best if best.is_file() else None)


def read_failure(root, index):
    """The reason in network `index`'s failure marker ({"time", "reason"}), None when it has none."""
    marker = exchange_marker(exchange_dir(root), index, "failed")
    if not marker.is_file():
        return None
    record = _read_object(marker, [])
    return "reason unreadable" if record is None else str(record.get("reason", "no reason given"))


@dataclass
class StoredSession:
    """A session directory as its files tell it: what was run, every network's epochs, what went wrong."""

    path: Path
    kind: str  # "grafting" (network_files, any grafting script) or "stripe" (SINGLE_RUN_FILES, PRUNE_REPORT)
    record: RunRecord  # from session.json; its defaults stand in for the fields it lacks
    recorded: frozenset  # the fields session.json holds (none when it is missing or unreadable)
    networks: list
    prune: dict = None
    failed: dict = field(default_factory=dict)  # network index: reason
    problems: list = field(default_factory=list)

    def get(self, name):
        """The record's field `name`, None when not recorded."""
        return getattr(self.record, name) if name in self.recorded else None

    @property
    def epochs_done(self):
        """Epochs every network has finished (the slowest network's count)."""
        return min((n.epochs for n in self.networks), default=0)

    @property
    def state(self):
        """failed, in progress, done, "trained, not pruned yet" (stripe), or None when epochs unknown."""
        if self.failed:
            return "failed"
        planned = self.get("epochs")
        if planned is None:
            return None
        if self.kind == "stripe" and self.epochs_done >= planned and self.prune is None:
            return "trained, not pruned yet"
        return "done" if self.epochs_done >= planned else "in progress"


def network_indices(root):
    """The indices of the networks with a metrics file in session directory `root`."""
    head, tail = network_files("*").metrics.split("*")
    names = (p.name[len(head):len(p.name) - len(tail)] for p in Path(root).glob(network_files("*").metrics))
    return {int(name) for name in names if name.isdigit()}


def is_session(path):
    path = Path(path)
    return ((path / CONFIG_FILE).is_file() or (path / SINGLE_RUN_FILES.metrics).is_file()
            or (path / PRUNE_REPORT).is_file() or bool(network_indices(path)))


def read_session(path):
    """The StoredSession of directory `path`; raises NotASession when there is nothing to read."""
    path = Path(path)
    if not path.is_dir():
        raise NotASession("not a directory")
    if not is_session(path):
        raise NotASession(f"not a session directory (no {_WHAT_A_SESSION_HAS})")
    problems = []
    raw = _read_object(path / CONFIG_FILE, problems) if (path / CONFIG_FILE).is_file() else None
    if raw is None:
        problems.append(f"{CONFIG_FILE} missing or unreadable: configuration unknown, no paper number")
        raw = {}
    record, recorded = RunRecord.from_dict(raw), frozenset(RunRecord.fields_in(raw))
    if (path / SINGLE_RUN_FILES.metrics).is_file() or (path / PRUNE_REPORT).is_file():
        # A checkpoint pruned by --evaluate trained nothing: no epoch or best checkpoint is missing.
        network = read_network(path, SINGLE_RUN_FILES, 1, [] if record.evaluate else problems)
        prune = _read_object(path / PRUNE_REPORT, problems) if (path / PRUNE_REPORT).is_file() else None
        return StoredSession(path, "stripe", record, recorded, [network], prune=prune, problems=problems)
    indices = network_indices(path)
    if "num" in recorded and isinstance(record.num, int):
        indices |= set(range(1, record.num + 1))  # also the networks that have not finished an epoch yet
    networks, failed = [], {}
    for i in sorted(indices):
        networks.append(read_network(path, network_files(i), i, problems, prefix=f"network {i}: "))
        if (reason := read_failure(path, i)) is not None:
            failed[i] = reason
            problems.append(f"network {i} failed: {reason}")
    return StoredSession(path, "grafting", record, recorded, networks, failed=failed, problems=problems)


def find_sessions(paths):
    """(sessions, skipped): every session directory among `paths` or below them (a directory holding
    sessions, like baseline.sh's run1..runN, stands for all of them); skipped is [(path, reason)]."""
    sessions, skipped, seen = [], [], set()
    for path in map(Path, paths):
        found = [path] if not path.is_dir() or is_session(path) else _sessions_below(path, SEARCH_DEPTH)
        if not found:
            skipped.append((path, f"not a session directory (no {_WHAT_A_SESSION_HAS} in it or in its "
                                  f"subdirectories)"))
        for each in found:
            if os.path.realpath(each) not in seen:
                seen.add(os.path.realpath(each))
                try:
                    sessions.append(read_session(each))
                except NotASession as err:
                    skipped.append((each, str(err)))
    return sessions, skipped


def _sessions_below(path, depth):
    """The session directories below `path`, at most `depth` levels down, in name order."""
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir() and p.name not in NOT_SESSIONS) if depth else []
    except OSError:
        return []
    return [s for child in children for s in ([child] if is_session(child) else _sessions_below(child, depth - 1))]
