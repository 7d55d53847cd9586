"""Images per second of one network on 1, 2, ... ranks (--ranks-per-network under torchrun): the real
grafting script, one network (--num 1), timed from its metrics. On the CPU the machine's cores are shared
out between the ranks (OMP_NUM_THREADS = cores / M), so every row uses the same cores; on GPUs rank r
takes GPU r (NCCL).

    python scripts/bench_ranks.py                          # 1 and 2 ranks on this machine's CPU, digits
    python scripts/bench_ranks.py --ranks 1 2 4 8 --device cuda --model resnet56 -b 256

Throughput is the epoch's training images over its wall time (evaluation included, which shards over the
ranks too), the median over the epochs after the first (warm-up: allocations, autotuning, DDP's buckets).
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from filtergraft.data import FAKE_SIZES
from filtergraft.timing import describe_device

REPO = Path(__file__).resolve().parents[1]
TRAIN_IMAGES = {"digits": 1437, "fake": FAKE_SIZES["train"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2], help="ranks per network, one row each")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument("--dataset", choices=tuple(TRAIN_IMAGES), default="digits")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("-b", "--batch-size", type=int, default=128, help="the network's batch, over all its ranks")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sync-bn", action="store_true")
    return parser.parse_args(argv)


def run(ranks, args, directory):
    """Train one network on `ranks` ranks; its metrics lines."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if args.device == "cpu":
        env.update(CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(max(1, (os.cpu_count() or 1) // ranks)))
    session = Path(directory) / f"ranks{ranks}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}", "--",
               str(REPO / "grafting_cifar/grafting.py"), "--num", "1", "--ranks-per-network", str(ranks),
               "--dataset", args.dataset, "--model", args.model, "-b", str(args.batch_size), "--epochs",
               str(args.epochs), "--workers", "0", "--seed", "0", "-p", "100000", "--s", str(session)]
    command += ["--sync-bn"] * args.sync_bn
    done = subprocess.run(command, env=env, capture_output=True, text=True, cwd=REPO)
    if done.returncode != 0:
        sys.exit(f"bench_ranks.py: error: the run on {ranks} rank(s) failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return [json.loads(line) for line in (session / "metrics_1.jsonl").read_text().splitlines()]


def main(argv=None):
    args = parse_args(argv)
    if args.device == "cuda" and torch.cuda.device_count() < max(args.ranks):
        sys.exit(f"bench_ranks.py: error: {max(args.ranks)} ranks need as many GPUs; this machine has "
                 f"{torch.cuda.device_count()}")
    if args.epochs < 2:
        sys.exit("bench_ranks.py: error: --epochs must be 2 or more (the first is warm-up)")
    device = torch.device("cuda" if args.device == "cuda" else "cpu")
    print(f"# one {args.model} network on {args.dataset}, batch {args.batch_size} over its ranks, "
          f"{args.epochs} epochs; {describe_device(device)}, {os.cpu_count()} cores")
    print("| ranks | images/s | speed-up | final test acc |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as directory:
        first = None
        for ranks in args.ranks:
            lines = run(ranks, args, directory)
            rate = statistics.median(TRAIN_IMAGES[args.dataset] / line["epoch_time"] for line in lines[1:])
            first = first or rate
            print(f"| {ranks} | {rate:,.0f} | {rate / first:.2f}x | {lines[-1]['test_acc']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
