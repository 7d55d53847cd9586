"""The study's report (scripts/study/run.sh): every claim measured over seeds, from the session directories
under a study folder, as mean ± sample standard deviation across seeds and, against a baseline, the paired
difference per seed with its 95 % Student-t interval. Networks are paired by seed: network i of every
session of seed s starts from seed s + i.

    python -m filtergraft.results.study report STUDY        STUDY/report.md, STUDY/summary.json, STUDY/plots/
    python -m filtergraft.results.study settings STUDY KEY=VALUE...   record the settings, refuse others
    python -m filtergraft.results.study wall STUDY START END STAGES FAILED   book one run.sh invocation

A session's value for a seed is the mean over its networks (grafting trains two or three side by side).
"""
import json
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy.stats import t as student_t

from ..session import NotASession, read_session
from .plots import filter_norms, seed_accuracy_plot, stripe_study_plot
from .tables import mean_std

SETTINGS_FILE = "study.json"
INVOCATIONS_FILE = "invocations.jsonl"
REPORT_FILE = "report.md"
SUMMARY_FILE = "summary.json"
CONFIDENCE = 0.95
PERCENTILES = (5, 10)  # invalid-filter thresholds: these percentiles of the baseline's filter L1 norms

GRAFTING = (("baseline", "baseline (step schedule)"), ("baseline_cos", "baseline (cosine)"),
            ("slr", "grafting N = 2, same rate (slr)"), ("dlr", "grafting N = 2, --difflr --cos (dlr)"),
            ("n3", "grafting N = 3, dlr"))
PLUS = (("baseline", "baseline"), ("grafting", "grafting"), ("distillation", "distillation"),
        ("grafting+", "grafting+"))
SHAPE = (("skeleton", "--freeze-weights: skeleton, BatchNorm, classifier learn"),
         ("control", "control: BatchNorm and classifier learn (skeleton frozen too)"))


class StudyError(Exception):
    """A study folder that cannot be used as asked; its message is one line for the user."""


# --- statistics ---------------------------------------------------------------------------------------

def spread(values):
    """{"n", "mean", "std"} of the values: std the sample standard deviation (n − 1), None below 2."""
    values = list(values)
    mean, std = mean_std(values)
    return {"n": len(values), "mean": mean, "std": std}


def paired_difference(values, reference, confidence=CONFIDENCE):
    """Over the seeds both dicts {seed: value} hold, d_s = values_s − reference_s: {"n", "mean", "low",
    "high"}, the interval mean(d) ± t_{(1+confidence)/2, n−1}·sd(d)/√n (None below 2 seeds)."""
    seeds = sorted(set(values) & set(reference))
    diffs = [values[s] - reference[s] for s in seeds]
    result = {"n": len(diffs), "mean": statistics.fmean(diffs) if diffs else None, "low": None, "high": None}
    if len(diffs) > 1:
        half = student_t.ppf((1 + confidence) / 2, len(diffs) - 1) * statistics.stdev(diffs) / math.sqrt(len(diffs))
        result.update(low=result["mean"] - half, high=result["mean"] + half)
    return result


def verdict(difference):
    """Whether a paired difference is beyond the noise: its interval excludes 0."""
    if difference["low"] is None:
        return "too few seeds to tell"
    if difference["low"] > 0 or difference["high"] < 0:
        return "beyond the noise"
    return "within the noise"


# --- reading the study folder ---------------------------------------------------------------------------

def seed_dirs(root):
    """{seed: directory} of root/seed<s>."""
    found = {}
    for path in Path(root).glob("seed*"):
        if path.is_dir() and path.name[4:].isdigit():
            found[int(path.name[4:])] = path
    return dict(sorted(found.items()))


def finished_session(path, problems):
    """The StoredSession at `path` when all its planned epochs are done (a stripe run: also pruned)."""
    try:
        session = read_session(path)
    except NotASession:
        return None
    if session.state != "done":
        problems.append(f"{path}: {session.state or 'unknown state'}, left out")
        return None
    return session


def session_values(root, name, problems):
    """{seed: session} of root/seed<s>/name, finished ones only."""
    sessions = {}
    for seed, path in seed_dirs(root).items():
        if (path / name).is_dir() and (session := finished_session(path / name, problems)) is not None:
            sessions[seed] = session
    return sessions


def network_mean(session, key):
    """The mean over the session's networks of their best or final top-1."""
    return statistics.fmean(getattr(network, key) for network in session.networks)


