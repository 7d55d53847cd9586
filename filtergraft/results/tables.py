"""Sessions (session.StoredSession) as tables: one Markdown row per session beside the papers' numbers, and
the same rows as CSV at full precision."""
import csv
import math
import statistics

from .paper import configuration, paper_rows_for


def method_label(config):
    """A short name of what the session ran: baseline, grafting (slr/dlr), distillation, grafting+, ..."""
    if config["kind"] == "stripe":
        if config.get("evaluate"):
            threshold = "" if config["threshold"] is None else f" at threshold {config['threshold']:g}"
            return f"pruned from a checkpoint{threshold} (no training)"
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
        elif config["conv_only"]:
            label += ", conv weights only"
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


def notes(session, config, paper):
    """State and schedule remarks for the table's last column (`paper`: the rows that apply)."""
    out = []
    state = session.state
    if state and state != "done":
        out.append(state)
    planned = config["epochs"]
    paper_epochs = {row.epochs for row in paper if row.epochs}
    if planned is not None and paper_epochs and planned not in paper_epochs:
        out.append(f"paper trained {'/'.join(map(str, sorted(paper_epochs)))} epochs, this run {planned}")
    grafts = session.kind == "grafting" and config["num"] and config["num"] > 1
    if grafts and None in (config["difflr"], config["cos"]):
        out.append("learning-rate flags not recorded")
    # sessions of versions before the run record evaluated after the graft and binned entropy closed
    if (grafts or config["source"] in ("noise", "internal")) and session.get("eval_order") is None:
        out.append("accuracy after the graft (an earlier version's order)")
    entropy = (grafts or config["source"] == "internal") and config["criterion"] != "l1"
    if entropy and (session.get("entropy_bins") or "closed") == "closed":
        out.append("closed entropy bins")
    if any(n.grafted is not None for n in session.networks):
        out.append("grafted: the network right after its graft (--eval-grafted)")
    if session.kind == "stripe" and session.prune and "flops_executed" not in session.prune:
        out.append("prune.json of an earlier version: its counts are torch's FLOP counter's, not the release's")
    if session.problems:
        out.append(f"{len(session.problems)} problem(s), see stderr")
    return "; ".join(out)


def epochs_cell(session):
    done = [n.epochs for n in session.networks]
    text = str(min(done, default=0)) if len(set(done)) <= 1 else f"{min(done)}–{max(done)}"
    planned = session.get("epochs")
    return text if planned is None else f"{text}/{planned}"


def _md_row(cells):
    return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"


def _size_cell(prune, key):
    if not prune:
        return "—"
    before, after = prune.get(key), prune.get(f"{key}_pruned")
    reduction = _reduction(before, after)
    return f"{_count(before)} → {_count(after)}" + ("" if reduction is None else f" (−{reduction:.2f} %)")


def _executed_cell(prune):
    """What pruned.pt2 runs: FLOPs executed and parameters stored ("—" for sessions that did not record them)."""
    if not prune or "flops_executed" not in prune:
        return "—"
    return f"{_count(prune['flops_executed'])} FLOPs, {_count(prune.get('params_stored'))} params"


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
        grafted = any(n.grafted is not None for s in grafting for n in s.networks)
        header += ["final grafted top-1 per network"] if grafted else []
        header += ["paper top-1", "notes"]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for s in grafting:
            config = configuration(s)
            paper = paper_rows_for(config)
            row = [s.path, method_label(config), config["arch"] or "?", data_label(config), len(s.networks),
                   epochs_cell(s), " / ".join(_pct(n.best) for n in s.networks),
                   " / ".join(_pct(n.final) for n in s.networks), _pm(n.best for n in s.networks),
                   _pm(n.final for n in s.networks)]
            row += [_pm(n.best5 for n in s.networks)] if top5 else []
            row += [" / ".join(_pct(n.grafted) for n in s.networks)] if grafted else []
            row += ["; ".join(r.text() for r in paper) or "—", notes(s, config, paper)]
            lines.append(_md_row(row))
        parts.append("\n".join(lines))
    if stripe:
        header = ["session", "method", "model", "data", "epochs", "best top-1", "final top-1", "pruned top-1",
                  "params (release count)", "FLOPs (release count)", "pruned.pt2 executes", "paper", "notes"]
        lines = [_md_row(header), _md_row(["---"] * len(header))]
        for s in stripe:
            config, net, prune = configuration(s), s.networks[0], s.prune or {}
            paper = paper_rows_for(config)
            lines.append(_md_row([
                s.path, method_label(config), config["arch"] or "?", data_label(config), epochs_cell(s),
                _pct(net.best), _pct(net.final),
                "—" if not prune else f"{_pct(prune.get('acc'))} → {_pct(prune.get('acc_pruned'))}",
                _size_cell(prune, "params"), _size_cell(prune, "flops"), _executed_cell(prune),
                "; ".join(r.text() for r in paper) or "—", notes(s, config, paper)]))
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


