"""Parts `train32`, `train224`, `exchange` and `stripe`: the benchmarks of scripts/ run on the device, their
figures as min / median over repeats (for rates: the fastest repeat / the median one). Every reading of
the clock waits for the device's queue (filtergraft.timing), each benchmark warms up before it times.

On the CPU (a dry run of the kit) each part runs its smallest case, to show that the code runs; such
figures say nothing about a GPU."""
import math
import statistics
import subprocess

import torch

import bench_stripe
import bench_train
from common import PYTHON, REPO, min_median, script_env, tail
from filtergraft.models import create_model
from filtergraft.stripe import prune, stripe_convs
from filtergraft.timing import device_clock

CIFAR_EPOCH = 50_000  # training images of CIFAR-10/100
STRIPE_INPUT = bench_stripe.INPUT


def dry(part):
    return part.device.type == "cpu"


def train_rates(part, models, flags):
    """bench_train's figures for `models` as one table, a row per model: compute alone, with each speed flag,
    with each pipeline, and each pipeline alone."""
    args = bench_train.parse_args(["--device", str(part.device), "--models", *models, *flags])
    bench_train.settle(args, part.device)
    cells = {}
    for name in args.models:
        label, measured = bench_train.bench_model(name, args, part.device)
        finite = all(math.isfinite(best) and best > 0 for _, best, _, _ in measured)
        part.check(f"{label}: every variant and pipeline timed", finite, f"{len(measured)} figures")
        cells[label] = {what: f"{best:,.0f} / {median:,.0f}" for what, best, median, _ in measured}
    columns = list(dict.fromkeys(what for row in cells.values() for what in row))
    part.table(f"training images/s, fastest / median of {args.repeats} repeats of {args.steps} step(s)",
               ["model", *columns], [[label, *(row.get(c, "—") for c in columns)] for label, row in cells.items()])


def train32(part, models=("resnet32", "resnet56")):
    if dry(part):
        return train_rates(part, models[:1], ["--steps", "1", "--repeats", "2", "--images", "256", "--batch-size",
                                              "32", "--workers", "1", "--variants", "channels-last"])
    train_rates(part, list(models), ["--steps", "30", "--repeats", "3"])


def train32_deep(part):
    """ResNet110 and MobileNetV2 apart from the others: compiling them takes minutes of the part's time."""
    train32(part, ("resnet110", "mobilenetv2"))


def train224(part):
    if dry(part):
        return train_rates(part, ["resnet18"], ["--steps", "1", "--repeats", "2", "--imagenet-batch-size", "4",
                                                "--workers", "1", "--variants", "channels-last"])
    train_rates(part, ["resnet18", "resnet50"], ["--steps", "20", "--repeats", "3", "--workers", "8"])


def cifar_epoch_seconds(part, steps, repeats):
    """Seconds of one CIFAR epoch of ResNet56 (batch 128, the tensor pipeline), from its training rate."""
    args = bench_train.parse_args(["--device", str(part.device), "--images", "2560", "--steps", str(steps)])
    bench_train.settle(args, part.device)
    loader = bench_train.pipelines("resnet56", args, part.device, args.batch_size)["tensor"]
    step = bench_train.training_step(create_model("resnet56", 10).to(part.device), part.device)
    run = (lambda: [step(*batch) for batch in bench_train.batches(loader, steps)], steps * args.batch_size)
    best, median = bench_train.rates({"step": run}, part.device, repeats)["step"]
    return CIFAR_EPOCH / median, median


