"""One trained Filter Skeleton, many networks (SPEC §5): the threshold sweep. For each threshold of
budget.sweep_thresholds: the release's parameter and FLOPs reductions, the FLOPs the exported network
executes, test accuracy without finetuning (and after BatchNorm recalibration), and the exported
network's latency against the dense network's; written as sweep.csv, sweep.md and sweep.png."""
import csv
import os
import platform
import statistics
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch.utils.benchmark import Timer

from ..session import SWEEP_CSV, SWEEP_PLOT, SWEEP_TABLE
from .budget import magnitudes, masked_at, reduction, sweep_thresholds
from .conv import stripe_convs
from .count import module_flops, release_counts
from .pruning import export_pruned
from .report import accuracy, example_batch, export_error, pruned_network
from .tuning import recalibrate_batchnorm

LATENCY_BATCHES = (1, 64)
MIN_RUN_TIME = 1.0  # seconds of timed calls per measurement (torch.utils.benchmark's blocked_autorange)


def cpu_name():
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def timing_device():
    """Where the latencies are measured, in words."""
    return (f"CPU {cpu_name()} ({os.cpu_count()} cores visible, {torch.get_num_threads()} threads), "
            f"torch {torch.__version__}")


@torch.inference_mode()
def latency(module, batch, input_size, min_run_time=MIN_RUN_TIME):
    """Median seconds of module(x) for a random batch of `batch` images: two warm-up calls, then
    torch.utils.benchmark.Timer.blocked_autorange on this process's threads."""
    x = torch.randn(batch, *input_size)
    module(x)
    module(x)
    timer = Timer("module(x)", globals={"module": module, "x": x}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_run_time).median


def dense_reference(model, inputs):
    """{flops_executed, module} of the dense network: the one at threshold 0 (only stripes already at zero
    gone, as in the sweep's first row), BatchNorm folded, every conv dense, exported."""
    pruned, _ = pruned_network(masked_at(model, 0.0), inputs)
    for _, conv in stripe_convs(pruned):
        conv.mode = "dense"
    exported = export_pruned(pruned, None, inputs).module()
    return {"flops_executed": module_flops(exported, tuple(inputs.shape[1:])), "module": exported}


def sweep_row(model, threshold, data, bn_batches, dense, batches, min_run_time):
    """The sweep's measurements at one threshold (module docstring); accuracies in %, latencies in ms. The dense
    network is timed again beside each row's, so that both see the same load on a shared machine."""
    inputs, input_size = example_batch(data.test_loader)
    masked = masked_at(model, threshold)
    pruned, _ = pruned_network(masked, inputs)
    counts = release_counts(masked, input_size, pruned)
    exported = export_pruned(pruned, None, inputs).module()
    error, _ = export_error(exported, masked, inputs)
    executed = module_flops(exported, input_size)
    row = {"threshold": threshold, "params_pruned": counts["params_pruned"],
           "params_reduction": 100 * reduction(counts["params"], counts["params_pruned"]),
           "flops_pruned": counts["flops_pruned"],
           "flops_reduction": 100 * reduction(counts["flops"], counts["flops_pruned"]),
           "flops_executed": executed, "executed_reduction": 100 * reduction(dense["flops_executed"], executed),
           "acc": accuracy(pruned, data, "pruned"), "export_max_error": error}
    if bn_batches:
        recalibrate_batchnorm(masked, data.train_loader, bn_batches, data.device)
        row["acc_recalibrated"] = accuracy(masked, data, "recalibrated")
    for b in batches:
        dense_seconds = latency(dense["module"], b, input_size, min_run_time)
        seconds = latency(exported, b, input_size, min_run_time)
        row.update({f"latency_ms_b{b}": 1e3 * seconds, f"dense_ms_b{b}": 1e3 * dense_seconds,
                    f"speedup_b{b}": dense_seconds / seconds})
    return row