CSV_FIXED = ["session", "kind", "script", "method", "model", "dataset", "num_classes", "networks", "epochs_done",
             "epochs_planned", "state", "best_mean", "best_std", "final_mean", "final_std"]
# params*, flops* as the release counts them; params_stored and flops_executed as pruned.pt2 runs.
CSV_STRIPE = ["acc", "acc_pruned", "params", "params_pruned", "params_reduction", "flops", "flops_pruned",
              "flops_reduction", "params_stored", "flops_executed"]
CSV_TAIL = ["paper_top1", "paper_rows", "notes"]


def _column(key, index):
    """The CSV column of network `index`'s `key` (best, final, best5, final_grafted)."""
    return f"{key}_{index}"


def csv_rows(sessions):
    """One dict per session, with best_<i>/final_<i> (and best5_<i>) for every network."""
    rows = []
    for s in sessions:
        config = configuration(s)
        paper = paper_rows_for(config)
        best_mean, best_std = mean_std([n.best for n in s.networks])
        final_mean, final_std = mean_std([n.final for n in s.networks])
        row = {"session": str(s.path), "kind": s.kind, "script": config["script"], "method": method_label(config),
               "model": config["arch"], "dataset": config["dataset"], "num_classes": config["num_classes"],
               "networks": len(s.networks), "epochs_done": s.epochs_done, "epochs_planned": s.get("epochs"),
               "state": s.state, "best_mean": best_mean, "best_std": best_std, "final_mean": final_mean,
               "final_std": final_std}
        for n in s.networks:
            row[_column("best", n.index)], row[_column("final", n.index)] = n.best, n.final
            if n.best5 is not None:
                row[_column("best5", n.index)] = n.best5
            if n.grafted is not None:
                row[_column("final_grafted", n.index)] = n.grafted
        if s.prune:
            row.update({key: s.prune.get(key) for key in CSV_STRIPE if key in s.prune})
            row["params_reduction"] = _reduction(s.prune.get("params"), s.prune.get("params_pruned"))
            row["flops_reduction"] = _reduction(s.prune.get("flops"), s.prune.get("flops_pruned"))
        row["paper_top1"] = " ".join(r.value for r in paper if r.top1 is not None)
        row["paper_rows"] = "; ".join(f"{r.table}: {r.row} = {r.value}" for r in paper)
        row["notes"] = notes(s, config, paper)
        rows.append(row)
    return rows


def write_csv(sessions, path):
    rows = csv_rows(sessions)
    most = max((len(s.networks) for s in sessions), default=0)
    per_network = [_column(key, i) for i in range(1, most + 1) for key in ("best", "final")]
    optional = [_column(key, i) for key in ("best5", "final_grafted") for i in range(1, most + 1)
                if any(_column(key, i) in r for r in rows)]
    columns = CSV_FIXED + per_network + optional + CSV_STRIPE + CSV_TAIL
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, restval="")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if v is None or (isinstance(v, float) and math.isnan(v)) else v
                             for k, v in row.items()})
