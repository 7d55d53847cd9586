"""Results you can read: session directories (SPEC §7) summarised into tables beside the papers' numbers
(SPEC §9).

A session is read from its files alone, while it runs or after it ended: `session.json` (what was run),
`metrics_<i>.jsonl` (one line per epoch per network), `best_<i>.t7`, and `exchange/net<i>.failed`; a
stripe-pruning directory has `metrics.jsonl` and, once pruned, `prune.json`. Anything missing or
half-written becomes a note on the session, never a crash.
"""
import csv
import json
import math
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from .session import CONFIG_FILE

# Directories inside a session that never hold a session of their own.
NOT_SESSIONS = {"exchange", "plots"}
SEARCH_DEPTH = 3


class NotASession(Exception):
    """A directory that cannot be summarised; the message says why."""


# ---------------------------------------------------------------------------------------------------------
# The papers' numbers (SPEC §9). A row applies to a session when every key of `match` has one of the
# allowed values in the session's configuration (see `configuration`); None stands for "not recorded".
# Rows ask for the flags that define them (slr: neither --difflr nor --cos; dlr: both), so a session that
# did not record its flags gets no number rather than a wrong one.

@dataclass(frozen=True)
class PaperRow:
    table: str
    row: str
    value: str  # as printed in the paper
    match: dict
    epochs: int = None  # the paper's schedule, when known
    top5: str = None

    @property
    def top1(self):
        """The row's top-1 accuracy (percent), or None for rows that report reductions."""
        try:
            return float(self.value)
        except ValueError:
            return None

    def text(self):
        value = self.value if self.top5 is None else f"{self.value} (top-5 {self.top5})"
        return f"{value} [{self.table}: {self.row}]"

    def applies_to(self, config):
        return all(config.get(key) in allowed for key, allowed in self.match.items())


CIFAR_EPOCHS = 200
IMAGENET_EPOCHS = 90
STRIPE_EPOCHS = 160

# model: (baseline, slr, dlr) on CIFAR-10, then on CIFAR-100.
CIFAR_TABLE = {
    "resnet32": (("92.83", "93.33", "93.94"), ("69.82", "71.16", "71.28")),
    "resnet56": (("93.50", "94.28", "94.73"), ("71.55", "73.09", "72.83")),
    "resnet110": (("93.81", "94.60", "94.96"), ("73.21", "74.70", "75.27")),
    "mobilenetv2": (("92.42", "93.53", "94.20"), ("71.44", "73.26", "74.15")),
}
MOBILENET_NETWORKS = {2: ("94.20", "74.15"), 3: ("94.55", "76.21"), 4: ("95.23", "77.08"),
                      6: ("95.33", "78.32"), 8: ("95.20", "77.76")}
VGG16_LEVELS = {"baseline": ("93.68", "73.41"), "layer": ("94.02", "74.28"), "filter": ("94.26", "74.63")}
SCION_SOURCES = {"baseline": ("92.42", "71.44"), "noise": ("92.51", "72.34"), "internal": ("92.68", "72.38"),
                 "external": ("92.94", "72.90")}
IMAGENET_TABLE = {"resnet18": (("69.15", "88.87"), ("71.19", "90.01")),
                  "resnet34": (("72.60", "90.91"), ("74.58", "92.05")),
                  "resnet50": (("75.92", "92.81"), ("76.76", "93.34"))}
# (teacher, student): CIFAR-100 baseline, grafting, distillation, grafting+.
GRAFTING_PLUS = {("resnet56", "resnet32"): ("69.87", "70.76", "72.31", "72.69"),
                 ("resnet110", "resnet56"): ("71.87", "72.00", "73.42", "74.28"),
                 ("resnet110", "mobilenetv2"): ("72.4", "73.79", "74.98", "75.55")}
