"""The cost of grafting's end-of-epoch step: one exchange (publish + receive) with each backend, and the
graft itself, for a CIFAR ResNet56 and a torchvision ResNet50. Run under torchrun with 2 processes:

    torchrun --standalone --nproc_per_node 2 -- scripts/bench_exchange.py --exchange file --model resnet56
    torchrun --standalone --nproc_per_node 2 -- scripts/bench_exchange.py --exchange dist --model resnet50
"""
import argparse
import os
import statistics
import tempfile
import time

import torch.distributed as dist
import torchvision

from filtergraft.ring.dist import DistRingExchange
from filtergraft.ring.files import RingExchange
from filtergraft.grafting import Grafter
from filtergraft.models import create_model


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchange", choices=("file", "dist"), default="file")
    parser.add_argument("--model", choices=("resnet56", "resnet50"), default="resnet56")
    parser.add_argument("--dir", default=None, help="file backend: where the exchange files go (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=8)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    model = torchvision.models.resnet50() if args.model == "resnet50" else create_model(args.model, 10)
    state = model.state_dict()
    if args.exchange == "file":
        dist.init_process_group("gloo")  # only for the barriers that line the two processes up
        directory = args.dir or os.path.join(tempfile.gettempdir(), f"bench_exchange_{os.environ['MASTER_PORT']}")
        exchange = RingExchange(directory, rank + 1, world, arch=args.model, log=lambda message: None).start()
    else:
        exchange = DistRingExchange(rank + 1, world, arch=args.model, log=lambda message: None).start()
    grafter = Grafter(model)
    exchanges, grafts = [], []
    for epoch in range(1, args.repeats + 2):
        dist.barrier()
        start = time.perf_counter()
        exchange.publish(epoch, state)
        peer = exchange.receive(epoch, state)
        exchanges.append(time.perf_counter() - start)
        start = time.perf_counter()
        grafter.graft(peer)
        grafts.append(time.perf_counter() - start)
    exchange.close()
    megabytes = sum(v.numel() * v.element_size() for v in state.values() if v.is_floating_point()) / 1e6
    if rank == 0:
        ms = lambda xs: f"{1000 * min(xs[1:]):.1f} / {1000 * statistics.median(xs[1:]):.1f}"  # noqa: E731
        print(f"| {args.model} | {megabytes:.1f} MB | {args.exchange} | {ms(exchanges)} | {ms(grafts)} | "
              f"{1000 * exchanges[0]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