def accuracy_rows(root, methods, baseline, problems, extra_reference=None):
    """Per method: its sessions' best and final top-1 over the seeds, and the paired differences against
    `baseline` (and `extra_reference`) method's."""
    by_method = {key: session_values(root, key, problems) for key, _ in methods}
    values = {key: {metric: {seed: network_mean(s, metric) for seed, s in sessions.items()}
                    for metric in ("best", "final")} for key, sessions in by_method.items()}
    rows = []
    for key, label in methods:
        row = {"method": key, "label": label, "networks": sorted({len(s.networks) for s in by_method[key].values()}),
               "per_seed": values[key]}
        for metric in ("best", "final"):
            row[metric] = spread(values[key][metric].values())
            if key != baseline:
                row[f"{metric}_vs_{baseline}"] = paired_difference(values[key][metric], values[baseline][metric])
            if extra_reference and key not in (baseline, extra_reference):
                row[f"{metric}_vs_{extra_reference}"] = paired_difference(values[key][metric],
                                                                         values[extra_reference][metric])
        rows.append(row)
    return [row for row in rows if row["best"]["n"]], by_method


def invalid_filters(by_method, problems):
    """Thresholds at PERCENTILES of the baseline's pooled filter L1 norms (best checkpoints, every seed), and
    per method the count of filters under each (mean over a session's networks) per seed."""
    norms = {key: {seed: [filter_norms(n.best_path)[0] for n in s.networks if n.best_path]
                   for seed, s in sessions.items()} for key, sessions in by_method.items() if sessions}
    pooled = [a for arrays in norms["baseline"].values() for a in arrays]
    if not pooled:
        problems.append("invalid filters: no baseline checkpoint")
        return None
    thresholds = {p: float(np.percentile(np.concatenate(pooled), p)) for p in PERCENTILES}
    counts = {key: {p: {seed: statistics.fmean(int((a < t).sum()) for a in arrays)
                        for seed, arrays in per_seed.items() if arrays}
                    for p, t in thresholds.items()} for key, per_seed in norms.items()}
    rows = []
    for key, per_threshold in counts.items():
        row = {"method": key, "filters": int(pooled[0].size), "per_seed": per_threshold}
        for p in PERCENTILES:
            row[f"p{p}"] = spread(per_threshold[p].values())
            if key != "baseline":
                row[f"p{p}_vs_baseline"] = paired_difference(per_threshold[p], counts["baseline"][p])
        rows.append(row)
    return {"thresholds": thresholds, "rows": rows}


def stripe_rows(root, arch, problems):
    """Per run (baseline, sr<value>) of stripe/<arch>: the reductions the release counts (prune.json keeps
    them in percent) and the pruned network's accuracy per seed, and the accuracy's paired difference
    against the baseline."""
    runs = sorted({p.name for seed_dir in seed_dirs(root).values() for p in seed_dir.iterdir() if p.is_dir()},
                  key=lambda name: (name != "baseline", float(name[2:]) if name.startswith("sr") else 0.0))
    per_run = {}
    for name in runs:
        sessions = session_values(root, name, problems)
        per_run[name] = {metric: {seed: s.prune[key] for seed, s in sessions.items()}
                         for metric, key in (("params", "params_reduction"), ("flops", "flops_reduction"),
                                             ("acc", "acc_pruned"))}
    rows = []
    for name in runs:
        row = {"run": name, "per_seed": per_run[name]}
        row.update({metric: spread(per_run[name][metric].values()) for metric in ("params", "flops", "acc")})
        if name != "baseline" and "baseline" in per_run:
            row["acc_vs_baseline"] = paired_difference(per_run[name]["acc"], per_run["baseline"]["acc"])
        rows.append(row)
    return rows


# --- the report ---------------------------------------------------------------------------------------

def _pm(stat, digits=2):
    if stat["mean"] is None:
        return "—"
    return f"{stat['mean']:.{digits}f}" + ("" if stat["std"] is None else f" ± {stat['std']:.{digits}f}")


def _diff(difference, digits=2):
    if difference is None or difference["mean"] is None:
        return "—"
    if difference["low"] is None:
        return f"{difference['mean']:+.{digits}f}"
    return f"{difference['mean']:+.{digits}f} [{difference['low']:+.{digits}f}, {difference['high']:+.{digits}f}]"


def _table(header, rows):
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def _verdicts(rows, key, label_of, what):
    lines = []
    for row in rows:
        if row.get(key) is not None and row[key]["n"]:
            lines.append(f"- {label_of(row)}: {what} {_diff(row[key])}, {verdict(row[key])}.")
    return lines