STRIPE_TABLE = {("vgg16", "cifar", 10, None): "−92.66 % params, −71.16 % FLOPs, accuracy +0.4",
                ("resnet56", "cifar", 10, None): "−77.7 % params, −75.6 % FLOPs, accuracy −0.12",
                ("resnet18", "imagenet", 1000, 5e-6): "−50.48 % FLOPs, top-1 +0.23",
                ("resnet18", "imagenet", 1000, 2e-5): "−54.58 % FLOPs, top-1 −0.17"}

NAMES = {"resnet18": "ResNet18", "resnet32": "ResNet32", "resnet34": "ResNet34", "resnet50": "ResNet50",
         "resnet56": "ResNet56", "resnet110": "ResNet110", "mobilenetv2": "MobileNetV2", "vgg16": "VGG16"}


def _grafting(num, level="layer", source="external"):
    return {"num": (num,), "level": (level,), "criterion": ("entropy",), "source": (source,)}


def _paper_rows():
    rows = []
    for model, per_classes in CIFAR_TABLE.items():
        for classes, (base, slr, dlr) in zip((10, 100), per_classes):
            common = {"script": ("grafting_cifar",), "data": ("cifar",), "model": (model,),
                      "num_classes": (classes,)}
            name = f"{NAMES[model]} C{classes}"
            rows += [
                PaperRow("CIFAR grafting", f"{name} baseline", base,
                         {**common, "num": (1,), "source": ("external",), "cos": (False,)}, CIFAR_EPOCHS),
                PaperRow("CIFAR grafting", f"{name} slr", slr,
                         {**common, **_grafting(2), "difflr": (False,), "cos": (False,)}, CIFAR_EPOCHS),
                PaperRow("CIFAR grafting", f"{name} dlr", dlr,
                         {**common, **_grafting(2), "difflr": (True,), "cos": (True,)}, CIFAR_EPOCHS)]
    for classes, column in ((10, 0), (100, 1)):
        common = {"script": ("grafting_cifar",), "data": ("cifar",), "num_classes": (classes,)}
        mobilenet = {**common, "model": ("mobilenetv2",)}
        for num, values in MOBILENET_NETWORKS.items():
            rows.append(PaperRow("MobileNetV2 networks (dlr)", f"C{classes} N={num}", values[column],
                                 {**mobilenet, **_grafting(num), "difflr": (True,), "cos": (True,)}, CIFAR_EPOCHS))
        # The paper does not say which learning-rate schedule its VGG16 table used: no flags asked.
        vgg = {**common, "model": ("vgg16",)}
        rows += [PaperRow("VGG16 levels", f"C{classes} baseline", VGG16_LEVELS["baseline"][column],
                          {**vgg, "num": (1,), "source": ("external",)}, CIFAR_EPOCHS),
                 PaperRow("VGG16 levels", f"C{classes} layer level", VGG16_LEVELS["layer"][column],
                          {**vgg, **_grafting(2)}, CIFAR_EPOCHS),
                 PaperRow("VGG16 levels", f"C{classes} filter level", VGG16_LEVELS["filter"][column],
                          {**vgg, **_grafting(2, level="filter")}, CIFAR_EPOCHS)]
        # The sources table's baseline equals the CIFAR table's: it was trained with the baseline's schedule.
        same_lr = {"difflr": (False, None), "cos": (False,)}
        rows += [PaperRow("scion sources", f"MobileNetV2 C{classes} baseline", SCION_SOURCES["baseline"][column],
                          {**mobilenet, "num": (1,), "source": ("external",), "cos": (False,)}, CIFAR_EPOCHS),
                 PaperRow("scion sources", f"MobileNetV2 C{classes} noise", SCION_SOURCES["noise"][column],
                          {**mobilenet, "num": (1,), "source": ("noise",), **same_lr}, CIFAR_EPOCHS),
                 PaperRow("scion sources", f"MobileNetV2 C{classes} internal", SCION_SOURCES["internal"][column],
                          {**mobilenet, "num": (1,), "source": ("internal",), **same_lr}, CIFAR_EPOCHS),
                 PaperRow("scion sources", f"MobileNetV2 C{classes} external", SCION_SOURCES["external"][column],
                          {**mobilenet, **_grafting(2), **same_lr}, CIFAR_EPOCHS)]
    for model, (baseline, grafting) in IMAGENET_TABLE.items():
        common = {"script": ("grafting_imagenet",), "data": ("imagenet",), "model": (model,),
                  "num_classes": (1000,), "cos": (False, None), "pretrained": (False, None)}
        rows += [PaperRow("ImageNet", f"{NAMES[model]} baseline", baseline[0],
                          {**common, "num": (1,), "source": ("external", None)}, IMAGENET_EPOCHS, baseline[1]),
                 PaperRow("ImageNet", f"{NAMES[model]} grafting", grafting[0],
                          {**common, "num": (2,), "source": ("external", None), "level": ("layer", None),
                           "criterion": ("entropy", None)}, IMAGENET_EPOCHS, grafting[1])]
    for (teacher, student), values in GRAFTING_PLUS.items():
        common = {"script": ("grafting_plus",), "data": ("cifar",), "num_classes": (100,), "model": (student,)}
        pair = f"{NAMES[teacher]} → {NAMES[student]}"
        for (num, teachers, method), value in zip(((1, (), "baseline"), (2, (), "grafting"),
                                                   (1, (teacher,), "distillation"), (2, (teacher,), "grafting+")),
                                                  values):
            match = {**common, "teachers": (teachers,), **(_grafting(2) if num == 2 else
                                                            {"num": (1,), "source": ("external",)})}
            rows.append(PaperRow("grafting+ C100", f"{pair} {method}", value, match))
    for (model, data, classes, sr), value in STRIPE_TABLE.items():
        match = {"kind": ("stripe",), "model": (model,), "data": (data,), "num_classes": (classes,),
                 "pruned": (True,)}
        if sr is not None:
            match["sr"] = (sr,)
        label = f"{NAMES[model]} {'C10' if data == 'cifar' else 'ImageNet'}" + (f" α={sr:g}" if sr else "")
        rows.append(PaperRow("stripe pruning", label, value, match, STRIPE_EPOCHS if data == "cifar" else None))
    return rows


