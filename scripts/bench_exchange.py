"""The cost of grafting's end-of-epoch step: one exchange (publish + receive) with each backend, and the
graft itself, for a CIFAR ResNet56 and a torchvision ResNet50, on the device the networks train on (CUDA
when available, rank r on GPU r modulo the GPUs; NCCL for dist there). Run under torchrun with 2 processes:

    torchrun --standalone --nproc_per_node 2 -- scripts/bench_exchange.py --exchange file --model resnet56
    torchrun --standalone --nproc_per_node 2 -- scripts/bench_exchange.py --exchange dist --model resnet50
"""
import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.distributed as dist
import torchvision

from filtergraft.ring.dist import DistRingExchange
from filtergraft.ring.files import RingExchange
from filtergraft.grafting import Grafter
from filtergraft.models import create_model
from filtergraft.timing import describe_device, device_clock


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchange", choices=("file", "dist"), default="file")
    parser.add_argument("--model", choices=("resnet56", "resnet50"), default="resnet56")
    parser.add_argument("--dir", default=None, help="file backend: where the exchange files go (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: CUDA when available")
    return parser.parse_args(argv)


def rank_device(name, local_rank):
    """The device of the process with this LOCAL_RANK: its own GPU where there are several."""
    if (name or ("cuda" if torch.cuda.is_available() else "cpu")) == "cpu":
        return torch.device("cpu")
    return torch.device("cuda", local_rank % torch.cuda.device_count())


def main(argv=None):
    args = parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = rank_device(args.device, int(os.environ.get("LOCAL_RANK", rank)))
    model = torchvision.models.resnet50() if args.model == "resnet50" else create_model(args.model, 10)
    model.to(device)
    state = model.state_dict()
    if args.exchange == "file":
        dist.init_process_group("gloo")  # only for the barriers that line the two processes up
        directory = args.dir or os.path.join(tempfile.gettempdir(), f"bench_exchange_{os.environ['MASTER_PORT']}")
        exchange = RingExchange(directory, rank + 1, world, arch=args.model, device=device, log=lambda message: None)
    else:
        exchange = DistRingExchange(rank + 1, world, arch=args.model, device=device, log=lambda message: None)
    exchange.start()
    grafter = Grafter(model)
    clock = device_clock(device, time.perf_counter)
    exchanges, grafts = [], []
    for epoch in range(1, args.repeats + 2):  # the first round warms up (allocations, NCCL's connection)
        dist.barrier()
        start = clock()
        exchange.publish(epoch, state)
        peer = exchange.receive(epoch, state)
        exchanges.append(clock() - start)
        start = clock()
        grafter.graft(peer)
        grafts.append(clock() - start)
    exchange.close()
    megabytes = sum(v.numel() * v.element_size() for v in state.values() if v.is_floating_point()) / 1e6
    if rank == 0:
        print(f"device: {describe_device(device)}", flush=True)
        ms = lambda xs: f"{1000 * min(xs[1:]):.1f} / {1000 * statistics.median(xs[1:]):.1f}"  # noqa: E731
        print(f"| {args.model} | {megabytes:.1f} MB | {args.exchange} | {ms(exchanges)} | {ms(grafts)} | "
              f"{1000 * exchanges[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
