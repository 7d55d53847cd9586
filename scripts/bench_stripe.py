"""Latency of unpruned, masked and stripe-wise pruned VGG16 / ResNet56 at given FLOPs reductions.

Skeleton masks imitate trained ones (SPEC §5): deeper layers lose more, pruning removes whole filters
where the architecture allows it (every VGG conv, ResNet56 block conv1s) and scattered stripes inside
the kept filters, centre stripes more often kept than edges and edges more than corners, and in
ResNet56 some whole blocks (conv1 emptied). One strength knob t ∈ [0, 2] scales all of it and is
bisected until the stripe-wise FLOPs (counted by FlopCounterMode) reach the requested reduction.

Columns: unpruned = the plain network (nn.Conv2d + BatchNorm, no skeleton, NCHW), masked = the
FilterStripe network that training produces, pruned = `prune` with each layer's mode picked by
`choose_modes` at that batch size. Two more columns show where the speed comes from: the unpruned
network in channels_last memory (the layout the pruned network's dense layers use) and the pruned
network with every layer forced to dense mode (filter removal and BN folding, no stripe kernels).
Times are min / median ms over interleaved repeats under torch.inference_mode, on --device (CUDA when
available): there the stripe / dense choice is timed too, and every reading waits for the GPU's queue.

    python scripts/bench_stripe.py --quick
    python scripts/bench_stripe.py --device cuda --reductions 70 90 --batch-sizes 1 64 256
"""
import argparse
import copy
import statistics
import time

import torch
import torch.nn as nn

from filtergraft.engine import resolve_device
from filtergraft.models.stripe_resnet import StripeResNet56
from filtergraft.models.stripe_vgg import StripeVGG
from filtergraft.stripe import (FilterStripe, choose_modes, count_flops, prune, stripe_convs,
                                stripe_flops, threshold_skeleton)
from filtergraft.timing import describe_device, device_clock

MODELS = {"vgg16": StripeVGG, "resnet56": StripeResNet56}
INPUT = (3, 32, 32)
# Relative keep weight of each 3×3 position: centre > edges > corners, as in trained skeletons.
POSITION_WEIGHT = torch.tensor([[0.6, 1.0, 0.6], [1.0, 2.0, 1.0], [0.6, 1.0, 0.6]])


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--reductions", nargs="+", type=float, default=[50, 70, 80, 90],
                        help="FLOPs reductions in percent")
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1, 64])
    parser.add_argument("--repeats", type=int, default=20, help="timed calls per network and batch size")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads")
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: CUDA when available)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                        help="cpu = process CPU time: immune to time slicing on a busy machine, "
                             "a latency only with --threads 1")
    parser.add_argument("--quick", action="store_true", help="reductions 70 and 90, 6 repeats")
    args = parser.parse_args(argv)
    args.device = resolve_device(args.device)
    if args.clock == "cpu" and args.device.type != "cpu":
        parser.error("--clock cpu measures the CPU's own work; on a GPU leave --clock wall (synchronised)")
    if args.quick:
        args.reductions, args.repeats = [70, 90], 6
    return args