def exchange(part):
    gpus = torch.cuda.device_count() if part.device.type == "cuda" else 0
    backends = ["file", "dist"] if gpus >= 2 or not gpus else ["file"]
    if part.device.type == "cuda" and gpus < 2:
        part.note("one GPU: the torch.distributed exchange (NCCL needs a GPU per process) was not timed")
    repeats = 2 if dry(part) else 16
    epoch, rate = cifar_epoch_seconds(part, *((2, 2) if dry(part) else (40, 3)))
    rows = []
    for model in ["resnet56"] if dry(part) else ["resnet56", "resnet50"]:
        for backend in backends:
            log = part.work / f"exchange-{model}-{backend}.out"
            command = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
                       str(REPO / "scripts/bench_exchange.py"), "--exchange", backend, "--model", model,
                       "--repeats", str(repeats), "--dir", str(part.work / f"exchange-{model}-{backend}"),
                       "--device", part.device.type]
            with open(log, "w") as out:
                status = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=script_env(),
                                        timeout=600).returncode
            row = next((line for line in log.read_text().splitlines() if line.startswith(f"| {model} |")), None)
            if not part.check(f"exchange and graft of {model}, {backend} backend", status == 0 and row,
                              "" if status == 0 and row else f"exit {status}: {tail(log)}"):
                continue
            _, megabytes, _, exchanged, grafted, first = [c.strip() for c in row.strip("|").split("|")]
            total = sum(float(cell.split(" / ")[1]) for cell in (exchanged, grafted)) / 1000
            share = f"{100 * total / epoch:.3f} %" if model == "resnet56" else "—"
            kind = backend if backend == "file" else f"dist ({'NCCL' if part.device.type == 'cuda' else 'gloo'})"
            rows.append([model, megabytes, kind, exchanged, grafted, first, share])
    part.table(f"one exchange and graft, ms, min / median of {repeats} (after one warm-up round); one CIFAR epoch "
               f"of ResNet56 = {epoch:.1f} s at {rate:,.0f} images/s (tensor pipeline, median)",
               ["model", "floating weights", "exchange", "exchange ms", "graft ms", "first exchange ms",
                "of a CIFAR epoch (medians)"], rows)


@torch.inference_mode()
def stripe_agrees(part, name, reduction):
    """The pruned network computes on the device what the masked one does."""
    masked, _ = bench_stripe.masked_model(name, reduction, 0)
    pruned = prune(masked).to(part.device)
    masked.to(part.device)
    x = torch.randn(8, *STRIPE_INPUT, device=part.device)
    reference = masked(x)
    scale = reference.abs().max().item()
    for mode in ("stripe", "dense"):
        for _, conv in stripe_convs(pruned):
            conv.mode = mode
        error = (pruned(x) - reference).abs().max().item()
        part.check(f"pruned {name} at {reduction:.0f} % = the masked network, every layer {mode}",
                   error <= 1e-3 * scale, f"max |Δ| {error:.2e} of outputs up to {scale:.2f}")


def stripe(part):
    reductions, batches, repeats = ([70], [1], 2) if dry(part) else ([70, 90], [1, 64, 256], 20)
    models = ["resnet56"] if dry(part) else ["vgg16", "resnet56"]
    args = bench_stripe.parse_args(["--device", str(part.device), "--repeats", str(repeats), "--models", *models,
                                    "--reductions", *map(str, reductions), "--batch-sizes", *map(str, batches)])
    clock = device_clock(part.device)
    rows = []
    for name in models:
        stripe_agrees(part, name, reductions[-1])
        for reduction in reductions:
            for m in bench_stripe.measure(name, reduction, args, part.device, clock):
                t = m["times"]
                ratio = statistics.median(t["pruned"]) / statistics.median(t["unpruned"])
                rows.append([name, f"{100 * (1 - m['flops_ratio']):.1f} %", m["batch"],
                             *(min_median(t[k], 1e3) for k in ("unpruned", "masked", "pruned", "dense")),
                             f"{ratio:.3f}", f"{m['stripe']} / {m['dense']}"])
    part.table(f"inference latency, ms, min / median of {repeats} interleaved calls; the stripe / dense choice "
               f"(choose_modes) timed on {part.device} at each batch size",
               ["model", "FLOPs reduction", "batch", "dense (unpruned)", "masked", "pruned", "pruned, all dense",
                "pruned / dense (medians)", "stripe / dense layers"], rows)

