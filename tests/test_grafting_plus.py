"""Grafting+: the distillation loss, frozen teachers, the real script with a teacher, refused inputs, and the
valid/invalid filter analysis."""
import hashlib
import json
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from filtergraft.distill import DistillationLoss, load_teacher
from filtergraft.engine import LRSchedule, Trainer, sgd
from filtergraft.models import create_model
from filtergraft.session import Session, network_files, read_jsonl
from helpers import assert_run_record, one_error_line, run_ring, run_script

SCRIPT = "grafting_plus/grafting+.py"
ANALYSIS = "grafting_plus/filter_analysis.py"
STUDENT = ["--arch", "resnet20", "--num_classes", "10", "--dataset", "digits", "--epochs", "1", "--workers", "0"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """best_1.t7 of a resnet20 baseline trained for one epoch by the project's own CIFAR script (on the small
    fake dataset: the tests need a checkpoint of the real format, not a good teacher)."""
    root = tmp_path_factory.mktemp("teacher")
    result = run_script("grafting_cifar/grafting.py", "--model", "resnet20", "--cifar", "10", "--dataset", "fake",
                        "--epochs", "1", "--workers", "0", "--batch-size", "64", "--seed", "0", "--s", root)
    assert result.returncode == 0, result.stderr
    return root / "best_1.t7"


def np_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def expected_loss(student, targets, teachers, tau):
    """CE and τ²·CE(p̄, p_s) with NumPy in float64, straight from the formula of SPEC §4."""
    n = len(targets)
    ce = -np.log(np_softmax(student)[np.arange(n), targets]).mean()
    p_bar = sum(np_softmax(t / tau) for t in teachers) / len(teachers)
    kd = tau ** 2 * -(p_bar * np.log(np_softmax(student / tau))).sum(axis=1).mean()
    # d kd / d student = τ·(softmax(s/τ) − p̄) / n
    grad_kd = tau * (np_softmax(student / tau) - p_bar) / n
    return ce, kd, grad_kd


@pytest.mark.parametrize("num_teachers", [1, 2])
def test_distillation_loss_matches_numpy(num_teachers):
    gen = torch.Generator().manual_seed(num_teachers)
    inputs = torch.randn(6, 5, generator=gen)
    targets = torch.randint(0, 4, (6,), generator=gen)
    teachers = [nn.Linear(5, 4) for _ in range(num_teachers)]
    for t in teachers:
        nn.init.normal_(t.weight, std=2.0, generator=gen)
    student = (3 * torch.randn(6, 4, generator=gen)).requires_grad_()
    tau = 3.0
    loss, parts = DistillationLoss(teachers, tau)(student, targets, inputs)

    teacher_logits = [inputs.numpy().astype(np.float64) @ t.weight.detach().numpy().T.astype(np.float64)
                      + t.bias.detach().numpy() for t in teachers]
    ce, kd, grad_kd = expected_loss(student.detach().double().numpy(), targets.numpy(), teacher_logits, tau)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert parts["kd"].item() == pytest.approx(kd, rel=1e-5)
    assert loss.item() == pytest.approx(ce + kd, rel=1e-5)
    parts["kd"].backward()
    np.testing.assert_allclose(student.grad.numpy(), grad_kd, rtol=1e-4, atol=1e-7)
    assert all(p.grad is None for t in teachers for p in t.parameters())


def test_teacher_stays_frozen_while_a_student_trains(teacher, tmp_path):
    model, acc = load_teacher("resnet20", str(teacher), 10)
    saved = torch.load(teacher, weights_only=True)
    assert acc == saved["acc"] and not model.training
    assert not any(p.requires_grad for p in model.parameters())
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 3, 32, 32, generator=gen), torch.randint(0, 10, (32,), generator=gen))
    loader = DataLoader(data, batch_size=16)
    student = create_model("resnet20", 10)
    before = {k: v.clone() for k, v in student.state_dict().items()}
    session = Session(tmp_path, network_files(1))
    trainer = Trainer(student, sgd(student, 0.1), loader, loader, session, device=torch.device("cpu"), epochs=1,
                      schedule=LRSchedule(1, len(loader)), loss_fn=DistillationLoss([model], 2.0))
    trainer.fit()
    after = model.state_dict()
    assert after.keys() == saved["net"].keys()
    for key, value in saved["net"].items():
        assert after[key].dtype == value.dtype and torch.equal(after[key], value), key
    assert not torch.equal(student.state_dict()["conv1.weight"], before["conv1.weight"])
    record = read_jsonl(tmp_path / "metrics_1.jsonl")[0]
    assert record["train_loss"] == pytest.approx(record["train_ce"] + record["train_kd"], rel=1e-5)