def accuracy_section(rows, baseline, baseline_label, extra=None, extra_label=None):
    header = ["method", "networks", "seeds", "best top-1 (%)", "final top-1 (%)", f"best − {baseline_label}",
              f"final − {baseline_label}"] + ([f"best − {extra_label}"] if extra else [])
    table = []
    for row in rows:
        cells = [row["label"], ", ".join(map(str, row["networks"])) or "—", str(row["best"]["n"]),
                 _pm(row["best"]), _pm(row["final"]), _diff(row.get(f"best_vs_{baseline}")),
                 _diff(row.get(f"final_vs_{baseline}"))]
        if extra:
            cells.append(_diff(row.get(f"best_vs_{extra}")))
        table.append(cells)
    lines = _table(header, table) + [""]
    lines += _verdicts(rows, f"best_vs_{baseline}", lambda r: r["label"], f"best top-1 − {baseline_label}")
    if extra:
        lines += _verdicts(rows, f"best_vs_{extra}", lambda r: r["label"], f"best top-1 − {extra_label}")
    return lines


def machine():
    """The CPU's name (from /proc/cpuinfo where there is one), its core count, and torch's version."""
    import torch

    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            name = next((line.split(":", 1)[1].strip() for line in info if line.startswith("model name")), name)
    except OSError:
        pass
    cuda = f", CUDA device {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{name}, {os.cpu_count()} cores{cuda}; Python {platform.python_version()}, torch {torch.__version__}"


def invocations(root):
    path = Path(root) / INVOCATIONS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def report(root):
    """Write STUDY/report.md, summary.json and plots/ from the sessions the study folder holds; the report's
    path. Stages not run (or not finished) are named as such."""
    root = Path(root)
    settings = read_settings(root)
    problems, summary, plots = [], {"settings": settings}, root / "plots"
    calls = invocations(root)
    wall = sum(c["end"] - c["start"] for c in calls)
    each = "; ".join(f"{c['stages']}: {(c['end'] - c['start']) / 60:.1f} min" for c in calls)
    lines = [f"# The study on digits ({root})", "",
             f"Command: `make study` (`scripts/study/run.sh`), settings {', '.join(f'{k}={v}' for k, v in settings.items())}.",
             f"Machine: {machine()}.",
             f"Wall time: {wall / 60:.1f} min over {len(calls)} invocation(s) "
             f"({each}).",
             "", "Each value per seed is the mean over a session's networks; ± is the sample std across seeds; "
             f"differences are paired by seed, with their {CONFIDENCE:.0%} Student-t interval. A difference whose "
             "interval holds 0 is within the noise.", ""]

    rows, by_method = accuracy_rows(root / "grafting", GRAFTING, "baseline", problems, extra_reference="baseline_cos")
    lines += ["## 1. Grafting", ""]
    if rows:
        summary["grafting"] = rows
        lines += accuracy_section(rows, "baseline", "baseline", "baseline_cos", "cosine baseline")
        lines += ["", f"![grafting]({seed_accuracy_plot(rows, 'Grafting on digits', plots / 'grafting.png').relative_to(root)})", ""]
        lines += ["## 2. Invalid filters", ""]
        invalid = invalid_filters(by_method, problems) if by_method["baseline"] else None
        if invalid:
            summary["invalid_filters"] = invalid
            t = invalid["thresholds"]
            lines.append("Filters of the best checkpoints whose L1 norm is under the baseline's own "
                         + " and ".join(f"{p}th percentile ({t[p]:.4g})" for p in PERCENTILES)
                         + f" (pooled over its seeds), of {invalid['rows'][0]['filters']} per network:")
            lines += [""] + _table(["method"] + [f"under p{p}" for p in PERCENTILES]
                                   + [f"under p{p} − baseline" for p in PERCENTILES],
                                   [[dict(GRAFTING)[r["method"]]] + [_pm(r[f"p{p}"], 1) for p in PERCENTILES]
                                    + [_diff(r.get(f"p{p}_vs_baseline"), 1) for p in PERCENTILES]
                                    for r in invalid["rows"]]) + [""]
            lines += _verdicts(invalid["rows"], f"p{PERCENTILES[0]}_vs_baseline", lambda r: dict(GRAFTING)[r["method"]],
                               f"filters under p{PERCENTILES[0]} − baseline")
        else:
            lines.append("No baseline checkpoint: not measured.")
    else:
        lines += ["Not run (`scripts/study/run.sh grafting`).", "", "## 2. Invalid filters", "",
                  "Not run (`scripts/study/run.sh invalid`)."]

    lines += ["", "## 3. Grafting+", ""]
    plus_rows, _ = accuracy_rows(root / "plus", PLUS, "baseline", problems)
    if plus_rows:
        summary["grafting_plus"] = plus_rows
        teacher = finished_session(root / "plus" / "teacher", problems) if (root / "plus" / "teacher").is_dir() else None
        if teacher:
            summary["teacher_best"] = teacher.networks[0].best
            lines.append(f"Teacher {settings.get('teacher')}: best top-1 {teacher.networks[0].best:.2f} % (trained once). "
                         f"Students {settings.get('model')} at rate {settings.get('lr')}; the two-student rows at it and at its "
                         "half, as the release's launcher (0.1 and 0.05).")
            lines.append("")
        lines += accuracy_section(plus_rows, "baseline", "baseline")
        lines += ["", f"![grafting+]({seed_accuracy_plot(plus_rows, 'Grafting+ on digits', plots / 'grafting_plus.png').relative_to(root)})"]
    else:
        lines.append("Not run (`scripts/study/run.sh plus`).")

    lines += ["", "## 4. Stripe-wise pruning", ""]
    archs = sorted(p.name for p in (root / "stripe").iterdir() if p.is_dir()) if (root / "stripe").is_dir() else []
    stripe = {arch: rows for arch in archs if (rows := stripe_rows(root / "stripe" / arch, arch, problems))}
    if stripe:
        summary["stripe"] = stripe
        lines.append(f"Threshold {settings.get('threshold')}; reductions of the pruned network as the release counts "
                     "them; accuracy of the pruned network (equal to the masked best checkpoint's).")
        for arch, rows in stripe.items():
            lines += ["", f"{arch}:", ""]
            lines += _table(["run", "seeds", "params −%", "FLOPs −%", "top-1 (%)", "top-1 − baseline"],
                            [[r["run"].replace("sr", "--sr "), str(r["acc"]["n"]), _pm(r["params"], 1),
                              _pm(r["flops"], 1), _pm(r["acc"]), _diff(r.get("acc_vs_baseline"))] for r in rows])
            lines += [""] + _verdicts(rows, "acc_vs_baseline", lambda r: f"{arch} {r['run'].replace('sr', '--sr ')}",
                                      "top-1 − baseline")
        lines += ["", f"![stripe]({stripe_study_plot(stripe, plots / 'stripe.png').relative_to(root)})"]
    else:
        lines.append("Not run (`scripts/study/run.sh stripe`).")

    lines += ["", "## 5. Shape only: a Filter Skeleton over frozen random weights", ""]
    shape_root = root / "shape" / str(settings.get("shape_arch"))
    shape_rows, _ = accuracy_rows(shape_root, SHAPE, "control", problems)
    if shape_rows:
        summary["shape"] = shape_rows
        lines += accuracy_section(shape_rows, "control", "control")
    else:
        lines.append("Not run (`scripts/study/run.sh shape`).")

    if problems:
        lines += ["", "## Left out", ""] + [f"- {p}" for p in problems]
    summary["problems"] = problems
    (root / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, sort_keys=True))
    path = root / REPORT_FILE
    path.write_text("\n".join(lines) + "\n")
    return path