PAPER_ROWS = _paper_rows()


def paper_rows_for(config):
    """The paper rows that apply to a session's configuration; rows repeating a number already matched
    (a baseline shared by two tables) are left out."""
    rows, seen = [], set()
    for row in PAPER_ROWS:
        if row.applies_to(config) and row.value not in seen:
            rows.append(row)
            seen.add(row.value)
    return rows


# ---------------------------------------------------------------------------------------------------------
# Reading sessions.

@dataclass
class Network:
    """One network's epochs (the parsed lines of its metrics file) and its best checkpoint."""

    index: int
    records: list
    best_path: Path = None

    def accuracies(self, key="test_acc"):
        return [r[key] for r in self.records if isinstance(r.get(key), (int, float))]

    @property
    def epochs(self):
        return self.records[-1]["epoch"] if self.records else 0

    @property
    def best(self):
        """Best top-1 over the epochs so far (the value `best_<i>.t7` holds)."""
        accs = self.accuracies()
        return max(accs) if accs else None

    @property
    def final(self):
        accs = self.accuracies()
        return accs[-1] if accs else None

    @property
    def best5(self):
        """Top-5 of the best top-1 epoch (ImageNet), or None."""
        scored = [r for r in self.records if "test_acc5" in r and "test_acc" in r]
        return max(scored, key=lambda r: r["test_acc"])["test_acc5"] if scored else None


@dataclass
class Session:
    path: Path
    kind: str  # "grafting" (metrics_<i>.jsonl, any script) or "stripe" (metrics.jsonl, prune.json)
    raw: dict
    networks: list
    prune: dict = None
    failed: dict = field(default_factory=dict)  # network index: reason
    problems: list = field(default_factory=list)

    @property
    def config(self):
        return configuration(self.raw, self.kind)

    @property
    def planned_epochs(self):
        return self.config["epochs"]

    @property
    def epochs_done(self):
        """Epochs every network has finished (the slowest network's count)."""
        return min((n.epochs for n in self.networks), default=0)

    @property
    def state(self):
        if self.failed:
            return "failed"
        planned = self.planned_epochs
        if planned is None:
            return None
        if self.kind == "stripe" and self.epochs_done >= planned and self.prune is None:
            return "trained, not pruned yet"
        return "done" if self.epochs_done >= planned else "in progress"

    def paper(self):
        return paper_rows_for(self.config)


