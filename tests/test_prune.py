"""stripe_pruning/prune.py end to end on a short digits training: the threshold sweep, a FLOPs budget with
recalibration and finetuning, exact exports (main.py's, prune.py's, each row of the sweep's), the release's
state dicts, weights-only pruned files rebuilt, refused inputs; and, in this process, the recalibrated
BatchNorm statistics and the budget bisection against direct computations."""
import csv
import json

import pytest
import torch
import torch.nn as nn

from filtergraft.data import cifar_like_datasets
from filtergraft.models import create_model
from filtergraft.models.stripe_resnet import StripeResNet56
from filtergraft.stripe import threshold_skeleton
from filtergraft.stripe.budget import (MIN_SWEEP_ROWS, budget_reduction, magnitudes, smallest_threshold,
                                       sweep_thresholds)
from filtergraft.stripe.checkpoints import load_for_pruning, load_pruned
from filtergraft.stripe.tuning import recalibrate_batchnorm
from helpers import one_error_line, run_script
from test_stripe_release import release_state

SCRIPT = "stripe_pruning/prune.py"
DIGITS = ("--dataset", "digits", "--workers", 0)
FAST_TIMING = ("--latency-batches", 1, 2, "--latency-time", 0.01)
# Two epochs move every skeleton entry down by about the same L1 step; the threshold sits inside the spread
# the cross-entropy adds, so that training prunes part of the stripes and the sweep finds more to prune.
TRAINING = ("--arch", "ResNet18", "--num_classes", 10, *DIGITS, "--epochs", 2, "--lr", 0.05, "--sr", 0.005,
            "--threshold", 0.9612, "--seed", 0)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A digits training of main.py, and a sweep of its best checkpoint: (root, training dir, sweep rows)."""
    root = tmp_path_factory.mktemp("prune")
    result = run_script("stripe_pruning/main.py", *TRAINING, "--save", root / "train", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    sweep = run_script(SCRIPT, root / "train" / "best.pth.tar", *DIGITS, "--sweep", "--bn-recalibrate", 2,
                       *FAST_TIMING, "--save", root / "sweep", timeout=600)
    assert sweep.returncode == 0, sweep.stderr[-3000:]
    with open(root / "sweep" / "sweep.csv") as table:
        rows = [{k: (v == "True" if k == "trained" else float(v)) for k, v in row.items()}
                for row in csv.DictReader(table)]
    return root, root / "train", rows


def digits_batch():
    """The first 64 digits test images."""
    _, test_set = cifar_like_datasets("digits", "", 10)
    return torch.stack([test_set[i][0] for i in range(64)])


def masked_outputs(checkpoint, arch, threshold, x):
    """Outputs on `x` of the masked network of `checkpoint` thresholded at `threshold`, computed here."""
    model = create_model(arch, 10, kind="stripe")
    load_for_pruning(model, checkpoint, "checkpoint")
    threshold_skeleton(model, threshold)
    with torch.no_grad():
        return model.eval()(x)


def assert_close(outputs, reference):
    assert (outputs - reference).abs().max().item() <= 1e-4 * reference.abs().max().item()


def test_sweep_grows_with_the_threshold_and_meets_mains_pruning(trained):
    root, train, rows = trained
    assert len(rows) >= 12
    thresholds = [row["threshold"] for row in rows]
    assert thresholds == sorted(thresholds) and thresholds[0] == 0
    for key in ("params_reduction", "flops_reduction"):
        assert all(a[key] <= b[key] for a, b in zip(rows, rows[1:])), key
    assert rows[-1]["flops_reduction"] > 50 > rows[0]["flops_reduction"] == 0
    # At threshold 0 the unpruned network: the accuracy main.py measured when it saved the best checkpoint.
    best = torch.load(train / "best.pth.tar", weights_only=True)
    assert rows[0]["acc"] == pytest.approx(best["acc"], abs=1e-9)
    report = json.loads((train / "prune.json").read_text())
    [at_training] = [row for row in rows if row["trained"]]
    assert at_training["threshold"] == report["threshold"] == best["threshold"] == 0.9612
    assert 0 < report["flops_reduction"] < rows[-1]["flops_reduction"]
    for key in ("params_pruned", "flops_pruned", "params_reduction", "flops_reduction"):
        assert at_training[key] == pytest.approx(report[key]), key
    assert at_training["acc"] == pytest.approx(report["acc_pruned"], abs=1e-9)
    for row in rows:
        assert row["export_max_error"] <= 1e-3 and row["latency_ms_b1"] > 0 and 0 <= row["acc_recalibrated"] <= 100
    table = (root / "sweep" / "sweep.md").read_text()
    assert "CPU" in table and table.count("\n| ") == len(rows) + 1 and "0.9612 \\*" in table
    assert (root / "sweep" / "sweep.png").read_bytes()[:4] == b"\x89PNG"


def test_flops_target_is_the_smallest_threshold_that_reaches_it(trained):
    root, train, rows = trained
    save = root / "half"
    result = run_script(SCRIPT, train / "best.pth.tar", *DIGITS, "--target-flops", 0.5, "--bn-recalibrate", 2,
                        "--finetune-epochs", 1, "--finetune-lr", 0.005, "--save", save, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((save / "prune.json").read_text())
    chosen = report["threshold"]
    assert report["flops_reduction"] >= 50 and report["target"]["reached"] >= 0.5
    assert max(row["flops_reduction"] for row in rows if row["threshold"] < chosen) < 50
    assert f"threshold {chosen:.6g} is the smallest that reaches it" in result.stdout
    assert f"keeps {report['acc_exported']:.2f}% test accuracy" in result.stdout
    # Recalibrated, then finetuned with the stripes held: the structure, and so the counts, stay.
    assert {"acc_pruned", "acc_recalibrated", "acc_finetuned"} <= set(report)
    assert report["acc_exported"] == pytest.approx(report["acc_finetuned"], abs=1e-9)
    assert len(report["finetune"]["history"]) == 1
    x = digits_batch()
    pruned = load_pruned(save / "pruned.pth.tar")
    with torch.no_grad():
        assert_close(torch.export.load(save / "pruned.pt2").module()(x), pruned(x))
    assert report["export_max_error"] <= 1e-4 * report["output_scale"]


def test_mains_exported_network_equals_its_masked_network(trained):
    _, train, _ = trained
    x = digits_batch()
    reference = masked_outputs(train / "best.pth.tar", "ResNet18", 0.9612, x)
    assert_close(torch.export.load(train / "pruned.pt2").module()(x), reference)
    checkpoint = torch.load(train / "pruned.pth.tar", weights_only=True)
    assert checkpoint["arch"] == "ResNet18" and checkpoint["threshold"] == 0.9612
    with torch.no_grad():
        assert_close(load_pruned(train / "pruned.pth.tar")(x), reference)


def test_a_release_state_dict_prunes_evaluates_and_exports(tmp_path):
    path = tmp_path / "release.pth"
    state = release_state("resnet56", seed=4)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    result = run_script(SCRIPT, path, "--arch", "ResNet56", "--dataset", "fake", "--workers", 0, "--threshold", 0.8,
                        "--save", tmp_path / "out", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "prune.json").read_text())
    assert report["acc_pruned"] == pytest.approx(report["acc"], abs=1e-9) and report["flops_reduction"] > 0
    x = torch.randn(4, 3, 32, 32)
    reference = masked_outputs(path, "ResNet56", 0.8, x)
    assert_close(torch.export.load(tmp_path / "out" / "pruned.pt2").module()(x), reference)
    assert torch.load(tmp_path / "out" / "pruned.pth.tar", weights_only=True)["arch"] == "ResNet56"
    with torch.no_grad():
        assert_close(load_pruned(tmp_path / "out" / "pruned.pth.tar")(x), reference)


def refusals(root, train):
    """(flags, what the one error line says) for prune.py's refused inputs."""
    best = train / "best.pth.tar"
    plain, release = root / "plain.pth", root / "release.pth"
    torch.save(create_model("resnet20").state_dict(), plain)
    torch.save(release_state("resnet56", seed=5), release)
    # fake data (the same image size as digits) loads faster, and none of these gets as far as evaluating
    return [((best, "--arch", "VGG"), "was trained as arch 'ResNet18', not --arch 'VGG'"),
            ((best, "--num_classes", 100), "was trained as num_classes 10, not --num_classes 100"),
            ((best, "--target-flops", 0.9999), "no threshold reaches it; the most is"),
            ((best, "--threshold", -0.1), "--threshold must be 0 or more"),
            ((plain, "--arch", "ResNet56"), "holds no Filter Skeleton"),
            ((release, "--arch", "ResNet56", "--threshold", 5), "removes every stripe of conv1")]