def random_batchnorm(model, gen):
    """Non-trivial BN statistics so the networks compute something realistic."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)


def removable(model):
    """Per stripe layer: whether pruning may drop its filters (VGG: all; ResNet56: block conv1s)."""
    if isinstance(model, StripeVGG):
        return [True] * len(model.stripe_pairs())
    return [False] + [which == 0 for _ in model.blocks() for which in (0, 1)]


def apply_skeleton(model, strength, gen):
    """Skeleton of strength t: at depth u drop min(.95, .9tu) of filters, keep max(.05, 1 − t(.5+.45u)) of stripes.

    The first conv (3 input channels) stays whole, as in trained networks.
    """
    pairs = model.stripe_pairs()
    depth = len(pairs) - 1
    with torch.no_grad():
        for i, ((conv, _), can_remove) in enumerate(zip(pairs, removable(model))):
            u = i / depth
            drop = min(0.95, strength * 0.9 * u) if can_remove and i > 0 else 0.0
            density = max(0.05, 1.0 - strength * (0.5 + 0.45 * u)) if i > 0 else 1.0
            conv.FilterSkeleton.copy_(_skeleton(conv.FilterSkeleton.shape, drop, density, gen))
        if isinstance(model, StripeResNet56):
            _drop_blocks(model, strength, gen)
    threshold_skeleton(model, 0.0)


def _skeleton(shape, drop, density, gen):
    """0/1 mask: `drop` of the filters emptied, the others keep ≥ 1 stripe, `density` kept on average."""
    n, k, _ = shape
    prob = (POSITION_WEIGHT * density / POSITION_WEIGHT.mean()).clamp(max=1.0)
    mask = (torch.rand(shape, generator=gen) < prob).float()
    anchor = torch.multinomial(POSITION_WEIGHT.flatten().expand(n, -1), 1, generator=gen)
    mask.view(n, -1).scatter_(1, anchor, 1.0)  # no kept filter ends up empty by chance
    mask[torch.rand(n, generator=gen) < drop] = 0
    return mask


def _drop_blocks(model, strength, gen):
    """Empty the conv1 of a fraction min(0.6, 0.3·t) of the blocks (first block of each stage excluded)."""
    candidates = [b for i, b in enumerate(model.blocks()) if i % 9 != 0]
    count = int(round(min(0.6, 0.3 * strength) * len(candidates)))
    for j in torch.randperm(len(candidates), generator=gen)[:count].tolist():
        candidates[j].conv1.FilterSkeleton.zero_()


def masked_model(name, reduction, seed):
    """The masked network whose stripe-wise FLOPs are `reduction` % below the dense ones, and its ratio."""
    base = MODELS[name](num_classes=10).eval()
    random_batchnorm(base, torch.Generator().manual_seed(seed))
    dense = count_flops(base, INPUT)
    lo, hi = 0.0, 2.0
    for _ in range(14):
        t = (lo + hi) / 2
        model = copy.deepcopy(base)
        apply_skeleton(model, t, torch.Generator().manual_seed(seed))
        ratio = stripe_flops(prune(model), INPUT) / dense
        lo, hi = (t, hi) if ratio > 1 - reduction / 100 else (lo, t)
    return model, ratio


def plain_model(masked):
    """The unpruned network: every FilterStripe replaced by an nn.Conv2d holding its unmasked weight."""
    plain = copy.deepcopy(masked)
    for parent in list(plain.modules()):
        for child_name, child in parent.named_children():
            if isinstance(child, FilterStripe):
                conv = nn.Conv2d(child.in_channels, child.out_channels, child.kernel_size,
                                 child.stride, child.padding, bias=False)
                conv.weight = child.weight
                setattr(parent, child_name, conv)
    return plain.eval()


@torch.inference_mode()
def time_models(models, x, repeats, clock):
    """{name: [seconds per call]}, calls interleaved across models so load spikes hit all alike."""
    inputs = {name: x.contiguous(memory_format=torch.channels_last) if name.endswith("_cl") else x
              for name in models}
    for name, model in models.items():
        model(inputs[name])
        model(inputs[name])
    times = {name: [] for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            start = clock()
            model(inputs[name])
            times[name].append(clock() - start)
    return times


def all_dense(pruned):
    """A copy of the pruned network with every StripeConv in dense mode (filter removal and folding only)."""
    copy_ = copy.deepcopy(pruned)
    for _, conv in stripe_convs(copy_):
        conv.mode = "dense"
    return copy_


def ms(samples):
    return f"{1e3 * min(samples):.2f} / {1e3 * statistics.median(samples):.2f}"


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = args.device
    clock = device_clock(device, time.process_time if args.clock == "cpu" else time.perf_counter)
    print(f"device: {describe_device(device)}; repeats {args.repeats}, {args.clock} clock; times in ms, "
          "min / median\n")
    print("| model | FLOPs red. | batch | unpruned | masked | pruned | FLOPs ratio "
          "| time ratio pruned/unpruned | stripe / dense layers | unpruned channels_last "
          "| pruned all-dense |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        for reduction in args.reductions:
            for m in measure(name, reduction, args, device, clock):
                t = m["times"]
                ratio_min = min(t["pruned"]) / min(t["unpruned"])
                ratio_med = statistics.median(t["pruned"]) / statistics.median(t["unpruned"])
                print(f"| {name} | {100 * (1 - m['flops_ratio']):.1f} % | {m['batch']} | {ms(t['unpruned'])} "
                      f"| {ms(t['masked'])} | {ms(t['pruned'])} | {m['flops_ratio']:.3f} "
                      f"| {ratio_min:.3f} / {ratio_med:.3f} | {m['stripe']} / {m['dense']} "
                      f"| {ms(t['unpruned_cl'])} | {ms(t['dense'])} |", flush=True)


def measure(name, reduction, args, device, clock):
    """{batch, flops_ratio, times: {network: [seconds]}, stripe, dense (layer counts)} of one network at one
    FLOPs reduction, for each batch size; the networks are built and pruned on the CPU, then moved to
    `device`, where each batch size's stripe / dense choice is timed."""
    masked, flops_ratio = masked_model(name, reduction, args.seed)
    pruned = prune(masked).to(device)
    plain = plain_model(masked).to(device)
    plain_cl = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    masked.to(device)
    for batch in args.batch_sizes:
        x = torch.randn(batch, *INPUT, device=device)
        summary = choose_modes(pruned, x, clock=clock)
        t = time_models({"unpruned": plain, "masked": masked, "pruned": pruned,
                         "unpruned_cl": plain_cl, "dense": all_dense(pruned)}, x, args.repeats, clock)
        yield {"batch": batch, "flops_ratio": flops_ratio, "times": t, "stripe": summary["stripe"],
               "dense": summary["dense"]}


if __name__ == "__main__":
    main()
