"""What every ring backend shares: the ring position, the liveness of the other networks, the bounded wait
with its one message, and the failure a watcher found.

Network i of N receives from its peer i − 1 (network 1 from N) and sends to its successor i + 1 (network N
to 1). A backend publishes and receives weights and, from a watcher thread, beats a heartbeat and looks
for a failed or vanished network; every wait polls and stops at --graft-timeout or at that failure.
"""
import os
import socket
import threading
import time

import torch

from ..errors import UserError

HEARTBEAT_SECONDS = 0.5


class ExchangeError(UserError):
    """The ring cannot go on: a peer failed, vanished or timed out, or sent foreign weights."""


def pid_alive(pid):
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


def where(info):
    """How a message names a network's process: its pid and host, from {"pid", "host"} (None: unknown)."""
    return f"pid {info['pid']} on {info['host']}" if info else "no heartbeat"


class PeerWatch:
    """What this network knows of network `index`: its process ({"pid", "host"} when known), the last
    heartbeat it saw (a counter, a file's mtime) and when that last changed."""

    def __init__(self, index, info=None):
        self.index = index
        self.info = info
        self.seen_alive = False
        self.last_beat = None
        self.last_change = time.monotonic()

    def beat(self, value, now):
        """Record the heartbeat `value` seen at `now`; True when it moved since an earlier look."""
        if value == self.last_beat:
            return False
        moved = self.last_beat is not None
        self.last_beat, self.last_change = value, now
        return moved

    def silent(self, now):
        """Seconds since the heartbeat last changed (or since watching began)."""
        return now - self.last_change


class RingMember:
    """Network `index` of `num` (1-based) in the ring, with the settings every backend shares. A backend
    implements start, publish, receive and close, and `_watch_once` for its watcher thread."""

    # (first, longest) seconds between two polls of a wait, the delay doubling from one to the other: each
    # backend sets its own, after what a poll costs it
    POLL_DELAYS = None

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
        self.host = socket.gethostname()
        self._failure = None
        self._gave_up = False
        self._stop = threading.Event()
        self._thread = None

    @classmethod
    def for_record(cls, record, **settings):
        """The member for network record.index of record.num (a record.RunRecord), with `settings`."""
        return cls(record.index, record.num, **settings)

    @classmethod
    def place(cls, record):
        """Set network `record`'s place in the ring (record.index, record.num) and anything that follows
        from it, before the run reads them. By default the flags (--i, --num) already said it."""

    @classmethod
    def announce_start(cls, record):
        """Show network record.index alive from the start of its process, before the ring opens; returns
        what the caller stops at the end (an object with stop()), or None. By default nothing: a backend
        whose launcher watches the processes needs no more."""
        return None

    @classmethod
    def announce_failure(cls, record, reason):
        """Leave word that network record.index stopped on `reason` before or outside the ring. By default
        nothing: a backend whose launcher reports every network's exit has nothing to add."""

    def others(self):
        """The indices of the other networks of the ring."""
        return [j for j in range(1, self.num + 1) if j != self.index]

    # -- liveness ------------------------------------------------------------------------------------

    def local_liveness(self, info):
        """For a network's process {"pid", "host"}: True when it runs on this host, False when it ran on
        this host and has stopped, None when it is elsewhere or unknown (only its heartbeat can tell)."""
        if info is None or info.get("host") != self.host:
            return None
        return pid_alive(info["pid"])

    def stopped(self, j, info):
        """The reason to stop for network `j`, whose process is `info`, gone without finishing."""
        return f"network {j} ({where(info)}) stopped without finishing"

    def _start_watching(self, name):
        self._thread = threading.Thread(target=self._watch_loop, name=name, daemon=True)
        self._thread.start()

    def _watch_loop(self):
        """Every HEARTBEAT_SECONDS until closed, one `_watch_once`; the first failure it reports is kept."""
        while not self._stop.wait(HEARTBEAT_SECONDS):
            failure = self._watch_once()
            if failure is not None and self._failure is None:
                self._failure = failure

    def _watch_once(self):
        """Beat this network's heartbeat and return a one-line reason when another network failed or
        vanished, else None."""
        raise NotImplementedError

    def _stop_watching(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * HEARTBEAT_SECONDS)

    # -- stopping ------------------------------------------------------------------------------------

    def _error(self, message):
        """An ExchangeError to raise, remembering that this network stopped on its own account."""
        self._gave_up = True
        return ExchangeError(message)

    def check(self):
        """Raise ExchangeError when the watcher found a failed or vanished network (cheap: one attribute)."""
        if self._failure is not None:
            raise self._error(f"network {self.index} stops: {self._failure}")

    def wait_for(self, what, poll, ready=bool, deadline=None):
        """The value of poll() once ready(value), polling every POLL_DELAYS; until then watch the peers
        (check) and the deadline (default: --graft-timeout from now), past which it gives up on `what`."""
        deadline = time.monotonic() + self.timeout if deadline is None else deadline
        delay, longest = self.POLL_DELAYS
        while True:
            value = poll()
            if ready(value):
                return value
            self.check()
            if time.monotonic() > deadline:
                raise self._error(f"network {self.index} waited {self.timeout:.0f}s (--graft-timeout) for "
                                  f"{what}; giving up")
            time.sleep(delay)
            delay = min(2 * delay, longest)
