"""The stripe models as the release builds, initialises, updates and counts them (SPEC §5)."""
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from filtergraft.models import create_model
from filtergraft.models.stripe_resnet import StripeResNet56
from filtergraft.models.stripe_vgg import StripeVGG
from filtergraft.stripe import (FilterStripe, count_flops, count_params, prune, release_counts, threshold_skeleton,
                                update_skeleton)

# Every key, shape and dtype of the release's checkpoints, as ../shared/release lists them.
RELEASE = Path(__file__).resolve().parent / "data" / "release"
INPUT = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on a shared 2-core machine, OpenMP barriers stall behind other processes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def release_keys(name):
    """[(key, shape, dtype)] of the release's state dict of architecture `name` (resnet56, vgg16)."""
    text = (RELEASE / f"stripe_{name}_state_dict_keys.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    return [(key, tuple(int(d) for d in shape.strip("()").split(",") if d.strip()), dtype)
            for key, shape, dtype in rows]


# ----------------------------------------------------------------------------- architecture and counts


@pytest.mark.parametrize("name,arch", [("resnet56", "ResNet56"), ("vgg16", "VGG")])
def test_state_dict_keys_and_shapes_are_the_releases(name, arch):
    ours = create_model(arch, 10, kind="stripe").state_dict()
    assert [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in ours.items()] == release_keys(name)


def test_parameter_counts():
    resnet, vgg = StripeResNet56(), StripeVGG()
    assert count_params(resnet) == 855_770
    assert sum(p.numel() for p in resnet.parameters()) == 874_154
    assert sum(p.numel() for p in vgg.parameters()) == 14_762_058


def test_both_counting_conventions_of_the_unpruned_networks():
    resnet, vgg = StripeResNet56().eval(), StripeVGG().eval()
    assert release_counts(resnet, INPUT) == {"params": 874_154, "flops": 252_585_226}
    assert round(release_counts(resnet, INPUT)["flops"] / 1e6, 2) == 252.59
    assert round(release_counts(vgg, INPUT)["flops"] / 1e6, 2) == 627.36
    # As it runs: convolutions and the classifier's matrix product only, 2 per multiply-add; the release
    # count adds BatchNorm (ResNet56 1,089,536; VGG16 552,960), VGG's ReLUs (276,480) and pools (124,928)
    # and the classifier's bias.
    assert count_flops(resnet, INPUT) == 252_585_226 - 1_089_536 - 10 == 251_495_680
    assert count_flops(vgg, INPUT) == 627_357_706 - 552_960 - 276_480 - 124_928 - 10 == 626_403_328
    # A pruned network that kept everything counts as the network it came from.
    for model in (resnet, vgg):
        whole = release_counts(model, INPUT, prune(model))
        assert (whole["params_pruned"], whole["flops_pruned"]) == (whole["params"], whole["flops"])


def test_initialisation_is_the_releases():
    torch.manual_seed(0)
    stripe = FilterStripe(16, 32).weight
    torch.manual_seed(0)
    assert torch.equal(stripe, nn.Conv2d(16, 32, 3, padding=1, bias=False).weight)  # the same draw
    torch.manual_seed(1)
    model = StripeResNet56()
    for name, m in model.named_modules():
        if isinstance(m, FilterStripe):
            w, fan_in = m.weight.detach(), m.weight[0].numel()
            expected = 1 / math.sqrt(3 * fan_in)  # kaiming uniform, a = √5: U(±1/√fan_in)
            # The sample std of n uniform values has a relative standard error of √(0.8/4n) ≈ 0.45/√n.
            assert abs(w.std().item() / expected - 1) < 5 * 0.45 / math.sqrt(w.numel()), name
            assert w.abs().max().item() <= 1 / math.sqrt(fan_in), name
            assert torch.equal(m.FilterSkeleton, torch.ones_like(m.FilterSkeleton))
        elif isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.full_like(m.weight, 0.5)) and not m.bias.any(), name
    weight, bias = model.fc.weight.detach(), model.fc.bias.detach()
    assert abs(weight.std().item() / 0.01 - 1) < 5 / math.sqrt(2 * weight.numel())  # normal: 1/√(2n)
    assert bias.abs().max().item() <= 1 / math.sqrt(64) and bias.abs().min().item() > 0


def test_batchnorm_zeroing_is_where_the_release_zeroes():
    model = StripeResNet56(blocks_per_stage=1)
    block, shortcut = model.layer2[0], model.layer2[0].downsample
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.fill_(0.25)
        for conv in (model.conv1, block.conv1, block.conv2):
            conv.FilterSkeleton[0] = 0  # filter 0 of the stem, of a block's conv1 and of its conv2 emptied
        shortcut[0].FilterSkeleton[0] = 0.001  # below the threshold, but shortcuts are never thresholded
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    update_skeleton(model, 0.1, 0.01)
    assert block.bn1.weight[0] == 0 and block.bn1.bias[0] == 0 and block.bn1.bias[1] == 0.25
    for bn in (model.bn1, block.bn2, shortcut[1]):  # the stem's bn1, bn2, the shortcut's BatchNorm: kept
        assert bn.weight[0] == 0.5 and bn.bias[0] == 0.25
    assert shortcut[0].FilterSkeleton[0].item() == pytest.approx(0.001) and not shortcut[0].FilterSkeleton.grad.any()
    assert block.conv2.FilterSkeleton.grad[1].eq(0.1).all()  # sr·sign(FS) on the prunable skeletons
    vgg = StripeVGG()
    with torch.no_grad():
        for conv, _ in vgg.stripe_pairs():
            conv.FilterSkeleton[0] = 0
    threshold_skeleton(vgg, 0.01)
    assert all(bn.weight[0] == 0 and bn.bias[0] == 0 and bn.weight[1] == 0.5 for _, bn in vgg.stripe_pairs())
