"""What every part of the GPU check shares: its record of checks and tables, running the project's
scripts as subprocesses, and min / median figures."""
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


class Part:
    """One part's results: checks (name, passed, detail), printed as they come, and tables of figures.
    Saved as <out>/<name>.json, from which the report is written."""

    def __init__(self, name, device, out):
        self.name, self.device, self.out = name, device, Path(out)
        # Sessions, checkpoints and logs of this part's runs; a rerun starts afresh (not as a --resume).
        self.work = self.out / "work" / name
        shutil.rmtree(self.work, ignore_errors=True)
        self.work.mkdir(parents=True)
        self.checks, self.tables, self.notes = [], [], []
        self.started = time.time()

    def check(self, name, ok, detail=""):
        self.checks.append({"name": name, "ok": bool(ok), "detail": detail})
        print(f"{'ok  ' if ok else 'FAIL'} {self.name}: {name}{f' ({detail})' if detail else ''}", flush=True)
        return ok

    def table(self, title, columns, rows):
        self.tables.append({"title": title, "columns": list(columns), "rows": [list(map(str, r)) for r in rows]})

    def note(self, text):
        self.notes.append(text)
        print(f"     {self.name}: {text}", flush=True)

    @property
    def failed(self):
        return [c for c in self.checks if not c["ok"]]

    def save(self, environment):
        record = {"part": self.name, "device": str(self.device), "environment": environment,
                  "seconds": time.time() - self.started, "checks": self.checks, "tables": self.tables,
                  "notes": self.notes}
        (self.out / f"{self.name}.json").write_text(json.dumps(record, indent=1))


def script_env(**extra):
    """The environment of a script the check runs: this repository importable, output unbuffered."""
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "PYTHONUNBUFFERED": "1", "PYTHON": PYTHON,
            **{k: str(v) for k, v in extra.items()}}


def run(command, log, timeout=600, env=None):
    """Run `command` (a list; a leading .py path runs under this Python) to completion, its output into
    `log`; returns (exit status, seconds). A run past `timeout` is killed and counts as exit status 124."""
    command = [str(c) for c in command]
    if command[0].endswith(".py"):
        command = [PYTHON, str(REPO / command[0]), *command[1:]]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, env=env or script_env(),
                                start_new_session=True)
        try:
            status = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            status = 124
    return status, time.perf_counter() - start


def tail(log, lines=3):
    """The last lines of a log, joined for a check's detail."""
    text = Path(log).read_text(errors="replace").strip().splitlines() if Path(log).exists() else []
    return " | ".join(text[-lines:])[-400:]


def min_median(values, scale=1.0, digits=2):
    """'min / median' of `values` times `scale`."""
    return f"{scale * min(values):,.{digits}f} / {scale * statistics.median(values):,.{digits}f}"