def configuration(raw, kind="grafting"):
    """The fields a session is described and matched on, from its session.json (None when not recorded):
    script, kind, model, data (cifar, imagenet, digits, fake, ...), dataset, num_classes, num, level,
    criterion, source, difflr, cos, teachers (a tuple of architectures), sr, threshold, pruned, pretrained,
    epochs (planned)."""
    details = raw.get("details") if isinstance(raw.get("details"), dict) else {}

    def get(*keys):
        for key in keys:
            if key in raw:
                return raw[key]
            if key in details:
                return details[key]
        return None

    model = get("model", "arch")
    model = model.lower() if isinstance(model, str) else None
    if model == "vgg":  # stripe_pruning's --arch VGG is VGG16
        model = "vgg16"
    teachers = get("teachers")
    if isinstance(teachers, list):
        teachers = tuple(t.get("arch") if isinstance(t, dict) else t for t in teachers)
    elif get("teacher_arch") is not None:
        teachers = tuple(get("teacher_arch"))
    num_classes = get("num_classes", "cifar")
    dataset = get("dataset")
    dataset = dataset.lower() if isinstance(dataset, str) else None
    script = get("script")
    data = dataset
    if dataset in ("imagenet", "imagefolder") or (dataset is None and script == "grafting_imagenet"):
        data = "imagenet" if num_classes == 1000 else "imagefolder"
    sr = get("sr")
    return {"script": script, "kind": kind, "model": model, "data": data, "dataset": dataset,
            "num_classes": num_classes, "num": get("num") if kind == "grafting" else 1,
            "level": get("level"), "criterion": get("criterion"), "source": get("source"),
            "difflr": get("difflr"), "cos": get("cos"), "teachers": teachers, "sr": sr,
            "threshold": get("threshold"), "pruned": bool(sr) if kind == "stripe" and sr is not None else None,
            "pretrained": get("pretrained"), "epochs": get("epochs")}


def read_metrics(path):
    """(records, problems) of a metrics file: lines that do not parse (a write cut by a kill) or carry no
    epoch are skipped and reported."""
    records, problems = [], []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as err:
        return [], [f"{Path(path).name} unreadable ({err.strerror})"]
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            what = "the last line" if number == len(lines) else f"line {number}"
            problems.append(f"{Path(path).name}: {what} is not complete JSON (a write cut short?); skipped")
            continue
        if not isinstance(record, dict) or not isinstance(record.get("epoch"), int):
            problems.append(f"{Path(path).name}: line {number} has no epoch; skipped")
            continue
        records.append(record)
    return records, problems


def _read_json(path, problems):
    try:
        value = json.loads(Path(path).read_text())
    except OSError as err:
        problems.append(f"{Path(path).name} unreadable ({err.strerror})")
        return None
    except ValueError:
        problems.append(f"{Path(path).name} is not valid JSON")
        return None
    if not isinstance(value, dict):
        problems.append(f"{Path(path).name} does not hold a JSON object")
        return None
    return value


def _network_indices(path):
    indices = set()
    for entry in path.glob("metrics_*.jsonl"):
        suffix = entry.stem.removeprefix("metrics_")
        if suffix.isdigit():
            indices.add(int(suffix))
    return indices


def is_session(path):
    path = Path(path)
    return ((path / CONFIG_FILE).is_file() or (path / "metrics.jsonl").is_file()
            or (path / "prune.json").is_file() or bool(_network_indices(path)))


