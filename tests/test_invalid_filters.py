"""Invalid filters counted as the papers count them (SPEC §3): the convolutions of the main path, the 1×1
shortcut projections left out (ResNet32: 1,136 filters, MobileNetV2: 17,088), every conv with the option."""
import torch
import torchvision
from torch import nn

from filtergraft.analysis import count_invalid_filters, shortcut_projections
from filtergraft.models import create_model
from filtergraft.models.mobilenetv2 import CIFAR_CFG
from helpers import one_error_line, run_script

SCRIPT = "grafting_cifar/filter_comparison.py"


def mobilenet_shortcuts():
    """The blocks of the CIFAR MobileNetV2 configuration that change width at stride 1, named by hand."""
    names, index, width = [], 0, 32
    for _, out, blocks, stride in CIFAR_CFG:
        for s in [stride] + [1] * (blocks - 1):
            if s == 1 and width != out:
                names.append(f"layers.{index}.shortcut.0")
            index, width = index + 1, out
    return names


def filters(model, skip=()):
    return sum(m.out_channels for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and name not in skip)


def test_the_papers_totals_leave_out_the_shortcut_projections():
    mobilenet, resnet32 = create_model("mobilenetv2", 10), create_model("resnet32", 10)
    assert sorted(shortcut_projections(mobilenet)) == sorted(mobilenet_shortcuts())
    assert count_invalid_filters(mobilenet.state_dict(), 0.0, mobilenet) == (0, 17088)
    assert count_invalid_filters(mobilenet.state_dict(), 0.0, mobilenet, all_convs=True) == (0, 17544)
    assert filters(mobilenet) == 17544 and filters(mobilenet, mobilenet_shortcuts()) == 17088
    assert count_invalid_filters(resnet32.state_dict(), 0.0, resnet32) == (0, 1136)
    assert count_invalid_filters(resnet32.state_dict(), 0.0, resnet32, all_convs=True) == (0, 1136)


def test_torchvision_downsample_convs_are_shortcut_projections():
    resnet = torchvision.models.resnet18(num_classes=10)
    assert shortcut_projections(resnet) == {f"layer{i}.0.downsample.0" for i in (2, 3, 4)}
    assert shortcut_projections(torchvision.models.mobilenet_v2(num_classes=10)) == set()


def test_filter_comparison_counts_the_papers_filters_by_default(tmp_path):
    model = create_model("mobilenetv2", 10)
    state = model.state_dict()
    state["conv1.weight"][:3] = 0  # three invalid filters on the main path
    state["layers.1.shortcut.0.weight"][:2] = 0  # two in a shortcut projection
    torch.save({"net": state, "arch": "mobilenetv2", "num_classes": 10}, tmp_path / "best_1.t7")
    torch.save(state, tmp_path / "bare.t7")
    torch.save({"net": create_model("resnet32", 10).state_dict(), "arch": "resnet32"}, tmp_path / "r32.t7")
    paper = run_script(SCRIPT, tmp_path / "best_1.t7", tmp_path / "r32.t7", "--threshold", 1e-9)
    assert paper.returncode == 0, paper.stderr
    assert "| 3/17088 |" in paper.stdout and "| 0/1136 |" in paper.stdout
    every = run_script(SCRIPT, tmp_path / "best_1.t7", tmp_path / "r32.t7", "--threshold", 1e-9, "--all-convs")
    assert "| 5/17544 |" in every.stdout and "| 0/1136 |" in every.stdout
    assert "--model" in one_error_line(run_script(SCRIPT, tmp_path / "bare.t7"))
    bare = run_script(SCRIPT, tmp_path / "bare.t7", "--model", "mobilenetv2", "--threshold", 1e-9)
    assert "| 3/17088 |" in bare.stdout, bare.stderr
    assert "does not hold the tensors of a resnet32" in one_error_line(
        run_script(SCRIPT, tmp_path / "bare.t7", "--model", "resnet32"))
