"""Reading a session directory back, while it runs or after it ended: its run record, every network's
epochs, its failures, its pruning report."""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..record import RunRecord
from .names import (CONFIG_FILE, EXCHANGE_DIR, PLOTS_DIR, PRUNE_REPORT, SINGLE_RUN_FILES, TENSORBOARD_DIR,
                    exchange_dir, exchange_marker, network_files)


def read_object(path, problems):
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


def read_record(root):
    """The run record of session directory `root`, or None when it has none or it is unreadable."""
    raw = read_object(Path(root) / CONFIG_FILE, [])
    return None if raw is None else RunRecord.from_dict(raw)


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
    record = read_object(marker, [])
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
    raw = read_object(path / CONFIG_FILE, problems) if (path / CONFIG_FILE).is_file() else None
    if raw is None:
        problems.append(f"{CONFIG_FILE} missing or unreadable: configuration unknown, no paper number")
        raw = {}
    record, recorded = RunRecord.from_dict(raw), frozenset(RunRecord.fields_in(raw))
    if (path / SINGLE_RUN_FILES.metrics).is_file() or (path / PRUNE_REPORT).is_file():
        # A checkpoint pruned by --evaluate trained nothing: no epoch or best checkpoint is missing.
        network = read_network(path, SINGLE_RUN_FILES, 1, [] if record.evaluate else problems)
        prune = read_object(path / PRUNE_REPORT, problems) if (path / PRUNE_REPORT).is_file() else None
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