def read_session(path):
    """A Session from the files of directory `path`; raises NotASession when there is nothing to read."""
    path = Path(path)
    if not path.is_dir():
        raise NotASession("not a directory")
    if not is_session(path):
        raise NotASession(f"not a session directory (no {CONFIG_FILE}, metrics_<i>.jsonl or metrics.jsonl)")
    problems = []
    raw = {}
    if (path / CONFIG_FILE).is_file():
        raw = _read_json(path / CONFIG_FILE, problems) or {}
    if (path / "metrics.jsonl").is_file() or (path / "prune.json").is_file():
        return _read_stripe(path, raw, problems)
    indices = _network_indices(path)
    if isinstance(raw.get("num"), int) and raw["num"] >= 1:
        indices |= set(range(1, raw["num"] + 1))
    networks, failed = [], {}
    for i in sorted(indices):
        metrics = path / f"metrics_{i}.jsonl"
        records = []
        if metrics.is_file():
            records, bad = read_metrics(metrics)
            problems += bad
        if not records:
            problems.append(f"network {i}: no finished epoch yet")
        best = path / f"best_{i}.t7"
        if not best.is_file():
            best = None
            if records:
                problems.append(f"network {i}: best_{i}.t7 missing")
        marker = path / "exchange" / f"net{i}.failed"
        if marker.is_file():
            failed[i] = reason = _failure_reason(marker)
            problems.append(f"network {i} failed: {reason}")
        networks.append(Network(i, records, best))
    if not raw:
        problems.append(f"{CONFIG_FILE} missing or unreadable: configuration unknown, no paper number")
    return Session(path, "grafting", raw, networks, failed=failed, problems=problems)


def _failure_reason(marker):
    """The reason recorded in an exchange/net<i>.failed marker ({"time", "reason"})."""
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return "reason unreadable"
    return str(record.get("reason", "no reason given")) if isinstance(record, dict) else "no reason given"


def _read_stripe(path, raw, problems):
    records = []
    if (path / "metrics.jsonl").is_file():
        records, bad = read_metrics(path / "metrics.jsonl")
        problems += bad
    if not records:
        problems.append("no finished epoch yet")
    best = path / "best.pth.tar"
    if not best.is_file():
        best = None
        if records:
            problems.append("best.pth.tar missing")
    prune = None
    if (path / "prune.json").is_file():
        prune = _read_json(path / "prune.json", problems)
    return Session(path, "stripe", raw, [Network(1, records, best)], prune=prune, problems=problems)


def find_sessions(paths):
    """(sessions, skipped): every session directory among `paths` or below them (a directory holding
    sessions, like baseline.sh's run1..runN, stands for all of them); skipped is [(path, reason)]."""
    sessions, skipped, seen = [], [], set()

    def add(path):
        key = os.path.realpath(path)
        if key in seen:
            return
        seen.add(key)
        try:
            sessions.append(read_session(path))
        except NotASession as err:
            skipped.append((path, str(err)))

    for path in map(Path, paths):
        if not path.is_dir() or is_session(path):
            add(path)
            continue
        found = _sessions_below(path, SEARCH_DEPTH)
        if not found:
            skipped.append((path, f"not a session directory (no {CONFIG_FILE}, metrics_<i>.jsonl or "
                                  f"metrics.jsonl in it or in its subdirectories)"))
        for sub in found:
            add(sub)
    return sessions, skipped


def _sessions_below(path, depth):
    if depth == 0:
        return []
    found = []
    try:
        children = sorted(p for p in path.iterdir() if p.is_dir() and p.name not in NOT_SESSIONS)
    except OSError:
        return []
    for child in children:
        found += [child] if is_session(child) else _sessions_below(child, depth - 1)
    return found


def comparable_baselines(session, baselines):
    """The baselines trained on the same task as `session` (same model, data and classes), itself left out."""
    keys = ("model", "data", "num_classes")
    config = session.config
    return [b for b in baselines if b.path.resolve() != session.path.resolve()
            and all(config[k] is not None and b.config[k] == config[k] for k in keys)]


# ---------------------------------------------------------------------------------------------------------
# Describing sessions.

