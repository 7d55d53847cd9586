"""Figures of a session (session.StoredSession; PNG, drawn with matplotlib's Agg canvas, no display needed):
test accuracy per epoch, the graft coefficient α and the entropy of every layer per epoch, and the histogram
of the filter L1 norms of the best checkpoints, baseline beside grafting, as in the papers' figures."""
import math
import re
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..analysis import conv_weights, filter_l1_norms, model_of
from ..checkpoint import load_checkpoint, state_dict_of
from ..errors import UserError
from ..session import PLOTS_DIR
from .paper import comparable_baselines

INVALID_THRESHOLD = 0.1  # the paper's threshold for an invalid filter (ResNet32, CIFAR-10)
HIST_BINS = 60
MAX_LAYER_TICKS = 40


def short_name(path):
    """A session's name for titles: its directory, with the parent for baseline.sh's run1..runN."""
    return f"{path.parent.name}/{path.name}" if re.fullmatch(r"run\d+", path.name) else path.name


def _network_label(session, network, baseline=False):
    if not baseline:
        return f"network {network.index}"
    name = short_name(session.path)
    label = name if name.startswith("baseline") else f"baseline {name}"  # not "baseline baseline"
    return f"{label} network {network.index}" if len(session.networks) > 1 else label


def plot_accuracy(session, baselines, path):
    """Test top-1 per epoch of every network, the baselines' networks dashed."""
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    drawn = 0
    for s, dashed in [(session, False)] + [(b, True) for b in baselines]:
        for net in s.networks:
            points = [(r["epoch"], r["test_acc"]) for r in net.records if "test_acc" in r]
            if not points:
                continue
            epochs, accs = zip(*points)
            ax.plot(epochs, accs, linestyle="--" if dashed else "-", marker="." if len(points) < 30 else None,
                    label=_network_label(s, net, baseline=dashed))
            drawn += 1
    if not drawn:
        return None
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test top-1 (%)")
    ax.set_title(f"{short_name(session.path)}: test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return _save(fig, path)


def graft_matrix(network, key):
    """(layer names, epochs first..last, matrix layers × epochs of `key` from the graft entries), NaN where
    an epoch has no value for a layer; None when the network never recorded `key`."""
    names, columns = [], {}
    for record in network.records:
        layers = (record.get("graft") or {}).get("layers") or []
        values = {layer["name"]: layer[key] for layer in layers if key in layer and "name" in layer}
        if not values:
            continue
        for name in values:
            if name not in names:
                names.append(name)
        columns[record["epoch"]] = values
    if not columns:
        return None
    epochs = list(range(min(columns), max(columns) + 1))
    matrix = np.array([[columns.get(epoch, {}).get(name, math.nan) for epoch in epochs] for name in names],
                      dtype=float)
    return names, epochs, matrix


def plot_graft_field(session, key, title, label, path, centre=None):
    """One heatmap per network: every layer (rows, input to output) × every epoch (columns) of the graft
    entries' `key`; a diverging colour map around `centre` when given."""
    panels = [(net, graft_matrix(net, key)) for net in session.networks]
    panels = [(net, m) for net, m in panels if m is not None]
    if not panels:
        return None
    layers = max(len(m[0]) for _, m in panels)
    fig = Figure(figsize=(4.5 * len(panels) + 1.5, max(3.5, 0.16 * layers + 1.5)))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    values = np.concatenate([m[2].ravel() for _, m in panels])
    values = values[~np.isnan(values)]
    if centre is not None:
        spread = max(float(np.abs(values - centre).max()), 1e-6)
        limits = dict(vmin=centre - spread, vmax=centre + spread, cmap="coolwarm")
    else:
        limits = dict(vmin=float(values.min()), vmax=float(values.max()), cmap="viridis")
    for ax, (net, (names, epochs, matrix)) in zip(axes, panels):
        image = ax.imshow(matrix, aspect="auto", interpolation="nearest", origin="upper",
                          extent=(epochs[0] - 0.5, epochs[-1] + 0.5, len(names) - 0.5, -0.5), **limits)
        step = max(1, math.ceil(len(names) / MAX_LAYER_TICKS))
        ax.set_yticks(range(0, len(names), step))
        ax.set_yticklabels(names[::step], fontsize=6)
        if ax is not axes[0] and names == panels[0][1][0]:
            ax.tick_params(labelleft=False)  # same layers as the first panel, named once
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f"network {net.index}", fontsize="medium")
    fig.colorbar(image, ax=list(axes), label=label)
    fig.suptitle(f"{short_name(session.path)}: {title}")
    return _save(fig, path)


def filter_norms(checkpoint_path):
    """The L1 norms of a checkpoint's conv filters as the paper counts them (analysis.conv_weights; every
    conv of a checkpoint that records no architecture), a 1-D numpy array, and its state dict."""
    checkpoint = load_checkpoint(checkpoint_path, "best checkpoint")
    state = state_dict_of(checkpoint, str(checkpoint_path))
    model = model_of(checkpoint, str(checkpoint_path))
    weights = conv_weights(state, model, all_convs=model is None)
    if not weights:
        return np.zeros(0), state
    return torch.cat([filter_l1_norms(w.float()) for _, w in weights]).numpy(), state


