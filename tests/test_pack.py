"""--pack: networks of a ring trained together in one process give what separate processes give, epoch by
epoch (the real script on digits, against the same session run as one process per network); its graft
checks out from its files; it resumes after kill -9; two packs make one ring; bad input is one line."""
import json
import math
import os
import resource
import signal
import subprocess
import time

import pytest
import torch

from filtergraft.checkpoint import atomic_save
from filtergraft.pack import contiguous_share, recover_commit
from filtergraft.record import RunRecord
from filtergraft.session import network_files, pack_commit, pending, read_jsonl
from helpers import PYTHON, REPO, one_error_line, run_script, script_env, start_script
from test_graft_fidelity import check_logged_layer, mix, resnet20_groups

SCRIPT = "grafting_cifar/grafting.py"
DIGITS = ("--dataset", "digits", "--model", "resnet20", "--workers", "0", "--batch-size", "256", "--seed", "0",
          "--epochs", "2", "--graft-timeout", "600")
# the torchvision pipeline in the main process draws its crops and flips from the global generator
THREE = ("--difflr", "--loader", "torch")
FAKE = ("--dataset", "fake")  # the rings of four: fewer images, the same code


def run_together(root, runs, timeout=900):
    """Start every run (name: flags) of the script at once, wait for all; each must exit 0."""
    procs = {name: start_script(SCRIPT, *DIGITS, *flags, log_path=root / f"{name}.out") for name, flags in runs.items()}
    try:
        for name, proc in procs.items():
            assert proc.wait(timeout=timeout) == 0, (root / f"{name}.out").read_text()[-3000:]
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.fixture(scope="module")
def sessions(tmp_path_factory):
    """{name: session directory}: rings of 2 and 3 as processes and packed, a packed 4 and two packs of 2,
    all trained side by side."""
    root = tmp_path_factory.mktemp("pack")
    made = {name: root / name for name in ("two_processes", "two_packed", "three_processes", "three_packed",
                                           "four_packed", "two_packs")}
    runs = {"two_packed": ("--num", 2, "--pack", "--s", made["two_packed"]),
            "three_packed": ("--num", 3, "--pack", "--s", made["three_packed"], *THREE),
            "four_packed": ("--num", 4, "--pack", "--s", made["four_packed"], *FAKE)}
    for i in (1, 2):
        runs[f"two_processes_{i}"] = ("--num", 2, "--i", i, "--s", made["two_processes"])
    for i in (1, 2, 3):
        runs[f"three_processes_{i}"] = ("--num", 3, "--i", i, "--s", made["three_processes"], *THREE)
    # two packs through the launcher: GPUS=0,1 on a machine without CUDA puts both on the CPU
    env = script_env(PACK=1, GPUS="0,1", NUM=4, S=made["two_packs"])
    launcher = subprocess.Popen(["bash", str(REPO / "grafting_cifar/grafting.sh"), *map(str, DIGITS), *FAKE], env=env,
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    made["dist_packs"] = root / "dist_packs"
    torchrun = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", 2, "--", REPO / SCRIPT,
                *DIGITS, *FAKE, "--num", 4, "--pack", "--exchange", "dist", "--s", made["dist_packs"]]
    torchrun = subprocess.Popen(list(map(str, torchrun)), env=script_env(), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    run_together(root, runs)
    output = torchrun.communicate(timeout=900)[0]
    assert torchrun.returncode == 0, output[-3000:]
    made["launcher_output"] = launcher.communicate(timeout=900)[0]
    assert launcher.returncode == 0, made["launcher_output"]
    return made


def metrics(session, i):
    return read_jsonl(session / f"metrics_{i}.jsonl")


def assert_same_networks(packed_session, reference, num):
    """Every network's per-epoch training loss and test accuracy within float tolerance, every α and peer equal."""
    for i in range(1, num + 1):
        ours, theirs = metrics(packed_session, i), metrics(reference, i)
        assert [m["epoch"] for m in ours] == [m["epoch"] for m in theirs] == [1, 2]
        for mine, other in zip(ours, theirs):
            for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc"):
                assert mine[key] == pytest.approx(other[key], rel=1e-5, abs=1e-6), (i, mine["epoch"], key)
            assert mine["graft"]["peer"] == other["graft"]["peer"] == (num if i == 1 else i - 1)
            assert [layer["alpha"] for layer in mine["graft"]["layers"]] == \
                [layer["alpha"] for layer in other["graft"]["layers"]]


@pytest.mark.parametrize("name, num", [("two", 2), ("three", 3)])
def test_packed_networks_are_the_separate_processes_networks(sessions, name, num):
    assert_same_networks(sessions[f"{name}_packed"], sessions[f"{name}_processes"], num)
    record = json.loads((sessions[f"{name}_packed"] / "session.json").read_text())
    assert record["pack"] == list(range(1, num + 1))
    assert json.loads((sessions[f"{name}_processes"] / "session.json").read_text())["pack"] is None
    log = (sessions[f"{name}_packed"] / f"{num}.log").read_text()
    assert f"packed: networks 1..{num} of {num} train in this process" in log
    assert f"network {num}/{num} grafts from network {num - 1}" in log
    # the tensor pipeline trains each member in a thread of its own; the torchvision one (global generator) in lockstep
    assert ("a thread each, 1 torch thread(s) per thread" if name == "two" else "in lockstep") in log


def test_the_members_differ_as_separate_networks_do(sessions):
    first, second = (metrics(sessions["two_packed"], i)[0]["train_loss"] for i in (1, 2))
    assert first != second  # their own initialisation and data order, not one network twice


def test_the_packed_graft_recomputed_from_its_exchange_files(sessions):
    s = sessions["two_packed"]
    assert sorted(p.name for p in (s / "exchange").glob("*.t7")) == ["net1_epoch2.t7", "net2_epoch2.t7"]
    pre = {i: torch.load(s / "exchange" / f"net{i}_epoch2.t7", weights_only=True)["net"] for i in (1, 2)}
    for i, peer in ((1, 2), (2, 1)):
        post = torch.load(s / f"last_{i}.t7", weights_only=True)["net"]
        logged = {layer["name"]: layer for layer in metrics(s, i)[-1]["graft"]["layers"]}
        groups = resnet20_groups(pre[i])
        assert set(logged) == set(groups)
        for name, keys in groups.items():
            alpha = check_logged_layer(logged[name], pre[i], pre[peer])
            for key in keys:
                torch.testing.assert_close(post[key], mix(alpha, pre[i][key], pre[peer][key]))
    graft = metrics(s, 1)[-1]["graft"]
    assert graft["time"] >= graft["wait_time"] >= 0


def test_difflr_gives_each_member_its_rate(sessions):
    for i in (1, 2, 3):
        expected = 0.1 * (1 + math.cos(math.pi * (3 - i) / 3)) / 2
        assert [m["lr"] for m in metrics(sessions["three_packed"], i)] == pytest.approx([expected] * 2)


def test_two_packs_make_one_ring_of_four(sessions):
    for members in ("1..2", "3..4"):
        assert f"networks {members} on GPU" in sessions["launcher_output"]
        assert f"network {members}: exit 0" in sessions["launcher_output"]
    assert (sessions["two_packs"] / "pack_3-4.out").exists()
    assert json.loads((sessions["two_packs"] / "session.json").read_text())["pack"] in ([1, 2], [3, 4])
    assert_same_networks(sessions["two_packs"], sessions["four_packed"], 4)


def test_two_packs_over_torch_distributed_make_one_ring_of_four(sessions):
    assert_same_networks(sessions["dist_packs"], sessions["four_packed"], 4)
    left = sorted(p.name for p in (sessions["dist_packs"] / "exchange").glob("*.t7"))
    assert left == [f"net{i}_epoch2.t7" for i in (1, 2, 3, 4)]
    left = sorted(p.name for p in (sessions["two_packs"] / "exchange").glob("*.t7"))
    assert left == [f"net{i}_epoch2.t7" for i in (1, 2, 3, 4)]
    for i in (1, 2, 3, 4):
        assert (sessions["two_packs"] / "exchange" / f"net{i}.done").exists()


def test_kill_9_in_epoch_2_then_resume_completes_every_epoch_once(sessions, tmp_path):
    session = tmp_path / "s"
    flags = (*DIGITS, "--num", 2, "--pack", "--s", session)
    proc = start_script(SCRIPT, *flags, log_path=tmp_path / "first.out")
    deadline = time.time() + 300
    while not all(len(read_jsonl(p)) >= 1 for p in (session / "metrics_1.jsonl", session / "metrics_2.jsonl")
                  if p.exists()) or not (session / "metrics_2.jsonl").exists():
        assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.out").read_text()[-3000:]
        time.sleep(0.05)
    time.sleep(1.0)  # into epoch 2's batches
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(len(metrics(session, i)) == 1 for i in (1, 2)), "the kill came after epoch 2"
    result = run_script(SCRIPT, *flags, "--resume", timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resumed from" in (session / "1.log").read_text()
    assert_same_networks(session, sessions["two_packed"], 2)  # and the resumed epoch is the uninterrupted one


def test_a_commit_cut_short_is_finished_or_discarded_on_resume(tmp_path):
    record = RunRecord(session_dir=str(tmp_path), num=3, pack=[1, 2, 3])
    last = {i: tmp_path / network_files(i).last for i in (1, 2, 3)}
    for i in (1, 2, 3):
        atomic_save({"epoch": 1}, last[i])
        atomic_save({"epoch": 2}, pending(last[i]))
    os.replace(pending(last[1]), last[1])  # the kill came after the marker, while moving them into place
    pack_commit(tmp_path, 1, 3).write_text('{"epoch": 2}')
    recover_commit(record, [1, 2, 3])
    assert [torch.load(last[i], weights_only=True)["epoch"] for i in (1, 2, 3)] == [2, 2, 2]
    assert not pack_commit(tmp_path, 1, 3).exists()
    for i in (1, 2):
        atomic_save({"epoch": 3}, pending(last[i]))  # the kill came before the marker
    recover_commit(record, [1, 2, 3])
    assert [torch.load(last[i], weights_only=True)["epoch"] for i in (1, 2, 3)] == [2, 2, 2]
    assert not any(pending(last[i]).exists() for i in (1, 2, 3))


def test_shares_are_contiguous_and_even():
    assert [contiguous_share(7, 3, r) for r in range(3)] == [[1, 2, 3], [4, 5], [6, 7]]
    assert [contiguous_share(4, 2, r) for r in range(2)] == [[1, 2], [3, 4]]


@pytest.mark.parametrize("flags, env, expected", [
    (("--i", 2), {}, "--pack trains several networks, not network --i 2"),
    (("--members", "2-5"), {}, "--members 2-5: networks must lie within 1..--num (4)"),
    (("--exchange", "dist"), {"RANK": 0, "WORLD_SIZE": 1}, "--pack --exchange dist with one process"),
])
def test_bad_pack_flags_are_one_line(tmp_path, flags, env, expected):
    result = run_script(SCRIPT, *DIGITS, "--num", 4, "--pack", "--s", tmp_path / "s", *flags, env=script_env(**env))
    assert expected in one_error_line(result)
    assert not (tmp_path / "s").exists()


def test_members_without_pack_is_one_line(tmp_path):
    result = run_script(SCRIPT, *DIGITS, "--num", 4, "--members", "1-2", "--s", tmp_path / "s")
    assert "--members chooses the networks of a pack" in one_error_line(result)


def test_a_pack_that_does_not_fit_says_what_to_lower(tmp_path):
    limit = 6 * 2**30  # address space: enough for torch and a small network, not for this pack's activations

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    cmd = [PYTHON, str(REPO / SCRIPT), *DIGITS, "--num", 2, "--pack", "--s", tmp_path, "--batch-size", 1437]
    result = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, timeout=300, env=script_env(),
                            cwd=REPO, preexec_fn=cap)
    line = one_error_line(result)
    assert "out of memory on cpu with 2 networks in one process (--pack) at batch size 1437" in line
    assert "lower the networks per process" in line and "--batch-size" in line
    assert "out of memory" in (tmp_path / "exchange" / "net2.failed").read_text()


def test_grafting_plus_students_packed_are_the_separate_students(tmp_path):
    teacher = run_script(SCRIPT, *DIGITS, *FAKE, "--epochs", 1, "--s", tmp_path / "teacher")
    assert teacher.returncode == 0, teacher.stderr
    plus = ("grafting_plus/grafting+.py", "--dataset", "fake", "--arch", "resnet20", "--num_classes", 10, "--workers",
            0, "--seed", 0, "--epochs", 2, "--num", 2, "--lr-per-network", 0.1, 0.05, "--teacher_arch", "resnet20",
            "--teacher_dir", tmp_path / "teacher" / "best_1.t7")
    runs = [start_script(*plus, "--pack", "--s", tmp_path / "packed", log_path=tmp_path / "packed.out")]
    runs += [start_script(*plus, "--i", i, "--s", tmp_path / "processes", log_path=tmp_path / f"{i}.out")
             for i in (1, 2)]
    assert [run.wait(timeout=300) for run in runs] == [0, 0, 0], (tmp_path / "packed.out").read_text()[-3000:]
    assert_same_networks(tmp_path / "packed", tmp_path / "processes", 2)
    for i in (1, 2):
        for mine, other in zip(metrics(tmp_path / "packed", i), metrics(tmp_path / "processes", i)):
            assert mine["train_kd"] == pytest.approx(other["train_kd"], rel=1e-5)  # its own teachers' targets