def method_label(config):
    """A short name of what the session ran: baseline, grafting (slr/dlr), distillation, grafting+, ..."""
    if config["kind"] == "stripe":
        if config["sr"] is None:
            return "stripe-wise training (flags not recorded)"
        if not config["sr"]:
            return "stripe baseline (no sparsity)"
        threshold = "" if config["threshold"] is None else f", threshold {config['threshold']:g}"
        return f"stripe pruning (sr {config['sr']:g}{threshold})"
    num, teachers = config["num"], config["teachers"] or ()
    if config["source"] in ("noise", "internal"):
        label = f"{config['source']} scion"
    elif teachers:
        label = ("grafting+" if num and num > 1 else "distillation") + f" from {'+'.join(map(str, teachers))}"
    elif num == 1:
        label = "baseline"
    elif num is None:
        return "unknown"
    else:
        label = "grafting"
    if num and num > 1:
        if config["level"] == "filter":
            label += ", filter level"
        if config["criterion"] == "l1":
            label += ", L1 criterion"
        flags = (config["difflr"], config["cos"])
        label += {(False, False): " (slr)", (True, True): " (dlr)", (True, False): " (difflr)",
                  (False, True): " (cos)"}.get(flags, "")
    elif config["cos"]:
        label += " (cos)"
    return label


def data_label(config):
    data, classes = config["data"], config["num_classes"]
    if data == "cifar" and classes in (10, 100):
        return f"CIFAR-{classes}"
    if data == "imagenet":
        return "ImageNet"
    if data is None:
        return "?" if classes is None else f"? ({classes} classes)"
    return data if classes is None else f"{data} ({classes} classes)"


def mean_std(values):
    """(mean, sample standard deviation over n − 1), std None for fewer than two values."""
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def _pct(value):
    return "—" if value is None else f"{value:.2f}"


def _pm(values):
    mean, std = mean_std(values)
    if mean is None:
        return "—"
    return _pct(mean) if std is None else f"{mean:.2f} ± {std:.2f}"


def _count(value):
    return "?" if value is None else f"{value / 1e6:.2f}M"


def _reduction(before, after):
    """1 − after/before in percent, None when unknown."""
    if not isinstance(before, (int, float)) or not isinstance(after, (int, float)) or before == 0:
        return None
    return 100.0 * (1 - after / before)


def notes(session):
    """State and schedule remarks for the table's last column."""
    out = []
    config = session.config
    state = session.state
    if state and state != "done":
        out.append(state)
    rows = session.paper()
    planned = config["epochs"]
    paper_epochs = {row.epochs for row in rows if row.epochs}
    if planned is not None and paper_epochs and planned not in paper_epochs:
        out.append(f"paper trained {'/'.join(map(str, sorted(paper_epochs)))} epochs, this run {planned}")
    if session.kind == "grafting" and config["num"] and config["num"] > 1 and None in (config["difflr"], config["cos"]):
        out.append("learning-rate flags not recorded")
    if session.problems:
        out.append(f"{len(session.problems)} problem(s), see stderr")
    return "; ".join(out)


def epochs_cell(session):
    done = [n.epochs for n in session.networks]
    text = str(min(done, default=0)) if len(set(done)) <= 1 else f"{min(done)}–{max(done)}"
    planned = session.planned_epochs
    return text if planned is None else f"{text}/{planned}"


