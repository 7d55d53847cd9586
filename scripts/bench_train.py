"""Training throughput: images/second of the training step with a ready batch (model compute alone), with
torchvision's per-image pipeline in DataLoader workers, and with the tensor pipeline; and of the data
pipelines alone. Prints a Markdown table with the best and median over repeats.

    python scripts/bench_train.py                       # every model, the defaults of this device
    python scripts/bench_train.py --models resnet56 --steps 5 --repeats 3
"""
import argparse
import statistics
import time

import numpy as np
import torch
import torchvision
import torchvision.transforms as T
from torch.utils.data import DataLoader

from filtergraft.data import IMAGENET_STATS, ArrayImages, TensorLoader, cifar_transforms
from filtergraft.engine import resolve_device, sgd
from filtergraft.models import create_model

MODELS = ("resnet32", "resnet56", "resnet110", "mobilenetv2", "resnet18")
IMAGENET_MODELS = {"resnet18"}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--device", default=None)
    parser.add_argument("--batch-size", type=int, default=128, help="32x32 models")
    parser.add_argument("--imagenet-batch-size", type=int, default=None, help="224x224 models (default 64, CPU 16)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per repeat (default 50, CPU 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of the torchvision pipeline")
    parser.add_argument("--images", type=int, default=5000, help="in-memory 32x32 images to draw batches from")
    return parser.parse_args(argv)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run, device):
    """Wall-clock seconds of run(), with the device's queue drained before and after."""
    synchronize(device)
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def rates(run, images, device, repeats):
    """(best, median) images/second of `repeats` calls of run(), after one warm-up call."""
    run()
    per_second = [images / timed(run, device) for _ in range(repeats)]
    return max(per_second), statistics.median(per_second)


def training_step(model, optimizer, device):
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(inputs, targets):
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        loss = loss_fn(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def batches(loader, steps):
    """The first `steps` batches of a loader, restarting it as often as needed."""
    taken = 0
    while taken < steps:
        for batch in loader:
            yield batch
            taken += 1
            if taken == steps:
                return


def random_images(n, size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), rng.integers(0, 10, n).tolist()


def pipelines(name, args, device, batch_size):
    """{pipeline name: iterable of (inputs, targets) batches} for a model's input size."""
    if name in IMAGENET_MODELS:
        data, targets = random_images(max(4 * batch_size, 64), 256)
        transform = T.Compose([T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(),
                               T.Normalize(*IMAGENET_STATS)])
        dataset = ArrayImages(data, targets, transform)
        return {"torchvision": DataLoader(dataset, batch_size, shuffle=True, num_workers=args.workers,
                                          persistent_workers=args.workers > 0, drop_last=True)}
    data, targets = random_images(args.images, 32)
    dataset = ArrayImages(data, targets, cifar_transforms(10)[0])
    return {"torchvision": DataLoader(dataset, batch_size, shuffle=True, num_workers=args.workers,
                                      persistent_workers=args.workers > 0, drop_last=True),
            "tensor": TensorLoader(dataset, batch_size, device, train=True, generator=torch.Generator())}


def bench_model(name, args, device):
    """Table rows (what, best, median) for one model."""
    imagenet = name in IMAGENET_MODELS
    batch_size = args.imagenet_batch_size if imagenet else args.batch_size
    size = 224 if imagenet else 32
    model = (torchvision.models.resnet18(num_classes=1000) if imagenet else create_model(name, 10)).to(device)
    step = training_step(model, sgd(model, 0.01), device)
    steps = args.steps
    images = steps * batch_size
    ready = (torch.randn(batch_size, 3, size, size, device=device), torch.randint(0, 10, (batch_size,), device=device))
    rows = [(f"{name} ({size}x{size}, batch {batch_size})", "model compute alone",
             *rates(lambda: [step(*ready) for _ in range(steps)], images, device, args.repeats))]
    for pipeline, loader in pipelines(name, args, device, batch_size).items():
        rows.append(("", f"train step, {pipeline} pipeline",
                     *rates(lambda: [step(*b) for b in batches(loader, steps)], images, device, args.repeats)))
        loader_steps = 4 * steps
        rows.append(("", f"{pipeline} pipeline alone",
                     *rates(lambda: [b[0].to(device) for b in batches(loader, loader_steps)],
                            loader_steps * batch_size, device, args.repeats)))
    return rows


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    cpu = device.type == "cpu"
    args.steps = args.steps or (4 if cpu else 50)
    args.imagenet_batch_size = args.imagenet_batch_size or (16 if cpu else 64)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {where}; torch {torch.__version__}; {args.steps} steps x {args.repeats} repeats; "
          f"torchvision pipeline with {args.workers} workers\n")
    print("| model | what | images/s (best) | images/s (median) |")
    print("|---|---|---|---|")
    for name in args.models:
        for model, what, best, median in bench_model(name, args, device):
            print(f"| {model} | {what} | {best:,.0f} | {median:,.0f} |", flush=True)


if __name__ == "__main__":
    main()
