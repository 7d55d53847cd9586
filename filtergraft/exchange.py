"""The on-disk ring exchange between grafting processes (SPEC §7).

Network i publishes its pre-graft weights as exchange/net<i>_epoch<e>.t7 (atomically) and reads those of
its predecessor. Every wait is bounded and watches the other networks: each process keeps a heartbeat
file, writes net<i>.failed when it stops on an error and net<i>.done when it finishes, so a crashed or
killed network stops the others within seconds instead of hanging them.
"""
import json
import os
import socket
import threading
import time
from pathlib import Path

import torch

from .checkpoint import atomic_save, check_compatible
from .errors import UserError

# A wait polls quickly at first, for a peer that is about to publish, then backs off to spare the
# filesystem (often a network one) while a slow peer finishes its epoch.
POLL_SECONDS = (0.002, 0.05)


class ExchangeError(UserError):
    """The ring cannot go on: a peer failed, vanished or timed out, or sent foreign weights."""


def _pid_alive(pid):
    """Whether a process of this host runs; a zombie (killed, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _read_json(path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def _write_json(path, record):
    tmp = Path(f"{path}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)


class PeerWatch:
    """What one process knows of another network's liveness, from its heartbeat file and markers."""

    def __init__(self, index):
        self.index = index
        self.seen_alive = False
        self.last_mtime = None
        self.last_change = time.monotonic()


class RingMember:
    """Network `index` of `num` (1-based) in a ring where network i receives from its peer i − 1 (network 1
    from N) and sends to its successor i + 1 (network N to 1); the settings every exchange backend shares."""

    def __init__(self, index, num, arch=None, timeout=7200.0, heartbeat_timeout=30.0, startup_timeout=600.0,
                 device="cpu", log=print):
        self.index = index
        self.num = num
        self.arch = arch
        self.timeout = timeout
        self.heartbeat_timeout = heartbeat_timeout
        self.startup_timeout = startup_timeout
        self.device = torch.device(device)
        self.log = log
        self.peer = num if index == 1 else index - 1
        self.successor = index % num + 1


class RingExchange(RingMember):
    """The ring over files in a shared directory."""

    def __init__(self, directory, index, num, **settings):
        super().__init__(index, num, **settings)
        self.dir = Path(directory)
        self.host = socket.gethostname()
        self.started = time.time()
        self._start_clock = time.monotonic()
        self._failure = None
        self._stop = threading.Event()
        self._watches = [PeerWatch(j) for j in range(1, num + 1) if j != index]
        self._thread = None

    def weights_path(self, index, epoch):
        return self.dir / f"net{index}_epoch{epoch}.t7"

    def marker(self, index, kind):
        return self.dir / f"net{index}.{kind}"

    def start(self):
        """Announce this network (heartbeat file), clear its markers of an earlier run, start watching."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for kind in ("failed", "done"):
            self.marker(self.index, kind).unlink(missing_ok=True)
        _write_json(self.marker(self.index, "alive"),
                    {"pid": os.getpid(), "host": self.host, "started": self.started})
        self._thread = threading.Thread(target=self._watch_loop, name="ring-watch", daemon=True)
        self._thread.start()
        return self

    def _watch_loop(self):
        while not self._stop.wait(0.5):
            try:
                os.utime(self.marker(self.index, "alive"))
            except OSError:
                pass
            if self._failure is None:
                self._failure = self._find_failure()

    def _find_failure(self):
        """A one-line reason when another network has failed or vanished, else None."""
        now = time.monotonic()
        for watch in self._watches:
            j = watch.index
            if self.marker(j, "done").exists():
                continue
            failed = _read_json(self.marker(j, "failed"))
            if failed is not None and failed.get("time", 0) >= self.started - 5:
                return f"network {j} failed: {failed.get('reason', 'unknown reason')}"
            alive = _read_json(self.marker(j, "alive"))
            try:
                mtime = self.marker(j, "alive").stat().st_mtime_ns
            except OSError:
                mtime = None
            if mtime is not None and mtime != watch.last_mtime:
                if watch.last_mtime is not None:
                    watch.seen_alive = True
                watch.last_mtime, watch.last_change = mtime, now
            local = alive is not None and alive.get("host") == self.host
            if local and _pid_alive(alive["pid"]):
                watch.seen_alive = True
                continue
            dead = local or now - watch.last_change > self.heartbeat_timeout
            if dead and watch.seen_alive:
                where = f"pid {alive['pid']} on {alive['host']}" if alive else "no heartbeat"
                return f"network {j} ({where}) stopped without finishing"
            if not watch.seen_alive and now - self._start_clock > self.startup_timeout:
                return f"network {j} has not started within {self.startup_timeout:.0f}s"
        return None

    def check(self):
        """Raise ExchangeError when the watcher found a failed or vanished network."""
        if self._failure is not None:
            raise ExchangeError(f"network {self.index} stops: {self._failure}")

    def _wait_for(self, ready, what):
        deadline = time.monotonic() + self.timeout
        delay, longest = POLL_SECONDS
        while not ready():
            self.check()
            if time.monotonic() > deadline:
                raise ExchangeError(f"network {self.index} waited {self.timeout:.0f}s (--graft-timeout) "
                                    f"for {what}; giving up")
            time.sleep(delay)
            delay = min(2 * delay, longest)

    def publish(self, epoch, state_dict):
        """Write this network's pre-graft weights of `epoch`, once its successor has consumed all but the
        previous epoch's file (so at most two files per network exist)."""
        older = self.weights_path(self.index, epoch - 2)
        self._wait_for(lambda: not older.exists(), f"network {self.successor} to read epoch {epoch - 2}")
        atomic_save({"net": state_dict, "epoch": epoch, "arch": self.arch}, self.weights_path(self.index, epoch))

    def receive(self, epoch, reference):
        """The predecessor's pre-graft weights of `epoch`, checked against the `reference` state dict;
        its file of the epoch before is removed, since nobody reads it again."""
        path = self.weights_path(self.peer, epoch)
        self._wait_for(path.exists, f"network {self.peer}'s weights of epoch {epoch} ({path})")
        payload = torch.load(path, map_location=self.device, weights_only=False)
        if payload.get("arch") != self.arch or payload.get("epoch") != epoch:
            raise ExchangeError(f"{path} holds {payload.get('arch')!r} epoch {payload.get('epoch')}, expected "
                                f"{self.arch!r} epoch {epoch}: the peers run different configurations")
        try:
            check_compatible(payload["net"], reference, f"network {self.peer}'s weights ({path})")
        except UserError as err:
            raise ExchangeError(str(err)) from None
        self.weights_path(self.peer, epoch - 1).unlink(missing_ok=True)
        return payload["net"]

    def close(self, error=None):
        """Stop watching and leave a marker: net<i>.done, or net<i>.failed with the reason."""
        self._stop.set()
        if error is None:
            _write_json(self.marker(self.index, "done"), {"time": time.time()})
        else:
            announce_failure(self.dir, self.index, error)


def announce_failure(directory, index, reason):
    """Write exchange/net<i>.failed so that the other networks stop instead of waiting for this one."""
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        _write_json(Path(directory) / f"net{index}.failed", {"time": time.time(), "reason": reason})
    except OSError:
        pass  # an unwritable session directory was the error being reported
