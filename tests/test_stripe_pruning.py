"""stripe_pruning/main.py end to end: training with the skeleton, pruning, prune.json, the exported
network in a fresh interpreter, shape-only training, and refused inputs."""
import json
import subprocess

import pytest
import torch

from filtergraft.models.stripe_resnet import StripeResNet56
from filtergraft.rng import seed_everything
from filtergraft.session import read_jsonl
from filtergraft.stripe import FilterStripe, program_flops
from helpers import PYTHON, assert_run_record, one_error_line, run_script, script_env

SCRIPT = "stripe_pruning/main.py"


@pytest.fixture(scope="module")
def pruned_run(tmp_path_factory):
    save = tmp_path_factory.mktemp("stripe")
    # One epoch moves every skeleton entry down by about the same L1 step; the threshold sits inside the
    # narrow spread the cross-entropy adds, so that part of the stripes go and the rest stay.
    result = run_script(SCRIPT, "--arch", "ResNet56", "--dataset", "digits", "--epochs", 1, "--batch-size", 64,
                        "--sr", 0.005, "--threshold", 0.9622, "--lr", 0.05, "--workers", 0, "--seed", 0,
                        "--save", save, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return save, result


def test_pruning_removes_flops_and_keeps_accuracy(pruned_run):
    save, result = pruned_run
    report = json.loads((save / "prune.json").read_text())
    assert report["flops_pruned"] < report["flops"] and report["params_pruned"] < report["params"]
    assert report["acc_pruned"] == pytest.approx(report["acc"], abs=1e-9)
    assert report["flops_reduction"] == pytest.approx(100 * (1 - report["flops_pruned"] / report["flops"]))
    assert report["stripe_layers"] + report["dense_layers"] == len(report["layers"])
    assert f"-{report['flops_reduction']:.2f}%" in result.stdout
    # Both conventions, labelled: the release's (the kept stripes) and what the exported network executes.
    assert report["params"] == 874_154 and report["flops"] == 252_585_226
    assert report["flops_executed"] == program_flops(torch.export.load(save / "pruned.pt2"), (3, 32, 32))
    assert report["params_stored"] < report["params"]
    assert "as the release counts: parameters" in result.stdout
    assert f"as pruned.pt2 runs: {report['flops_executed']:,} FLOPs executed" in result.stdout
    metrics = read_jsonl(save / "metrics.jsonl")
    assert metrics[0]["epoch"] == 1 and 0 < metrics[0]["stripes_kept"] < 1
    for name in ("best.pth.tar", "pruned.pth.tar", "pruned.pt2", "train.log"):
        assert (save / name).exists()
    assert_run_record(save, seed=0, weight_decay=1e-4)


def test_exported_network_runs_without_this_project(pruned_run):
    save, _ = pruned_run
    code = ("import sys, torch; assert 'filtergraft' not in sys.modules; "
            f"m = torch.export.load({str(save / 'pruned.pt2')!r}).module(); "
            "print(*[tuple(m(torch.randn(b, 3, 32, 32)).shape) for b in (1, 5)])")
    env = script_env()
    result = subprocess.run([PYTHON, "-I", "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["(1,", "10)", "(5,", "10)"]


@pytest.mark.parametrize("control", [False, True], ids=["skeleton-learns", "control"])
def test_freeze_weights_keeps_conv_weights_byte_identical(tmp_path, control):
    """--freeze-weights: the conv weights stay at their initialisation, the skeleton learns; with
    --freeze-skeleton (the shape-only control) the skeleton stays at its ones and only BatchNorm learns."""
    flags = ("--freeze-skeleton",) if control else ()
    result = run_script(SCRIPT, "--arch", "ResNet56", "--dataset", "fake", "--epochs", 1, "--batch-size", 128,
                        "--freeze-weights", *flags, "--workers", 0, "--seed", 5, "--save", tmp_path, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    seed_everything(5)
    initial = StripeResNet56(num_classes=10).state_dict()
    trained = torch.load(tmp_path / "last.pth.tar", weights_only=True)["net"]
    convs = [n for n, m in StripeResNet56(num_classes=10).named_modules() if isinstance(m, FilterStripe)]
    assert convs
    for name in convs:
        assert torch.equal(trained[f"{name}.weight"], initial[f"{name}.weight"]), name
        skeleton = trained[f"{name}.FilterSkeleton"]
        assert torch.equal(skeleton, initial[f"{name}.FilterSkeleton"]) == control, name
    assert not torch.equal(trained["bn1.weight"], initial["bn1.weight"])


BAD = [(("--sr", "1e-5"), "--sr and --threshold go together"),
       (("--threshold", "0.01"), "--sr and --threshold go together"),
       (("--sr", "-1", "--threshold", "0.01"), "must be non-negative"),
       (("--freeze-skeleton", "--sr", "1e-5", "--threshold", "0.01"), "--freeze-skeleton keeps the skeleton at 1"),
       (("--arch", "ResNet50"), "invalid choice: 'ResNet50'"),
       # library errors name this script's flags, not the CIFAR script's --cifar and --data
       (("--num_classes", "20"), "--num_classes must be 10 or 100, not 20"),
       (("--dataset", "imagefolder", "--data_path", "/missing"), "--data_path /missing is not a directory")]


@pytest.mark.parametrize("flags,message", BAD, ids=["sr-alone", "threshold-alone", "negative", "frozen-skeleton-sr", "arch", "classes",
                                                   "data-path"])
def test_bad_input_is_one_clear_line(tmp_path, flags, message):
    result = run_script(SCRIPT, "--dataset", "fake", "--epochs", 1, "--save", tmp_path / "s", *flags)
    assert message in one_error_line(result)
    assert not (tmp_path / "s").exists()


def test_a_save_directory_holding_another_run_is_refused(pruned_run):
    save, _ = pruned_run
    before = {p.name: p.read_bytes() for p in save.iterdir() if p.is_file()}
    other = run_script(SCRIPT, "--arch", "VGG", "--dataset", "digits", "--epochs", 1, "--save", save)
    assert "holds another run" in one_error_line(other)
    same = run_script(SCRIPT, "--arch", "ResNet56", "--dataset", "digits", "--epochs", 1, "--sr", 0.005,
                      "--threshold", 0.9622, "--save", save)
    assert "pass --resume" in one_error_line(same)
    assert before == {p.name: p.read_bytes() for p in save.iterdir() if p.is_file()}