# --- settings and timing ------------------------------------------------------------------------------

def read_settings(root):
    path = Path(root) / SETTINGS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def record_settings(root, settings):
    """Record `settings` in a new study folder; in one that has them, refuse different ones."""
    root = Path(root)
    recorded = read_settings(root)
    if recorded:
        changed = [f"{k.upper()}={recorded.get(k)} (now {v})" for k, v in settings.items() if recorded.get(k) != v]
        if changed:
            raise StudyError(f"{root} holds a study run with {', '.join(changed)}: give the same settings to "
                             f"continue it, or another STUDY folder")
        return
    root.mkdir(parents=True, exist_ok=True)
    (root / SETTINGS_FILE).write_text(json.dumps(settings, indent=1) + "\n")


def main(argv):
    mode, args = (argv[0], argv[1:]) if argv else (None, [])
    try:
        if mode == "report" and len(args) == 1:
            print(f"study report: {report(args[0])}")
        elif mode == "settings" and args and all("=" in a for a in args[1:]):
            record_settings(args[0], dict(a.split("=", 1) for a in args[1:]))
        elif mode == "wall" and len(args) == 5:
            with open(Path(args[0]) / INVOCATIONS_FILE, "a") as out:
                out.write(json.dumps({"start": int(args[1]), "end": int(args[2]), "stages": args[3],
                                      "failed": int(args[4])}) + "\n")
        else:
            sys.exit("usage: study.py report STUDY | settings STUDY KEY=VALUE... | wall STUDY START END STAGES FAILED")
    except (StudyError, OSError) as err:
        sys.exit(f"study: {err}")


if __name__ == "__main__":
    main(sys.argv[1:])
