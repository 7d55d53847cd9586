"""Running the project's real scripts as subprocesses, the way users do."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def script_env(**extra):
    """The environment for a script under test: one thread each (tests run several processes on 2 cores),
    no GPU, unbuffered output."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1",
               CUDA_VISIBLE_DEVICES="", PYTHON=PYTHON)
    env.update({k: str(v) for k, v in extra.items()})
    return env


def run_script(script, *args, timeout=300, env=None, cwd=REPO):
    """Run `python script args...` (script relative to the repo) to completion; returns CompletedProcess."""
    cmd = [PYTHON, str(REPO / script), *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env or script_env(), cwd=cwd)


def start_script(script, *args, log_path=None, env=None):
    """Start `python script args...` in the background; its output goes to `log_path` (or is discarded)."""
    cmd = [PYTHON, str(REPO / script), *map(str, args)]
    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env or script_env(), cwd=REPO)


def run_ring(script, num, *args, log_dir, log_prefix="", timeout=400):
    """Networks 1..num of one session side by side, `python script args... --i i`, to completion: each must
    exit 0 (its console, log_dir/<log_prefix><i>.out, is the failure message); none outlives the call."""
    logs = [Path(log_dir) / f"{log_prefix}{i}.out" for i in range(1, num + 1)]
    procs = [start_script(script, *args, "--i", i, log_path=log) for i, log in enumerate(logs, 1)]
    try:
        for proc, log in zip(procs, logs):
            assert proc.wait(timeout=timeout) == 0, log.read_text()[-3000:]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def run_shell(script, *args, timeout=300, env=None):
    """Run a launch script with bash in a process group of its own, so that a timeout also ends the
    networks it started."""
    proc = subprocess.Popen(["bash", str(REPO / script), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env or script_env(), cwd=REPO,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def one_error_line(result):
    """Assert a script failed cleanly: non-zero exit, no traceback, one 'error:' line; return that line."""
    assert result.returncode != 0, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def assert_run_record(session, seed, weight_decay):
    """The session's session.json is a whole run record: the seed and weight decay it ran with, the torch
    version it ran under, and the command line that started it."""
    import torch

    record = json.loads((Path(session) / "session.json").read_text())
    assert record["seed"] == seed and record["weight_decay"] == weight_decay, record
    assert record["environment"]["torch"] == torch.__version__
    command = record["command"]
    assert command[command.index("--seed") + 1] == str(seed), command
    return record
