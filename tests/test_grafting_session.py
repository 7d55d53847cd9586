"""Grafting sessions through the real script and launcher: post-graft weights recomputed from the exchange
files, a 3-network ring, the disk bound, SIGKILL and resume, timeouts and refused peers."""
import math
import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from filtergraft.models import create_model
from filtergraft.session import read_jsonl
from helpers import one_error_line, run_script, run_shell, script_env, start_script

SCRIPT = "grafting_cifar/grafting.py"
FAKE = ("--dataset", "fake", "--model", "resnet20", "--workers", "0", "--batch-size", "64")


def numpy_entropy(values):
    values = values.double().numpy().ravel()
    if values.max() == values.min():
        return 0.0
    counts, _ = np.histogram(values, bins=10, range=(values.min(), values.max()))
    p = counts[counts > 0] / values.size
    return float(-(p * np.log(p)).sum())


def expected_alpha(w_self, w_peer, a=0.4, c=500.0):
    return round(a / math.pi * math.atan(c * (numpy_entropy(w_self) - numpy_entropy(w_peer))) + 0.5, 2)


def run_ring(session, num, *flags, epochs=1):
    procs = [start_script(SCRIPT, *FAKE, "--epochs", epochs, "--seed", 0, "--num", num, "--i", i, "--s", session,
                          *flags, log_path=session.parent / f"{session.name}_{i}.out") for i in range(1, num + 1)]
    return [p.wait(timeout=300) for p in procs]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    session = tmp_path_factory.mktemp("pair") / "s"
    session.mkdir()
    # closed bins, the option: this file's expected α uses NumPy's closed histogram (test_graft_fidelity: the default)
    assert run_ring(session, 2, "--graft-timeout", 120, "--entropy-bins", "closed") == [0, 0]
    return session


def test_post_graft_weights_match_a_recomputation_from_the_exchange_files(pair):
    pre = {i: torch.load(pair / "exchange" / f"net{i}_epoch1.t7", weights_only=True)["net"] for i in (1, 2)}
    for i, peer in ((1, 2), (2, 1)):
        after = torch.load(pair / f"last_{i}.t7", weights_only=True)["net"]
        graft = read_jsonl(pair / f"metrics_{i}.jsonl")[0]["graft"]
        assert graft["peer"] == peer
        logged = {layer["name"]: layer["alpha"] for layer in graft["layers"]}
        convs = [k[:-len(".weight")] for k in after if k.endswith("conv1.weight") or k.endswith("conv2.weight")]
        for layer, norm in [(c, c.replace("conv", "bn")) for c in convs] + [("linear", None)]:
            alpha = expected_alpha(pre[i][f"{layer}.weight"], pre[peer][f"{layer}.weight"])
            assert logged[layer] == pytest.approx(alpha), layer
            keys = [f"{layer}.weight"] + ([f"{norm}.{t}" for t in ("weight", "bias", "running_mean", "running_var")]
                                          if norm else ["linear.bias"])
            for key in keys:
                torch.testing.assert_close(after[key], alpha * pre[i][key] + (1 - alpha) * pre[peer][key])


def test_two_networks_learn_on_different_data_orders_and_inits(pair):
    pre = {i: torch.load(pair / "exchange" / f"net{i}_epoch1.t7", weights_only=True)["net"] for i in (1, 2)}
    assert not torch.equal(pre[1]["conv1.weight"], pre[2]["conv1.weight"])


def watch_exchange(directory, stop, most):
    while not stop.is_set():
        try:
            names = os.listdir(directory)
        except FileNotFoundError:
            names = []
        for i in (1, 2, 3):
            count = sum(n.startswith(f"net{i}_epoch") and n.endswith(".t7") for n in names)
            most[i] = max(most.get(i, 0), count)
        time.sleep(0.02)


