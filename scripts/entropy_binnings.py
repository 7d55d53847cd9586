"""How often the graft coefficient α depends on the entropy's binning: α at the given A and c (rounded
as the release) from the release's binning and from closed bins, over random pairs of layers.

    python scripts/entropy_binnings.py --pairs 10000 --c 500

A pair is two tensors of one shape (shapes of CIFAR ResNets, VGGs and MobileNetV2, classifiers included)
drawn independently from one distribution (normal, uniform, Laplace, Student-t with 3 degrees of
freedom); the scale is immaterial, a histogram over [min, max] being invariant to it.
"""
import argparse

import torch

from filtergraft.grafting import DEFAULT_A, DEFAULT_C, graft_coefficient, layer_entropy

SHAPES = [(16, 3, 3, 3), (16, 16, 3, 3), (32, 32, 3, 3), (64, 64, 3, 3), (128, 128, 3, 3), (256, 256, 3, 3),
          (96, 1, 3, 3), (384, 64, 1, 1), (10, 64), (100, 512), (10, 1280)]


def laplace(shape, g):
    sign = (torch.rand(shape, generator=g) < 0.5).float() * 2 - 1
    return sign * -torch.rand(shape, generator=g).log()


def student_t3(shape, g):
    return torch.randn(shape, generator=g) / torch.randn((3, *shape), generator=g).pow(2).mean(0).sqrt()


DISTRIBUTIONS = {"normal": lambda shape, g: torch.randn(shape, generator=g),
                 "uniform": lambda shape, g: torch.rand(shape, generator=g) * 2 - 1,
                 "laplace": laplace, "student-t": student_t3}


def draw(index, generator):
    """Pair `index`: (shape, distribution name, self tensor, peer tensor)."""
    shape = SHAPES[index % len(SHAPES)]
    name = list(DISTRIBUTIONS)[index // len(SHAPES) % len(DISTRIBUTIONS)]
    sample = DISTRIBUTIONS[name]
    return shape, name, sample(shape, generator), sample(shape, generator)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10000)
    parser.add_argument("--a", type=float, default=DEFAULT_A)
    parser.add_argument("--c", type=float, default=DEFAULT_C)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    differ, largest, worst = 0, 0.0, None
    for index in range(args.pairs):
        shape, name, own, peer = draw(index, generator)
        alphas = [graft_coefficient(float(layer_entropy(own, binning=b)), float(layer_entropy(peer, binning=b)),
                                    args.a, args.c) for b in ("release", "closed")]
        gap = abs(alphas[0] - alphas[1])
        if gap > 1e-9:
            differ += 1
        if gap > largest:
            largest, worst = gap, (shape, name, *alphas)
    print(f"{differ}/{args.pairs} pairs ({differ / args.pairs:.1%}) have another α with closed bins "
          f"(A={args.a}, c={args.c}); largest difference {largest:.2f}"
          + (f" ({worst[1]} {worst[0]}: release {worst[2]:.2f}, closed {worst[3]:.2f})" if worst else ""))


if __name__ == "__main__":
    main()