def test_mistakes_are_one_line_and_exit_2_before_any_file(trained):
    root, train, rows = trained
    for i, (flags, message) in enumerate(refusals(root, train)):
        save = root / f"refused{i}"
        result = run_script(SCRIPT, *flags, "--dataset", "fake", "--workers", 0, "--save", save, timeout=300)
        assert result.returncode == 2 and message in one_error_line(result), (flags, result.stderr)
        assert not save.exists(), flags
        if "the most is" in message:  # the most any threshold reaches: the sweep's last row
            assert f"the most is {rows[-1]['flops_reduction'] / 100:.4f}" in result.stderr


def test_recalibrated_statistics_are_the_mean_of_the_batch_statistics():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    batches = [(torch.randn(5, 3, 8, 8) * (i + 1) + i, None) for i in range(3)]
    weights = {k: v.clone() for k, v in model.named_parameters()}
    assert recalibrate_batchnorm(model, batches, 2, torch.device("cpu")) == 2
    with torch.no_grad():
        outputs = [model[0](x) for x, _ in batches[:2]]
    bn = model[1]
    assert torch.allclose(bn.running_mean, torch.stack([y.mean((0, 2, 3)) for y in outputs]).mean(0), atol=1e-5)
    assert torch.allclose(bn.running_var, torch.stack([y.var((0, 2, 3)) for y in outputs]).mean(0), atol=1e-5)
    assert bn.momentum == 0.1 and not model.training
    assert all(torch.equal(v, dict(model.named_parameters())[k]) for k, v in weights.items())


def test_budget_threshold_is_the_smallest_distinct_value_that_reaches_it():
    model = StripeResNet56()
    model.load_state_dict(release_state("resnet56", seed=6))
    start = budget_reduction(model, 0.0, (3, 32, 32), "params")
    target = (start + 1) / 2
    threshold, reached = smallest_threshold(model, target, "params", (3, 32, 32))
    assert reached >= target and reached == budget_reduction(model, threshold, (3, 32, 32), "params")
    below = magnitudes(model)
    below = below[below < threshold].max().item()
    assert budget_reduction(model, below, (3, 32, 32), "params") < target
    thresholds, limit, layer = sweep_thresholds(model, trained=0.7)
    assert len(thresholds) >= MIN_SWEEP_ROWS and {0.0, 0.7} <= set(thresholds) and max(thresholds) < limit
    assert layer == "conv1" and limit == model.conv1.FilterSkeleton.abs().max().item()