def test_three_network_ring_through_the_launcher_keeps_disk_bounded(tmp_path):
    session = tmp_path / "ring"
    stop, most = threading.Event(), {}
    watcher = threading.Thread(target=watch_exchange, args=(session / "exchange", stop, most))
    watcher.start()
    env = script_env(S=session, NUM=3, MODEL="resnet20", EPOCHS=3)
    result = run_shell("grafting_cifar/grafting.sh", "--dataset", "fake", "--workers", "0", "--batch-size", "128",
                       "--seed", "1", env=env)
    stop.set()
    watcher.join()
    assert result.returncode == 0, result.stdout
    assert [f"network {i}: exit 0" in result.stdout for i in (1, 2, 3)] == [True] * 3
    for i, peer in ((1, 3), (2, 1), (3, 2)):
        metrics = read_jsonl(session / f"metrics_{i}.jsonl")
        assert [m["epoch"] for m in metrics] == [1, 2, 3]
        assert all(m["graft"]["peer"] == peer for m in metrics)
    assert max(most.values()) <= 2 and set(most) == {1, 2, 3}
    left = sorted(p.name for p in (session / "exchange").glob("*.t7"))
    assert left == [f"net{i}_epoch3.t7" for i in (1, 2, 3)]


def test_sigkill_stops_the_others_then_all_resume_and_complete(tmp_path):
    session = tmp_path / "s"
    flags = lambda i: (*FAKE, "--epochs", 3, "--seed", 0, "--num", 3, "--i", i, "--s", session,  # noqa: E731
                       "--batch-size", 32)
    procs = {i: start_script(SCRIPT, *flags(i), log_path=tmp_path / f"{i}.out") for i in (1, 2, 3)}
    deadline = time.time() + 240
    while not all((session / f"last_{i}.t7").exists() for i in (1, 2, 3)):
        assert time.time() < deadline, "epoch 1 did not finish"
        time.sleep(0.1)
    os.kill(procs[2].pid, signal.SIGKILL)
    killed_at = time.time()
    procs[2].wait()
    codes = {i: procs[i].wait(timeout=60) for i in (1, 3)}
    assert time.time() - killed_at < 60
    assert all(code != 0 for code in codes.values())
    for i in (1, 3):
        console = (tmp_path / f"{i}.out").read_text()
        assert "Traceback" not in console
        assert "network 2 (pid" in console and "stopped without finishing" in console
    resumed = [start_script(SCRIPT, *flags(i), "--resume", log_path=tmp_path / f"{i}.resume") for i in (1, 2, 3)]
    assert [p.wait(timeout=300) for p in resumed] == [0, 0, 0]
    for i in (1, 2, 3):
        assert [m["epoch"] for m in read_jsonl(session / f"metrics_{i}.jsonl")] == [1, 2, 3]


def test_a_missing_peer_times_out_with_one_line(tmp_path):
    result = run_script(SCRIPT, *FAKE, "--epochs", 1, "--num", 2, "--i", 1, "--s", tmp_path, "--graft-timeout", 1)
    line = one_error_line(result)
    assert "waited 1s" in line and "network 2's weights of epoch 1" in line
    assert "timed out" in (tmp_path / "exchange" / "net1.failed").read_text() or "waited" in \
        (tmp_path / "exchange" / "net1.failed").read_text()


def test_a_failing_peer_stops_its_neighbour(tmp_path):
    (tmp_path / "exchange").mkdir()
    victim = start_script(SCRIPT, *FAKE, "--epochs", 2, "--num", 2, "--i", 1, "--s", tmp_path,
                          log_path=tmp_path / "1.out")
    time.sleep(1)
    failing = run_script(SCRIPT, *FAKE, "--epochs", 2, "--num", 2, "--i", 2, "--s", tmp_path, "--device", "cuda")
    assert "CUDA is not available" in one_error_line(failing)
    # network 2 failed before it joined the ring; its marker stops network 1 all the same
    assert victim.wait(timeout=60) != 0
    assert "network 2 failed: --device cuda: CUDA is not available" in (tmp_path / "1.out").read_text()


def test_foreign_peer_weights_are_refused(tmp_path):
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    foreign = create_model("resnet32").state_dict()
    torch.save({"net": foreign, "epoch": 1, "arch": "resnet20"}, exchange / "net2_epoch1.t7")
    result = run_script(SCRIPT, *FAKE, "--epochs", 1, "--num", 2, "--i", 1, "--s", tmp_path, "--graft-timeout", 60)
    assert "has a different architecture" in one_error_line(result)


def test_a_run_with_another_configuration_is_refused(pair):
    before = (pair / "session.json").read_text()
    result = run_script(SCRIPT, *FAKE, "--epochs", 1, "--num", 3, "--i", 3, "--s", pair)
    assert "holds another run: num=3 (session has 2)" in one_error_line(result)
    assert (pair / "session.json").read_text() == before
