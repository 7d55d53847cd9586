"""The baseline (one network, no grafting) through the real CIFAR script: session files, resume after
SIGKILL, repeatability, and a clear line for every bad input."""
import json
import os
import signal
import time
from datetime import datetime

import pytest
import torch

from filtergraft.session import read_jsonl
from helpers import assert_run_record, one_error_line, run_script, start_script

SCRIPT = "grafting_cifar/grafting.py"
DIGITS = ("--dataset", "digits", "--model", "resnet20", "--workers", "0", "--batch-size", "256")
TINY = ("--dataset", "fake", "--model", "resnet20", "--workers", "0", "--batch-size", "64")
METRIC_KEYS = {"epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc", "best_acc", "epoch_time"}


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    session = tmp_path_factory.mktemp("baseline")
    result = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--seed", "3", "--s", session, "--lr", "0.05")
    assert result.returncode == 0, result.stderr
    return session, result


def test_baseline_writes_the_session_files(baseline):
    session, result = baseline
    metrics = read_jsonl(session / "metrics_1.jsonl")
    assert [m["epoch"] for m in metrics] == [1, 2]
    assert all(METRIC_KEYS <= set(m) and "graft" not in m for m in metrics)
    assert metrics[-1]["best_acc"] == max(m["test_acc"] for m in metrics)
    best = torch.load(session / "best_1.t7", weights_only=True)
    assert {"net", "acc", "epoch", "arch", "num_classes"} <= set(best)
    assert best["acc"] == metrics[-1]["best_acc"] and best["arch"] == "resnet20"
    last = torch.load(session / "last_1.t7", weights_only=True)
    assert last["epoch"] == 2 and {"net", "optimizer", "scheduler", "best_acc", "rng"} <= set(last)
    log = (session / "1.log").read_text()
    assert "epoch 2/2" in log and "epoch 2/2" in result.stdout
    assert_timestamped(log.splitlines() + result.stdout.splitlines(), metrics)
    assert json.loads((session / "session.json").read_text())["arch"] == "resnet20"
    assert_run_record(session, seed=3, weight_decay=5e-4)


def assert_timestamped(lines, metrics):
    """Every log and console line starts with an ISO 8601 local time with its offset; every metrics line
    has its `time`, seconds since the epoch, in the order the epochs ended and near the logged times."""
    stamps = [datetime.fromisoformat(line.split(" ", 1)[0]) for line in lines]
    assert all(stamp.utcoffset() is not None for stamp in stamps)
    times = [m["time"] for m in metrics]
    assert times == sorted(times)
    assert min(s.timestamp() for s in stamps) - 1 <= times[0] <= max(s.timestamp() for s in stamps) + 1


def test_seed_makes_a_run_repeatable(baseline, tmp_path):
    session, _ = baseline
    result = run_script(SCRIPT, *DIGITS, "--epochs", "1", "--seed", "3", "--s", tmp_path, "--lr", "0.05")
    assert result.returncode == 0, result.stderr
    again = read_jsonl(tmp_path / "metrics_1.jsonl")[0]
    first = read_jsonl(session / "metrics_1.jsonl")[0]
    assert again["train_loss"] == pytest.approx(first["train_loss"], rel=1e-5)
    assert again["test_acc"] == pytest.approx(first["test_acc"], abs=0.3)


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_sigkill_mid_epoch_then_resume_leaves_no_gap_or_duplicate(tmp_path):
    flags = (*TINY, "--epochs", "3", "--seed", "1", "--s", tmp_path, "--print_frequence", "1", "--batch-size", "32")
    proc = start_script(SCRIPT, *flags, log_path=tmp_path / "console")
    log = tmp_path / "1.log"
    wait_for(lambda: log.exists() and "epoch 2 [3/" in log.read_text(), 240, "the middle of epoch 2")
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert [m["epoch"] for m in read_jsonl(tmp_path / "metrics_1.jsonl")] == [1]
    result = run_script(SCRIPT, *flags, "--resume")
    assert result.returncode == 0, result.stderr
    assert "resumed" in result.stdout and "after epoch 1" in result.stdout
    assert [m["epoch"] for m in read_jsonl(tmp_path / "metrics_1.jsonl")] == [1, 2, 3]
    assert torch.load(tmp_path / "last_1.t7", weights_only=True)["epoch"] == 3


BAD_INPUTS = [
    (("--model", "resnet21"), "unknown model 'resnet21'"),
    (("--cifar", "7"), "--cifar must be 10 or 100"),
    (("--num", "2", "--i", "3"), "--i must be between 1 and --num"),
    (("--epochs", "0"), "--epochs must be at least 1"),
    (("--resume",), "does not exist"),
    (("--lr", "-1"), "must be > 0"),
]


@pytest.mark.parametrize("flags,message", BAD_INPUTS, ids=[f[0][0] for f in BAD_INPUTS])
def test_bad_input_is_one_clear_line(tmp_path, flags, message):
    defaults = {"--epochs": "1", "--model": "resnet20"}
    merged = [*flags] + [x for k, v in defaults.items() if k not in flags for x in (k, v)]
    result = run_script(SCRIPT, "--dataset", "fake", "--workers", "0", "--s", tmp_path / "s", *merged)
    if flags[0] == "--lr":  # argparse's own usage error: still one line and no traceback
        assert result.returncode == 2 and "Traceback" not in result.stderr and message in result.stderr
        return
    assert message in one_error_line(result)


def test_unwritable_session_dir_is_refused(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run_script(SCRIPT, *TINY, "--epochs", "1", "--s", blocker / "session")
    assert "cannot write to session directory" in one_error_line(result)


def test_corrupt_last_checkpoint_is_refused_and_kept(baseline, tmp_path):
    session, _ = baseline
    for name in ("session.json", "metrics_1.jsonl"):
        (tmp_path / name).write_bytes((session / name).read_bytes())
    (tmp_path / "last_1.t7").write_bytes(b"\x00garbage" * 10)
    result = run_script(SCRIPT, *DIGITS, "--epochs", "3", "--s", tmp_path, "--resume")
    assert "not a readable torch checkpoint" in one_error_line(result)
    assert (tmp_path / "last_1.t7").read_bytes() == b"\x00garbage" * 10
    assert (tmp_path / "metrics_1.jsonl").read_bytes() == (session / "metrics_1.jsonl").read_bytes()


def test_existing_session_is_never_overwritten(baseline):
    session, _ = baseline
    before = {p.name: p.read_bytes() for p in session.iterdir() if p.is_file()}
    fresh = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--s", session)
    assert "pass --resume" in one_error_line(fresh)
    other = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--s", session, "--num", "2", "--i", "2")
    assert "holds another run" in one_error_line(other)
    after = {p.name: p.read_bytes() for p in session.iterdir() if p.is_file()}
    assert before == after
