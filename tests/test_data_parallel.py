"""N networks × M ranks under torchrun (gloo on the CPU): the rank layout, each rank's part of the batches,
a 2 × 2 session whose ranks hold the same weights after every graft and whose grafts recompute from the
leaders' pre-graft weights, 2 ranks taking the steps 1 rank takes (--sync-bn), a killed non-leader rank,
fp16 mixed precision and its gradient scaler across --resume."""
import json
import os
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from filtergraft.data import ShardedBatches, TensorLoader, cifar_like_datasets
from filtergraft.engine import LRSchedule, Trainer, sgd
from filtergraft.errors import UserError
from filtergraft.parallel import GroupBatchNorm2d, RankLayout
from filtergraft.session import Session, network_files, read_jsonl
from helpers import PYTHON, REPO, one_error_line, run_script, script_env
from test_graft_fidelity import check_logged_layer, mix, resnet20_groups

SCRIPT = "grafting_cifar/grafting.py"
LAUNCHER = "grafting_cifar/grafting.sh"
DIGITS = ["--dataset", "digits", "--workers", "0", "--seed", "3", "-p", "1000"]


def launcher_env(session, num, epochs, ranks, **extra):
    return script_env(MODEL="resnet20", NUM=num, EPOCHS=epochs, S=session, GPUS="", RANKS_PER_NETWORK=ranks,
                      **extra)


def launch(session, num, epochs, ranks, *flags, timeout=300, launcher=LAUNCHER, data=DIGITS, **extra):
    """A launch script (grafting.sh) to completion in a process group of its own (a timeout ends torchrun
    and its workers); (exit status, its report)."""
    process = subprocess.Popen(["bash", str(REPO / launcher), *data, *flags], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, cwd=REPO, start_new_session=True,
                               env=launcher_env(session, num, epochs, ranks, **extra))
    try:
        out, _ = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
    return process.returncode, out


def digest(state):
    """Σ over the floating tensors of Σt + Σt², in float64: what every rank reports of its weights."""
    return sum(float(t.double().sum() + t.double().square().sum()) for t in state.values() if t.is_floating_point())


def test_rank_layout():
    layout = RankLayout.of_world(8, 2)
    assert layout.size == 4 and [layout.network(r) for r in range(8)] == [1] * 4 + [2] * 4
    assert [layout.local(r) for r in range(8)] == [0, 1, 2, 3] * 2
    assert layout.leader(2) == 4 and layout.ranks(2) == [4, 5, 6, 7]
    assert layout.split_networks(node_size=4) == [] and layout.split_networks(node_size=6) == [2]
    with pytest.raises(UserError, match="--num 3 does not match the 8 processes torchrun started"):
        RankLayout.of_world(8, 3)
    with pytest.raises(UserError, match="--num 2 networks × --ranks-per-network 3 = 6 ranks, but torchrun started 8"):
        RankLayout.of_world(8, 2, 3)


