"""Training throughput: images/second of the training step with a ready batch (model compute alone, also
with --channels-last, --compile and --amp), with torchvision's per-image pipeline in DataLoader workers,
and with the tensor pipeline; and of the data pipelines alone, also per CPU core. Prints a Markdown
table with the best and median over repeats.

    python scripts/bench_train.py                       # every model and variant, this device's defaults
    python scripts/bench_train.py --models resnet56 --variants --steps 5 --repeats 3
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
from filtergraft.timing import describe_device, device_clock

MODELS = ("resnet32", "resnet56", "resnet110", "mobilenetv2", "resnet18", "resnet50")
IMAGENET_MODELS = {"resnet18", "resnet50"}
VARIANTS = ("channels-last", "compile", "amp")


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
    parser.add_argument("--variants", nargs="*", default=None, choices=VARIANTS,
                        help="speed flags to time model compute with (default: all this device supports)")
    parser.add_argument("--compile-backend", default="inductor")
    return parser.parse_args(argv)


def timed(run, device):
    """Seconds of run() on `device`, its kernels included (the queue drained before and after)."""
    clock = device_clock(device)
    start = clock()
    run()
    return clock() - start


def rates(runs, device, repeats, pause=0.5):
    """{name: (best, median) images/second} of `repeats` calls of each run, after one warm-up call each.
    `runs` maps a name to (run, images per call). The repeats take turns so that slow drifts of the
    machine spread over all runs; the pause between calls lets DataLoader workers finish the batches they
    prefetch past the end of a run outside of the next run's time."""
    for run, _ in runs.values():
        run()
    per_second = {name: [] for name in runs}
    for _ in range(repeats):
        for name, (run, images) in runs.items():
            time.sleep(pause)
            per_second[name].append(images / timed(run, device))
    return {name: (max(values), statistics.median(values)) for name, values in per_second.items()}


def training_step(model, device, variant=None, compile_backend="inductor"):
    """One SGD step on a batch, with a speed flag applied as the Trainer applies it."""
    memory_format = torch.channels_last if variant == "channels-last" else torch.contiguous_format
    model.to(memory_format=memory_format)
    forward = torch.compile(model, backend=compile_backend) if variant == "compile" else model
    optimizer = sgd(model, 0.01)
    loss_fn = torch.nn.CrossEntropyLoss()

    def step(inputs, targets):
        inputs = inputs.to(device, non_blocking=True, memory_format=memory_format)
        targets = targets.to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=variant == "amp"):
            loss = loss_fn(forward(inputs), targets)
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
    dataset = ArrayImages(data, targets, cifar_transforms()[0])
    return {"torchvision": DataLoader(dataset, batch_size, shuffle=True, num_workers=args.workers,
                                      persistent_workers=args.workers > 0, drop_last=True),
            "tensor": TensorLoader(dataset, batch_size, device, train=True, generator=torch.Generator())}


def pipeline_cores(pipeline, args, device):
    """CPU cores a pipeline keeps busy: its DataLoader workers, or the threads doing tensor work
    (on a GPU, the one thread that launches the kernels)."""
    if pipeline == "torchvision":
        return max(args.workers, 1)
    return torch.get_num_threads() if device.type == "cpu" else 1


def bench_model(name, args, device):
    """(model label, table rows (what, best, median, remark)) for one model."""
    imagenet = name in IMAGENET_MODELS
    batch_size = args.imagenet_batch_size if imagenet else args.batch_size
    size = 224 if imagenet else 32

    def new_model():
        model = getattr(torchvision.models, name)(num_classes=1000) if imagenet else create_model(name, 10)
        return model.to(device)

    def steps_on(step, source):
        return lambda: [step(*batch) for batch in source()], args.steps * batch_size

    loaders = pipelines(name, args, device, batch_size)
    # A batch of the data itself rather than randn: a CPU step's speed depends on the values it meets
    # (denormals), so compute alone must see the same kind of values as the pipelines' steps.
    ready = tuple(t.to(device) for t in next(iter(loaders["torchvision"])))
    step = training_step(new_model(), device)
    steps = {"model compute alone": steps_on(step, lambda: [ready] * args.steps)}
    for variant in args.variants:
        flag = f"--{variant}" + (f" {args.compile_backend}" if variant == "compile" else "")
        faster = training_step(new_model(), device, variant, args.compile_backend)
        steps[f"model compute alone, {flag}"] = steps_on(faster, lambda: [ready] * args.steps)
    for pipeline, loader in loaders.items():
        steps[f"train step, {pipeline} pipeline"] = steps_on(step, lambda loader=loader: batches(loader, args.steps))
    # Each pipeline alone runs for about as long as a training step run, for a steady timing.
    loader_steps = {"torchvision": 4 * args.steps, "tensor": 40 * args.steps}
    alone = {pipeline: (lambda loader=loader, n=loader_steps[pipeline]: [b[0].to(device) for b in batches(loader, n)],
                        loader_steps[pipeline] * batch_size) for pipeline, loader in loaders.items()}
    measured = rates(steps, device, args.repeats)
    compute = measured["model compute alone"][1]
    rows = []
    for what, (best, median) in measured.items():
        if what == "model compute alone":
            remark = ""
        elif what.startswith("model compute"):
            remark = f"×{median / compute:.2f} of fp32 compute"
        else:
            remark = f"{100 * (median / compute - 1):+.1f} % against compute alone"
        rows.append((what, best, median, remark))
    per_core = {}
    for pipeline, (best, median) in rates(alone, device, args.repeats).items():
        cores = pipeline_cores(pipeline, args, device)
        per_core[pipeline] = median / cores
        remark = f"{per_core[pipeline]:,.0f} per CPU core ({cores} cores)"
        if pipeline == "tensor":
            remark += f", ×{per_core['tensor'] / per_core['torchvision']:.1f} torchvision per core"
        rows.append((f"{pipeline} pipeline alone", best, median, remark))
    return f"{name} ({size}x{size}, batch {batch_size})", rows


def settle(args, device):
    """Fill the settings left to the device: steps, the 224x224 batch size and the variants it supports."""
    cpu = device.type == "cpu"
    args.steps = args.steps or (4 if cpu else 50)
    args.imagenet_batch_size = args.imagenet_batch_size or (16 if cpu else 64)
    if args.variants is None:
        args.variants = [v for v in VARIANTS if v != "amp" or not cpu]
    elif "amp" in args.variants and cpu:
        raise SystemExit("bench_train.py: error: --variants amp needs a CUDA device (bfloat16 autocast); leave amp out on the CPU")
    return args


def main(argv=None):
    args = parse_args(argv)
    device = resolve_device(args.device)
    settle(args, device)
    print(f"device: {describe_device(device)}; {args.steps} steps x {args.repeats} repeats; "
          f"torchvision pipeline with {args.workers} workers\n")
    print("| model | what | images/s (best) | images/s (median) | |")
    print("|---|---|---|---|---|")
    for name in args.models:
        label, rows = bench_model(name, args, device)
        for row, (what, best, median, remark) in enumerate(rows):
            print(f"| {label if row == 0 else ''} | {what} | {best:,.0f} | {median:,.0f} | {remark} |", flush=True)


if __name__ == "__main__":
    main()
