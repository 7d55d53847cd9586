"""The torch.distributed exchange (--exchange dist, EXCHANGE=dist under torchrun, gloo on the CPU): the same
weights as the file exchange for 2 and 3 networks, resume, a killed or silent network stops the others with
one line naming it, foreign weights are refused, bad input."""
import argparse
import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import torch

from filtergraft.cli import add_grafting_flags, grafting_record
from filtergraft.ring.dist import flatten, header, layout_of, refusal, unflatten
from filtergraft.errors import UserError
from helpers import PYTHON, REPO, one_error_line, run_script, run_shell, script_env

SCRIPT = "grafting_cifar/grafting.py"
LAUNCHER = "grafting_cifar/grafting.sh"
# Fake data: 256 training images, one batch per epoch.
TINY = ["--dataset", "fake", "--workers", "0", "--seed", "5", "--batch-size", "256"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_env(session, num, epochs, exchange="file", **extra):
    """The environment of grafting.sh: CPU only."""
    return script_env(MODEL="resnet20", NUM=num, EPOCHS=epochs, S=session, EXCHANGE=exchange, GPUS="", **extra)


def launch(session, num, epochs, *flags, exchange="file"):
    result = run_shell(LAUNCHER, *TINY, *flags, env=launcher_env(session, num, epochs, exchange), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def start_launcher(session, num, epochs, *flags, **env):
    """grafting.sh in the background, in its own process group; its report goes to session.report."""
    session.mkdir(parents=True, exist_ok=True)
    with open(f"{session}.report", "w") as report:
        return subprocess.Popen(["bash", str(REPO / LAUNCHER), *TINY, *flags], stdout=report,
                                stderr=subprocess.STDOUT, env=launcher_env(session, num, epochs, **env),
                                cwd=REPO, start_new_session=True)


def finish(process):
    """Wait (bounded) for a background launcher; stop it (torchrun then stops its workers) if it hangs."""
    try:
        process.wait(timeout=180)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=60)
    return process.returncode


def wait_for_epoch(path, process):
    """Block until the metrics file `path` has a line (bounded)."""
    deadline = time.monotonic() + 180
    while not (path.exists() and path.read_text().strip()):
        assert process.poll() is None, f"the session ended before {path} had an epoch"
        assert time.monotonic() < deadline, f"no epoch in {path}"
        time.sleep(0.2)


def worker_pid(session, rank):
    """The pid of the torchrun worker with this RANK running the script on `session`."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmdline[0] == PYTHON.encode() and str(session).encode() in cmdline and f"RANK={rank}".encode() in environ:
            return int(entry)
    raise AssertionError(f"no worker with RANK={rank} on {session}")


def last_nets(session, num):
    return [torch.load(session / f"last_{i}.t7", weights_only=True)["net"] for i in range(1, num + 1)]


def grafts(session, i):
    return [json.loads(line)["graft"] for line in (session / f"metrics_{i}.jsonl").read_text().splitlines()]


def assert_same_sessions(file_session, dist_session, num):
    """Same weights after every graft, same peers and coefficients, and no exchange files for dist."""
    for i, (a, b) in enumerate(zip(last_nets(file_session, num), last_nets(dist_session, num)), 1):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=f"network {i}")
        file_grafts, dist_grafts = grafts(file_session, i), grafts(dist_session, i)
        predecessor = (i - 2) % num + 1
        assert [g["peer"] for g in dist_grafts] == [g["peer"] for g in file_grafts] == [predecessor] * len(file_grafts)
        assert ([[layer["alpha"] for layer in g["layers"]] for g in dist_grafts]
                == [[layer["alpha"] for layer in g["layers"]] for g in file_grafts])
    assert (file_session / "exchange").is_dir()
    assert not (dist_session / "exchange").exists()


def test_flat_buffer_round_trip():
    """One buffer holds every floating tensor (float64 too, without loss); integers stay the reference's."""
    state = {"conv.weight": torch.randn(4, 3, 3, 3), "bn.running_var": torch.rand(4, dtype=torch.float64),
             "bn.num_batches_tracked": torch.tensor(7), "fc.bias": torch.randn(10)}
    flat = flatten(state, torch.device("cpu"))
    assert flat.dtype == torch.float64 and flat.numel() == 108 + 4 + 10
    reference = {k: torch.zeros_like(v) for k, v in state.items()}
    back = unflatten(flat, reference)
    for key in ("conv.weight", "bn.running_var", "fc.bias"):
        assert back[key].dtype == state[key].dtype and torch.equal(back[key], state[key])
    assert back["bn.num_batches_tracked"] is reference["bn.num_batches_tracked"]
    assert layout_of(state, "m") == layout_of(reference, "m")
    assert layout_of(state, "m") != layout_of({**state, "fc.bias": torch.randn(11)}, "m")
    assert layout_of(state, "m") != layout_of(state, "other")


def test_refusal_names_what_differs():
    state = torch.nn.Linear(4, 3).state_dict()
    mine = header(2, state, "resnet20")
    assert refusal(header(2, state, "resnet20"), mine, 1, 2) is None
    assert refusal(header(3, state, "resnet20"), mine, 1, 2).startswith(
        "network 1 is at epoch 3 but network 2 at epoch 2: their last_<i>.t7 are from different epochs")
    assert refusal(header(2, state, "resnet32"), mine, 1, 2).startswith(
        "network 1 runs 'resnet32' but network 2 runs 'resnet20'")
    other = header(2, torch.nn.Linear(4, 5).state_dict(), "resnet20")
    assert refusal(other, mine, 1, 2).startswith("network 1's weights (25 values) do not fit network 2's (15 values")


def test_two_networks_match_file_exchange_then_resume(tmp_path):
    file_session, dist_session = tmp_path / "file", tmp_path / "dist"
    launch(file_session, 2, 1)
    result = launch(dist_session, 2, 1, exchange="dist")
    assert "network 1: exit 0" in result.stdout and "network 2: exit 0" in result.stdout
    for i in (1, 2):
        assert (dist_session / f"{i}.log").exists() and (dist_session / f"best_{i}.t7").exists()
    assert_same_sessions(file_session, dist_session, 2)

    # A new torchrun with --resume continues every network from its last_<i>.t7 and grafts again.
    launch(dist_session, 2, 2, "--resume", exchange="dist")
    for i in (1, 2):
        assert "resumed from" in (dist_session / f"{i}.log").read_text()
        assert [g["peer"] for g in grafts(dist_session, i)] == [3 - i, 3 - i]
        resumed = torch.load(dist_session / f"last_{i}.t7", weights_only=True)
        assert resumed["epoch"] == 2


def test_three_networks_match_file_exchange(tmp_path):
    launch(tmp_path / "file", 3, 1)
    launch(tmp_path / "dist", 3, 1, exchange="dist")
    assert_same_sessions(tmp_path / "file", tmp_path / "dist", 3)


def test_killed_network_stops_the_others(tmp_path):
    """torchrun ends the other workers when one dies; each says which network stopped."""
    session = tmp_path / "s"
    launcher = start_launcher(session, 2, 30, exchange="dist")
    try:
        wait_for_epoch(session / "metrics_2.jsonl", launcher)
        pid = worker_pid(session, rank=1)
        os.kill(pid, signal.SIGKILL)
    finally:
        status = finish(launcher)
    assert status != 0
    line = f"network 1 stops: network 2 (pid {pid} on {socket.gethostname()}) stopped without finishing"
    assert line in (session / "1.log").read_text()
    report = Path(f"{session}.report").read_text()
    # torchrun's SIGTERM (exit 143) or the network's own watch (exit 2), whichever comes first, stops it.
    assert any(out.startswith("network 1: exit ") and line in out for out in report.splitlines()), report
    assert "network 2: exit 137" in report


def test_two_machines_killed_network_stops_the_other(tmp_path):
    """Two torchrun nodes (here on one host): no launcher ends the survivor, its own watch does, with one
    error line; this is also the two-node command of the README."""
    port = free_port()
    node = {"exchange": "dist", "NNODES": 2, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
    first = start_launcher(tmp_path / "node0", 1, 30, NODE_RANK=0, **node)
    second = start_launcher(tmp_path / "node1", 1, 30, NODE_RANK=1, **node)
    try:
        wait_for_epoch(tmp_path / "node1" / "metrics_2.jsonl", second)
        pid = worker_pid(tmp_path / "node1", rank=1)
        os.kill(pid, signal.SIGKILL)
    finally:
        statuses = finish(second), finish(first)
    assert statuses[0] != 0 and statuses[1] != 0
    out = (tmp_path / "node0" / "1.out").read_text()
    errors = [line for line in out.splitlines() if "error:" in line]
    assert errors == [f"grafting.py: error: network 1 stops: network 2 (pid {pid} on {socket.gethostname()}) "
                      f"stopped without finishing"]
    assert "Traceback" not in out
    assert "network 1: exit 2" in Path(f"{tmp_path / 'node0'}.report").read_text()


DRIVER = """
import os, sys, torch
from filtergraft.ring.dist import DistRingExchange
from filtergraft.errors import UserError
rank = int(os.environ["RANK"])
state = torch.nn.Linear(4, 3 + 2 * rank).state_dict()  # network 1: 15 values, network 2: 25
exchange = DistRingExchange(rank + 1, 2, arch="toy").start()
try:
    exchange.publish(1, state)
    exchange.receive(1, state)
except UserError as err:
    exchange.close(error=str(err))
    sys.exit(f"error: {err}")
"""


def outcome(process):
    """(stdout, stderr) of a background torchrun; it is stopped (and so are its workers) if it hangs."""
    try:
        return process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            process.terminate()
            process.communicate(timeout=60)


def torchrun(tmp_path, driver, *options):
    """Start `driver` (Python source) under torchrun with these options, in the background."""
    path = tmp_path / "driver.py"
    path.write_text(driver)
    return subprocess.Popen([PYTHON, "-m", "torch.distributed.run", *options, "--", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=script_env(), cwd=REPO)


def test_different_layouts_are_refused(tmp_path):
    """The header check, on the exchange alone: network 2 offers other shapes than network 1 (say, another
    --cifar on another machine); both refuse with one line and nothing is transferred."""
    run = torchrun(tmp_path, DRIVER, "--standalone", "--nproc_per_node", "2")
    _, err = outcome(run)
    assert run.returncode != 0
    errors = sorted(line for line in err.splitlines() if line.startswith("error:"))
    assert errors == ["error: network 1's weights (15 values) do not fit network 2's (25 values; names or "
                      "shapes differ); every network must build the same model",
                      "error: network 2's weights (25 values) do not fit network 1's (15 values; names or "
                      "shapes differ); every network must build the same model"]


SILENT_PEER = """
import os, signal, sys, time
from filtergraft.ring.dist import DistRingExchange
from filtergraft.errors import UserError
rank = int(os.environ["RANK"])
exchange = DistRingExchange(rank + 1, 2, heartbeat_timeout=2.0)
if rank == 1:
    exchange.host = "elsewhere"  # as if on another machine: only its heartbeat says it lives
exchange.start()
if rank == 1:
    os.kill(os.getpid(), signal.SIGKILL)
deadline = time.monotonic() + 60
try:
    while time.monotonic() < deadline:
        exchange.check()
        time.sleep(0.1)
except UserError as err:
    sys.exit(f"error: {err}")
"""


def test_silent_peer_on_another_machine_is_given_up(tmp_path):
    """A network on another machine that dies is noticed by its missing heartbeat (--heartbeat-timeout)."""
    node = ["--nnodes", "2", "--nproc_per_node", "1", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port())]
    first = torchrun(tmp_path, SILENT_PEER, *node, "--node_rank", "0")
    second = torchrun(tmp_path, SILENT_PEER, *node, "--node_rank", "1")
    _, err = outcome(first)
    outcome(second)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: network 1 stops: network 2 (pid ")
    assert " on elsewhere) sent no heartbeat for " in errors[0]


def test_bad_input(tmp_path, monkeypatch):
    parser = argparse.ArgumentParser()
    add_grafting_flags(parser)
    monkeypatch.delenv("RANK", raising=False)
    with pytest.raises(UserError, match="needs the torchrun environment"):
        grafting_record(parser.parse_args(["--exchange", "dist", "--num", "2"]))
    env = script_env(RANK=0, WORLD_SIZE=2)
    line = one_error_line(run_script(SCRIPT, "--exchange", "dist", "--num", "3", "--s", tmp_path / "b", env=env))
    assert "--num 3 does not match the 2 processes torchrun started" in line
    result = run_shell(LAUNCHER, env=launcher_env(tmp_path / "c", 2, 1, exchange="mpi"))
    assert result.returncode != 0 and "EXCHANGE must be file or dist, not 'mpi'" in result.stderr
    assert not (tmp_path / "c").exists()


def test_file_exchange_stays_the_default():
    parser = argparse.ArgumentParser()
    add_grafting_flags(parser)
    assert grafting_record(parser.parse_args([])).exchange == "file"