def plot_l1_histogram(session, baselines, path, problems):
    """Histogram of the filter L1 norms (log-spaced bins, log x axis) of every network's best checkpoint,
    the baselines' dashed; the legend counts the filters under the paper's invalid threshold 0.1."""
    curves = []
    for s, dashed in [(session, False)] + [(b, True) for b in baselines]:
        for net in s.networks:
            if net.best_path is None:
                continue
            try:
                norms, _ = filter_norms(net.best_path)
            except UserError as err:
                problems.append(str(err))
                continue
            if norms.size:
                invalid, total = int((norms < INVALID_THRESHOLD).sum()), norms.size
                label = (f"{_network_label(s, net, baseline=dashed)} (best {net.best:.2f}%, "
                         f"{invalid}/{total} < {INVALID_THRESHOLD:g})")
                curves.append((norms, dashed, label))
    if not curves:
        return None
    everything = np.concatenate([c[0] for c in curves])
    positive = everything[everything > 0]
    # A filter of norm exactly 0 is drawn in the first bin: a log axis has no place for 0.
    low = positive.min() if positive.size else 1e-8
    high = max(everything.max(), low * 10)
    bins = np.geomspace(low, high, HIST_BINS + 1)
    fig = Figure(figsize=(7, 4.5))
    ax = fig.add_subplot()
    for norms, dashed, label in curves:
        ax.hist(np.clip(norms, low, high), bins=bins, histtype="step", linewidth=1.5,
                linestyle="--" if dashed else "-", label=label)
    ax.set_xscale("log")
    if low <= INVALID_THRESHOLD <= high:
        ax.axvline(INVALID_THRESHOLD, color="grey", linewidth=0.8, linestyle=":")
    ax.set_xlabel("filter L1 norm (log scale)")
    ax.set_ylabel("number of filters")
    ax.set_title(f"{short_name(session.path)}: filter L1 norms of the best checkpoints")
    ax.legend(fontsize="x-small")
    return _save(fig, path)


def seed_accuracy_plot(rows, title, path):
    """The study (results.study): best top-1 of each method, one dot per seed, a seed's dots joined across methods; the mean as a bar."""
    fig = Figure(figsize=(1.6 * len(rows) + 2, 4.5))
    ax = fig.add_subplot()
    seeds = sorted({seed for row in rows for seed in row["per_seed"]["best"]})
    for seed in seeds:
        points = [(x, row["per_seed"]["best"][seed]) for x, row in enumerate(rows) if seed in row["per_seed"]["best"]]
        ax.plot(*zip(*points), marker="o", alpha=0.6, label=f"seed {seed}")
    for x, row in enumerate(rows):
        if row["best"]["mean"] is not None:
            ax.hlines(row["best"]["mean"], x - 0.3, x + 0.3, color="black", linewidth=2)
    ax.set_xticks(range(len(rows)), [row["label"].replace(", ", ",\n") for row in rows], fontsize="small")
    ax.set_ylabel("best test top-1 (%)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def stripe_study_plot(stripe, path):
    """The study: accuracy against the FLOPs reduction the release counts, one point per seed and run, per architecture."""
    fig = Figure(figsize=(6 * len(stripe), 4.5))
    for i, (arch, rows) in enumerate(stripe.items()):
        ax = fig.add_subplot(1, len(stripe), i + 1)
        for row in rows:
            seeds = sorted(row["per_seed"]["acc"])
            ax.scatter([row["per_seed"]["flops"][s] for s in seeds], [row["per_seed"]["acc"][s] for s in seeds],
                       label=row["run"].replace("sr", "--sr "))
        ax.set_xlabel("FLOPs reduction (%, as the release counts)")
        ax.set_ylabel("test top-1 of the pruned network (%)")
        ax.set_title(f"{arch} on digits")
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    return path


def write_plots(session, baselines=(), problems=None):
    """Every figure that the session's files allow, into the session's PLOTS_DIR, with the baselines of the
    same architecture, data and classes beside it; returns the paths written. Files that cannot be read or
    written are added to `problems` (a list) instead of raising."""
    problems = session.problems if problems is None else problems
    baselines = comparable_baselines(session, baselines)
    out = session.path / PLOTS_DIR
    written = []
    figures = [
        lambda: plot_accuracy(session, baselines, out / "accuracy.png"),
        lambda: plot_graft_field(session, "alpha", "graft coefficient α per layer", "α (own share)",
                                 out / "alpha.png", centre=0.5),
        lambda: plot_graft_field(session, "h_self", "layer entropy of the own weights, before grafting",
                                 "H_self (nats)", out / "entropy.png"),
    ]
    if session.kind == "grafting":
        figures.append(lambda: plot_l1_histogram(session, baselines, out / "l1_norms.png", problems))
    for draw in figures:
        try:
            path = draw()
        except OSError as err:
            problems.append(f"cannot write plots into {out} ({err.strerror or err})")
            break
        if path is not None:
            written.append(path)
    return written
