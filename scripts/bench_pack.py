"""Packed against separate processes: aggregate training images/s and epoch time (graft included) of a ring
of N grafting networks on one device, trained by grafting_cifar/grafting.py as one --pack process or as N
processes sharing the device, each started as launch_lib.sh starts it (a process: its share of the CPU
threads; a pack: all of them, MALLOC_ARENA_MAX=1). The epoch is the dataset's (fake: 256 training
images); an epoch's time is the slowest network's epoch_time in its metrics (train, evaluate, graft,
checkpoints), over the epochs after the first (warm-up). The repeats take turns (packed, processes,
packed, ...); best / median over them. Prints a Markdown table.

    python scripts/bench_pack.py                                    # ResNet32 and MobileNetV2, N = 1, 2, 4, 8
    python scripts/bench_pack.py --models resnet32 --nums 2 4 --repeats 3 --epochs 3
"""
import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from filtergraft.data import cifar_like_datasets
from filtergraft.session import read_jsonl

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "grafting_cifar" / "grafting.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["resnet32", "mobilenetv2"])
    parser.add_argument("--nums", nargs="+", type=int, default=[1, 2, 4, 8], help="networks in the ring")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2, help="epochs per run; all but the first are timed")
    parser.add_argument("--dataset", choices=("fake", "digits"), default="fake")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when available)")
    parser.add_argument("--dir", default=None, help="where the sessions go (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first is warm-up")
    return args


def machine(device):
    """One line naming the device, the CPU threads and the load average."""
    if device == "cuda":
        name = torch.cuda.get_device_name(0)
    else:
        name = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return f"device: {name}; torch {torch.__version__}; load average {load}"


def train(session, args, model, num, packed):
    """Run one session (packed or as processes) to completion; the epoch time of each timed epoch."""
    common = [sys.executable, str(SCRIPT), "--dataset", args.dataset, "--model", model, "--num", str(num),
              "--epochs", str(args.epochs), "--batch-size", str(args.batch_size), "--workers", "0", "--seed", "0",
              "--s", str(session), *(["--device", args.device] if args.device else [])]
    threads = os.cpu_count() if packed else max(1, os.cpu_count() // num)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(REPO))
    if packed:
        env["MALLOC_ARENA_MAX"] = "1"  # as launch_lib.sh starts a pack
    commands = [common + ["--pack"]] if packed else [common + ["--i", str(i)] for i in range(1, num + 1)]
    procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
             for c in commands]
    for proc in procs:
        _, err = proc.communicate()
        if proc.returncode != 0:
            sys.exit(f"bench_pack.py: error: a run failed ({' '.join(proc.args)}): {err.strip()[-500:]}")
    lines = [read_jsonl(session / f"metrics_{i}.jsonl") for i in range(1, num + 1)]
    return [max(network[e]["epoch_time"] for network in lines) for e in range(1, args.epochs)]


def measure(args, root, model, num):
    """{"packed"|"processes": [mean timed epoch time of each repeat]}, the repeats taking turns."""
    times = {"packed": [], "processes": []}
    for repeat in range(args.repeats):
        for kind in times:
            session = root / f"{model}_n{num}_{kind}_{repeat}"
            times[kind].append(statistics.mean(train(session, args, model, num, kind == "packed")))
    return times


def row(model, num, times, images):
    """A table row: epoch time (best / median), aggregate images/s (best / median), packed ÷ processes."""
    cells = [model, str(num)]
    rates = {}
    for kind in ("packed", "processes"):
        seconds = times[kind]
        cells.append(f"{min(seconds):.2f} / {statistics.median(seconds):.2f}")
        rates[kind] = [num * images / s for s in seconds]
    for kind in ("packed", "processes"):
        cells.append(f"{max(rates[kind]):,.0f} / {statistics.median(rates[kind]):,.0f}")
    cells.append(f"×{statistics.median(rates['packed']) / statistics.median(rates['processes']):.2f}")
    return "| " + " | ".join(cells) + " |"


def main(argv=None):
    args = parse_args(argv)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    images = len(cifar_like_datasets(args.dataset, None, 10)[0])
    print(machine(device))
    print(f"{args.dataset}: {images} training images an epoch, batch {args.batch_size}, {args.epochs} epochs a run "
          f"({args.epochs - 1} timed), {args.repeats} interleaved repeats")
    print()
    print("| model | N | epoch s, packed | epoch s, processes | images/s, packed | images/s, processes | "
          "packed ÷ processes |")
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for model in args.models:
            for num in args.nums:
                print(row(model, num, measure(args, Path(tmp), model, num), images), flush=True)
    print()
    print(machine(device))


if __name__ == "__main__":
    main()