def test_two_students_graft_and_distill(teacher, tmp_path):
    digest = hashlib.sha256(teacher.read_bytes()).hexdigest()
    session = tmp_path / "gplus"
    flags = [*STUDENT, "--num", "2", "--s", session, "--seed", "1", "--teacher_arch", "resnet20",
             "--teacher_dir", teacher, "--T", "2", "--graft-timeout", "240"]
    run_ring(SCRIPT, 2, *flags, log_dir=tmp_path)
    for i, peer in ((1, 2), (2, 1)):
        (record,) = read_jsonl(session / f"metrics_{i}.jsonl")
        assert record["train_kd"] > 0 and record["train_ce"] > 0
        assert record["train_loss"] == pytest.approx(record["train_ce"] + record["train_kd"], rel=1e-5)
        assert record["graft"]["peer"] == peer and record["graft"]["layers"]
        best = torch.load(session / f"best_{i}.t7", weights_only=True)
        assert best["arch"] == "resnet20" and best["num_classes"] == 10
    config = json.loads((session / "session.json").read_text())
    assert config["script"] == "grafting_plus" and config["T"] == 2.0
    assert config["teachers"] == [{"arch": "resnet20", "checkpoint": str(teacher)}]
    assert_run_record(session, seed=1, weight_decay=5e-4)
    assert "teacher resnet20" in (session / "1.log").read_text()
    assert hashlib.sha256(teacher.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize("case", ["arch_key", "bare_state_dict", "counts", "missing"])
def test_refused_teachers(case, teacher, tmp_path):
    if case == "bare_state_dict":
        bare = tmp_path / "bare.t7"
        torch.save(torch.load(teacher, weights_only=True)["net"], bare)
        teacher_flags = ["--teacher_arch", "resnet32", "--teacher_dir", bare]
    else:
        teacher_flags = {
            "arch_key": ["--teacher_arch", "resnet32", "--teacher_dir", teacher],
            "counts": ["--teacher_arch", "resnet20", "resnet20", "--teacher_dir", teacher],
            "missing": ["--teacher_arch", "resnet20", "--teacher_dir", tmp_path / "nope.t7"],
        }[case]
    session = tmp_path / "session"
    line = one_error_line(run_script(SCRIPT, *STUDENT, "--s", session, *teacher_flags))
    expected = {"arch_key": "arch='resnet20'", "bare_state_dict": "different architecture",
                "counts": "2 teacher(s)", "missing": "does not exist"}[case]
    assert expected in line
    assert not session.exists()


def l1(weight):
    return np.abs(weight).reshape(weight.shape[0], -1).sum(axis=1)


def test_filter_analysis_against_direct_computation(tmp_path):
    gen = torch.Generator().manual_seed(0)

    def state():
        return {"conv1.weight": torch.randn(6, 3, 3, 3, generator=gen) * 0.05,
                "block.conv.weight": torch.randn(8, 6, 1, 1, generator=gen) * 0.05,
                "block.bn.weight": torch.rand(8, generator=gen), "fc.weight": torch.randn(10, 8, generator=gen)}

    base, graft, distill = state(), state(), state()
    base["conv1.weight"][:2] *= 0.01  # two filters far below the threshold
    threshold = 0.5
    torch.save({"net": base, "acc": 90.0, "arch": "toy"}, tmp_path / "base.t7")
    torch.save({"net": graft, "acc": 91.25}, tmp_path / "graft.t7")
    torch.save(distill, tmp_path / "distill.t7")  # a bare state dict: no recorded accuracy
    # --all-convs: a toy architecture has no model to tell shortcut projections by
    result = run_script(ANALYSIS, "--baseline", tmp_path / "base.t7", "--threshold", threshold, "--all-convs",
                        "--method", f"grafting={tmp_path / 'graft.t7'}", "--method", f"distill={tmp_path / 'distill.t7'}")
    assert result.returncode == 0, result.stderr

    convs = ["conv1.weight", "block.conv.weight"]
    base_norms = np.concatenate([l1(base[k].numpy()) for k in convs])
    valid = base_norms >= threshold
    assert 0 < (~valid).sum() < valid.size
    assert f"{valid.sum()} valid, {(~valid).sum()} invalid of {valid.size} filters" in result.stdout
    rows = {m.group(1): m.groups()[1:] for m in re.finditer(r"^\| (\S+) \| (\S+) \| (\S+) \| (\S+) \|$",
                                                            result.stdout, re.M)}
    for name, sd, acc in (("baseline", base, "90.00"), ("grafting", graft, "91.25"), ("distill", distill, "-")):
        norms = np.concatenate([l1(sd[k].numpy()) for k in convs])
        assert rows[name][0] == acc
        assert float(rows[name][1]) == pytest.approx(norms[valid].mean(), abs=1e-4)
        assert float(rows[name][2]) == pytest.approx(norms[~valid].mean(), abs=1e-4)

    torch.save({"net": {**graft, "conv1.weight": torch.zeros(5, 3, 3, 3)}}, tmp_path / "other.t7")
    line = one_error_line(run_script(ANALYSIS, "--baseline", tmp_path / "base.t7", "--all-convs",
                                     "--method", f"other={tmp_path / 'other.t7'}"))
    assert "different architecture" in line