def run_sweep(model, trained, data, directory, log=print, bn_batches=0, batches=LATENCY_BATCHES,
              min_run_time=MIN_RUN_TIME):
    """Measure every threshold of budget.sweep_thresholds (the training threshold `trained` among them) and
    write sweep.csv, sweep.md and sweep.png into `directory`; returns the rows."""
    thresholds, limit, layer = sweep_thresholds(model, trained)
    fs = magnitudes(model)
    log(f"sweep: {len(thresholds)} thresholds from 0 to {thresholds[-1]:.6g} over the |FS| distribution of "
        f"{len(fs):,} prunable stripes" + (f"; from {limit:.6g} on {layer} would lose its last stripe, so the "
                                            "sweep stops below it" if layer else ""))
    inputs, _ = example_batch(data.test_loader)
    dense = dense_reference(model, inputs)
    rows = []
    for threshold in thresholds:
        row = {**sweep_row(model, threshold, data, bn_batches, dense, batches, min_run_time),
               "trained": trained is not None and threshold == trained,
               "stripes_kept": 100 * (fs > threshold).double().mean().item()}
        recal = f", recalibrated {row['acc_recalibrated']:.2f}%" if bn_batches else ""
        speedups = ", ".join(f"×{row[f'speedup_b{b}']:.2f} at batch {b}" for b in batches)
        log(f"threshold {threshold:.6g}: FLOPs -{row['flops_reduction']:.2f}%, params -{row['params_reduction']:.2f}%, "
            f"acc {row['acc']:.2f}%{recal}, {speedups}")
        rows.append(row)
    directory = Path(directory)
    write_csv(rows, directory / SWEEP_CSV)
    (directory / SWEEP_TABLE).write_text(markdown(rows, dense["flops_executed"], batches, bn_batches))
    plot_sweep(rows, directory / SWEEP_PLOT)
    log(f"sweep written to {directory / SWEEP_CSV}, {directory / SWEEP_TABLE} and {directory / SWEEP_PLOT}; "
        f"latencies on {timing_device()}")
    return rows


def write_csv(rows, path):
    """One line per threshold, the columns of the rows' keys."""
    with open(path, "w", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def markdown(rows, dense_flops, batches, bn_batches):
    """The sweep as a Markdown table, the timing device and the dense network's FLOPs and median latencies
    (over its timings beside every row) above it."""
    recal = [f"acc, BN recal. {bn_batches} batches (%)"] if bn_batches else []
    head = ["threshold", "stripes kept (%)", "params −%", "FLOPs −% (release)", "FLOPs executed (M)", "acc (%)",
            *recal, *(f"ms, batch {b} (×dense)" for b in batches)]
    lines = [f"Latency: median of torch.utils.benchmark on {timing_device()}; dense network (BatchNorm folded, "
             f"every conv dense): {dense_flops / 1e6:.2f} M FLOPs executed, "
             + ", ".join(f"{statistics.median(row[f'dense_ms_b{b}'] for row in rows):.2f} ms at batch {b}"
                         for b in batches) + ", timed again beside each row. "
             "\\* = the training threshold.", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [f"{row['threshold']:.4g}" + (" \\*" if row["trained"] else ""), f"{row['stripes_kept']:.1f}",
                 f"{row['params_reduction']:.2f}", f"{row['flops_reduction']:.2f}",
                 f"{row['flops_executed'] / 1e6:.2f}", f"{row['acc']:.2f}",
                 *([f"{row['acc_recalibrated']:.2f}"] if bn_batches else []),
                 *(f"{row[f'latency_ms_b{b}']:.2f} (×{row[f'speedup_b{b}']:.2f})" for b in batches)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(rows, path):
    """Test accuracy against the release's FLOPs reduction, recalibrated beside, the training threshold marked."""
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.add_subplot()
    flops = [row["flops_reduction"] for row in rows]
    ax.plot(flops, [row["acc"] for row in rows], marker="o", label="pruned, no finetuning")
    if "acc_recalibrated" in rows[0]:
        ax.plot(flops, [row["acc_recalibrated"] for row in rows], marker="s", linestyle="--",
                label="BatchNorm recalibrated")
    for row in rows:
        if row["trained"]:
            ax.axvline(row["flops_reduction"], color="grey", linestyle=":",
                       label=f"training threshold {row['threshold']:.4g}")
    ax.set_xlabel("FLOPs reduction, as the release counts (%)")
    ax.set_ylabel("test top-1 (%)")
    ax.set_title("accuracy against FLOPs reduction over the threshold sweep")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
