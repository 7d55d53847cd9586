"""The stripe models as the release builds, initialises, updates and counts them, and the release's
checkpoints loaded, pruned and exported (SPEC §5)."""
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from filtergraft.errors import UserError
from filtergraft.models import create_model
from filtergraft.models.stripe_resnet import StripeResNet56
from filtergraft.models.stripe_vgg import StripeVGG
from filtergraft.stripe import (FilterStripe, count_flops, count_params, program_flops, prune, release_counts,
                                threshold_skeleton, update_skeleton)
from filtergraft.stripe.checkpoints import load_for_pruning
from filtergraft.stripe.report import PruneData, prune_and_report
from helpers import one_error_line, run_script

# Every key, shape and dtype of the release's checkpoints, as ../shared/release lists them.
RELEASE = Path(__file__).resolve().parent / "release_keys"
INPUT = (3, 32, 32)


pytestmark = pytest.mark.usefixtures("one_thread")


def release_keys(name):
    """[(key, shape, dtype)] of the release's state dict of architecture `name` (resnet56, vgg16)."""
    text = (RELEASE / f"stripe_{name}_state_dict_keys.tsv").read_text()
    rows = [line.split("\t") for line in text.splitlines() if not line.startswith("#")]
    return [(key, tuple(int(d) for d in shape.strip("()").split(",") if d.strip()), dtype)
            for key, shape, dtype in rows]


def release_state(name, seed):
    """A state dict with the release's keys and shapes, random values, some stripes, filters and convs zeroed."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape, dtype in release_keys(name):
        if dtype == "int64":
            state[key] = torch.tensor(100)
        elif key.endswith("running_var"):
            state[key] = torch.rand(shape, generator=gen) + 0.5
        elif key.endswith("FilterSkeleton") and "downsample" not in key:
            kept = torch.rand(shape, generator=gen) < 0.5
            kept[: shape[0] // 4] = False  # whole filters without a stripe
            state[key] = (torch.rand(shape, generator=gen) + 0.5) * kept
        else:
            state[key] = torch.randn(shape, generator=gen) * (0.1 if key.endswith("weight") else 0.3)
    if name == "resnet56":
        state["layer1.3.conv1.FilterSkeleton"].zero_()  # a block replaced by its shortcut
        state["layer3.0.conv2.FilterSkeleton"].zero_()  # the same for a block with a 1×1 shortcut
    return state


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


# ----------------------------------------------------------------------------- the release's checkpoints


@pytest.mark.parametrize("name,arch", [("resnet56", "ResNet56"), ("vgg16", "VGG")])
def test_release_state_dict_loads_prunes_exactly_and_exports(tmp_path, name, arch):
    state = release_state(name, seed=1)
    path = tmp_path / "release.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 160}, path)
    model = create_model(arch, 10, kind="stripe")
    load_for_pruning(model, path, "release checkpoint")
    assert torch.equal(model.state_dict()["fc.weight" if name == "resnet56" else "classifier.weight"],
                       state["fc.weight" if name == "resnet56" else "classifier.weight"])
    gen = torch.Generator().manual_seed(2)
    loader = [(torch.randn(4, *INPUT, generator=gen), torch.randint(0, 10, (4,), generator=gen))]
    report = prune_and_report(model, 0.0, PruneData(loader, torch.device("cpu")), tmp_path,
                              {"arch": arch, "num_classes": 10}, log=lambda _: None)
    threshold_skeleton(model, 0.0)  # the masked network prune_and_report pruned (a copy: `model` is left as it was)
    pruned = prune(model)
    x = loader[0][0]
    with torch.no_grad():
        ref = model.eval()(x)
        program = torch.export.load(tmp_path / "pruned.pt2")
        assert (program.module()(x) - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
        assert (pruned(x) - ref).abs().max().item() <= 1e-4 * ref.abs().max().item()
    assert report["acc_pruned"] == report["acc"]
    written = json.loads((tmp_path / "prune.json").read_text())
    assert written["flops_executed"] == program_flops(program, INPUT) == report["flops_executed"]
    assert written["params_stored"] == sum(p.numel() for p in program.module().parameters())
    assert written["flops_pruned"] < written["flops"] and written["params_pruned"] < written["params"]
    assert written["flops"] == release_counts(model, INPUT)["flops"]


def test_foreign_state_dicts_are_refused(tmp_path):
    path = tmp_path / "cifar.pth"
    torch.save({"net": create_model("resnet56").state_dict(), "arch": "resnet56"}, path)
    with pytest.raises(UserError, match=r"holds no Filter Skeleton \(written for arch resnet56\)"):
        load_for_pruning(StripeResNet56(), path, "checkpoint")
    wrong_classes = {k: v for k, v in release_state("resnet56", 0).items()}
    wrong_classes["fc.weight"], wrong_classes["fc.bias"] = torch.zeros(100, 64), torch.zeros(100)
    torch.save(wrong_classes, path)
    with pytest.raises(UserError, match=r"fc.weight is \(100, 64\)"):
        load_for_pruning(StripeResNet56(), path, "checkpoint")


def test_the_script_evaluates_a_release_checkpoint_and_refuses_a_foreign_one(tmp_path):
    release = tmp_path / "release.pth"
    torch.save(release_state("resnet56", seed=3), release)
    save = tmp_path / "evaluated"
    result = run_script("stripe_pruning/main.py", "--arch", "ResNet56", "--dataset", "fake", "--evaluate", release,
                        "--threshold", 0.0, "--workers", 0, "--save", save, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((save / "prune.json").read_text())
    assert report["acc_pruned"] == pytest.approx(report["acc"], abs=1e-9)
    assert report["flops"] == 252_585_226 and report["params"] == 874_154
    assert report["flops_executed"] == program_flops(torch.export.load(save / "pruned.pt2"), INPUT)
    assert f"{report['flops_executed']:,} FLOPs executed" in result.stdout
    assert not (save / "best.pth.tar").exists() and (save / "pruned.pth.tar").exists()
    foreign = tmp_path / "foreign.pth"
    torch.save(create_model("vgg16").state_dict(), foreign)
    refused = run_script("stripe_pruning/main.py", "--arch", "ResNet56", "--dataset", "fake", "--evaluate", foreign,
                         "--save", tmp_path / "refused")
    assert "holds no Filter Skeleton: it is no stripe network" in one_error_line(refused)
    assert not (tmp_path / "refused").exists()