def test_rank_parts_make_up_the_batches_of_one_loader():
    """Two ranks' parts of every batch are that batch of one loader: same order, same augmentation; a last
    batch too small to split is left out (tensor pipeline and DataLoader alike)."""
    train, test = cifar_like_datasets("digits", None)
    batch = 100  # 1437 training images: 14 batches and 37 left over
    one = list(TensorLoader(train, batch, "cpu", True, torch.Generator().manual_seed(7)))
    parts = [list(TensorLoader(train, batch, "cpu", True, torch.Generator().manual_seed(7), shard=(r, 2)))
             for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == len(one) == 15
    for (x, y), (x0, y0), (x1, y1) in zip(one, *parts):
        assert torch.equal(torch.cat([x0, x1]), x) and torch.equal(torch.cat([y0, y1]), y)
    assert [len(y) for _, y in parts[0]][-1] == 18 and [len(y) for _, y in parts[1]][-1] == 19
    evaluated = torch.cat([y for r in range(3) for _, y in TensorLoader(test, 64, "cpu", False, shard=(r, 3))])
    assert sorted(evaluated.tolist()) == sorted(test.targets)  # each test image once
    order = list(range(10))
    assert [list(ShardedBatches(order, 4, r, 2)) for r in range(2)] == [[[0, 1], [4, 5], [8]], [[2, 3], [6, 7], [9]]]
    assert list(ShardedBatches(list(range(9)), 4, 0, 2)) == [[0, 1], [4, 5]]  # a last batch of 1 for 2 ranks


def test_group_batchnorm_is_batchnorm2d_over_its_group():
    """In float64 on a group of one rank: the outputs, the input gradients, the running statistics and the
    counter of torch's BatchNorm2d (the sums over more ranks are the 2-rank session test below)."""
    import torch.distributed as dist
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        plain = torch.nn.BatchNorm2d(3).double()
        torch.nn.init.normal_(plain.weight)
        synced = GroupBatchNorm2d.like(plain, dist.group.WORLD)
        x = (torch.randn(6, 3, 5, 5, dtype=torch.float64) * 3 + 7).requires_grad_()
        upstream = torch.randn(6, 3, 5, 5, dtype=torch.float64)
        grads = []
        for norm in (plain, synced):
            for _ in range(2):
                y = norm(x)
            (y * upstream).sum().backward()
            grads.append(x.grad.clone())
            x.grad = None
        torch.testing.assert_close(synced(x), plain(x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grads[1], grads[0], rtol=1e-10, atol=1e-12)
        for key, value in plain.state_dict().items():
            torch.testing.assert_close(synced.state_dict()[key], value, rtol=1e-12, atol=1e-12)
        plain.eval(), synced.eval()
        torch.testing.assert_close(synced(x), plain(x), rtol=1e-12, atol=1e-12)
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def two_by_two(tmp_path_factory):
    """2 networks × 2 ranks, 2 epochs, the file exchange, --sync-bn: what the launcher reports."""
    session = tmp_path_factory.mktemp("dp") / "s"
    status, out = launch(session, 2, 2, 2, "-b", "64", "--sync-bn")
    assert status == 0, out
    return session, out


def test_two_networks_of_two_ranks_graft_and_share_the_grafted_weights(two_by_two):
    session, out = two_by_two
    for name in ("1", "1 rank 1", "2", "2 rank 1"):
        assert f"network {name}: exit 0" in out
    for i, peer in ((1, 2), (2, 1)):
        log = (session / f"{i}.log").read_text()
        assert re.findall(r"epoch (\d+/\d+) lr \S+ \| train loss", log) == ["1/2", "2/2"]  # each epoch once
        assert f"network {i}/2 on 2 ranks (32 images each, synced BatchNorm)" in log
        assert (session / f"{i}.rank1.out").exists() and not (session / f"{i}.rank1.log").exists()
        lines = read_jsonl(session / f"metrics_{i}.jsonl")
        assert [line["epoch"] for line in lines] == [1, 2]
        for line in lines:  # every rank holds the leader's grafted weights
            first, second = line["graft"]["rank_digests"]
            assert first == second
        post = torch.load(session / f"last_{i}.t7", weights_only=True)["net"]
        assert lines[-1]["graft"]["rank_digests"][0] == pytest.approx(digest(post), rel=1e-12)
        # the graft recomputed from the two leaders' pre-graft weights of the last epoch
        own = torch.load(session / "exchange" / f"net{i}_epoch2.t7", weights_only=True)["net"]
        theirs = torch.load(session / "exchange" / f"net{peer}_epoch2.t7", weights_only=True)["net"]
        logged = {layer["name"]: layer for layer in lines[-1]["graft"]["layers"]}
        for name, keys in resnet20_groups(own).items():
            alpha = check_logged_layer(logged[name], own, theirs)
            for key in keys:
                torch.testing.assert_close(post[key], mix(alpha, own[key], theirs[key]))


def test_two_machines_of_one_network_each_train_as_one_machine(two_by_two, tmp_path):
    """The README's two-machine command on one host: NNODES=2, a network of 2 ranks on each, the dist
    exchange between the leaders; every epoch's metrics are the one-machine session's."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    node = dict(NNODES=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port, EXCHANGE="dist")
    launchers = [subprocess.Popen(["bash", str(REPO / LAUNCHER), *DIGITS, "-b", "64", "--sync-bn"],
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=REPO,
                                  start_new_session=True, env=launcher_env(tmp_path / f"node{n}", 1, 2, 2,
                                                                           NODE_RANK=n, **node)) for n in (0, 1)]
    try:
        reports = [launcher.communicate(timeout=300)[0] for launcher in launchers]
    finally:
        for launcher in launchers:
            if launcher.poll() is None:
                os.killpg(launcher.pid, signal.SIGKILL)
                launcher.wait()
    assert [launcher.returncode for launcher in launchers] == [0, 0], reports
    assert "ranks 2..3 of 4 on this machine, networks 2..2 of 2" in reports[1]
    one_machine, _ = two_by_two
    for i, node in ((1, "node0"), (2, "node1")):
        ours, theirs = read_jsonl(tmp_path / node / f"metrics_{i}.jsonl"), read_jsonl(one_machine / f"metrics_{i}.jsonl")
        assert [(line["train_loss"], line["test_acc"]) for line in ours] == [(line["train_loss"], line["test_acc"])
                                                                              for line in theirs]


def train_loss(session):
    return read_jsonl(session / "metrics_1.jsonl")[0]["train_loss"]


def test_two_ranks_take_the_steps_of_one(tmp_path):
    """One network at -b 480 (3 steps, the last of 477 images split 238/239): on 2 ranks with --sync-bn the
    first epoch's training loss is one rank's up to the order of the float sums; without, BatchNorm sees
    half batches and it is not."""
    flags = [*DIGITS, "--model", "resnet20", "--num", "1", "--epochs", "1", "-b", "480", "--lr", "0.02"]
    one = run_script(SCRIPT, *flags, "--sync-bn", "--s", tmp_path / "one")
    assert one.returncode == 0, one.stderr
    for name, sync in (("two", ["--sync-bn"]), ("unsynced", [])):
        status, out = launch(tmp_path / name, 1, 1, 2, "--lr", "0.02", "-b", "480", *sync)
        assert status == 0, out
    assert train_loss(tmp_path / "two") == pytest.approx(train_loss(tmp_path / "one"), rel=1e-5)
    assert train_loss(tmp_path / "unsynced") != pytest.approx(train_loss(tmp_path / "one"), rel=1e-3)


def worker_pid(session, rank):
    """The pid of the Python worker with this torchrun RANK running on `session`."""
    for entry in os.listdir("/proc"):
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if cmdline[0] == PYTHON.encode() and str(session).encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(entry)
    raise AssertionError(f"no worker with RANK={rank} on {session}")


def test_killed_rank_stops_every_network_and_resume_completes(tmp_path):
    session = tmp_path / "s"
    session.mkdir()
    with open(tmp_path / "report", "w") as report:
        launcher = subprocess.Popen(["bash", str(REPO / LAUNCHER), *DIGITS, "-b", "64"], stdout=report,
                                    stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
                                    env=launcher_env(session, 2, 30, 2))
    try:
        deadline = time.monotonic() + 180
        while not read_jsonl(session / "metrics_2.jsonl") if (session / "metrics_2.jsonl").exists() else True:
            assert launcher.poll() is None and time.monotonic() < deadline, (tmp_path / "report").read_text()
            time.sleep(0.2)
        pid = worker_pid(session, rank=3)  # network 2's rank 1
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        launcher.wait(timeout=90)
        assert time.monotonic() - killed < 90
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.wait()
    assert launcher.returncode != 0
    culprit = f"network 2 rank 1 (pid {pid} on {socket.gethostname()}) stopped without finishing"
    report = (tmp_path / "report").read_text()
    assert "network 2 rank 1: exit 137" in report
    for name, console in (("1", "1.out"), ("1 rank 1", "1.rank1.out"), ("2", "2.out")):
        last = (session / console).read_text().strip().splitlines()[-1]
        assert last.startswith("grafting.py: ") and f"stops: {culprit}" in last, last
        assert f"network {name}: exit " in report
        assert "Traceback" not in (session / console).read_text()
    done = min(len(read_jsonl(session / f"metrics_{i}.jsonl")) for i in (1, 2))
    status, out = launch(session, 2, done + 1, 2, "-b", "64", "--resume")
    assert status == 0, out
    for i in (1, 2):
        assert [line["epoch"] for line in read_jsonl(session / f"metrics_{i}.jsonl")] == list(range(1, done + 2))
        assert "resumed from" in (session / f"{i}.log").read_text()


def test_imagenet_and_grafting_plus_networks_on_two_ranks(tmp_path):
    """The other grafting scripts on 2 ranks: ImageNet's through its launcher (DataLoader batches, each rank
    its part), grafting+ under torchrun with a teacher."""
    folder = tmp_path / "images"
    made = run_script("scripts/make_imagefolder.py", folder, "--size", 32, "--per-class-train", 4, "--per-class-val", 2)
    assert made.returncode == 0, made.stderr
    small = ["-j", "0", "-b", "16", "--crop-size", "32", "--resize-size", "36", "--lr", "0.01", "-p", "100"]
    status, out = launch(tmp_path / "imagenet", 1, 1, 2, launcher="grafting_imagenet/grafting.sh", data=small,
                         ARCH="resnet18", DATA=folder)
    assert status == 0 and "network 1 rank 1: exit 0" in out, out
    (line,) = read_jsonl(tmp_path / "imagenet" / "metrics_1.jsonl")
    assert 0 <= line["test_acc"] <= line["test_acc5"] <= 100
    assert "network 1/1 on 2 ranks (8 images each)" in (tmp_path / "imagenet" / "1.log").read_text()

    teacher = run_script(SCRIPT, "--model", "resnet20", "--dataset", "fake", "--epochs", "1", "--workers", "0",
                         "--batch-size", "64", "--s", tmp_path / "teacher")
    assert teacher.returncode == 0, teacher.stderr
    student = subprocess.run([PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "--",
                              str(REPO / "grafting_plus/grafting+.py"), *DIGITS, "--arch", "resnet20", "--num_classes", "10", "--num", "1",
                              "--epochs", "1", "-b", "128", "--teacher_arch", "resnet20", "--teacher_dir",
                              str(tmp_path / "teacher" / "best_1.t7"), "--s", str(tmp_path / "plus")],
                             capture_output=True, text=True, timeout=300, cwd=REPO, env=script_env())
    assert student.returncode == 0, student.stdout[-3000:] + student.stderr[-3000:]
    (line,) = read_jsonl(tmp_path / "plus" / "metrics_1.jsonl")
    assert line["train_loss"] > line["train_ce"] > 0  # cross entropy plus the teacher's term, over both ranks


def test_bad_input():
    result = run_script(SCRIPT, *DIGITS, "--num", "1", "--ranks-per-network", "2", "--s", "/nonexistent/x")
    assert one_error_line(result) == ("grafting.py: error: --ranks-per-network 2 trains each network on several "
                                      "processes: start them with torchrun (RANKS_PER_NETWORK in the launch scripts)")
    result = run_script(SCRIPT, *DIGITS, "--num", "1", "--amp", "fp16", "--s", "/nonexistent/x")
    assert one_error_line(result) == ("grafting.py: error: --amp fp16 (float16 autocast with a gradient scaler) "
                                      "needs a CUDA device; drop --amp on the CPU")


def test_fp16_gradient_scaler_round_trips_through_resume(tmp_path):
    """The library's fp16 path on the CPU (the scripts refuse it there): the scaler's scale and growth
    tracker are in last_<i>.t7 and come back on --resume."""
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(16, 8, generator=gen), torch.randint(0, 3, (16,), generator=gen))
    loader = DataLoader(data, batch_size=4)

    def trainer(epochs, resume):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
        session = Session(tmp_path, network_files(1), resume=resume)
        return Trainer(model, sgd(model, 0.1), loader, loader, session, device=torch.device("cpu"), epochs=epochs,
                       schedule=LRSchedule(epochs, len(loader)), amp="fp16")

    first = trainer(1, False)
    first.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=3)
    first.fit()
    saved = torch.load(tmp_path / "last_1.t7", weights_only=True)["scaler"]
    assert saved == first.scaler.state_dict()
    assert saved["scale"] == 2048.0 and saved["_growth_tracker"] == 1  # 4 clean steps: grown once, 1 since
    resumed = trainer(2, True)
    resumed.resume()
    assert resumed.scaler.state_dict() == saved
    resumed.fit()
    assert resumed.scaler.get_scale() == 4096.0  # 3 more clean steps grow it again