def _md_row(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def markdown(sessions):
    """The Markdown tables: grafting-like sessions, then stripe-pruning sessions."""
    parts = []
    grafting = [s for s in sessions if s.kind == "grafting"]
    stripe = [s for s in sessions if s.kind == "stripe"]
    if grafting:
        top5 = any(n.best5 is not None for s in grafting for n in s.networks)
        header = ["session", "method", "model", "data", "N", "epochs", "best top-1 per network",
                  "final top-1 per network", "best mean ± std", "final mean ± std"]
        header += ["best top-5 mean"] if top5 else []
        header += ["paper top-1", "notes"]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for s in grafting:
            config = s.config
            row = [s.path, method_label(config), config["model"] or "?", data_label(config), len(s.networks),
                   epochs_cell(s), " / ".join(_pct(n.best) for n in s.networks),
                   " / ".join(_pct(n.final) for n in s.networks), _pm(n.best for n in s.networks),
                   _pm(n.final for n in s.networks)]
            row += [_pm(n.best5 for n in s.networks)] if top5 else []
            row += ["; ".join(r.text() for r in s.paper()) or "—", notes(s)]
            lines.append(_md_row(row))
        parts.append("\n".join(lines))
    if stripe:
        header = ["session", "method", "model", "data", "epochs", "best top-1", "final top-1", "pruned top-1",
                  "params", "FLOPs", "paper", "notes"]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for s in stripe:
            config, net, prune = s.config, s.networks[0], s.prune or {}
            lines.append(_md_row([
                s.path, method_label(config), config["model"] or "?", data_label(config), epochs_cell(s),
                _pct(net.best), _pct(net.final),
                "—" if not prune else f"{_pct(prune.get('acc'))} → {_pct(prune.get('acc_pruned'))}",
                _size_cell(prune, "params"), _size_cell(prune, "flops"),
                "; ".join(r.text() for r in s.paper()) or "—", notes(s)]))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _size_cell(prune, key):
    if not prune:
        return "—"
    before, after = prune.get(key), prune.get(f"{key}_pruned")
    reduction = _reduction(before, after)
    return f"{_count(before)} → {_count(after)}" + ("" if reduction is None else f" (−{reduction:.2f} %)")


CSV_FIXED = ["session", "kind", "script", "method", "model", "dataset", "num_classes", "networks", "epochs_done",
             "epochs_planned", "state", "best_mean", "best_std", "final_mean", "final_std"]
CSV_STRIPE = ["acc", "acc_pruned", "params", "params_pruned", "params_reduction", "flops", "flops_pruned",
              "flops_reduction"]
CSV_TAIL = ["paper_top1", "paper_rows", "notes"]


def csv_rows(sessions):
    """One dict per session, with best_<i>/final_<i> (and best5_<i>) for every network."""
    rows = []
    for s in sessions:
        config = s.config
        best_mean, best_std = mean_std([n.best for n in s.networks])
        final_mean, final_std = mean_std([n.final for n in s.networks])
        row = {"session": str(s.path), "kind": s.kind, "script": config["script"], "method": method_label(config),
               "model": config["model"], "dataset": config["dataset"], "num_classes": config["num_classes"],
               "networks": len(s.networks), "epochs_done": s.epochs_done, "epochs_planned": s.planned_epochs,
               "state": s.state, "best_mean": best_mean, "best_std": best_std, "final_mean": final_mean,
               "final_std": final_std}
        for n in s.networks:
            row[f"best_{n.index}"] = n.best
            row[f"final_{n.index}"] = n.final
            if n.best5 is not None:
                row[f"best5_{n.index}"] = n.best5
        if s.prune:
            row.update({key: s.prune.get(key) for key in CSV_STRIPE if key in s.prune})
            row["params_reduction"] = _reduction(s.prune.get("params"), s.prune.get("params_pruned"))
            row["flops_reduction"] = _reduction(s.prune.get("flops"), s.prune.get("flops_pruned"))
        paper = s.paper()
        row["paper_top1"] = " ".join(r.value for r in paper if r.top1 is not None)
        row["paper_rows"] = "; ".join(f"{r.table}: {r.row} = {r.value}" for r in paper)
        row["notes"] = notes(s)
        rows.append(row)
    return rows


def write_csv(sessions, path):
    rows = csv_rows(sessions)
    most = max((len(s.networks) for s in sessions), default=0)
    per_network = [f"{key}_{i}" for i in range(1, most + 1) for key in ("best", "final")]
    top5 = [f"best5_{i}" for i in range(1, most + 1) if any(f"best5_{i}" in r for r in rows)]
    columns = CSV_FIXED + per_network + top5 + CSV_STRIPE + CSV_TAIL
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for k, v in row.items()})
