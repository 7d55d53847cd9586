"""Faults, concurrency and hostile files, through the real scripts and launchers: signals to a launcher, a
network that dies, a duplicate process, a peer that finishes early, dies in start-up, is refused its flags
or freezes, a ring resumed with a checkpoint missing, full disks, vanished directories, corrupt and malicious
files. Each test measures how long the last process took to exit after the fault (printed with -s)."""
import json
import os
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch

from helpers import PYTHON, REPO, one_error_line, run_ring, run_script, script_env, start_script

SCRIPT = "grafting_cifar/grafting.py"
LAUNCHER = "grafting_cifar/grafting.sh"
DIGITS = ["--dataset", "digits", "--model", "resnet20", "--workers", "0", "--batch-size", "256", "--seed", "1"]


class Malicious:
    """Unpickling it would create the file `path`: what a hostile checkpoint does."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.system, (f"touch {self.path}",)


def wait_until(condition, timeout, what):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def exited_within(procs, timeout):
    """Seconds until every process in `procs` has exited (at most `timeout`, else the test fails)."""
    start = time.monotonic()
    for proc in procs:
        proc.wait(timeout=max(timeout - (time.monotonic() - start), 0.1))
    return time.monotonic() - start


def report(what, seconds):
    print(f"\n{what}: last process exited {seconds:.1f}s after the fault")


def alive_pid(session, index):
    marker = session / "exchange" / f"net{index}.alive"
    return json.loads(marker.read_text())["pid"]


def running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def epochs_logged(session, index):
    path = session / f"metrics_{index}.jsonl"
    return [json.loads(line)["epoch"] for line in path.read_text().splitlines()] if path.exists() else []


def default_sigint():
    """SIGINT as a terminal's shell leaves it: a test run started in the background (nohup ... &) has it
    ignored, and bash cannot trap a signal ignored when it starts."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start_launcher(session, num=2, epochs=40, extra=(), env=None):
    env = env or script_env(S=session, NUM=num, EPOCHS=epochs)
    return subprocess.Popen(["bash", str(REPO / LAUNCHER), *DIGITS, *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO, start_new_session=True,
                            preexec_fn=default_sigint)


def network_pids(session, num):
    wait_until(lambda: all((session / "exchange" / f"net{i}.alive").exists() for i in range(1, num + 1)), 120,
               "every network's heartbeat")
    return [alive_pid(session, i) for i in range(1, num + 1)]


def assert_all_stopped(launcher, session, pids, timeout=60):
    seconds = exited_within([launcher], timeout)
    out = launcher.stdout.read()
    assert launcher.returncode != 0, out
    for pid in pids:
        wait_until(lambda: not running(pid), 10, f"network pid {pid} to end")
    return seconds, out


# -- 1. launchers own their networks ---------------------------------------------------------------------

@pytest.mark.parametrize("how", ["sigterm", "sigint", "ctrl-c"])
def test_launcher_stops_every_network_on_a_signal(how, tmp_path):
    launcher = start_launcher(tmp_path)
    pids = network_pids(tmp_path, 2)
    wait_until(lambda: epochs_logged(tmp_path, 1), 120, "the first epoch")
    if how == "ctrl-c":
        os.killpg(launcher.pid, signal.SIGINT)  # the terminal sends it to the whole process group
    else:
        os.kill(launcher.pid, signal.SIGTERM if how == "sigterm" else signal.SIGINT)
    seconds, out = assert_all_stopped(launcher, tmp_path, pids)
    report(f"launcher {how}", seconds)
    for i in (1, 2):
        assert f"network {i}: exit 1" in out and f"network {i}: exit 0" not in out, out  # 130 or 143
        failed = json.loads((tmp_path / "exchange" / f"net{i}.failed").read_text())
        assert failed["reason"] in ("interrupted", "terminated by SIGTERM"), failed


def test_a_failing_network_stops_the_others_at_once(tmp_path):
    launcher = start_launcher(tmp_path)
    pids = network_pids(tmp_path, 2)
    wait_until(lambda: epochs_logged(tmp_path, 1), 120, "the first epoch")
    os.kill(pids[1], signal.SIGKILL)
    seconds, out = assert_all_stopped(launcher, tmp_path, pids)
    report("network 2 killed under the launcher", seconds)
    assert "network 2 failed (exit 137): stopping the others" in out, out
    assert "network 2: exit 137" in out and "network 1: exit 1" in out, out


@pytest.mark.parametrize("num", ["0", "-1", "abc"])
def test_launcher_refuses_a_bad_network_count(num, tmp_path):
    result = subprocess.run(["bash", str(REPO / LAUNCHER), *DIGITS], capture_output=True, text=True,
                            env=script_env(S=tmp_path / "s", NUM=num), cwd=REPO, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: NUM must be a whole number of networks, 1 or more, not '{num}'"
    assert not (tmp_path / "s").exists()


# -- 2. one process per network index --------------------------------------------------------------------

def test_a_second_process_for_a_running_network_is_refused(tmp_path):
    ring = [start_script(SCRIPT, *DIGITS, "--epochs", "2", "--num", "2", "--i", i, "--s", tmp_path,
                         log_path=tmp_path / f"{i}.out") for i in (1, 2)]
    try:
        network_pids(tmp_path, 2)
        duplicate = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--num", "2", "--i", "1", "--s", tmp_path)
        assert "network 1 of" in one_error_line(duplicate) and "is already running (pid" in duplicate.stderr
        assert not (tmp_path / "exchange" / "net1.failed").exists()
        for i, proc in enumerate(ring, 1):
            assert proc.wait(timeout=300) == 0, (tmp_path / f"{i}.out").read_text()[-2000:]
    finally:
        for proc in ring:
            proc.kill()
    assert epochs_logged(tmp_path, 1) == [1, 2] == epochs_logged(tmp_path, 2)
    assert not list(tmp_path.glob("*.lock"))


# -- 3 and 4. no marker hides a failure; every death noticed in seconds ----------------------------------

def start_pair(session, first=(), second=(), epochs=("--epochs", "20")):
    """Networks 1 and 2 of a ring in `session`, each with its extra flags."""
    common = [*DIGITS, "--num", "2", "--s", session, "--heartbeat-timeout", "4", "--graft-timeout", "600"]
    return [start_script(SCRIPT, *common, *epochs, "--i", i, *extra, log_path=session / f"{i}.out")
            for i, extra in ((1, first), (2, second))]


def stop_reason(session, index):
    return (session / f"{index}.log").read_text()


def test_a_peer_that_finished_fewer_epochs_stops_the_ring(tmp_path):
    first, second = start_pair(tmp_path, first=("--epochs", "2"), second=("--epochs", "1"), epochs=())
    try:
        assert second.wait(timeout=300) == 0
        start = time.monotonic()
        assert first.wait(timeout=120) != 0
        report("peer finished after fewer epochs", time.monotonic() - start)
    finally:
        first.kill()
    assert "network 2 finished after epoch 1, but network 1 needs it at epoch 2" in stop_reason(tmp_path, 1)


def test_a_done_marker_of_an_earlier_run_hides_no_failure(tmp_path):
    (tmp_path / "exchange").mkdir()
    (tmp_path / "exchange" / "net2.done").write_text(json.dumps({"time": time.time() - 3600, "epoch": 99}))
    procs = start_pair(tmp_path)
    try:
        pids = network_pids(tmp_path, 2)
        wait_until(lambda: epochs_logged(tmp_path, 1), 120, "the first epoch")
        os.kill(pids[1], signal.SIGKILL)
        report("peer killed beside an old done marker", exited_within(procs, 60))
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode != 0
    assert "network 2 (pid" in stop_reason(tmp_path, 1) and "stopped without finishing" in stop_reason(tmp_path, 1)


def test_a_peer_killed_in_start_up_is_noticed(tmp_path):
    procs = start_pair(tmp_path)
    try:
        wait_until(lambda: (tmp_path / "exchange" / "net2.alive").exists(), 120, "network 2's heartbeat")
        os.kill(alive_pid(tmp_path, 2), signal.SIGKILL)  # long before its first epoch ends
        assert not epochs_logged(tmp_path, 2)
        report("peer killed in start-up", exited_within(procs, 90))
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode != 0
    assert "stopped without finishing" in stop_reason(tmp_path, 1)


def test_a_peer_refused_its_flags_is_noticed(tmp_path):
    procs = start_pair(tmp_path, second=("--lr", "nan"))
    try:
        assert procs[1].wait(timeout=120) == 2
        start = time.monotonic()
        procs[0].wait(timeout=90)
        report("peer refused its command line", time.monotonic() - start)
    finally:
        for proc in procs:
            proc.kill()
    assert procs[0].returncode != 0
    assert "network 2 failed: its command line was refused: argument --lr: must be a finite number, not nan" \
        in stop_reason(tmp_path, 1)


def test_a_frozen_peer_is_noticed(tmp_path):
    procs = start_pair(tmp_path)
    try:
        pids = network_pids(tmp_path, 2)
        wait_until(lambda: epochs_logged(tmp_path, 2), 120, "network 2's first epoch")
        os.kill(pids[1], signal.SIGSTOP)
        start = time.monotonic()
        procs[0].wait(timeout=90)
        report("peer frozen by SIGSTOP", time.monotonic() - start)
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
    assert procs[0].returncode != 0
    assert "runs but its heartbeat has not moved" in stop_reason(tmp_path, 1)


# -- 5. grafting.sh --resume recovers a ring stopped before every network saved an epoch -----------------

def test_resume_recovers_a_ring_where_one_network_never_saved(tmp_path):
    run_ring(SCRIPT, 2, *DIGITS, "--epochs", "1", "--num", "2", "--s", tmp_path, log_dir=tmp_path)
    # network 2 as a kill during its first epoch leaves it: no checkpoint, no metrics line
    for name in ("last_2.t7", "best_2.t7", "metrics_2.jsonl"):
        (tmp_path / name).unlink()
    launcher = start_launcher(tmp_path, epochs=2, extra=("--resume",))
    out, _ = launcher.communicate(timeout=300)
    assert launcher.returncode == 0, out
    assert epochs_logged(tmp_path, 1) == [1, 2] == epochs_logged(tmp_path, 2)
    assert "starts at epoch 1" in (tmp_path / "2.log").read_text()
    assert "resumed from" in (tmp_path / "1.log").read_text()


# -- 6. I/O faults: one line, nothing lost ---------------------------------------------------------------

def file_size_limit(limit):
    """A preexec_fn: files of at most `limit` bytes, a longer write failing with EFBIG (the signal
    that would kill the process ignored), as a disk that fills up mid-write."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.fixture(scope="module")
def one_epoch(tmp_path_factory):
    """A single network's session after one epoch (its checkpoints written)."""
    session = tmp_path_factory.mktemp("one_epoch")
    result = run_script(SCRIPT, *DIGITS, "--epochs", "1", "--s", session)
    assert result.returncode == 0, result.stderr
    return session


def copy_session(source, target):
    target.mkdir(exist_ok=True)
    for path in source.iterdir():
        if path.is_file():
            (target / path.name).write_bytes(path.read_bytes())
    return target


def test_a_full_disk_is_one_line_and_keeps_the_last_checkpoint(one_epoch, tmp_path):
    session = copy_session(one_epoch, tmp_path / "s")
    before = (session / "last_1.t7").read_bytes()
    limit = len(before) // 2
    cmd = [PYTHON, str(REPO / SCRIPT), *DIGITS, "--epochs", "2", "--s", str(session), "--resume"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=300,
                            preexec_fn=file_size_limit(limit))
    line = one_error_line(result)
    assert "cannot write" in line and "is intact" in line, line
    assert (session / "last_1.t7").read_bytes() == before
    assert torch.load(session / "last_1.t7", weights_only=True)["epoch"] == 1
    assert not list(session.glob("*.tmp*"))


def test_exhausted_host_memory_names_the_batch_size(tmp_path):
    """A 6 GiB address space holds torch and the model but not a batch of 1400 through ResNet56."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (6 * 2**30, 6 * 2**30))
    cmd = [PYTHON, str(REPO / SCRIPT), *DIGITS[:2], "--model", "resnet56", "--workers", "0", "--batch-size", "1400",
           "--epochs", "1", "--s", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=script_env(), cwd=REPO, timeout=300,
                            preexec_fn=limit)
    line = one_error_line(result)
    assert "out of host memory" in line and line.endswith("lower --batch-size (now 1400)"), line


def test_stale_temporaries_of_a_killed_run_are_removed(one_epoch, tmp_path):
    session = copy_session(one_epoch, tmp_path / "s")
    stale = [session / "last_1.t7.tmp4194301", session / "best_1.t7.tmp4194302"]
    for path in stale:
        path.write_bytes(b"half a checkpoint")
    result = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--s", session, "--resume")
    assert result.returncode == 0, result.stderr
    assert not any(path.exists() for path in stale)


def test_a_vanished_exchange_directory_stops_the_ring_with_one_line(tmp_path):
    procs = start_pair(tmp_path)
    try:
        wait_until(lambda: (tmp_path / "exchange" / "net1_epoch1.t7").exists(), 120, "the first exchange")
        for path in (tmp_path / "exchange").iterdir():
            path.unlink()
        (tmp_path / "exchange").rmdir()
        report("exchange directory removed", exited_within(procs, 120))
    finally:
        for proc in procs:
            proc.kill()
    for i, proc in enumerate(procs, 1):
        console = (tmp_path / f"{i}.out").read_text()
        assert proc.returncode != 0 and "Traceback" not in console, console
        assert len([line for line in console.splitlines() if "error:" in line]) == 1, console


@pytest.mark.parametrize("content", ["truncated", "foreign", "malicious"])
def test_a_bad_exchange_file_is_refused_by_name(content, tmp_path):
    exchange = tmp_path / "exchange"
    exchange.mkdir()
    bad = exchange / "net2_epoch1.t7"
    touched = tmp_path / "pwned"
    if content == "truncated":
        torch.save({"net": {"w": torch.zeros(1000)}, "epoch": 1, "arch": "resnet20"}, bad)
        bad.write_bytes(bad.read_bytes()[:300])
    elif content == "foreign":
        torch.save({"weights": [1, 2, 3]}, bad)
    else:
        torch.save({"net": Malicious(touched), "epoch": 1, "arch": "resnet20"}, bad)
    # network 2 seems alive to network 1 (this test process beats for it) but never publishes
    (exchange / "net2.alive").write_text(json.dumps({"pid": os.getpid(), "host": os.uname().nodename,
                                                     "started": time.time()}))
    result = run_script(SCRIPT, *DIGITS, "--epochs", "1", "--num", "2", "--i", "1", "--s", tmp_path)
    line = one_error_line(result)
    assert str(bad) in line, line
    assert not touched.exists()
    if content == "malicious":
        assert "needs code to load (posix.system)" in line


# -- 7. files are data, never code -----------------------------------------------------------------------

def test_a_malicious_resume_file_runs_nothing(one_epoch, tmp_path):
    session = copy_session(one_epoch, tmp_path / "s")
    touched = tmp_path / "pwned"
    torch.save({"net": Malicious(touched), "epoch": 1, "optimizer": {}}, session / "last_1.t7")
    listing = sorted(p.name for p in session.iterdir())
    result = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--s", session, "--resume")
    assert "is refused: it needs code to load (posix.system)" in one_error_line(result)
    assert not touched.exists()
    assert sorted(p.name for p in session.iterdir()) == listing


def test_a_malicious_teacher_runs_nothing(tmp_path):
    touched = tmp_path / "pwned"
    teacher = tmp_path / "teacher.t7"
    torch.save({"net": Malicious(touched)}, teacher)
    result = run_script("grafting_plus/grafting+.py", "--arch", "resnet20", "--num_classes", "10", "--dataset",
                        "digits", "--epochs", "1", "--workers", "0", "--s", tmp_path / "s",
                        "--teacher_arch", "resnet20", "--teacher_dir", teacher)
    assert f"teacher checkpoint {teacher} is refused: it needs code to load" in one_error_line(result)
    assert not touched.exists()


def test_a_session_of_the_previous_version_still_resumes(one_epoch, tmp_path):
    """Earlier versions kept NumPy's random state as an ndarray in last_<i>.t7: still safe to read."""
    import numpy as np
    session = copy_session(one_epoch, tmp_path / "s")
    state = torch.load(session / "last_1.t7", weights_only=True)
    np.random.seed(3)
    state["rng"]["numpy"] = np.random.get_state()
    torch.save(state, session / "last_1.t7")
    result = run_script(SCRIPT, *DIGITS, "--epochs", "2", "--s", session, "--resume")
    assert result.returncode == 0, result.stderr
    assert epochs_logged(session, 1) == [1, 2]


def test_every_file_a_session_writes_loads_as_data(one_epoch):
    for path in one_epoch.glob("*.t7"):
        torch.load(path, weights_only=True)


# -- 8. bad input ----------------------------------------------------------------------------------------

SCRIPTS = {
    "grafting_cifar/grafting.py": [*DIGITS, "--epochs", "1"],
    "grafting_plus/grafting+.py": ["--arch", "resnet20", "--num_classes", "10", "--dataset", "digits", "--epochs", "1"],
    "grafting_imagenet/grafting.py": ["--data", "/nonexistent", "--epochs", "1"],
    "stripe_pruning/main.py": ["--arch", "ResNet56", "--dataset", "digits", "--epochs", "1"],
}


EVERY_SCRIPT = [(["--lr", "nan"], "argument --lr: must be a finite number, not nan"),
                (["--workers", "-1"], "argument -j/--workers: must be 0 or more, not -1"),
                (["--seed", "-1"], "argument --seed: must be between 0 and 2**63 - 1, not -1")]
ONE_SCRIPT = [(["--lr", "inf"], "argument --lr: must be a finite number, not inf"),
              (["--seed", str(2**64)], "must be between 0 and 2**63 - 1"),
              (["--momentum", "nan"], "argument --momentum: must be a finite number, not nan")]


@pytest.mark.parametrize("script, flags, said", [(script, *case) for script in SCRIPTS for case in EVERY_SCRIPT] +
                         [("grafting_cifar/grafting.py", *case) for case in ONE_SCRIPT])
def test_bad_numbers_are_one_line(script, flags, said, tmp_path):
    result = run_script(script, *SCRIPTS[script], "--s" if "stripe" not in script else "--save", tmp_path / "s",
                        *flags)
    assert result.returncode == 2
    line = one_error_line(result)
    assert said.split(": ", 1)[-1] in line, line
    assert not (tmp_path / "s").exists()


def test_distillation_temperature_must_be_finite(tmp_path):
    result = run_script("grafting_plus/grafting+.py", *SCRIPTS["grafting_plus/grafting+.py"], "--s", tmp_path,
                        "--T", "nan")
    assert "argument --T: must be a finite number, not nan" in one_error_line(result)


@pytest.mark.parametrize("script", SCRIPTS)
def test_an_empty_session_directory_is_one_line(script, tmp_path):
    flag = "--save" if "stripe" in script else "--s"
    result = run_script(script, *SCRIPTS[script], flag, "")
    assert result.returncode == 2
    assert f"{flag} is empty" in one_error_line(result)


def test_imagenet_gpu_flag_is_named_in_its_message(tmp_path):
    result = run_script("grafting_imagenet/grafting.py", "--data", tmp_path, "--gpu", "0", "--s", tmp_path / "s")
    line = one_error_line(result)
    assert "--gpu cuda:0: CUDA is not available on this machine; drop --gpu" in line, line


def test_ctrl_c_of_a_single_run_is_one_line(tmp_path):
    proc = start_script(SCRIPT, *DIGITS, "--epochs", "50", "--s", tmp_path, log_path=tmp_path / "console")
    wait_until(lambda: epochs_logged(tmp_path, 1), 120, "the first epoch")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130
    console = (tmp_path / "console").read_text()
    assert "Traceback" not in console and console.strip().endswith("grafting.py: interrupted"), console
    assert torch.load(tmp_path / "last_1.t7", weights_only=True)["epoch"] >= 1


def test_a_refused_resume_writes_nothing(tmp_path):
    tmp_path.joinpath("notes.txt").write_text("mine")
    result = run_script(SCRIPT, *DIGITS, "--epochs", "1", "--s", tmp_path, "--resume")
    assert "holds no run to resume" in one_error_line(result)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    missing = run_script(SCRIPT, *DIGITS, "--epochs", "1", "--s", tmp_path / "absent", "--resume")
    assert "does not exist; nothing to resume" in one_error_line(missing)
    assert not (tmp_path / "absent").exists()


def test_a_session_path_that_is_not_utf8_trains_and_resumes(tmp_path):
    session = os.path.join(os.fsencode(tmp_path), b"run-\xff")
    cmd = [os.fsencode(PYTHON), os.fsencode(REPO / SCRIPT), *map(os.fsencode, DIGITS), b"--s", session]
    for extra in ([b"--epochs", b"1"], [b"--epochs", b"2", b"--resume"]):
        result = subprocess.run(cmd + extra, capture_output=True, env=script_env(), cwd=REPO, timeout=300)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
    lines = (Path(os.fsdecode(session)) / "metrics_1.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
